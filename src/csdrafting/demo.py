"""`csdrafting demo`: a few real HumanEval prompts, plain decoding vs CS Drafting, side by side."""

from __future__ import annotations

import statistics
import sys

from .datasets import load
from .cascade.engine import Cascade
from .exactness import IDENTICAL, MISMATCH, Tally, examine, noise_threshold
from .spec import CascadeSpec, build
from .text import StreamText, encode


def run_demo(spec: CascadeSpec, n_prompts: int = 3, max_new_tokens: int = 96, out=sys.stdout) -> int:
    print(f"Preparing models (first run: download, assemble, verify; later runs: verify only)\n  {spec.describe()}", file=out)
    target, drafters, config = build(spec)
    plain = Cascade(target, [])
    cascade = Cascade(target, drafters, config)
    names = " > ".join([target.info.label] + [d.info.label if hasattr(d, "info") else d.name for d in drafters])
    prompts = load("humaneval", limit=n_prompts)
    # Warm-up: the first forward passes of a freshly mapped model page its weights in from disk (7 GB for
    # the F32 target), which would be charged to whichever method ran first.
    cascade.generate(encode(target, "def warm_up():"), 8)
    rows = []
    noise, tally = noise_threshold(target), Tally()
    for pr in prompts:
        ids = encode(target, pr.text)
        results = {}
        for label, engine in (("plain decoding", plain), ("cascade", cascade)):
            print(f"\n=== {pr.id} · {label} ({len(ids)} prompt tokens) ===", file=out)
            print(pr.text.rstrip("\n").splitlines()[-1] if pr.text.strip() else "", file=out)
            stream = StreamText(target)
            res = engine.generate(ids, max_new_tokens, on_tokens=lambda t, s=stream: (out.write(s.push(t)), out.flush()))
            print(f"\n--- {res.metrics.tokens_per_second:.2f} tok/s", file=out)
            results[label] = res
        p, c = results["plain decoding"], results["cascade"]
        acc = [lv.acceptance for lv in c.metrics.levels[1:]]
        verdict = examine(target, ids, p.tokens, c.tokens, noise)
        tally.add(verdict.verdict)
        if verdict.verdict != IDENTICAL:
            print(f"\n{verdict.describe()}", file=out)
        rows.append((pr.id, p.metrics.tokens_per_second, c.metrics.tokens_per_second, acc, verdict.verdict,
                     c.metrics.tokens_per_target_pass))

    print(f"\nCascade: {names}; K (cumulative) {config.k.cumulative if config.k else '-'}; lenience {config.lenience}", file=out)
    print(f"greedy, {max_new_tokens} new tokens, backend {spec.backend}, {spec.threads} threads; tok/s include the prompt's prefill\n", file=out)
    acc_head = " ".join(f"acc L{i}".rjust(7) for i in range(1, len(drafters) + 1))
    head = f"{'prompt':<14} {'plain tok/s':>11} {'cascade':>10} {'speedup':>8} {acc_head} {'tok/pass':>8} {'vs plain':>9}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for pid, pt, ct, acc, verdict, tpp in rows:
        accs = " ".join((f"{100 * a:6.1f}%" if a is not None else "      -") for a in acc)
        shown = verdict.upper() if verdict == MISMATCH else verdict
        print(f"{pid:<14} {pt:>11.2f} {ct:>10.2f} {ct / pt:>7.2f}x {accs} {tpp:>8.2f} {shown:>9}", file=out)
    speedups = [ct / pt for _, pt, ct, *_ in rows]
    print(f"\nmedian speedup {statistics.median(speedups):.2f}x over {len(rows)} prompts; outputs vs plain decoding: "
          f"{tally.identical} identical, {tally.tie} differing at a numerical tie (target logits closer than the "
          f"backend's batch-shape noise, {'not measured' if noise is None else f'{noise:.4f}'}), {tally.mismatch} "
          "mismatched", file=out)
    if tally.mismatch:
        print("ERROR: the cascade's output differed from plain decoding beyond numerical noise — this is a bug, "
              "please report it", file=out)
        return 1
    return 0
