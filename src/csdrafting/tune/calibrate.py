"""Calibrating the suffix drafter's confidence on calibration-split prompts (never evaluation prompts).

The target decodes each prompt greedily (plain decoding); along that text, every position's first
proposal is a sample of "was the proposal in this feature bucket accepted" (drafters/suffix.py,
`SuffixDrafter.calibrate`). The result is kept per dataset (to see which sources pay where) and merged.

    csdrafting calibrate --out src/csdrafting/data/suffix-calibration.json      # the packaged default
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from ..cascade.engine import Cascade
from ..drafters.suffix import Calibration, SuffixDrafter, default_calibration_path
from ..protocol import CSDraftingError, LanguageModel


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
    from ..drafters.suffix import NgramCounts

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


def report(cal: Calibration, out=sys.stdout) -> None:
    """Acceptance per source and dataset, then per bucket."""
    def by_source(counts: dict) -> dict[str, tuple[int, int]]:
        agg: dict[str, list[int]] = {}
        for k, (a, t) in counts.items():
            s = agg.setdefault(k.split(":", 1)[0], [0, 0])
            s[0] += a
            s[1] += t
        return {k: (a, t) for k, (a, t) in agg.items()}

    for ds, counts in cal.meta.get("per_dataset", {"all": cal.counts}).items():
        parts = [f"{src} {a}/{t} = {a / t:.0%}" for src, (a, t) in sorted(by_source(counts).items()) if t]
        print(f"{ds:>10}: " + "; ".join(parts), file=out)
    print(f"{'bucket':<18} {'accepted':>8} {'proposed':>8} {'rate':>6}", file=out)
    for k, a, t, r in cal.table():
        print(f"{k:<18} {a:>8} {t:>8} {r:>6.2f}", file=out)


def main(argv: list[str] | None = None) -> int:
    from ..spec import DEFAULT_SPEC, load_model
    from .cli import _load_prompts

    ap = argparse.ArgumentParser(prog="csdrafting calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=DEFAULT_SPEC.target, help="target model ref (default: the built-in default's)")
    ap.add_argument("--datasets", default="humaneval,mmlu,mtbench")
    ap.add_argument("--prompts", type=int, default=8, help="calibration-split prompts per dataset")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--out", default=str(default_calibration_path()))
    ap.add_argument("--texts", default="runs/calibration-texts.jsonl",
                    help="JSONL cache of the target's outputs (resume; reuse across runs)")
    from ..drafters import registry

    default = registry.get("suffix").resolve(DEFAULT_SPEC.settings_of("suffix"))
    ap.add_argument("--store", action=argparse.BooleanOptionalAction, default=default["persist"],
                    help="calibrate with the cross-request store, each dataset's texts walked in order as a server "
                         "meets them (the packaged calibration was made with it, so that --suffix-persist finds "
                         "its buckets measured; default: as the built-in default runs)")
    args = ap.parse_args(argv)
    if args.prompts <= 0 or args.max_new_tokens <= 0:
        raise CSDraftingError("--prompts and --max-new-tokens must be positive")
    target = load_model(args.target, "llamacpp", args.threads, args.n_ctx)
    prompts = {ds: [ids for _, ids in _load_prompts(target, ds, args.prompts, "calibration", args.n_ctx, args.max_new_tokens)]
               for ds in args.datasets.split(",") if ds}
    # calibrate the drafter as the built-in cascade builds it (bigram fallback, context length, min-hits),
    # with or without the store
    settings = {**DEFAULT_SPEC.settings_of("suffix"), "calibration": None, "persist": args.store}
    cal = calibrate(target, prompts, args.max_new_tokens,
                    make_drafter=lambda: registry.build("suffix", settings, target.info.vocab_size),
                    cache=Path(args.texts))
    cal.meta["store"] = args.store
    cal.save(args.out)
    report(cal)
    print(f"tree headroom (two-way tree at the first position): {cal.meta['tree_headroom']}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
