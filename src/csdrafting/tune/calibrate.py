"""Calibrating the suffix drafter's confidence on calibration-split prompts (never evaluation prompts).

The target decodes each prompt greedily (plain decoding); along that text, every position's first
proposal is a sample of "was the proposal in this feature bucket accepted" (drafters/suffix.py,
`SuffixDrafter.calibrate`). The result is kept per dataset (to see which sources pay where) and merged.

    csdrafting calibrate --out src/csdrafting/data/suffix-calibration.json      # the packaged default
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

from ..cascade.engine import Cascade
from ..drafters import registry
from ..drafters.suffix import Calibration, SuffixDrafter
from ..protocol import CSDraftingError, LanguageModel

DRAFTER = "suffix"  # the drafter whose confidence table this measures (SuffixDrafter.calibrate)


def reference_texts(target: LanguageModel, prompts: Sequence[list[int]], max_new: int, progress: bool = True,
                    cache: Path | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt, the target's greedy output) for each prompt.

    With `cache` (a JSONL file), outputs already recorded for the same target, prompt and length are
    reused and new ones appended as they finish, so an interrupted calibration resumes where it stopped.
    """
    from tqdm import tqdm

    done: dict[tuple, list[int]] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            if rec.get("target") == target.info.label and rec.get("max_new") == max_new:
                done[tuple(rec["prompt"])] = rec["output"]
    plain = Cascade(target)
    out = []
    for p in tqdm(prompts, desc="target's greedy text", unit="prompt", disable=not progress, file=sys.stderr):
        key = tuple(int(t) for t in p)
        if key not in done:
            done[key] = plain.generate(list(key), max_new).tokens
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with cache.open("a") as f:
                    f.write(json.dumps({"target": target.info.label, "max_new": max_new, "prompt": list(key),
                                        "output": done[key]}) + "\n")
        out.append((list(key), done[key]))
    return out


def calibrate(
    target: LanguageModel,
    prompts_by_dataset: dict[str, list[list[int]]],
    max_new: int,
    make_drafter=lambda: SuffixDrafter(),
    progress: bool = True,
    cache: Path | None = None,
) -> Calibration:
    """One Calibration merged over datasets; meta['per_dataset'] keeps each dataset's counts and
    meta['tree_headroom'] what a two-way tree could add on the same texts."""
    total = Calibration()
    per: dict[str, dict] = {}
    every: list[tuple[list[int], list[int]]] = []
    for name, prompts in prompts_by_dataset.items():
        texts = reference_texts(target, prompts, max_new, progress, cache)
        every += texts
        cal = make_drafter().calibrate(texts)
        per[name] = cal.counts
        total = total.merge(cal)
    total.meta = {
        "target": target.info.label,
        "max_new_tokens": max_new,
        "prompts": {k: len(v) for k, v in prompts_by_dataset.items()},
        "per_dataset": per,
        "made": time.strftime("%Y-%m-%d"),
        "note": "calibration-split prompts only; acceptance = the proposal equals the target's greedy next token",
        "tree_headroom": tree_headroom(every),
    }
    return total


def tree_headroom(texts: Sequence[tuple[Sequence[int], Sequence[int]]], max_ngram: int = 12) -> dict:
    """What a two-way tree at the suffix drafter's first position could add (issue: tree drafts).

    At every position where the longest matching context has two or more distinct continuations, a tree
    would review the runner-up beside the first choice. Counts: positions with a match, those with a
    runner-up, first choice right, first wrong but runner-up right (the tree's only gain: one token, at the
    price of one more token in every such review).
    """
    from ..drafters.ngram_index import NgramCounts

    res = {"positions": 0, "matched": 0, "with_runner_up": 0, "first_right": 0, "runner_up_right": 0}
    for prompt, output in texts:
        idx = NgramCounts(max_ngram)
        idx.extend(prompt)
        for t in output:
            res["positions"] += 1
            hit = idx.lookup(idx.text)
            if hit is not None:
                res["matched"] += 1
                n, tok, _, _ = hit
                d = idx.counts[tuple(idx.text[-n:])]
                res["first_right"] += tok == t
                if len(d) > 1:
                    res["with_runner_up"] += 1
                    second = max((x for x in d if x != tok), key=d.__getitem__)
                    res["runner_up_right"] += tok != t and second == t
            idx.append(int(t))
    return res


def default_store() -> bool:
    """Whether the built-in default cascade runs the drafter with its cross-request store."""
    from ..spec import DEFAULT_SPEC

    return registry.get(DRAFTER).resolve(DEFAULT_SPEC.settings_of(DRAFTER))["persist"]


def calibrate_drafter(target_ref: str, datasets: Sequence[str], n_prompts: int, max_new: int, store: bool,
                      texts: Path | None, out: str | Path | None = None, **placement) -> Calibration:
    """`csdrafting calibrate` as a call: the drafter calibrated (and saved to `out`) on `n_prompts`
    calibration-split prompts per dataset, built as the built-in cascade builds it (bigram fallback,
    context length, min-hits), with or without its store; `placement` as a spec's (backend, threads, ...)."""
    from ..spec import DEFAULT_SPEC, CascadeSpec, load_model
    from .inputs import load_prompts

    if n_prompts <= 0 or max_new <= 0:
        raise CSDraftingError("--prompts and --max-new-tokens must be positive")
    spec = CascadeSpec(target=target_ref, **placement)
    spec.validate_placement()
    target = load_model(target_ref, spec.backend, spec.threads, spec.n_ctx, **spec.placement(target_ref))
    prompts = {ds: [ids for _, ids in load_prompts(target, ds, n_prompts, "calibration", spec.n_ctx, max_new)]
               for ds in datasets}
    settings = {**DEFAULT_SPEC.settings_of(DRAFTER), "calibration": None, "persist": store}
    cal = calibrate(target, prompts, max_new, make_drafter=lambda: registry.build(DRAFTER, settings, target.info.vocab_size),
                    cache=texts)
    cal.meta["store"] = store
    if out is not None:
        cal.save(out)
    return cal
