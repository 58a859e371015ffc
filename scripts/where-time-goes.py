"""Where a bench run's cascade spends its decode time against plain decoding, per dataset, and how noisy the
machine was. Reads a run directory of `csdrafting bench` with `plain` and `csd` records (and `--repeats`
rounds, if any); no models needed.

    python scripts/where-time-goes.py runs/q4-spec120 [--per-prompt specbench-math_reasoning]

Per dataset (medians over prompts): decode time per token over plain's; the drafter's own share of decode
time, and the rest of the engine's (what neither the target nor the drafter spent); the target's review time
per token over plain's; and, on the prompts whose output equals plain's, the target's measured decode time
over the price its run's cost curve puts on the same passes (replayed with `csdrafting.bench.replay`), for
`csd` and for `plain`: where csd's exceeds plain's, the curve underprices its reviews. On the prompts where
csd made exactly plain's target passes, csd's target time over plain's, split by which ran first (the bench
alternates the order; older runs always ran plain first). Then the run-to-run noise: the standard deviation
of log(csd / plain) speed over the prompts where nothing was drafted, and, with repetitions, how far two
rounds of the same prompt and method differed. `--per-prompt DATASET`: each of that dataset's prompts, with
its speed over plain, target passes of both, tokens drafted and accepted, and csd's target time per pass over
plain's. The README's figures for the 2026-12-02 and 2026-12-03 runs come from this.
"""

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from csdrafting.bench.replay import load_run, replay
from csdrafting.bench.runner import collapse_repeats
from csdrafting.cascade.planning import EndStats
from csdrafting.drafters.suffix import SuffixDrafter, default_calibration


def target_decode_seconds(rec: dict) -> float:
    lv = rec["metrics"]["levels"][0]
    return lv["seconds"] - lv.get("prefill_seconds", 0.0)


args = sys.argv[1:]
per_prompt = args[args.index("--per-prompt") + 1] if "--per-prompt" in args else None
run = Path(args[0])
runs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line.strip()]
by: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
for r in collapse_repeats(runs):
    if r["phase"] == "eval":
        by[(r["dataset"], r["prompt_id"])][r["method"]] = r
pairs = {k: v for k, v in by.items() if "csd" in v and "plain" in v}

refs, curve, eos = load_run(run)
priced = {}
ends = EndStats()  # where texts ended, learned along the prompts as the engine does
for ref in refs:
    v = pairs.get((ref.dataset, ref.prompt_id))
    if v is None or v["csd"]["tokens"] != v["plain"]["tokens"] or curve is None:
        continue
    got = replay(ref, SuffixDrafter(default_calibration()), curve, 64, eos, ends=ends)
    priced[(ref.dataset, ref.prompt_id)] = (target_decode_seconds(v["csd"]) / got.seconds,
                                            target_decode_seconds(v["plain"]) / got.plain_seconds)

rows: dict[str, list[tuple]] = defaultdict(list)
quiet = []
for (ds, pid), v in sorted(pairs.items()):
    c, p = v["csd"], v["plain"]
    per_token = lambda r, s: s / r["new_tokens"]  # noqa: E731
    rows[ds].append((per_token(c, c["decode_seconds"]) / per_token(p, p["decode_seconds"]),
                     c["metrics"]["levels"][1]["seconds"] / c["decode_seconds"],
                     per_token(c, target_decode_seconds(c)) / per_token(p, target_decode_seconds(p)),
                     priced.get((ds, pid)),
                     1 - (target_decode_seconds(c) + c["metrics"]["levels"][1]["seconds"]) / c["decode_seconds"]))
    if c["metrics"]["levels"][1]["drafted"] == 0:
        quiet.append(math.log(c["decode_tokens_per_second"] / p["decode_tokens_per_second"]))

print("| dataset | prompts | decode time/token vs plain | drafter share | engine rest | target time/token vs plain | "
      "measured/priced, csd | measured/priced, plain (prompts) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for ds, xs in rows.items():
    med = lambda i: statistics.median(x[i] for x in xs)  # noqa: E731
    pr = [x[3] for x in xs if x[3] is not None]
    cells = (f"{statistics.median(a for a, _ in pr):.3f} | {statistics.median(b for _, b in pr):.3f} ({len(pr)})"
             if pr else "– | –")
    print(f"| {ds} | {len(xs)} | {med(0):.3f} | {med(1):.4f} | {med(4):.4f} | {med(2):.3f} | {cells} |")
if len(quiet) > 1:
    print(f"\nno-draft prompts: {len(quiet)}, median csd/plain {math.exp(statistics.median(quiet)):.3f}, "
          f"sd of log ratio {statistics.stdev(quiet):.3f}")
# the target's own passes where csd made exactly plain's (same count, same tokens evaluated): its decode seconds
# over plain's, by whether csd ran before plain (runs before the order alternated: plain always first)
same: dict[object, list[float]] = defaultdict(list)
for v in pairs.values():
    c, p = v["csd"]["metrics"]["levels"][0], v["plain"]["metrics"]["levels"][0]
    if c["forward_passes"] == p["forward_passes"] and c["tokens_evaluated"] == p["tokens_evaluated"]:
        same[v["csd"].get("ran_before_baseline")].append(target_decode_seconds(v["csd"]) / target_decode_seconds(v["plain"]))
for first, xs in same.items():
    label = {True: "csd ran first", False: "csd ran second", None: "plain always first"}[first]
    print(f"same target passes ({label}): {len(xs)} prompts, csd/plain target time median {statistics.median(xs):.3f}")
if per_prompt:
    print(f"\n{per_prompt}: prompt | speed over plain | target passes, plain / csd | drafted | accepted | "
          "csd's target time per pass over plain's")
    for (ds, pid), v in sorted(pairs.items()):
        if ds != per_prompt:
            continue
        c, p = v["csd"], v["plain"]
        lc, lp = c["metrics"]["levels"][0], p["metrics"]["levels"][0]
        per_pass = (target_decode_seconds(c) / lc["forward_passes"]) / (target_decode_seconds(p) / lp["forward_passes"])
        print(f"{pid} | {c['decode_tokens_per_second'] / p['decode_tokens_per_second']:.3f} | {lp['forward_passes']} / "
              f"{lc['forward_passes']} | {c['metrics']['levels'][1]['drafted']} | {c['metrics']['levels'][1]['accepted']} | "
              f"{per_pass:.3f}")
rounds = [r["repeats"]["decode_seconds"] for r in collapse_repeats(runs) if "repeats" in r]
if rounds:
    d = [abs(math.log(s[1] / s[0])) for s in rounds]
    print(f"repetitions: {len(rounds)} units; first two rounds differ by {statistics.median(d):.3f} in log decode "
          f"time (median), at most {max(d):.3f}")
