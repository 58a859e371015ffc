"""How often the suffix drafter's first proposal is the target's next token, by match length, per dataset.

    python scripts/copy-rates.py docs/bench/replay/ref-code

Walks the target's recorded greedy outputs (a bench run's `plain` records) with the packaged calibration's
drafter, as `SuffixDrafter.calibrate` does, and pools the request-index buckets by match-length class. The
README's "copies that had run 32+ tokens continued 99.5% / 97.5% of the time" come from this.
"""

import sys
from collections import defaultdict

from csdrafting.bench.replay import load_run
from csdrafting.drafters.suffix import SuffixDrafter, default_calibration

for run in sys.argv[1:]:
    refs = load_run(run)[0]
    rates: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for ref in refs:
        cal = SuffixDrafter(default_calibration()).calibrate([(ref.prompt, ref.output)])
        for key, (a, t) in cal.counts.items():
            if key.startswith("req:"):
                c = rates[ref.dataset][key.split(":")[1]]
                c[0] += a
                c[1] += t
    for ds, by in rates.items():
        order = sorted(by, key=lambda k: int(k.split("-")[0].rstrip("+")))
        print(ds, " ".join(f"{k}: {by[k][0]}/{by[k][1]} = {by[k][0] / by[k][1]:.3f}" for k in order))
