"""Deciding between cascades by measuring them: the last stage of `csdrafting tune`.

The analytic model and the replay (speed.py, replay.py) rank STATIC configurations. Cost-aware dynamic
drafting decides its draft lengths at run time from confidences and measured costs, which those models do
not describe; so the tuner builds a few dynamic candidates from what it measured (cost curves, the suffix
drafter calibrated on the same calibration text) and races them, the best static configuration and plain
decoding on calibration prompts with the real engine, interleaved prompt by prompt. The winner is the
candidate with the best median per-prompt speed ratio to plain decoding.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..cascade.engine import Cascade
from ..protocol import LanguageModel


@dataclass
class Entry:
    """A candidate: a label, how to build its engine, and its spec (what the tuner writes if it wins)."""

    label: str
    make: Callable[[], Cascade]
    spec: object  # CascadeSpec
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)

    def speedups(self, plain: "Entry") -> list[float]:
        return [(n / s) / (pn / ps) for n, s, pn, ps in zip(self.tokens, self.seconds, plain.tokens, plain.seconds)]

    def median_speedup(self, plain: "Entry") -> float:
        return statistics.median(self.speedups(plain))


def race(target: LanguageModel, entries: Sequence[Entry], prompts: Sequence[list[int]], max_new: int, progress: bool = True) -> Entry:
    """Run plain decoding and every entry on every prompt (interleaved); the plain Entry is returned."""
    from tqdm import tqdm

    plain = Entry("plain decoding", lambda: Cascade(target), None)
    everyone = [plain, *entries]
    engines = [e.make() for e in everyone]
    warm = prompts[0][: min(len(prompts[0]), 32)]
    for eng in engines:  # first calls pay one-time costs (allocations, page faults) that would skew prompt 1
        eng.generate(warm, 4)
    bar = tqdm(total=len(prompts) * len(everyone), desc="race", unit="run", disable=not progress, file=sys.stderr)
    for p in prompts:
        for e, eng in zip(everyone, engines):
            r = eng.generate(p, max_new)
            e.seconds.append(r.metrics.seconds)
            e.tokens.append(len(r.tokens))
            e.outputs.append(r.tokens)
            bar.update(1)
    bar.close()
    return plain


# the statistical drafter the cost-aware candidates use: it says how likely each proposal is accepted
CONFIDENT = "suffix"
LONG = 64  # the cap of its own positions: long copies are drafted whole when they pay


def neural_rationale(table: Sequence[dict]) -> str:
    """One sentence from the race: is a neural drafter worth keeping, and by how much."""
    def neural(row: dict) -> bool:
        from ..drafters.registry import is_statistical

        return any(not is_statistical(d) for d in (row["spec"] or {}).get("drafters", []))

    with_n = [r for r in table if neural(r)]
    without = [r for r in table if not neural(r)]
    if not with_n or not without:
        return "the race had no candidate with (or without) a neural drafter to compare"
    a = max(with_n, key=lambda r: r["median_speedup"])
    b = max(without, key=lambda r: r["median_speedup"])
    ratio = a["median_speedup"] / b["median_speedup"]
    verdict = ("worth keeping" if ratio > 1.02 else "not worth keeping" if ratio < 0.98 else "a tie within the race's noise")
    return (f"neural level: {verdict} here: the best cascade with one ({a['config']}) ran {a['median_speedup']:.2f}x plain, "
            f"the best without ({b['config']}) {b['median_speedup']:.2f}x ({ratio:.2f}x); a neural drafter pays where the "
            "target's review is memory-bound and the statistical level is not confident, and costs where the review is "
            "compute-bound or the text is copied")


def race_dynamic(static_spec, target: LanguageModel, neural: dict, res, prompts, max_new: int,
                 out: Path, progress: bool = True) -> tuple[object, list[dict]]:
    """Race the best static config against cost-aware candidates built from the tuner's measurements.

    The candidates: the confident drafter alone, and each neural drafter then it (horizontal) or reviewing
    it (vertical), all with the measured cost curves and the confident drafter calibrated on the same
    calibration text (written beside `out` as <stem>.suffix.json). Returns the winner's spec (its note says
    what it measured) and one row per candidate.
    """
    from ..cascade.config import KMatrix
    from ..drafters import registry

    cal = res.calibration
    # calibrated as the race runs it (bigram fallback, store), else its sources would go unmeasured
    settings = registry.get(CONFIDENT).resolve(static_spec.settings_of(CONFIDENT))
    measured_as = registry.build(CONFIDENT, {**settings, "calibration": None}, target.info.vocab_size)
    confidences = measured_as.calibrate([(tr.prompt, tr.tokens) for tr in cal.traces],
                                        meta={"target": static_spec.target, "source": "csdrafting tune calibration traces",
                                              "store": settings["persist"]})
    cal_path = out.with_name(out.stem + f".{CONFIDENT}.json")
    confidences.save(cal_path)

    def calibrated(spec, path):
        mine = {**spec.settings_of(CONFIDENT), "calibration": str(path)}
        return replace(spec, drafter_settings={**spec.drafter_settings, CONFIDENT: mine})

    costs = {ref: res.measurements.costs[ref].to_json() for ref in [static_spec.target, *neural] if ref in res.measurements.costs}
    base = replace(calibrated(static_spec, cal_path.name), dynamic=True, costs=costs, lenience=1.0, bottom_length=None,
                   note="")
    candidates = [replace(base, drafters=[CONFIDENT], k=KMatrix.parse([[LONG]]))]
    for ref in neural:  # D, then the confident drafter (horizontal); D reviewing it (vertical); both, routed
        candidates.append(replace(base, drafters=[ref, CONFIDENT], k=KMatrix.parse([[12, 28], [0, 0]])))
        candidates.append(replace(base, drafters=[ref, CONFIDENT], k=KMatrix.parse([[12, 12], [0, 8]])))
        candidates.append(replace(base, drafters=[ref, CONFIDENT], k=KMatrix.parse([[12, LONG], [0, 8]]), route=True))

    def entry(label, spec):  # each candidate learns across the prompts from its own texts only (its scope)
        return Entry(label, lambda: spec_cascade(calibrated(spec, cal_path), target, neural, scope=label), spec)

    entries = [entry(f"static best: {static_spec.describe()}", static_spec)]
    entries += [entry(c.describe(), c) for c in candidates]
    plain = race(target, entries, [p for _, p in prompts], max_new, progress=progress)
    table = []
    for e in entries:
        same = sum(o == p for o, p in zip(e.outputs, plain.outputs))
        table.append({"config": e.label, "median_speedup": e.median_speedup(plain),
                      "tokens_per_second": sum(e.tokens) / sum(e.seconds), "identical_to_plain": f"{same}/{len(prompts)}",
                      "spec": e.spec.to_json()})
    best = max(entries, key=lambda e: e.median_speedup(plain))
    best.spec.note = f"raced best, measured {best.median_speedup(plain):.2f}x plain decoding"
    return best.spec, table


def spec_cascade(spec, target: LanguageModel, neural: dict, given: dict | None = None, scope: str = "") -> Cascade:
    """The cascade a spec describes over models already loaded: statistical drafters built as the spec
    configures them (those in `given` reused), cost curves from the spec, else measured now; `scope` as in
    `Cascade` (candidates compared on the same prompts each learn from their own texts)."""
    from ..spec import cost_curves, drafter_objects

    drafters = drafter_objects(spec.drafters, spec.drafter_settings, target.info.vocab_size, neural, given)
    return Cascade(target, drafters, spec.cascade_config(cost_curves(spec, [target, *drafters], progress=False)),
                   scope=scope)
