"""Where a request's time goes: plain decoding against a cascade, paired, repeated, split into its parts.

    python -m csdrafting.bench.per_request --datasets specbench-qa,specbench-math_reasoning --prompts 8 --reps 5

For each prompt and repetition, plain decoding and the cascade (the built-in default unless --config) run
back to back on the same target object, alternating which goes first. Printed per prompt and as medians
of the per-run ratios: end to end and decode-only speed against plain, and the cascade's decode time
taken apart: the target's passes (how many, and how many more than plain's), the statistical level's own
Python work (indexing what was committed, proposing), and the rest of the engine (planning, bookkeeping).
A short answer has few steps to win back a per-request cost, so this is where such a cost shows.
"""

from __future__ import annotations

import argparse
import statistics
import sys


def _split(res) -> dict:
    m = res.metrics
    target = m.levels[0]
    drafting = sum(lv.seconds for lv in m.levels[1:] if lv.kind == "statistical")
    return {
        "tokens": m.new_tokens,
        "e2e": m.seconds,
        "decode": m.decode_seconds,
        "prefill": m.prefill_seconds,
        "passes": target.forward_passes,
        "drafted": sum(lv.drafted for lv in m.levels[1:]),
        "accepted": sum(lv.accepted for lv in m.levels[1:]),
        "drafting": drafting,
        "review": target.seconds - target.prefill_seconds,  # the target's passes while decoding
    }


def main(argv: list[str] | None = None) -> int:
    from ..cascade.engine import Cascade
    from ..datasets import load
    from ..protocol import run_guarded
    from ..spec import DEFAULT_SPEC, CascadeSpec, build
    from ..text import chat_prompt, encode

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="cascade config (default: the built-in default)")
    ap.add_argument("--datasets", default="specbench-qa,specbench-math_reasoning")
    ap.add_argument("--prompts", type=int, default=8, help="eval prompts per dataset")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    a = ap.parse_args(argv)

    def run() -> int:
        spec = CascadeSpec.load(a.config) if a.config else DEFAULT_SPEC.copy()
        target, drafters, config = build(spec)
        cascade, plain = Cascade(target, drafters, config), Cascade(target)
        prompts = []
        for ds in a.datasets.split(","):
            for it in load(ds, lambda u: chat_prompt(target, u), limit=a.prompts):
                prompts.append((f"{ds}/{it.id}", encode(target, it.text)))
        cascade.generate(prompts[0][1], 8)  # first calls pay one-time costs
        plain.generate(prompts[0][1], 8)
        rows = []
        for rep in range(a.reps):
            for i, (name, ids) in enumerate(prompts):
                order = [("plain", plain), ("cascade", cascade)]
                if (rep + i) % 2:
                    order.reverse()
                got = {label: eng.generate(ids, a.max_new_tokens) for label, eng in order}
                p, c = _split(got["plain"]), _split(got["cascade"])
                rows.append((name, len(ids), p, c))
                print(f"rep {rep} {name}: {c['tokens']} tokens, decode {p['decode']:.3f} s plain / {c['decode']:.3f} s "
                      f"cascade, {c['passes']} passes vs {p['passes']}, drafted {c['drafted']} accepted {c['accepted']}",
                      file=sys.stderr)
        med = statistics.median
        print(f"target {target.info.label}; cascade: {spec.describe()}")
        print(f"{len(prompts)} prompts x {a.reps} repetitions, {a.max_new_tokens} new tokens at most, interleaved\n")
        print("| prompt | prompt tokens | answer tokens | e2e vs plain | decode vs plain | target passes (plain) | "
              "drafted / accepted | target review time vs plain's | drafter work / decode | engine rest / decode |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        summary = {k: [] for k in ("e2e", "decode", "review", "drafting", "rest")}
        for name, _ in prompts:
            mine = [(n, p, c) for (pn, n, p, c) in rows if pn == name]
            e2e = med(p["e2e"] / c["e2e"] for _, p, c in mine)
            dec = med(p["decode"] / c["decode"] for _, p, c in mine)
            review = med(c["review"] / p["review"] for _, p, c in mine)
            draft_share = med(c["drafting"] / c["decode"] for _, p, c in mine)
            rest = med((c["decode"] - c["drafting"] - c["review"]) / c["decode"] for _, p, c in mine)
            n, p0, c0 = mine[0]
            print(f"| {name} | {n} | {c0['tokens']} | {e2e:.3f}x | {dec:.3f}x | {c0['passes']} ({p0['passes']}) | "
                  f"{c0['drafted']} / {c0['accepted']} | {review:.3f}x | {100 * draft_share:.2f}% | {100 * rest:.2f}% |")
            for k, v in (("e2e", e2e), ("decode", dec), ("review", review), ("drafting", draft_share), ("rest", rest)):
                summary[k].append(v)
        print(f"\nmedian over prompts: end to end {med(summary['e2e']):.3f}x plain, decode-only {med(summary['decode']):.3f}x; "
              f"the target's review time {med(summary['review']):.3f}x plain's; drafter work "
              f"{100 * med(summary['drafting']):.2f}% and the rest of the engine {100 * med(summary['rest']):.2f}% of the "
              "cascade's decode time")
        return 0

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
