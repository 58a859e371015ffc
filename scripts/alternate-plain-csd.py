"""Plain decoding against the default cascade on a bench run's prompts, in one process, alternating which goes
first, for several rounds: whether a small loss the bench reports (where `plain` always runs before `csd`) is
the engine's or the machine's, and whether it is in the target's passes or around them.

    python scripts/alternate-plain-csd.py runs/q4-spec5 specbench-qa --prompts 10 --rounds 3

Prints, per prompt and round, decode milliseconds per token of each (and of the target's own passes) and
their ratio; then the medians of the ratios. Needs the packaged models (the default cascade's target).
"""

import argparse
import json
import statistics
from pathlib import Path

from csdrafting import Cascade
from csdrafting.spec import DEFAULT_SPEC, build

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run", help="a bench run directory (its prompts.json holds the prompts' token ids)")
ap.add_argument("dataset", help="which of its datasets, e.g. specbench-qa")
ap.add_argument("--prompts", type=int, default=10)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--max-new-tokens", type=int, default=128)
a = ap.parse_args()

prompts = [p for p in json.loads((Path(a.run) / "prompts.json").read_text())["prompts"]
           if p["dataset"] == a.dataset and p["phase"] == "eval"][: a.prompts]
if not prompts:
    raise SystemExit(f"no eval prompts of {a.dataset!r} in {a.run}/prompts.json")
target, drafters, config = build(DEFAULT_SPEC)
methods = {"plain": Cascade(target, [], None), "csd": Cascade(target, drafters, config)}
ratios, target_ratios = [], []
for r in range(a.rounds):
    for i, p in enumerate(prompts):
        order = ["plain", "csd"] if (r + i) % 2 == 0 else ["csd", "plain"]
        got = {}
        for name in order:
            out = methods[name].generate(p["ids"], a.max_new_tokens)
            m, n = out.metrics, len(out.tokens)
            t0 = m.levels[0]
            got[name] = ((m.seconds - m.prefill_seconds) / n, (t0.seconds - t0.prefill_seconds) / n,
                         m.levels[1].drafted if len(m.levels) > 1 else 0, out.tokens)
        (pd, pt, _, ptoks), (cd, ct, drafted, ctoks) = got["plain"], got["csd"]
        ratios.append(cd / pd)
        target_ratios.append(ct / pt)
        same = "same tokens" if ptoks == ctoks else "DIFFERENT tokens"
        print(f"{p['id']} round {r}: {len(ptoks)} tokens; plain {pd * 1e3:.2f} ms/token (target {pt * 1e3:.2f}), "
              f"csd {cd * 1e3:.2f} (target {ct * 1e3:.2f}), drafted {drafted}; csd/plain {cd / pd:.3f}, "
              f"target {ct / pt:.3f}; {same}", flush=True)
print(f"\n{len(ratios)} pairs: median decode time csd/plain {statistics.median(ratios):.3f} "
      f"(speed {1 / statistics.median(ratios):.3f}x), target's passes {statistics.median(target_ratios):.3f}")
