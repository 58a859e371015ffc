"""What the tuner and `calibrate` work on: the models of the candidate cascades and calibration prompts."""

from __future__ import annotations

import sys
from itertools import zip_longest
from typing import Any, Callable, Sequence

from ..drafters import registry
from ..drafters.base import StatisticalDrafter
from ..protocol import CSDraftingError, LanguageModel


def check_candidates(target_ref: str, refs: Sequence[str]) -> None:
    """A clear error for a bad candidate list, before anything loads."""
    from ..spec import check_ref

    for ref in [target_ref, *refs]:  # fail on a bad name before loading gigabytes
        if not registry.is_statistical(ref):
            check_ref(ref)
    if registry.is_statistical(target_ref):
        raise CSDraftingError(f"the target must be a neural model, not the statistical drafter {target_ref}")
    if len(set(refs)) != len(refs):
        raise CSDraftingError(f"a drafter is listed twice: {list(refs)}")
    if target_ref in refs:
        raise CSDraftingError(f"{target_ref} is both the target and a drafter")


def load_models(target_ref: str, refs: Sequence[str], backend: str, threads: int, n_ctx: int,
                place: Callable[[str], dict[str, Any]] = lambda ref: {}
                ) -> tuple[LanguageModel, dict[str, LanguageModel], dict[str, StatisticalDrafter]]:
    """The target, the neural candidates by reference, and the statistical candidates built from the
    registry with their default settings; place(ref) gives load_model's placement keywords."""
    from ..spec import load_model, neural

    check_candidates(target_ref, refs)
    models = neural(refs)
    print(f"loading {target_ref} and {len(models)} drafter(s) ({backend}, {threads} threads)", file=sys.stderr)
    target = load_model(target_ref, backend, threads, n_ctx, **place(target_ref))
    loaded = {r: load_model(r, backend, threads, n_ctx, **place(r)) for r in models}
    statistical = {r: registry.build(r, None, target.info.vocab_size) for r in refs if registry.is_statistical(r)}
    return target, loaded, statistical


def load_prompts(target: LanguageModel, dataset: str, n: int, split: str, n_ctx: int, max_new: int) -> list[tuple[str, list[int]]]:
    """(id, token ids) of the first `n` prompts of a dataset split, in the target's chat template, those
    that fit the context with `max_new` tokens after them. `dataset` may name several, comma-separated:
    then `n` of each, taken in turn (so the first few prompts cover every workload)."""
    names = [d.strip() for d in dataset.split(",") if d.strip()]
    if len(names) > 1:
        each = [load_prompts(target, d, n, split, n_ctx, max_new) for d in names]
        return [p for group in zip_longest(*each) for p in group if p is not None]
    from ..datasets import load
    from ..text import chat_prompt, encode

    items = load(dataset, lambda u: chat_prompt(target, u), limit=n, split=split)
    if not items:
        raise CSDraftingError(f"the {split} split of {dataset} has no prompts")
    out = []
    for it in items:
        ids = encode(target, it.text)
        if len(ids) + max_new <= n_ctx:
            out.append((it.id, ids))
    if not out:
        raise CSDraftingError(f"every {split} prompt of {dataset} is longer than n_ctx={n_ctx} minus max_new_tokens")
    return out
