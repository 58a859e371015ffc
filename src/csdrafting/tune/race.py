"""Deciding between cascades by measuring them: the last stage of `csdrafting tune`.

The analytic model and the replay (model.py, replay.py) rank STATIC configurations. Cost-aware dynamic
drafting decides its draft lengths at run time from confidences and measured costs, which those models do
not describe; so the tuner builds a few dynamic candidates from what it measured (cost curves, the suffix
drafter calibrated on the same calibration text) and races them, the best static configuration and plain
decoding on calibration prompts with the real engine, interleaved prompt by prompt. The winner is the
candidate with the best median per-prompt speed ratio to plain decoding.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
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
