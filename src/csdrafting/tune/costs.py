"""Measured cost curves: seconds of one forward pass over n new tokens, on this backend, precision, threads.

A review of a k-token draft is ONE pass over k + 1 new tokens with a logits row for each, after a cached
context; a neural bottom drafter makes one-token passes. So the curve is measured exactly that way:
`extend(n tokens, logits for all n)` after a realistic cached context, then rolled back. Each n is timed
`reps` times in an interleaved order (so a burst of load from other processes spreads over the grid), the
median kept, and the curve made non-decreasing (a longer pass is never cheaper; a dip is noise the search
would otherwise exploit). The prompt's prefill (one pass over P tokens, one logits row) is a separate
straight line a + b * P through the median prefill timings of the shortest and the longest prompt.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from ..cascade.planning import DEFAULT_GRID, CostCurve, measure_cost_curve  # noqa: F401  (re-exported for the tuner)
from ..drafters.base import StatisticalDrafter
from ..protocol import LanguageModel


def time_prefill(model: LanguageModel, prompt: Sequence[int]) -> tuple[np.ndarray, float]:
    """Prefill `prompt` from an empty cache as the engine does (one logits row); (last row, seconds)."""
    model.rollback(0)
    t0 = time.perf_counter()
    row = model.extend(list(prompt), logits_from=len(prompt) - 1)[-1]
    return row, time.perf_counter() - t0


def measure_prefill(
    model: LanguageModel,
    tokens: Sequence[int],
    sizes: Sequence[int],
    reps: int = 3,
    tick: Callable[[], None] | None = None,
) -> list[tuple[int, float]]:
    """(P, median seconds) of prefilling P tokens from an empty cache, one logits row, as the engine does."""
    sizes = [int(p) for p in sizes if 0 < p <= len(tokens)]
    samples: dict[int, list[float]] = {p: [] for p in sizes}
    for _ in range(reps):
        for p in sizes:
            samples[p].append(time_prefill(model, tokens[:p])[1])
            if tick:
                tick()
    model.rollback(0)
    return [(p, statistics.median(v)) for p, v in samples.items()]


def fit_prefill(samples: Iterable[tuple[int, float]]) -> tuple[float, float]:
    """A robust line seconds = a + b * prompt_tokens (a, b >= 0) through prefill timings.

    Theil-Sen (median of pairwise slopes, then the median intercept): a timing that another process
    inflated is an outlier, and a least-squares line would follow it. One point gives a line through 0.
    """
    pts = [(float(p), float(s)) for p, s in samples]
    if not pts:
        return (0.0, 0.0)
    xs = np.array([p for p, _ in pts])
    ys = np.array([s for _, s in pts])
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    if not slopes:
        return (0.0, float(np.median(ys / np.maximum(xs, 1.0))))
    b = max(0.0, float(np.median(slopes)))
    a = max(0.0, float(np.median(ys - b * xs)))
    if b == 0.0:  # noise swamped the slope: proportional instead
        return (0.0, float(np.median(ys / np.maximum(xs, 1.0))))
    return (a, b)


def measure_proposal_cost(drafter: StatisticalDrafter, texts: Sequence[Sequence[int]], grid: Sequence[int] = DEFAULT_GRID,
                          reps: int = 3) -> CostCurve:
    """Seconds of one proposal of n tokens by a statistical drafter whose index already holds the text (as in
    a running generation, where it follows the text a token at a time)."""
    grid = sorted(set(int(n) for n in grid))
    samples: dict[int, list[float]] = {n: [] for n in grid}
    for seq in texts:
        for cut in (len(seq) // 2, len(seq)):
            ctx = list(seq[:cut])
            if not ctx:
                continue
            drafter.propose(ctx, 1)  # catches its index up with the text, untimed
            for _ in range(reps):
                for n in grid:
                    t0 = time.perf_counter()
                    drafter.propose(ctx, n)
                    samples[n].append(time.perf_counter() - t0)
    if not any(samples.values()):
        return CostCurve.constant(0.0)
    med = np.maximum.accumulate([statistics.median(samples[n]) for n in grid])
    return CostCurve(tuple(grid), tuple(float(s) for s in med))
