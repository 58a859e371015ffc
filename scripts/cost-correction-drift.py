"""How the planner's process-wide cost correction (cascade/planning.py, PassCosts) drifts over a bench run's prompts,
and whether it changes what the default drafts: the default cascade over the run's eval prompts in the bench's
order (single turns), printing after each prompt its drafted and accepted tokens and the correction's state; then
the last dataset's prompts again with the correction reset before each one.

    python scripts/cost-correction-drift.py runs/q4-spec5 specbench-mt_bench,specbench-translation,specbench-summarization,specbench-qa,specbench-math_reasoning

Needs the packaged models (the default cascade's target). The README's note under the fifth Spec-Bench run comes
from this (2026-12-03).
"""

import argparse
import json
from pathlib import Path

from csdrafting import Cascade
from csdrafting.cascade import rows
from csdrafting.spec import DEFAULT_SPEC, build

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run", help="a bench run directory (its prompts.json holds the prompts' token ids)")
ap.add_argument("datasets", help="comma-separated, in the order the bench ran them; the last one is rerun fresh")
ap.add_argument("--prompts", type=int, default=10, help="eval prompts per dataset")
ap.add_argument("--max-new-tokens", type=int, default=128)
a = ap.parse_args()

prompts = json.loads((Path(a.run) / "prompts.json").read_text())["prompts"]
target, drafters, config = build(DEFAULT_SPEC)
csd = Cascade(target, drafters, config)


def one(p: dict, tag: str) -> None:
    out = csd.generate(p["ids"], a.max_new_tokens)
    m, pc = out.metrics, rows.measured_costs(target)
    t, d = m.levels[0], m.levels[1]
    print(f"{tag} {p['dataset']} {p['id']}: {len(out.tokens)} tokens, {t.forward_passes} passes, drafted {d.drafted}, "
          f"accepted {d.accepted}, {(m.seconds - m.prefill_seconds) * 1e3 / max(1, len(out.tokens)):.1f} ms/token; "
          f"measured/priced one-token {pc.ratio(False):.3f}, longer {pc.ratio(True):.3f}, factor {pc.factor:.3f}",
          flush=True)


names = a.datasets.split(",")
for ds in names:
    for p in [p for p in prompts if p["dataset"] == ds and p["phase"] == "eval"][: a.prompts]:
        one(p, "in order")
for p in [p for p in prompts if p["dataset"] == names[-1] and p["phase"] == "eval"][: a.prompts]:
    rows.measured_costs(target).reset()  # the correction as a fresh process starts it (the cascade holds this object)
    one(p, "reset")
