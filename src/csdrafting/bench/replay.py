"""What-if replay: cost-aware drafting by a statistical drafter, replayed along a bench run's plain outputs.

    python -m csdrafting.bench.replay runs/q4-codeedit --cap 16,64 --max-confidence 0.995,0.98
    python -m csdrafting.bench.replay runs/ref-code --curves runs/q4-codeedit,runs/q4-cap
    python -m csdrafting.bench.replay runs/ref-code --calibration packaged,new-calibration.json

Under greedy decoding a cascade of the target and one statistical drafter (K = [[cap]], cost-aware) is
fully determined by three things: the target's own greedy output (a review accepts exactly the drafted
prefix that equals it), the drafter's proposals and confidences (a function of the text so far), and the
planner's choices given the target's cost curve. A bench run records the first (its `plain` records, with
the prompts' token ids) and the curve (`target_cost_curve`). This module runs the engine itself (`Cascade`)
against a stand-in target that answers every review from that output, and charges every pass the curve's
price of its length, so other settings of the drafter and the cap are compared in seconds instead of hours
of target passes. Only the target is replayed: drafting, planning and review are the engine's code, so the
replay cannot drift from it, but for one thing: the planner's clock counts the drafters' passes at their
curves' prices (a statistical drafter's own time, ~0.4% of a step on the real target, counts as nothing),
so that a replay plans alike on a busy and an idle machine.

`--configs` replays whole cascades (any K, routing, neural drafters) from config files: the neural drafters
run for real and their passes are priced by their measured curves, so a memory-bound target (the F32 tier,
a GPU) can be studied from a cheap run of the shipped Q4_K_M target's outputs:

    python -m csdrafting.bench.replay runs/q4-plain --curves f32.json \
        --configs docs/bench/configs/f32-csd-dynamic.json,docs/bench/configs/f32-sd-dynamic.json --out replay.json

tests/test_replay.py checks it against a run on a real (tiny) model. On a real bench run it matched the target
passes within 2% and ordered the configurations as measured (README, "Trusting a copy"). Its speedups are
predictions under the curve: real ones differ with the machine's noise, with the context length (the curve is
measured at 256 cached tokens; longer contexts make every pass dearer) and with how far plain decoding's
one-token passes differ from the curve's one-token price.
The oracle row drafts the target's own output, surely accepted, at the length that is cheapest per token
under the curve (at most 64).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..cascade.config import CascadeConfig
from ..cascade.engine import Cascade, StopGeneration
from ..cascade.levels import ModelLevel
from ..cascade.planning import CostCurve, EndStats
from ..drafters.base import StatisticalDrafter
from ..protocol import CSDraftingError, LanguageModel, ModelInfo
from ..sequences import common_prefix
from .runner import collapse_repeats

if TYPE_CHECKING:
    from ..spec import CascadeSpec


@dataclass
class Reference:
    dataset: str
    prompt_id: str
    prompt: list[int]
    output: list[int]  # the target's greedy output, end token included where it stopped at one
    max_new: int


@dataclass
class Replayed:
    steps: int  # target passes
    seconds: float  # the curve's price of the steps' reviews (decoding only)
    plain_seconds: float  # the same output decoded one token per pass, at the same price
    drafted: int  # tokens of level 1 (the first drafter) in the target's drafts
    accepted: int
    drafting_seconds: float = 0.0  # the neural drafters' passes, priced by their curves (included in seconds)
    routes: dict = field(default_factory=dict)  # routing's decisions (a routed cascade)

    @property
    def speedup(self) -> float:
        return self.plain_seconds / self.seconds if self.seconds else 1.0


def _read(path: Path) -> str:
    """A file's text, or that of its gzipped copy (`name.gz`) when only that exists."""
    gz = path.with_name(path.name + ".gz")
    if not path.exists() and gz.exists():
        return gzip.decompress(gz.read_bytes()).decode("utf-8")
    return path.read_text()


def load_records(run: str | Path) -> list[dict]:
    """A bench run's records (records.jsonl, or its gzipped copy), repeated rounds folded into one record each."""
    try:
        return collapse_repeats(json.loads(line) for line in _read(Path(run) / "records.jsonl").splitlines()
                                if line.strip())
    except (OSError, json.JSONDecodeError, gzip.BadGzipFile) as e:
        raise CSDraftingError(f"{run} is not a readable bench run (records.jsonl): {e}") from e


