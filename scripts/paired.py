"""Two methods of one bench run against each other, prompt by prompt: decode tokens/s of B over A.

    python scripts/paired.py docs/bench/q4-spec7 cfg:q4-suffix-learn-up csd

Per dataset: the median and geometric mean over prompts of tokens/s(B) / tokens/s(A) (the bench's headline
timing, decode-only in these runs; above 1: B faster), and on how many prompts B was faster. Tokens/s, not
seconds, because two exact methods' outputs can differ in length after a near-tie. The same paired ratio as
the summary's tables (`summary.paired_ratios`), over repeated rounds folded as the summary folds them. For two
engine methods it also sums their target passes and tokens over the prompts both ran: what the drafting did,
free of the machine's timing noise.
"""

import statistics
import sys

from csdrafting.bench.replay import load_records
from csdrafting.bench.summary import paired_ratios

run, base, other = sys.argv[1:4]
records = load_records(run)
per = {ds: paired_ratios(records, ds, other, base)
       for ds in sorted({r["dataset"] for r in records if r.get("phase") == "eval"})}
per = {ds: xs for ds, xs in per.items() if xs}
every = [x for xs in per.values() for x in xs]
print(f"decode tokens/s of {other} over {base}, per prompt (above 1: {other} faster)")
for name, xs in [*per.items(), ("all", every)]:
    print(f"{name:28s} {len(xs):3d} prompts  median {statistics.median(xs):.3f}  geometric mean "
          f"{statistics.geometric_mean(xs):.3f}  {other} faster on {sum(x > 1 for x in xs)}")

steps: dict[str, dict[str, dict[str, list[int]]]] = {}  # dataset -> prompt -> method -> [passes, tokens]
for r in records:
    m = r.get("metrics") or {}
    if r.get("phase") == "eval" and r["method"] in (base, other) and "target_steps" in m:
        got = steps.setdefault(r["dataset"], {}).setdefault(r["prompt_id"], {})
        got.setdefault(r["method"], [0, 0])
        got[r["method"]][0] += m["target_steps"]
        got[r["method"]][1] += r["new_tokens"]
if steps:
    print(f"target passes (new tokens) summed over the prompts both ran: {base} against {other}")
    for ds, by in sorted(steps.items()):
        both = [v for v in by.values() if base in v and other in v]
        a, b = ([sum(v[k][i] for v in both) for i in (0, 1)] for k in (base, other))
        print(f"{ds:28s} {len(both):3d} prompts  {a[0]} ({a[1]}) against {b[0]} ({b[1]})")
