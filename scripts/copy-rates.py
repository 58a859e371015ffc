"""How often the suffix drafter's first proposal is the target's next token, by match length and by where the
match points (the prompt or the request's own output so far), per dataset.

    python scripts/copy-rates.py docs/bench/replay/ref-code
    python scripts/copy-rates.py docs/bench/q4-spec6 docs/bench/replay/ref-code

Walks the target's recorded greedy outputs (a bench run's `plain` records) as `SuffixDrafter.calibrate` does,
and pools the request-index proposals by match-length class, once for all of them (`all`), and split by where
the match's occurrence lies: in the prompt (`prompt`) or in the output so far (`output`). Then, over all the
runs given, the split by length family (short 1-4, mid 5-9, long 10+ tokens). The README's "copies that had
run 32+ tokens continued 99.5% / 97.5% of the time" and "Where a match points" come from this.
"""

import sys
from collections import defaultdict

from csdrafting.bench.replay import load_run
from csdrafting.drafters.suffix import REQUEST, SuffixDrafter, family

pooled: dict[str, list[int]] = defaultdict(lambda: [0, 0])
for run in sys.argv[1:]:
    refs = load_run(run)[0]
    rates: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for ref in refs:
        d = SuffixDrafter()
        d.begin(ref.prompt)
        for t in ref.output:
            got = d.next_token()
            if got is not None and got[2][0] == REQUEST:
                tok, key, (_, pos, _) = got
                where = "prompt" if pos < len(ref.prompt) else "output"
                cls = key.split(":")[1]
                for c in (rates[f"{ref.dataset} all"][cls], rates[f"{ref.dataset} {where}"][cls],
                          pooled[f"{where} {family(key).split(':')[1]}"]):
                    c[0] += tok == t
                    c[1] += 1
            d.index.append(int(t))
    print(f"## {run}")
    for ds, by in sorted(rates.items()):
        order = sorted(by, key=lambda k: int(k.split("-")[0].rstrip("+")))
        print(ds, " ".join(f"{k}: {by[k][0]}/{by[k][1]} = {by[k][0] / by[k][1]:.3f}" for k in order))
print("## all runs: where the match points, by length family")
for key in sorted(pooled):
    a, t = pooled[key]
    print(f"{key:14s} {a:6d}/{t:6d} = {a / t:.3f}")