def load_run(run: str | Path) -> tuple[list[Reference], CostCurve | None, frozenset[int]]:
    """The single-turn `plain` eval records of a bench run (prompts.json and records.jsonl, either may be
    gzipped), with their prompts, its cost curve and end tokens."""
    run = Path(run)
    try:
        prompts = json.loads(_read(run / "prompts.json"))
    except (OSError, json.JSONDecodeError, gzip.BadGzipFile) as e:
        raise CSDraftingError(f"{run} is not a readable bench run (prompts.json, records.jsonl): {e}") from e
    records = load_records(run)
    ids = {(p["dataset"], p["id"]): p for p in prompts["prompts"] if p.get("phase", "eval") == "eval"}
    refs, curve = [], None
    for r in records:
        if curve is None and r.get("target_cost_curve"):
            curve = CostCurve.from_json(r["target_cost_curve"])
        p = ids.get((r.get("dataset"), r.get("prompt_id")))
        if r.get("method") != "plain" or r.get("phase") != "eval" or p is None or len(p.get("turns") or ()) > 1:
            continue  # conversations replay turn by turn in the engine; not modelled here
        refs.append(Reference(r["dataset"], r["prompt_id"], list(p["ids"]), list(r["tokens"][: r["new_tokens"]]),
                              int(r["max_new_tokens"])))
    if not refs:
        raise CSDraftingError(f"{run} has no single-turn `plain` eval records to replay (run the bench with --methods plain)")
    return refs, curve, frozenset(int(t) for t in prompts.get("eos", ()))


