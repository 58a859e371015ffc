"""Cost-aware dynamic drafting: how many of the proposed tokens are worth a review.

Beyond the paper's static K (cs-drafting.md section 8): a reviewer's pass over n new tokens costs
`cost(n)` seconds, MEASURED (`csdrafting tune`, or `measure` below), and each drafted token i comes with
a predicted conditional acceptance c_i from the drafting side (a statistical drafter's calibrated
confidence, a neural drafter's own probability of its token). With P_i = c_1 ... c_i the probability that
the first i are all accepted, a draft of n tokens yields E(n) = 1 + P_1 + ... + P_n tokens on average
(the review always adds one), and the step costs the drafting already spent plus cost(n + 1). The planner
keeps the n that maximizes E(n) / time(n); n = 0 is a plain step, so a level that is not confident
enough drafts nothing and the cascade runs at plain speed. Reviews are priced by the curve corrected by what
the reviewer's passes measurably cost lately (`PassCosts`, `AdaptedCurve`): a curve measured on another day,
or in isolation, can misprice a review against a plain step. A statistical drafter's first token after the
text so far is also weighed by the chance that the text ends there (`EndStats`, learned from earlier texts):
such a drafter knows nothing of ends, and after a code edit's closing fence proposes what followed it in the
prompt.

Every input is known on the drafting side before the review, never the reviewer's probabilities for the
positions being decided, so the output stays exact (greedy and sampling alike).
"""

from __future__ import annotations

import bisect
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..protocol import CSDraftingError, LanguageModel

DEFAULT_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
END_PRIOR = 1.0  # pseudo-occurrences, not followed by the end, behind each token's measured chance of ending the text


@dataclass(frozen=True)
class CostCurve:
    """Seconds of one forward pass over n new tokens, measured at the grid `ns` and interpolated linearly.

    Beyond the last grid point it extends the last segment's slope. `prefill` = (a, b): a prompt of P
    tokens costs a + b * P seconds (only needed for end-to-end predictions that include the prompt).
    """

    ns: tuple[int, ...]
    seconds: tuple[float, ...]
    prefill: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not self.ns or len(self.ns) != len(self.seconds):
            raise CSDraftingError("a cost curve needs as many seconds as grid points, at least one")
        if any(b <= a for a, b in zip(self.ns, self.ns[1:])):
            raise CSDraftingError(f"cost curve grid must increase strictly: {self.ns}")

    @classmethod
    def constant(cls, seconds: float) -> "CostCurve":
        """The paper's accounting: every run costs the same, whatever the number of tokens."""
        return cls((1,), (float(seconds),))

    @classmethod
    def linear(cls, fixed: float, per_token: float, up_to: int = 64) -> "CostCurve":
        return cls((1, up_to), (fixed + per_token, fixed + per_token * up_to))

    def __call__(self, n: float) -> float:
        ns, s = self.ns, self.seconds
        if len(ns) == 1:
            return s[0]
        i = min(max(bisect.bisect_right(ns, n) - 1, 0), len(ns) - 2)
        slope = (s[i + 1] - s[i]) / (ns[i + 1] - ns[i])
        return max(0.0, s[i] + slope * (n - ns[i]))

    def table(self, n_max: int) -> list[float]:
        """cost(n) for n = 0..n_max, for callers that ask millions of times."""
        return [self(n) for n in range(n_max + 1)]

    def prefill_seconds(self, prompt_tokens: int) -> float:
        a, b = self.prefill
        return a + b * prompt_tokens

    def to_json(self) -> dict:
        return {"ns": list(self.ns), "seconds": list(self.seconds), "prefill": list(self.prefill)}

    @classmethod
    def from_json(cls, d: dict) -> "CostCurve":
        return cls(tuple(d["ns"]), tuple(d["seconds"]), tuple(d.get("prefill", (0.0, 0.0))))


RUN_OF_ONES = 9  # consecutive one-token passes per timing of n = 1 (the first, after another shape, is dropped)


