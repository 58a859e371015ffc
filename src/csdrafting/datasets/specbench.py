"""Spec-Bench (Xia et al. 2024), the field's standard speculative-decoding benchmark, shipped in the package.

File ``data/spec_bench/question.jsonl.gz``: ``data/spec_bench/question.jsonl`` of GitHub
``hemingkx/Spec-Bench`` at commit ``fd2c1cd``, unmodified (Apache-2.0; licence and notice beside it).
480 questions in 13 categories, reported in Spec-Bench's six groups:

===============  =============================================================================  =====
group            categories                                                                     items
===============  =============================================================================  =====
mt_bench         writing, roleplay, reasoning, math, coding, extraction, stem, humanities        80
                 (10 each, TWO user turns each: the MT-Bench questions)
translation      translation (WMT14 German to English)                                            80
summarization    summarization (CNN/Daily Mail articles)                                          80
qa               qa (Natural Questions)                                                           80
math_reasoning   math_reasoning (GSM8K)                                                           80
rag              rag (a question with retrieved passages)                                         80
===============  =============================================================================  =====

Names: ``specbench`` (all 480) and ``specbench-<group>`` (one group, e.g. ``specbench-summarization``).
Every prompt carries its ``category`` and ``group``. The first user turn goes through ``chat_format``
(required); ``Prompt.turns`` holds both turns of an MT-Bench question, and ``Prompt.conversation(answers)``
builds the second turn's conversation from the model's own first answer.

Ids are the file's ``question_id`` (as strings, "81" .. "560"). Split key: ``sha256("specbench:<id>")``,
except for the 80 MT-Bench questions, which are byte-identical to the ``mtbench`` set's and are split under
``"mtbench:<id>"``, so a question is on the same side of the calibration/eval line in both sets (no
tuning on a question that another set evaluates on).

Order: within a split, ``specbench`` takes its groups in turn (mt_bench, translation, summarization, qa,
math_reasoning, rag, then again) and the mt_bench group takes its 8 categories in turn, each in file order,
so ``limit=N`` draws from every group and category alike.
"""

from __future__ import annotations

import json
from functools import partial

from ..protocol import CSDraftingError
from ._core import Dataset, Item, json_lines, read_shipped

FILE = "spec_bench/question.jsonl.gz"
ORIGIN = "Spec-Bench question.jsonl (GitHub hemingkx/Spec-Bench @ fd2c1cd, Apache-2.0), shipped in csdrafting/data"
MT_BENCH = "mt_bench"
MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
GROUPS = (MT_BENCH, "translation", "summarization", "qa", "math_reasoning", "rag")
GROUP_SIZE = {MT_BENCH: 80, **{g: 80 for g in GROUPS[1:]}}
NAME = "specbench"
MTBENCH_IDS = range(81, 161)  # the questions shared with the `mtbench` set


def group_of(category: str) -> str:
    if category in MT_BENCH_CATEGORIES:
        return MT_BENCH
    if category in GROUPS:
        return category
    raise CSDraftingError(f"Spec-Bench category {category!r} is in none of the groups {list(GROUPS)}")


def _reference(rec: dict) -> str:
    ref = rec.get("reference")
    if not ref:
        return ""
    first = ref[0]
    return first if isinstance(first, str) else json.dumps(first, ensure_ascii=False)


def read_all() -> list[Item]:
    """All 480 questions in file order; the shape of each is checked (turns per group)."""
    out = []
    for rec in json_lines(read_shipped(FILE), FILE):
        qid, category, turns = str(rec.get("question_id", "")), rec.get("category", ""), rec.get("turns")
        group = group_of(category)
        want = 2 if group == MT_BENCH else 1
        if not qid or not isinstance(turns, list) or len(turns) != want or not all(
                isinstance(t, str) and t.strip() for t in turns):
            raise CSDraftingError(f"{FILE}: question {qid or '?'} ({category}) should have {want} non-empty turn(s)")
        out.append(Item(qid, tuple(turns), category, group, _reference(rec)))
    return out


def _of_group(group: str | None) -> list[Item]:
    items = read_all()
    return items if group is None else [it for it in items if it.group == group]


def _round_robin(buckets: list[list[Item]]) -> list[Item]:
    out: list[Item] = []
    for i in range(max((len(b) for b in buckets), default=0)):
        out += [b[i] for b in buckets if i < len(b)]
    return out


def interleave(items: list[Item]) -> list[Item]:
    """Groups in turn, and within mt_bench its categories in turn; each keeps its file order."""
    mt = _round_robin([[it for it in items if it.category == c] for c in MT_BENCH_CATEGORIES])
    return _round_robin([mt] + [[it for it in items if it.group == g] for g in GROUPS[1:]])


def split_key(item_id: str) -> str:
    return "mtbench" if item_id.isdigit() and int(item_id) in MTBENCH_IDS else NAME


def dataset_name(group: str) -> str:
    return f"{NAME}-{group}"


SPECBENCH_SETS = (
    Dataset(NAME, ORIGIN, sum(GROUP_SIZE.values()), True, partial(_of_group, None), split_key, interleave),
    *(Dataset(dataset_name(g), f"{ORIGIN}, group {g}", GROUP_SIZE[g], True, partial(_of_group, g), split_key,
              interleave) for g in GROUPS),
)
