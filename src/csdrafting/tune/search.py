"""Search the configuration space for the best predicted speed.

The space: every ordered chain of the candidate neural drafters (any subset, any order, up to
`max_neural`), each with or without one of the statistical candidates at the bottom; for each chain, K as
increments on a bounded grid (`k_grid`, cumulative quota at most `max_quota`) and, with a statistical
bottom, its proposal length (`bottom_lengths`). Lenience
is 1 (the measured acceptance is that of the strict rule).

Stage 1, the analytic model (speed.py, microseconds to milliseconds per configuration): chains of one
drafter are searched exhaustively; longer chains by coordinate ascent over the K increments and the
bottom length from several starting points (a pure vertical cascade, the best speculative k on top, a
horizontal split), a sweep at a time until no single entry improves.
Stage 2, with calibration traces: the `shortlist` best configurations of every chain are replayed on the
traces (replay.py: exact acceptance along the recorded text), the best refined by a few sweeps of local
coordinate ascent on the replayed tok/s, and the final ranking is by the replay.
Every prediction is cached; the whole search takes seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..drafters.registry import is_statistical
from ..protocol import CSDraftingError
from .acceptance_stats import Trace
from .replay import ReplayResult, replay
from .speed import CascadeModel, Config, Measurements, Prediction

DEFAULT_K_GRID = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24)
DEFAULT_BOTTOM_LENGTHS = (None, 1, 2, 3, 4, 6, 8, 10, 12, 16)


@dataclass(frozen=True)
class SearchSpace:
    candidates: tuple[str, ...]  # neural drafter names and/or registered statistical drafters
    max_neural: int = 3  # at most this many neural drafters in a chain
    k_grid: tuple[int, ...] = DEFAULT_K_GRID
    max_quota: int = 48  # cumulative draft length any reviewer may ask for
    bottom_lengths: tuple[int | None, ...] = DEFAULT_BOTTOM_LENGTHS
    include_plain: bool = True

    def chains(self) -> list[tuple[str, ...]]:
        neural = [c for c in self.candidates if not is_statistical(c)]
        bottoms = [()] + [(c,) for c in self.candidates if is_statistical(c)]
        out = [()] if self.include_plain else []
        for size in range(0, min(self.max_neural, len(neural)) + 1):
            for chain in itertools.permutations(neural, size):
                for b in bottoms:
                    if chain + b:
                        out.append(chain + b)
        return out


@dataclass
class Ranked:
    """A configuration with its prediction and the objective it was ranked by (tok/s).

    `analytic` is the EWIF-style model's tok/s; with traces, `replay` holds the trace replay and `score`
    is its tok/s, else `score` is the analytic one.
    """

    prediction: Prediction
    score: float
    analytic: float = 0.0
    replay: ReplayResult | None = None

    @property
    def config(self) -> Config:
        return self.prediction.config


@dataclass
class SearchResult:
    ranked: list[Ranked]  # every distinct configuration evaluated, best first
    best_per_chain: dict[tuple[str, ...], Ranked] = field(default_factory=dict)
    evaluations: int = 0

    @property
    def best(self) -> Ranked:
        return self.ranked[0]

    def runners_up(self, n: int = 5) -> list[Ranked]:
        """The best configuration of each other chain, then the next-best of the winner's chain."""
        best = self.best
        others = sorted((r for c, r in self.best_per_chain.items() if c != best.config.drafters), key=lambda r: -r.score)
        return others[:n]


def _uses_every_level(inc: list[list[int]]) -> bool:
    m = len(inc)
    return all(any(inc[r][j] > 0 for r in range(j + 1)) for j in range(m))