def measure_cost_curve(
    model: LanguageModel,
    context: Sequence[int],
    filler: Sequence[int],
    grid: Sequence[int] = DEFAULT_GRID,
    reps: int = 3,
    prefill: tuple[float, float] = (0.0, 0.0),
    tick: Callable[[], None] | None = None,
    seed: int = 0,
) -> CostCurve:
    """Time `extend(n tokens)` after `context` for each n in `grid`; median of `reps`, made monotone.

    A one-token pass is timed as plain decoding (and a neural drafter) runs it: within a run of
    consecutive one-token passes (`RUN_OF_ONES`; the median per pass). llama.cpp reuses the compute graph
    of a pass with the same shape as the one before, so a one-token pass timed between passes of other
    sizes pays a graph rebuild that plain decoding does not (on the 1.5B Q4_K_M target, 2 threads: 57.0
    against 55.3 ms, 3%), and the planner would compare its drafts with a plain step priced too high.
    """
    grid = sorted(set(int(n) for n in grid))
    if not context:
        raise CSDraftingError("cost measurement needs a non-empty context")
    if len(filler) < max(grid[-1], RUN_OF_ONES):
        filler = list(filler) * (max(grid[-1], RUN_OF_ONES) // max(1, len(filler)) + 1)
    model.rollback(0)
    model.extend(list(context), logits_from=len(context) - 1)
    base = len(model.cached_tokens)
    model.extend(list(filler[:4]), logits_from=0)  # warm up the batched path
    model.rollback(base)
    samples: dict[int, list[float]] = {n: [] for n in grid}
    rng = random.Random(seed)
    for _ in range(reps):
        order = list(grid)
        rng.shuffle(order)
        for n in order:
            if n == 1:
                singles = []
                for t in filler[:RUN_OF_ONES]:
                    t0 = time.perf_counter()
                    model.extend([t], logits_from=0)
                    singles.append(time.perf_counter() - t0)
                samples[n].append(statistics.median(singles[1:]))  # the first one follows another shape
            else:
                toks = list(filler[:n])
                t0 = time.perf_counter()
                model.extend(toks, logits_from=0)
                samples[n].append(time.perf_counter() - t0)
            model.rollback(base)
            if tick:
                tick()
    med = np.maximum.accumulate([statistics.median(samples[n]) for n in grid])
    return CostCurve(tuple(grid), tuple(float(s) for s in med), prefill)


# Review sizes (draft + 1) where llama.cpp's CPU kernels change cost: they multiply activation rows in
# groups (measured on the 1.5B Q4_K_M, 2 threads: 32 tokens 760 ms, 33 tokens 955 ms; 16 -> 468, 17 -> 481),
# so each efficient size is measured with the one past it; up to 65, a 64-token draft and its review's token.
REVIEW_GRID = (1, 2, 3, 4, 5, 8, 9, 12, 13, 16, 17, 24, 25, 32, 33, 48, 49, 64, 65)
QUICK_GRID = (1, 2, 4, 8, 12, 16, 24)  # short drafts only (a drafter's own curve)


def measure(model: LanguageModel, grid: Sequence[int] = REVIEW_GRID, reps: int = 3, context_tokens: int = 256) -> CostCurve:
    """A cost curve for dynamic drafting when none was measured by `csdrafting tune` (seconds to a minute).

    The context and filler are token ids spread over the vocabulary: cost depends on the number of tokens
    and the cached length, not on which tokens they are.
    """
    v = model.info.vocab_size
    ids = [(i * 7919 + 13) % min(v, 30000) for i in range(context_tokens + max(grid))]
    try:
        return measure_cost_curve(model, ids[:context_tokens], ids[context_tokens:], grid, reps)
    finally:
        model.rollback(0)


class PassCosts:
    """What a model's passes measurably cost against its curve's price, lately: decayed means of measured over
    priced seconds, one for one-token passes and one for longer ones.

    A curve is measured once (and kept for a week), in isolation; in a generation the passes follow each other
    in other shapes, at other cache lengths, on a machine doing other things. The planner's choice between a
    plain step and a draft turns on the ratio of the two kinds of pass, and where longer passes run dearer
    against their price than one-token passes do, drafts the curve prices at break-even lose. Measured on the
    1.5B Q4_K_M, 2 threads, Spec-Bench math, with this machine's cached curve (2026-12-02): one-token passes
    ran at 0.79 of their price and longer ones at 0.96 (that curve had been measured while other work ran), so
    it made drafts look 21% cheaper than they were, and the cascade ran at 0.956x of plain decoding; corrected,
    0.986x. From a freshly measured curve the factor settled at 0.96-0.98 and changed nothing measurable
    (README, "Choosing the default cascade").
    Each pass's ratio is clipped to [1/CLIP, CLIP] (a pass that the OS preempted says nothing of the curve) and
    PRIOR pseudo-passes at ratio 1 stand behind each mean, so a few passes move it little.
    """

    DECAY = 0.97  # weight of the past, per observed pass of the same kind (about 30 passes' memory)
    PRIOR = 4.0  # pseudo-passes at the curve's price behind each mean
    CLIP = 2.0
    LIMIT = 1.25  # the correction never moves a longer pass's price by more than this factor either way

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every measured pass: the correction as a fresh process starts it (the object stays shared)."""
        # kind (longer pass?) -> [decayed sum of ratios, decayed count]
        self.sums = {False: [self.PRIOR, self.PRIOR], True: [self.PRIOR, self.PRIOR]}
        self.passes = 0

    def observe(self, n: int, seconds: float, priced: float) -> None:
        if priced <= 0 or n < 1:
            return
        r = min(self.CLIP, max(1.0 / self.CLIP, seconds / priced))
        s = self.sums[n > 1]
        s[0] = self.DECAY * s[0] + r
        s[1] = self.DECAY * s[1] + 1.0
        self.passes += 1

    def ratio(self, longer: bool) -> float:
        s = self.sums[longer]
        return s[0] / s[1]

    @property
    def factor(self) -> float:
        """A longer pass's measured cost relative to a one-token pass's, over the curve's same ratio."""
        f = self.ratio(True) / self.ratio(False)
        return min(self.LIMIT, max(1.0 / self.LIMIT, f))


class AdaptedCurve:
    """A reviewer's cost curve as the planner uses it: passes of more than one token priced by the curve times
    what such passes measurably cost relative to one-token passes lately (`PassCosts.factor`)."""

    def __init__(self, base: CostCurve, measured: PassCosts) -> None:
        self.base = base
        self.measured = measured

    def __call__(self, n: float) -> float:
        c = self.base(n)
        return c * self.measured.factor if n > 1 else c


class TailYield:
    """What the first token a statistical level drafts after a neural drafter's tokens (the draft's tail, in the
    horizontal cascade) measurably yields against its promise: decayed sums of its calibrated confidence and of
    whether the reviewer accepted it, over the tails the review reached.

    The neural drafter hands over where its own confidence fell, i.e. where the text is hard to predict, and
    there the statistical drafter's confidence (its acceptance rate over all positions of the calibration text)
    is optimistic. Replayed on 16 Spec-Bench QA and MMLU prompts with the F32 target's curve (the 0.5B Q4_K_M
    reviewing the suffix drafter, routed): 4 of the 17 tail tokens the target reached were accepted, where their
    confidences promised 9.4. Only that first token is discounted: the ones after it are conditioned on it
    being accepted, i.e. on the text being on track again, as in calibration. The factor only ever discounts
    (at most 1): the hand-over is a selection of hard positions, not of easy ones.
    """

    DECAY = 0.95  # weight of the past, per observed tail (about 20 tails' memory)
    PRIOR = 2.0  # pseudo-tokens at face value behind the measured yield

    def __init__(self) -> None:
        self.promised = 0.0
        self.realized = 0.0
        self.observed = 0

    def observe(self, promised: float, accepted: bool) -> None:
        self.promised = self.DECAY * self.promised + max(0.0, min(1.0, promised))
        self.realized = self.DECAY * self.realized + float(accepted)
        self.observed += 1

    @property
    def factor(self) -> float:
        return min(1.0, (self.realized + self.PRIOR) / (self.promised + self.PRIOR))


class EndStats:
    """How often the target's text ended right after each token, counted over earlier generations' text.

    Each output's first token is left out, in the counts and where they are used (`p_end`): a code block's
    opening fence, which starts many answers, is the same token as its closing one, which ends them."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = {}  # token -> [times the text ended right after it, times it occurred]

    def learn(self, generated: Sequence[int], eos: frozenset[int]) -> None:
        """Count a generation's text (an end token in it ends the count; a last token that was followed by
        nothing, the text cut by its length, is not counted)."""
        for i in range(1, len(generated) - 1):
            t = int(generated[i])
            if t in eos:
                break
            c = self.counts.setdefault(t, [0, 0])
            c[0] += int(generated[i + 1]) in eos
            c[1] += 1

    def copy(self) -> "EndStats":
        """An independent copy of the counts so far (a replay started from what a real run had learned)."""
        out = EndStats()
        out.counts = {t: list(c) for t, c in self.counts.items()}
        return out

    def p_end(self, token: int) -> float:
        """The measured chance that the text ends right after `token` (not the output's first token)."""
        ended, seen = self.counts.get(int(token), (0, 0))
        return ended / (seen + END_PRIOR)


@dataclass
class DraftValue:
    """Running totals of a draft being built for one reviewer: E and P so far, drafting seconds spent."""

    expected: float = 1.0  # E(n): the review's own token plus the accepted-so-far expectation
    survive: float = 1.0  # P_n
    unknown: bool = False  # a token without a confidence was drafted: stop planning, keep as K says

    def add(self, conf: float | None) -> None:
        if conf is None:
            self.unknown = True
            return
        self.survive *= max(0.0, min(1.0, conf))
        self.expected += self.survive


def best_length(
    confidence: Sequence[float | None],
    review: CostCurve,
    start: DraftValue,
    have: int,
    spent: float = 0.0,
    per_token: float = 0.0,
) -> int:
    """How many of `confidence`'s tokens to keep after a draft of `have` tokens valued `start`.

    Maximizes E / (spent + n * per_token + review(have + n + 1)) over n = 0..len; ties go to the shorter
    draft. A token without a confidence (None) cannot be planned: then all are kept (static K).
    """
    if start.unknown or any(c is None for c in confidence):
        return len(confidence)
    best_n, best = 0, start.expected / (spent + review(have + 1))
    e, p = start.expected, start.survive
    for i, c in enumerate(confidence, start=1):
        p *= max(0.0, min(1.0, c))  # type: ignore[arg-type]
        e += p
        rate = e / (spent + i * per_token + review(have + i + 1))
        if rate > best * (1 + 1e-9):
            best_n, best = i, rate
    return best_n


def worth_more(value: DraftValue, review: CostCurve, have: int, spent: float, next_cost: float) -> bool:
    """Should a drafter that must pay `next_cost` seconds per token (a neural one) draft one more?

    Optimistic bound: even if the next token were accepted surely given the ones before, would the rate
    improve? If not, no later token can help either (P only shrinks), so stop.
    """
    if value.unknown:
        return True
    now = value.expected / (spent + review(have + 1))
    best_next = (value.expected + value.survive) / (spent + next_cost + review(have + 2))
    return best_next > now


class StepPlan:
    """Cost-aware drafting for one reviewer's step: the draft's value so far and the time spent on it."""

    def __init__(self, review: Callable[[float], float], clock: Callable[[], float] = time.perf_counter) -> None:
        self.review = review
        self.value = DraftValue()
        self.clock = clock  # what drafting has spent is priced by this clock (the replay stops it)
        self.t0 = clock()

    def spent(self) -> float:
        return self.clock() - self.t0

    def keep(self, conf: Sequence[float | None], have: int) -> int:
        return best_length(conf, self.review, self.value, have, self.spent())

    def worth_more(self, value: DraftValue, have: int, next_cost: float) -> bool:
        return worth_more(value, self.review, have, self.spent(), next_cost)

    def add(self, conf: Sequence[float | None]) -> None:
        for c in conf:
            self.value.add(c)
