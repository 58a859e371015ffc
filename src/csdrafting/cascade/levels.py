"""The levels of a cascade, behind one small interface the engine drives.

A level can *propose* (draft tokens on its own: a statistical drafter looks them up, a neural model decodes
them one by one) and, if it is a neural model, *review* a draft of the levels below it in one forward pass
(cs-drafting.md sections 1-3). Every drafted token travels with the distribution it was drawn from (q), the
level that emitted it (src) and, for cost-aware drafting, its predicted conditional acceptance (conf).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from ..drafters.base import StatisticalDrafter
from ..protocol import LanguageModel
from . import acceptance
from .acceptance import Q
from .config import SamplingConfig
from .metrics import GenerationMetrics, LevelMetrics
from .planning import AdaptedCurve, CostCurve, StepPlan
from .rows import RowCache
from .sampling import sample, softmax, warp


@dataclass
class Draft:
    """Tokens after a base, each with the distribution it was drawn from and the level that emitted it."""

    tokens: list[int] = field(default_factory=list)
    qs: list[Q] = field(default_factory=list)
    src: list[int] = field(default_factory=list)
    # predicted conditional acceptance of each token, from the side that drafted it (dynamic drafting)
    conf: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, other: "Draft") -> None:
        self.tokens += other.tokens
        self.qs += other.qs
        self.src += other.src
        self.conf += other.conf

    def truncate(self, n: int) -> None:
        del self.tokens[n:], self.qs[n:], self.src[n:], self.conf[n:]

    def clip(self, n: int, eos: frozenset[int], keep_eos: bool = True) -> bool:
        """Keep at most n tokens and nothing after the first EOS, nor the EOS itself unless `keep_eos`; True if
        an EOS was found (the text ends there).

        `keep_eos=False` is for a draft on its way to review: a reviewer's pass yields its own token after the
        last drafted one anyway, so a drafted EOS only widens the pass (accepted, it ends the generation and
        that token is thrown away). Left out, the reviewer's own token there is that EOS whenever the drafted
        one would have been accepted under greedy decoding. Under sampling only a token fixed before any coin
        (a statistical level's) may be cut so: cutting a sampled token for its value changes the law of what
        the review outputs at its position (engine.may_cut_drafted_end decides)."""
        for i, t in enumerate(self.tokens[:n]):
            if t in eos:
                self.truncate(i + 1 if keep_eos else i)
                return True
        self.truncate(n)
        return False


@dataclass
class Run:
    """What one generation fixes for every level: the sampling rule, its random stream, the metrics."""

    sampling: SamplingConfig
    rng: np.random.Generator
    lenience: float  # at intermediate reviewers; the target always reviews strictly
    want_q: bool  # drafted tokens carry their distributions (sampling, or lenient review above them)
    dynamic: bool  # cost-aware drafting: drafting reviewers hand their confidence upward
    eos: frozenset[int]  # the target's end tokens: a draft stops after one
    prompt: list[int]
    metrics: GenerationMetrics


class Level(ABC):
    """One level of the cascade. `cost` is its measured pass-cost curve (None: free to run)."""

    index: int
    metrics: LevelMetrics
    cost: CostCurve | None = None
    can_review: bool = False
    length: int | None = None  # a statistical level's tokens per proposal (None: what its quota asks)

    def begin(self, prompt: Sequence[int], keep_cache: bool) -> None:
        """A generation after `prompt` starts (the model's cache is kept only with keep_cache)."""

    def prefill(self, run: Run, chunk: int, on_chunk: Callable[[int, int], None] | None) -> None:
        """Bring the prompt into the level's cache, in chunks that may be interrupted."""

    @abstractmethod
    def propose(self, run: Run, base: list[int], n: int, plan: StepPlan | None = None, have: int = 0) -> Draft:
        """Up to n tokens after base (the text after the prompt), drafted by this level alone; `have`
        tokens are already in the draft that `plan` prices."""

    def review(self, run: Run, base: list[int], draft: Draft) -> Draft:
        """One pass over base + draft: the accepted prefix plus this level's own correction or bonus."""
        raise NotImplementedError(f"level {self.index} ({self.metrics.name}) reviews nothing")

    @property
    def priced(self) -> float:
        """Seconds this level has cost so far, priced by its cost curve (a statistical level: measured)."""
        return self.metrics.seconds

    def committed(self, run: Run, generated: list[int]) -> None:
        """The target has committed `generated`: nothing before it will be asked for again."""

    def end(self, tokens: Sequence[int]) -> None:
        """The generation has finished: tokens = prompt + output."""


class StatisticalLevel(Level):
    """A model-free drafter (drafters/base.StatisticalDrafter): proposals only, near-free, deterministic."""

    def __init__(self, index: int, drafter: StatisticalDrafter, length: int | None = None) -> None:
        self.index = index
        self.drafter = drafter
        self.length = length
        self.metrics = LevelMetrics(index, drafter.name, "statistical", 0)

    def begin(self, prompt: Sequence[int], keep_cache: bool) -> None:
        self.metrics = LevelMetrics(self.index, self.drafter.name, "statistical", 0)
        self.drafter.begin(prompt)

    def propose(self, run: Run, base: list[int], n: int, plan: StepPlan | None = None, have: int = 0) -> Draft:
        t0 = time.perf_counter()
        prop = self.drafter.propose_scored(run.prompt + base, self.length or n)
        self.metrics.seconds += time.perf_counter() - t0
        self.metrics.proposals += 1
        k = len(prop.tokens)
        return Draft(prop.tokens, [None] * k, [self.index] * k, prop.confidence)

    def committed(self, run: Run, generated: list[int]) -> None:
        t0 = time.perf_counter()
        self.drafter.committed(run.prompt + generated)
        self.metrics.seconds += time.perf_counter() - t0  # the drafter's own work, as its proposals'

    def end(self, tokens: Sequence[int]) -> None:
        self.drafter.end(tokens)


class ModelLevel(Level):
    """A neural model: the target (index 0) or a drafter. Reviews drafts; proposes autoregressively."""

    can_review = True

    def __init__(self, index: int, model: LanguageModel, cost: CostCurve | None = None) -> None:
        self.index = index
        self.model = model
        self.cost = cost
        self.rows = RowCache(model, self._new_metrics())
        self.rows.cost = cost

    def _new_metrics(self) -> LevelMetrics:
        info = self.model.info
        return LevelMetrics(self.index, info.label, "target" if self.index == 0 else "drafter", info.n_params)

    @property
    def metrics(self) -> LevelMetrics:  # type: ignore[override]
        return self.rows.metrics

    @property
    def prefix(self) -> list[int]:
        return self.rows.prefix

    @property
    def priced(self) -> float:
        return self.rows.priced

    def planning_cost(self, adapt: bool) -> Callable[[float], float] | None:
        """The cost curve the planner prices this level's reviews by: as measured, or (adapt) corrected by
        what its passes measurably cost in the generations so far (planning.PassCosts)."""
        if self.cost is None or not adapt:
            return self.cost
        return AdaptedCurve(self.cost, self.rows.measured)

    def begin(self, prompt: Sequence[int], keep_cache: bool) -> None:
        self.rows.metrics = self._new_metrics()
        if not keep_cache:
            self.model.rollback(0)
        self.rows.begin(prompt)

    def prefill(self, run: Run, chunk: int, on_chunk: Callable[[int, int], None] | None) -> None:
        self.rows.prefill(chunk, on_chunk, top_only=self._hands_up(run)[1])

    def committed(self, run: Run, generated: list[int]) -> None:
        self.rows.forget_before(len(self.rows.prefix) + len(generated) - 1)

    def _hands_up(self, run: Run) -> tuple[bool, bool]:
        """(want_q, strict_greedy) for what this level emits: a drafter hands its tokens upward with their
        distributions (when someone needs them) and its confidence (dynamic drafting); the target only
        commits, and under greedy lenience-1 decoding argmax ids suffice."""
        drafter = self.index > 0
        want_q = run.want_q and drafter
        strict = run.sampling.greedy and not want_q and not (run.dynamic and drafter)
        return want_q, strict

    def review(self, run: Run, base: list[int], draft: Draft) -> Draft:
        lenience = 1.0 if self.index == 0 else run.lenience
        want_q, strict = self._hands_up(run)
        strict = strict and lenience == 1.0
        rows = self.rows.logits_after(base + draft.tokens, len(base), top_only=strict)
        if strict:
            v = acceptance.review_argmax(rows, draft.tokens)
        elif run.sampling.greedy:
            v = acceptance.review_greedy(rows, draft.tokens, draft.qs, lenience, want_q)
        else:
            v = acceptance.review_sampling(_Warped(rows, run.sampling), draft.tokens, draft.qs, lenience, run.rng, want_q)
        self.metrics.record_review(len(draft), v.n_accepted)
        levels = run.metrics.levels
        for i, s in enumerate(draft.src):
            levels[s].drafted += 1
            levels[s].accepted += i < v.n_accepted
        n = len(v.tokens)
        # a drafting reviewer's confidence in what it hands upward: its own probability of each token
        drafting = run.dynamic and self.index > 0
        conf = [_prob(rows[i], t) for i, t in enumerate(v.tokens)] if drafting else [None] * n
        return Draft(v.tokens, v.qs if want_q else [None] * n, [self.index] * n, conf)

    def propose(self, run: Run, base: list[int], n: int, plan: StepPlan | None = None, have: int = 0) -> Draft:
        """Autoregressive drafting (classic speculative decoding; plain decoding when this is the target)."""
        self.metrics.proposals += 1
        out = Draft()
        want_q, strict = self._hands_up(run)
        value = replace(plan.value) if plan is not None else None
        for _ in range(n):
            if plan is not None and not plan.worth_more(value, have + len(out), self.cost(1)):
                break
            row = self.rows.logits_after(base + out.tokens, len(base) + len(out), top_only=strict)[-1]
            if strict:
                x, q, c = int(row), None, None
            elif run.sampling.greedy:
                x = int(np.argmax(row))
                q: Q = float(softmax(row)[x]) if want_q else None
                c = q if isinstance(q, float) else (_prob(row, x) if run.dynamic else None)
            else:
                p = warp(row, run.sampling)
                x = sample(p, run.rng)
                q = p if want_q else None
                c = float(p[x])
            out.tokens.append(x)
            out.qs.append(q)
            out.src.append(self.index)
            out.conf.append(c)
            if value is not None:
                value.add(c)
            if x in run.eos:
                break
        return out


def _prob(row: np.ndarray, token: int) -> float:
    """softmax(row)[token], without materializing the distribution."""
    x = np.asarray(row, dtype=np.float64)
    return float(1.0 / np.exp(x - x[token]).sum())


class _Warped:
    """Lazily warped rows: a review that rejects early never pays for the rows after it."""

    def __init__(self, rows: np.ndarray, cfg: SamplingConfig) -> None:
        self.rows, self.cfg, self.cache = rows, cfg, {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.cache:
            self.cache[i] = warp(self.rows[i], self.cfg)
        return self.cache[i]
