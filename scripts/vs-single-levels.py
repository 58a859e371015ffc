"""A cascade against its own parts, from a bench run: per dataset, every method's decode speedup over plain
(paired per-prompt medians), each cascade's ratio to the best single level on each prompt (the faster of the
single-level methods there), its ratio to cost-aware speculative decoding, the oracle's ceiling priced by the
run's own cost curve, and what routing decided and cost.
Reads a run directory of `csdrafting bench` (its records.jsonl, or records.jsonl.gz as committed under
docs/bench/; any `--repeats` rounds folded into their medians, or one round with --round K); no models needed.

    python scripts/vs-single-levels.py runs/f32-route2 --single cfg:f32-sd-dynamic,cfg:f32-suffix \
        --sd cfg:f32-sd-dynamic --cascades csd,cfg:f32-csd-unrouted

The README's F32-tier routing table comes from this.
"""

import argparse
import gzip
import json
import statistics
from collections import defaultdict
from pathlib import Path

from csdrafting.bench.replay import Reference, best_oracle_length, oracle
from csdrafting.bench.runner import collapse_repeats
from csdrafting.cascade.planning import CostCurve

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run")
ap.add_argument("--single", default="cfg:f32-sd-dynamic,cfg:f32-suffix", help="the single-level methods")
ap.add_argument("--sd", default="cfg:f32-sd-dynamic", help="cost-aware speculative decoding's method")
ap.add_argument("--cascades", default="csd,cfg:f32-csd-unrouted", help="the cascades to compare with them")
ap.add_argument("--round", type=int, default=None,
                help="with --repeats: only this round (0, 1, ...), to see how far the tables move between rounds")
a = ap.parse_args()
single, cascades = a.single.split(","), a.cascades.split(",")

path = Path(a.run) / "records.jsonl"
text = path.read_text() if path.exists() else gzip.decompress(path.with_name("records.jsonl.gz").read_bytes()).decode()
records = [json.loads(line) for line in text.splitlines() if line.strip()]
if a.round is not None:
    records = [r for r in records if r.get("repeat", 0) == a.round]
by: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
for r in collapse_repeats(records):
    if r["phase"] == "eval":
        by[(r["dataset"], r["prompt_id"])][r["method"]] = r
methods = ["plain", *single, *cascades]
complete = {k: v for k, v in by.items() if all(m in v for m in methods)}
datasets = sorted({d for d, _ in complete})


def speed(rec: dict) -> float:
    return rec["decode_tokens_per_second"]


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"


def cells(f) -> list[str]:
    return [med([f(v) for k, v in complete.items() if k[0] == d]) for d in datasets] + [med([f(v) for v in complete.values()])]


print("| decode × plain, paired medians (range) | " + " | ".join(
    f"{d} ({sum(k[0] == d for k in complete)})" for d in datasets) + " | all |")
print("|---|" + "---:|" * (len(datasets) + 1))
print("| plain decoding, tok/s | " + " | ".join(
    f"{statistics.median(speed(v['plain']) for k, v in complete.items() if k[0] == d):.2f}" for d in datasets) + " | |")
for m in methods[1:]:
    print(f"| {m} | " + " | ".join(cells(lambda v, m=m: speed(v[m]) / speed(v["plain"]))) + " |")
# the ceiling at this verification cost: plain's output offered as a free draft at its best length, priced by
# the target's cost curve recorded in the run (a prediction; no oracle method ran)
curve = next((CostCurve.from_json(r["target_cost_curve"]) for r in records if r.get("target_cost_curve")), None)
if curve is not None:
    def ceiling(v: dict) -> float:
        p = v["plain"]  # a conversation's turns are drafted apart (max_new_tokens is per turn)
        got = [oracle(Reference(p["dataset"], p["prompt_id"], [], t["tokens"][: t["new_tokens"]], p["max_new_tokens"]),
                      curve) for t in p.get("turns") or [p]]
        return sum(g.plain_seconds for g in got) / sum(g.seconds for g in got)

    print(f"| oracle, k={best_oracle_length(curve)}, priced by the run's curve | " + " | ".join(cells(ceiling)) + " |")
for c in cascades:
    print(f"| {c}, vs the best single level per prompt | " + " | ".join(
        cells(lambda v, c=c: speed(v[c]) / max(speed(v[s]) for s in single))) + " |")
    print(f"| {c}, vs {a.sd} | " + " | ".join(cells(lambda v, c=c: speed(v[c]) / speed(v[a.sd]))) + " |")


def group_median(m: str, d: str) -> float:
    return statistics.median(speed(v[m]) / speed(v["plain"]) for k, v in complete.items() if k[0] == d)


for c in cascades:
    print(f"| {c}, vs the best single level's group median | " + " | ".join(
        f"{group_median(c, d) / max(group_median(s, d) for s in single):.2f}x" for d in datasets) + " | |")

print("\nexactness (identical / tie / mismatch against plain), every method:")
for m in methods[1:]:
    verdicts = [str(v[m].get("exactness")) for v in complete.values()]
    print(f"  {m}: " + ", ".join(f"{x} {verdicts.count(x)}" for x in sorted(set(verdicts))))

for c in cascades:
    routes = [v[c]["metrics"].get("routes") or {} for v in complete.values()]
    if not any(routes):
        continue
    total = defaultdict(float)
    for r in routes:
        for k, x in r.items():
            total[k] += x
    passes = sum(v[c]["metrics"]["target_steps"] for v in complete.values())
    one_pass = statistics.median(speed(v["plain"]) for v in complete.values()) ** -1
    print(f"\nrouting in {c}: " + ", ".join(f"{k} {int(total[k])}" for k in ("via", "direct", "measure") if k in total)
          + f"; deciding took {total['seconds'] * 1e3:.0f} ms over {passes} target steps, "
          f"{100 * total['seconds'] / passes / one_pass:.2f}% of one plain target pass per step")