def _cumulative(inc: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    rows = []
    for r, row in enumerate(inc):
        acc, out = 0, [0] * len(row)
        for c in range(r, len(row)):
            acc += row[c]
            out[c] = acc
        rows.append(tuple(out))
    return tuple(rows)


class _Objective:
    def __init__(self, model: CascadeModel, workload: Sequence[tuple[int, int]] | None) -> None:
        self.model = model
        self.workload = list(workload) if workload else None
        self.seen: dict[tuple, Ranked] = {}

    def __call__(self, config: Config) -> Ranked:
        key = config.key
        if key not in self.seen:
            p = self.model.predict(config)
            score = p.end_to_end(self.workload) if self.workload else p.tokens_per_second
            self.seen[key] = Ranked(p, score, score)
        return self.seen[key]


class _ReplayObjective:
    """Scores by replaying the calibration traces (same seed for every config: common random numbers)."""

    def __init__(self, analytic: _Objective, meas: Measurements, traces: Sequence[Trace]) -> None:
        self.analytic, self.meas, self.traces = analytic, meas, traces
        self.seen: dict[tuple, Ranked] = {}

    def __call__(self, config: Config) -> Ranked:
        key = config.key
        if key not in self.seen:
            a = self.analytic(config)
            rp = replay(config, self.meas, self.traces)
            self.seen[key] = Ranked(a.prediction, rp.tokens_per_second, a.score, rp)
        return self.seen[key]


def _valid(inc: list[list[int]], max_quota: int) -> bool:
    return all(sum(row) > 0 for row in inc) and all(sum(row) <= max_quota for row in inc) and _uses_every_level(inc)


def _near(grid: Sequence, v, width: int | None) -> Sequence:
    """The grid, or only the `width` grid values on each side of v."""
    if width is None or v not in grid:
        return grid
    i = list(grid).index(v)
    return grid[max(0, i - width): i + width + 1]


def _ascend(obj, chain: tuple[str, ...], start: list[list[int]], length: int | None, space: SearchSpace, sweeps: int = 20,
            width: int | None = None) -> Ranked:
    """Coordinate ascent over the increments (and the bottom length) from one starting point.

    `width` limits each move to that many grid steps either way (local refinement of a costly objective).
    """
    m = len(chain)
    inc = [list(r) for r in start]
    has_bottom = is_statistical(chain[-1])

    def make(i, g):
        return Config(chain, _cumulative(i), g if has_bottom else None)

    best = obj(make(inc, length))
    for _ in range(sweeps):
        improved = False
        for r in range(m):
            for c in range(r, m):
                for v in _near(space.k_grid, inc[r][c], width):
                    if v == inc[r][c]:
                        continue
                    trial = [list(x) for x in inc]
                    trial[r][c] = v
                    if not _valid(trial, space.max_quota):
                        continue
                    cand = obj(make(trial, length))
                    if cand.score > best.score * (1 + 1e-9):
                        best, inc, improved = cand, trial, True
        if has_bottom:
            for g in _near(space.bottom_lengths, length, width):
                if g != length:
                    cand = obj(make(inc, g))
                    if cand.score > best.score * (1 + 1e-9):
                        best, length, improved = cand, g, True
        if not improved:
            break
    return best


def _starts(chain: tuple[str, ...], space: SearchSpace, top_k: int) -> list[list[list[int]]]:
    m = len(chain)
    starts = []
    # a pure vertical cascade: each reviewer fills 4 from the level just below, the bottom 8
    starts.append([[(8 if c == m - 1 else 4) if c == r else 0 for c in range(m)] for r in range(m)])
    # the best speculative k of the first drafter on top, small quotas below
    starts.append([[(top_k if c == r else 0) if r == 0 else ((4 if c == r else 0)) for c in range(m)] for r in range(m)])
    # a horizontal split: each reviewer asks every level below it for a few tokens
    starts.append([[(3 if c >= r else 0) for c in range(m)] for r in range(m)])
    out = []
    for s in starts:
        if _valid(s, space.max_quota) and s not in out:
            out.append(s)
    return out


def _increments(config: Config) -> list[list[int]]:
    inc = []
    for r, row in enumerate(config.k):
        prev, out = 0, [0] * len(row)
        for c in range(r, len(row)):
            out[c] = row[c] - prev
            prev = row[c]
        inc.append(out)
    return inc


def search(
    meas: Measurements,
    space: SearchSpace,
    workload: Iterable[tuple[int, int]] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    traces: Sequence[Trace] | None = None,
    shortlist: int = 12,
    refine_sweeps: int = 2,
) -> SearchResult:
    """Rank configurations by predicted tok/s (end to end over `workload` if given, else steady decoding).

    With `traces`, the analytic model only shortlists: the `shortlist` best configurations of every chain
    are replayed on the traces, the best of them refined by coordinate ascent on the replay's tok/s
    (`refine_sweeps` sweeps), and everything is ranked by the replay.
    """
    for c in space.candidates:
        if not is_statistical(c) and c not in meas.costs:
            raise CSDraftingError(f"candidate drafter {c!r} has no measurements")
    model = CascadeModel(meas, max_draft=2 * space.max_quota + 8)
    obj = _Objective(model, workload)
    chains = space.chains()
    best_per_chain: dict[tuple[str, ...], Ranked] = {}
    rob = _ReplayObjective(obj, meas, traces) if traces else None
    for chain in progress(chains) if progress else chains:
        if not chain:
            best_per_chain[chain] = (rob or obj)(Config())
            continue
        if len(chain) == 1:
            ks = range(1, space.max_quota + 1)
            lengths = space.bottom_lengths if is_statistical(chain[0]) else (None,)
            cands = [obj(Config(chain, ((k,),), g)) for k in ks for g in lengths]
            best = max(cands, key=lambda r: r.score)
        else:
            first = chain[0]
            top_k = 4
            if not is_statistical(first):
                top_k = max(range(1, 17), key=lambda k: obj(Config((first,), ((k,),))).score)
            results = [_ascend(obj, chain, s, None, space) for s in _starts(chain, space, top_k)]
            best = max(results, key=lambda r: r.score)
        if rob is not None:
            mine = sorted((r for r in obj.seen.values() if r.config.drafters == chain), key=lambda r: -r.score)
            replayed = [rob(r.config) for r in mine[:shortlist]]
            best = max(replayed, key=lambda r: r.score)
            if refine_sweeps and len(chain) > 1:
                best = _ascend(rob, chain, _increments(best.config), best.config.bottom_length, space, refine_sweeps, width=2)
            elif refine_sweeps:  # one drafter: replay every k near the analytic optimum
                k0 = best.config.k[0][0]
                lengths = space.bottom_lengths if is_statistical(chain[0]) else (None,)
                g0 = best.config.bottom_length
                near = [rob(Config(chain, ((k,),), g)) for k in range(max(1, k0 - 4), min(space.max_quota, k0 + 4) + 1)
                        for g in _near(lengths, g0, 2)]
                best = max(near + [best], key=lambda r: r.score)
        best_per_chain[chain] = best
    pool = rob.seen if rob is not None else obj.seen
    ranked = sorted(pool.values(), key=lambda r: -r.score)
    return SearchResult(ranked, best_per_chain, len(obj.seen) + (len(rob.seen) if rob else 0))
