"""Step by step, the routes a cascade config took along a bench run's `plain` outputs (csdrafting.bench.replay):
per target step, whether routing went around the neural drafter (D) or through it (V; `?` when it did not
decide), the drafter's catch-up price and the chance that the text ends there (where the engine has it), how
many draft tokens the target accepted, and what the neural drafters' passes cost, priced by their curves. The
last step of each prompt is summed apart: where the text ends, a step through a drafter that must first catch
up buys at most the end token.

    python scripts/trace-routes.py docs/bench/replay/ref-f32 codeedit \\
        --curves docs/bench/replay/curves-f32.json --config docs/bench/configs/f32-csd-dynamic.json

Every prompt of the run is replayed in order (routing's statistics carry from prompt to prompt, as in a bench);
those of the datasets or prompt ids named are printed.
"""

import argparse
import inspect

from csdrafting.bench import replay as R
from csdrafting.cascade import engine as E, routing as RT
from csdrafting.spec import CascadeSpec, cost_curves, drafter_objects, load_models

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("run", help="a bench run directory with `plain` records")
ap.add_argument("show", help="comma-separated datasets or prompt ids to print")
ap.add_argument("--curves", required=True, help="a .json cost curve file: the target's price")
ap.add_argument("--config", required=True, help="a routed cascade config")
a = ap.parse_args()

curve = next(iter(R.load_curves(a.curves).values()))
refs, _, eos = R.load_run(a.run)
show = set(a.show.split(","))
steps: list[dict] = []
step0, go0 = E.Cascade._step, RT.Router.go_direct


def step(self, r, base, first=None):
    if r:
        return step0(self, r, base, first)
    row = {"at": len(base), "route": "?"}
    steps.append(row)
    before = self._priced(1)
    out = step0(self, r, base, first)
    row.update(accepted=len(out) - 1, drafter_s=self._priced(1) - before)
    return out


def go(self, r, j, *args, **kw):
    direct = go0(self, r, j, *args, **kw)
    if r == 0 and steps:
        # the chance of ending: given (today), or the token after which it is (the router's own statistics, at
        # commit 024b74b), or absent (before it)
        given = args[8] if len(args) > 8 else kw.get("p_end", kw.get("after"))
        old = getattr(self, "ends", None)
        p_end = (old.p_end(given) if given is not None else 0.0) if old is not None else given or 0.0
        steps[-1].update(route="D" if direct else "V", catch_up=kw.get("catch_up", args[5] if len(args) > 5 else 0.0),
                         p_end=p_end)
    return direct


E.Cascade._step, RT.Router.go_direct = step, go
spec = CascadeSpec.load(a.config)
models = load_models(spec, spec.drafters, False)
curves = cost_curves(spec, [None, *drafter_objects(spec.drafters, spec.drafter_settings, None, models)], False)[1:]
last_s, last_n = 0.0, 0
# where texts end, learned along the prompts (today the engine keeps it per target, and each replay has its own)
carry = {"ends": R.EndStats()} if "ends" in inspect.signature(R.replay_cascade).parameters else {}
for ref in refs:
    steps.clear()
    got = R.replay_cascade(ref, drafter_objects(spec.drafters, spec.drafter_settings, None, models),
                           spec.cascade_config([curve, *curves]), curve, eos, **carry)
    if not ({ref.dataset, ref.prompt_id} & show):
        continue
    print(f"{ref.dataset}/{ref.prompt_id}: {got.speedup:.2f}x over plain, {got.steps} target steps, drafters "
          f"{got.drafting_seconds:.2f} s of {got.seconds:.2f} s")
    for row in steps:
        print(f"  at {row['at']:3d}  {row['route']}  catch-up {row.get('catch_up', 0.0):.2f} s  p_end "
              f"{row.get('p_end', 0.0):.2f}  accepted {row['accepted']:2d}  drafters {row['drafter_s']:.3f} s")
    if steps:
        last_s, last_n = last_s + steps[-1]["drafter_s"], last_n + 1
print(f"\nlast steps: the neural drafters' passes cost {last_s:.2f} s over {last_n} prompts")
