"""The planner's cost correction (cascade/planning.py, PassCosts), on and off, against plain decoding, on the
default cascade (the 1.5B Q4_K_M target and the suffix drafter), interleaved per prompt; greedy, decode-only.

    python scripts/cost-correction-ab.py run specbench-math_reasoning,codeedit-lib 16 runs/cc.jsonl [--fresh]
    python scripts/cost-correction-ab.py show runs/cc.jsonl

`run` appends one line per (prompt, method) to the file and resumes where it stopped; it logs every decode
pass of the target (tokens, seconds, the curve's price). The planner starts from this machine's cached curve
(`csdrafting.spec.measured_curve`), or with --fresh from one measured now. `show` prints, per dataset, each
variant's median speed over plain, the corrected over the uncorrected, and each kind of pass's measured over
priced seconds. The README's table under "Choosing the default cascade" comes from this (2026-12-02).
"""

import dataclasses
import json
import statistics
import sys
import time
from collections import defaultdict

METHODS = ("plain", "off", "on")


def run(datasets: list[str], limit: int, out_path: str, fresh: bool) -> None:
    from csdrafting.cascade import rows as rowsmod
    from csdrafting.cascade.config import CascadeConfig
    from csdrafting.cascade.engine import Cascade
    from csdrafting.cascade.planning import REVIEW_GRID, measure
    from csdrafting.datasets import load
    from csdrafting.spec import DEFAULT_SPEC, build
    from csdrafting.text import chat_prompt, encode

    done = set()
    try:
        with open(out_path) as f:
            done = {(r["dataset"], r["id"], r["method"]) for r in map(json.loads, f)}
    except FileNotFoundError:
        pass
    target, drafters, cfg = build(DEFAULT_SPEC)
    if fresh:
        cfg = dataclasses.replace(cfg, costs=(measure(target, REVIEW_GRID), *cfg.costs[1:]))
    curve = cfg.costs[0]
    passes: list[tuple[int, float, float]] = []
    extend = rowsmod.RowCache._extend

    def timed(self, tokens, at, logits_from, ids_only, prefill=False):
        t0 = time.perf_counter()
        rows = extend(self, tokens, at, logits_from, ids_only, prefill)
        if not prefill and self.model is target:
            passes.append((len(tokens), time.perf_counter() - t0, curve(len(tokens))))
        return rows

    rowsmod.RowCache._extend = timed
    plain = Cascade(target, [], CascadeConfig())
    with open(out_path, "a") as out:
        for d in datasets:
            for p in load(d, lambda u: chat_prompt(target, u), limit=limit):
                ids = encode(target, p.text)
                for name in METHODS:
                    if (d, p.id, name) in done:
                        continue
                    cascade = plain if name == "plain" else Cascade(target, drafters, cfg)
                    cascade.adapt_costs = name == "on"
                    passes.clear()
                    r = cascade.generate(ids, 128)
                    m = rowsmod.measured_costs(target)
                    out.write(json.dumps({"dataset": d, "id": p.id, "method": name, "passes": passes,
                                          "decode": r.metrics.decode_seconds, "tokens": r.tokens,
                                          "factor": m.factor}) + "\n")
                    out.flush()
                    print(f"{d} {p.id} {name}: {r.metrics.decode_seconds:.2f}s, factor {m.factor:.3f}", file=sys.stderr)


def show(path: str) -> None:
    by: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    with open(path) as f:
        for r in map(json.loads, f):
            by[(r["dataset"], r["id"])][r["method"]] = r
    for d in sorted({k[0] for k in by}):
        rows = [v for k, v in by.items() if k[0] == d and len(v) == len(METHODS)]
        if not rows:
            continue
        for m in ("off", "on"):
            ratio = [v["plain"]["decode"] / v[m]["decode"] for v in rows]
            same = sum(v[m]["tokens"] == v["plain"]["tokens"] for v in rows)
            label = "corrected" if m == "on" else "uncorrected"
            print(f"{d} {label}: {len(rows)} prompts, x plain {statistics.median(ratio):.3f} "
                  f"({min(ratio):.2f}-{max(ratio):.2f}), output identical to plain's {same}")
        ratio = [v["off"]["decode"] / v["on"]["decode"] for v in rows]
        print(f"{d} corrected over uncorrected: {statistics.median(ratio):.3f} ({min(ratio):.2f}-{max(ratio):.2f})")
        for m in METHODS:
            for label, keep in (("one-token", lambda n: n == 1), ("longer", lambda n: n > 1)):
                r = [s / p for v in rows for n, s, p in v[m]["passes"] if keep(n)]
                if r:
                    print(f"   {m}: {len(r)} {label} passes at {statistics.median(r):.3f} of their price (median)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "show":
        show(sys.argv[2])
    elif len(sys.argv) >= 5 and sys.argv[1] == "run":
        run(sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4], "--fresh" in sys.argv[5:])
    else:
        sys.exit(__doc__)