class _ReferenceTarget:
    """A target whose greedy computation is already known: along the reference (the prompt, then the target's
    own output) each row's argmax is the reference's next token. It answers only `extend_argmax`, which is all
    the engine asks of a target under greedy decoding; every pass past the prompt is priced by `price` (the
    review of n tokens costs price(n)) instead of being run."""

    def __init__(self, ref: Reference, eos: frozenset[int], price: CostCurve, like: ModelInfo | None = None) -> None:
        self.full = list(ref.prompt) + list(ref.output)
        vocab = max(self.full + list(eos)) + 1
        # beside neural drafters it claims their vocabulary (the reference came from a target they can draft for)
        self.info = (ModelInfo("replayed target", vocab, 0, frozenset(eos)) if like is None else
                     dataclasses.replace(like, name="replayed target", n_params=0,
                                         eos_token_ids=frozenset(eos) or like.eos_token_ids))
        self.n_prompt, self.price = len(ref.prompt), price
        self._cached: list[int] = []
        self.seconds = 0.0

    @property
    def cached_tokens(self) -> list[int]:
        return self._cached

    def begin(self, prompt: Sequence[int]) -> list[int]:
        return list(prompt)

    def rollback(self, n: int) -> None:
        del self._cached[n:]

    def extend(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray:
        raise CSDraftingError("the replayed target knows its greedy tokens only, not its logits")

    def extend_argmax(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray:
        start = len(self._cached)
        self._cached += [int(t) for t in tokens]
        if len(self._cached) >= self.n_prompt:  # a decoding pass (the prefill leaves the prompt's last token out)
            self.seconds += self.price(len(tokens))
        on_track = common_prefix(self._cached, self.full)
        # row i predicts the token after position i; off the reference (after a rejected draft token) the
        # target's answer is unknown, and the engine never reads it
        return np.array([self.full[i + 1] if i < on_track and i + 1 < len(self.full) else 0
                         for i in range(start + logits_from, len(self._cached))], dtype=np.int64)


def replay(ref: Reference, drafter: StatisticalDrafter, curve: CostCurve, cap: int, eos: frozenset[int] = frozenset(),
           price: CostCurve | None = None, ends: EndStats | None = None) -> Replayed:
    """The engine's greedy generation with `drafter` as the only level below the target (K = [[cap]],
    cost-aware), run by the engine itself (`Cascade`) against a target that replays the reference.

    The planner plans with `curve`; the steps are priced by `price` (default: the same curve), so a planner
    that believes a wrong curve can be priced by the right one. `ends`: as for `replay_cascade`."""
    config = CascadeConfig.make([[cap]], dynamic=True, costs=[curve, None])
    return replay_cascade(ref, [drafter], config, price or curve, eos, ends)


def replay_cascade(ref: Reference, drafters: Sequence, config: CascadeConfig, price: CostCurve,
                   eos: frozenset[int] = frozenset(), ends: EndStats | None = None) -> Replayed:
    """Any greedy cascade (its K, cost-aware planning, routing) over `drafters`, statistical drafters and real
    neural models alike, run by the engine against a target that replays the reference.

    Only the target is replayed: the neural drafters run for real, and their passes are priced by their cost
    curves in `config.costs` (the target's entry there is what the planner believes; `price` is what its
    passes cost). The planner's clock is that price of the drafters' passes so far, so a replay plans the same
    on a busy and an idle machine; a statistical level's own time counts as nothing (~0.4% of a real step).
    `seconds` is the target's priced reviews plus the drafters' priced passes (decoding only).

    `ends`: where earlier texts ended (`EndStats`), to plan with and to count this one into. The engine keeps
    them per target instance, and each replay has a target of its own: a replay of many references passes one
    `EndStats` to all of them, in their order, as a server or a bench learns them across its requests."""
    n = len(ref.output)
    neural_info = next((d.info for d in drafters if isinstance(d, LanguageModel)), None)
    target = _ReferenceTarget(ref, eos, price, neural_info)
    got: list[int] = []

    def until_the_reference_ends(tokens: list[int]) -> None:
        got.extend(tokens)  # the reference may end at an end token the replay was not given: stop where it ends
        if len(got) >= n:
            raise StopGeneration("reference")

    cascade = Cascade(target, list(drafters), config)
    if ends is not None and cascade.ends is not None:
        cascade.ends = ends
    neural = [lv for lv in cascade.levels[1:] if isinstance(lv, ModelLevel)]
    cascade.clock = lambda: sum(lv.priced for lv in neural)
    cascade.adapt_costs = False  # the stand-in target's passes cost nothing real: price them by the curve alone
    res = cascade.generate(ref.prompt, ref.max_new, on_tokens=until_the_reference_ends)
    if res.tokens[:n] != ref.output:
        raise CSDraftingError(f"{ref.dataset}/{ref.prompt_id}: the replay left the reference output (a bug)")
    m = res.metrics
    drafting = sum(lv.priced for lv in neural)
    return Replayed(m.target_steps, target.seconds + drafting, n * price(1), m.levels[1].drafted, m.levels[1].accepted,
                    drafting, dict(m.routes or {}))


def best_oracle_length(curve: CostCurve, cap: int = 64) -> int:
    """The draft length at which a sure draft is cheapest per token under `curve`: the oracle's best k."""
    return max(range(1, cap + 1), key=lambda k: (k + 1) / curve(k + 1))


def oracle(ref: Reference, curve: CostCurve, k: int | None = None) -> Replayed:
    """The target's own output as a sure draft of k tokens (default: its best length under the curve, at most 64),
    clipped by the room left as the engine clips: the ceiling of any drafter at this verification cost (but for
    how the last steps of an output round: a fixed length is not always the cheapest way to cover them)."""
    k = best_oracle_length(curve) if k is None else k
    n, t, steps, seconds = len(ref.output), 0, 0, 0.0
    while t < n:
        d = max(0, min(k, n - t - 1, ref.max_new - t - 1))
        seconds += curve(d + 1)
        t, steps = t + d + 1, steps + 1
    return Replayed(steps, seconds, n * curve(1), n - steps, n - steps)


def table(refs: Sequence[Reference], curve: CostCurve, eos: frozenset[int], settings: dict[str, Sequence],
          make: Callable[..., StatisticalDrafter]) -> list[tuple[dict, dict[str, list[float]]]]:
    """Speedups per dataset for every combination of `settings` (the key "cap" is the cap; the others go to
    `make`, which builds a fresh drafter per prompt)."""
    keys = list(settings)
    rows = []
    for combo in itertools.product(*(settings[k] for k in keys)):
        s = dict(zip(keys, combo))
        kw = {k: v for k, v in s.items() if k != "cap"}
        per: dict[str, list[float]] = {}
        ends = EndStats()  # learned along the references, in their order
        for ref in refs:
            per.setdefault(ref.dataset, []).append(replay(ref, make(**kw), curve, int(s["cap"]), eos,
                                                          ends=ends).speedup)
        rows.append((s, per))
    return rows


def load_curves(spec: str) -> dict[str, CostCurve]:
    """Named cost curves from comma-separated items: a bench run (its measured curve), or a .json file holding
    one curve ({"ns": ..., "seconds": ...}) or a mapping of names to curves."""
    out: dict[str, CostCurve] = {}
    for item in (x for x in spec.split(",") if x):
        path = Path(item)
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
                named = {path.stem: data} if "ns" in data else data
                out.update({str(k): CostCurve.from_json(v) for k, v in named.items()})
            except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise CSDraftingError(f"{path}: not a cost curve file ({{'ns': [...], 'seconds': [...]}} or a mapping "
                                      f"of names to such): {e}") from e
            continue
        curve = load_run(path)[1]
        if curve is None:
            raise CSDraftingError(f"{path}: its records hold no measured cost curve")
        out[str(path)] = curve
    return out


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise CSDraftingError(f"expected comma-separated numbers, got {text!r}") from e


def _median_worst(speedups: Sequence[float]) -> str:
    """A table cell: the median speedup and, in parentheses, the worst prompt's."""
    return f"{statistics.median(speedups):.2f}x ({min(speedups):.2f})"


def config_rows(refs: Sequence[Reference], price: CostCurve, eos: frozenset[int], specs: dict[str, "CascadeSpec"],
                progress: bool = True) -> dict[str, list[tuple[Reference, Replayed]]]:
    """Every cascade spec replayed on every reference, its target's passes priced by `price` (the planner
    believes the same curve); neural drafters are loaded once (as each spec places them) and run for real,
    priced by the spec's measured curves, else by curves measured on this machine (kept in the cache)."""
    from ..spec import cost_curves, drafter_objects, load_models

    models: dict[str, object] = {}
    out: dict[str, list[tuple[Reference, Replayed]]] = {}
    for name, spec in specs.items():
        spec.validate()
        if not spec.dynamic or not spec.drafters:
            raise CSDraftingError(f"{name}: the replay prices cost-aware cascades (dynamic: true, at least one drafter)")
        for ref, m in load_models(spec, [d for d in spec.drafters if d not in models], progress).items():
            models[ref] = m
        # the drafters' curves as a real run would get them (the spec's, else measured here); the target's is price
        curves = cost_curves(spec, [None, *drafter_objects(spec.drafters, spec.drafter_settings, None, models)],
                             progress)[1:]
        rows = out[name] = []
        ends = EndStats()  # learned along the references, in their order
        for r in refs:
            drafters = drafter_objects(spec.drafters, spec.drafter_settings, None, models)
            config = spec.cascade_config([price, *curves])
            rows.append((r, replay_cascade(r, drafters, config, price, eos, ends)))
            if progress:
                print(f"  {name} {r.dataset}/{r.prompt_id}: {rows[-1][1].speedup:.2f}x", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    from ..drafters.suffix import Calibration, SuffixDrafter, default_calibration
    from ..protocol import run_guarded

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="bench output directories with `plain` records")
    ap.add_argument("--curves", default="", help="cost curves to replay under, comma-separated: bench runs (their "
                    "measured curve) or .json files of curves (default: each run's own)")
    ap.add_argument("--cap", default="16,64", help="draft caps (K = [[cap]]), comma-separated")
    ap.add_argument("--max-confidence", default="0.995,0.98", help="the suffix drafter's ceilings, comma-separated")
    ap.add_argument("--adapt-weight", default="8", help="the suffix drafter's in-request learning weights")
    ap.add_argument("--learn-up", default="0", help="1: the suffix drafter's in-request learning also raises "
                    "confidences (0, the default: only lowers them); comma-separated to compare")
    ap.add_argument("--longest-copy", default="1", help="0: a long context seen in several places proposes its most "
                    "frequent continuation, as before 2026-12-03 (1, the default: the place whose match reaches "
                    "furthest back); comma-separated to compare")
    ap.add_argument("--calibration", default="packaged", help="the suffix drafter's calibrations, comma-separated: "
                    "files written by `csdrafting calibrate`, or `packaged` (the default's)")
    ap.add_argument("--configs", default="", help="cascade configs (JSON, as `csdrafting generate --config`) to replay "
                    "instead of the suffix drafter's settings, comma-separated; their neural drafters run for real, "
                    "priced by their cost curves")
    ap.add_argument("--out", default="", help="with --configs: write every prompt's replay here (JSON)")
    a = ap.parse_args(argv)

    def each_curve(what: str):
        """(run, its references, end tokens, curve name, curve) for every run under every curve asked for."""
        curves = load_curves(a.curves)
        for name in a.runs:
            refs, own, eos = load_run(name)
            for cname, curve in (curves.items() if curves else [("its own", own)]):
                if curve is None:
                    raise CSDraftingError(f"{name}: no measured cost curve in its records; give --curves")
                print(f"\n## {name}, {what}: {cname} (n=1/16/32: {curve(1)*1e3:.0f}/{curve(16)*1e3:.0f}/"
                      f"{curve(32)*1e3:.0f} ms)\n")
                yield name, refs, eos, cname, curve

    def run() -> int:
        if a.configs:
            return run_configs()
        cals = {c: default_calibration() if c == "packaged" else Calibration.load(c)
                for c in a.calibration.split(",") if c}
        settings = {"cap": [int(c) for c in _floats(a.cap)], "max_confidence": _floats(a.max_confidence),
                    "adapt_weight": _floats(a.adapt_weight), "learn_up": [bool(x) for x in _floats(a.learn_up)],
                    "longest_copy": [bool(x) for x in _floats(a.longest_copy)], "calibration": list(cals)}
        for name, refs, eos, cname, curve in each_curve("cost curve"):
            dsets = sorted({r.dataset for r in refs})
            orc = {d: statistics.median(oracle(r, curve).speedup for r in refs if r.dataset == d) for d in dsets}
            print("| " + " | ".join(settings) + " | " + " | ".join(f"{d} ({sum(r.dataset == d for r in refs)})"
                                                                  for d in dsets) + f" | all ({len(refs)}), geometric mean |")
            print("|" + "---|" * (len(settings) + len(dsets) + 1))
            label = f"oracle, k={best_oracle_length(curve)}"
            orc_all = statistics.geometric_mean(oracle(r, curve).speedup for r in refs)
            print("| " + " | ".join([label] + [""] * (len(settings) - 1) + [f"{orc[d]:.2f}x" for d in dsets])
                  + f" | {orc_all:.3f}x |")
            def make(calibration: str, **kw) -> SuffixDrafter:
                return SuffixDrafter(cals[calibration], **kw)

            for s, per in table(refs, curve, eos, settings, make):
                every = [x for d in dsets for x in per[d]]
                cells = [_median_worst(per[d]) for d in dsets] + [
                    f"{statistics.geometric_mean(every):.3f}x ({min(every):.2f})"]
                print("| " + " | ".join(str(int(v)) if isinstance(v, bool) else f"{v:g}" if isinstance(v, float)
                                        else str(v) for v in s.values()) + " | "
                      + " | ".join(cells) + " |")
        print("\nmedian predicted decode speedup over plain (worst prompt), greedy; the last column: the geometric mean "
              "over every prompt of the run (worst prompt); the oracle drafts the target's own output")
        return 0

    def run_configs() -> int:
        from ..spec import CascadeSpec

        specs = {Path(c).stem: CascadeSpec.load(c) for c in a.configs.split(",") if c}
        dump = []
        for name, refs, eos, cname, curve in each_curve("target priced by"):
            dsets = sorted({r.dataset for r in refs})
            rows = config_rows(refs, curve, eos, specs)
            print("| config | " + " | ".join(f"{d} ({sum(r.dataset == d for r in refs)})" for d in dsets) + " |")
            print("|---|" + "---:|" * len(dsets))
            orc = {d: [oracle(r, curve).speedup for r in refs if r.dataset == d] for d in dsets}
            print(f"| oracle, k={best_oracle_length(curve)} (the ceiling) | "
                  + " | ".join(_median_worst(orc[d]) for d in dsets) + " |")
            for cfg, got in rows.items():
                cells = [_median_worst([g.speedup for r, g in got if r.dataset == d]) for d in dsets]
                print(f"| {cfg} | " + " | ".join(cells) + " |")
                dump += [{"run": name, "curve": cname, "config": cfg, "dataset": r.dataset, "prompt_id": r.prompt_id,
                          **dataclasses.asdict(g), "speedup": g.speedup} for r, g in got]
        print("\nmedian predicted decode speedup over plain (worst prompt), greedy, drafters' passes priced by their "
              "curves")
        if a.out:
            Path(a.out).write_text(json.dumps(dump, indent=1) + "\n")
        return 0

    return run_guarded(run)


if __name__ == "__main__":
    raise SystemExit(main())
