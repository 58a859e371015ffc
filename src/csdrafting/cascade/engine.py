"""The Cascade Speculative Drafting engine.

Levels: 0 is the target, then the neural drafters from largest to smallest, then the bottom proposer
(a statistical drafter such as Max-Gram, or a neural model that drafts autoregressively). One `step` at reviewer r (cs-drafting.md
section 3): the drafters below r fill the draft in turn, each up to its cumulative quota K[r][j]
(horizontal cascade); a neural drafter fills its share by reviewing drafts of the levels below it
(vertical cascade); then r reviews the whole draft in ONE forward pass.

A drafter whose K row is all zero reviews nothing and drafts its share autoregressively: K row 0 filled
and the rows below zero is the horizontal cascade alone.

Plain decoding (no drafters: the target is its own bottom proposer, one token at a time) and classic
speculative decoding (one neural drafter as the bottom, K = [[k]]) are configurations of this engine.

With `CascadeConfig.dynamic`, K is a cap: each level drafts only what its predicted acceptance pays for at
the reviewer's measured cost (cascade/planning.py). A neural drafter stops when its own confidence no
longer pays and hands the rest of the draft to the level below (the horizontal cascade, made dynamic); a
statistical level keeps only the prefix of its proposal that pays; an empty draft is a plain step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

from ..drafters.base import StatisticalDrafter
from ..protocol import CSDraftingError, LanguageModel, check_compatible
from ..sequences import common_prefix
from .config import CascadeConfig, SamplingConfig
from .levels import Draft, Level, ModelLevel, Run, StatisticalLevel
from .metrics import GenerationMetrics
from .planning import CostCurve, EndStats, StepPlan, TailYield
from .routing import Router, survival
from .rows import tail_yield, text_ends

Drafter = Union[LanguageModel, StatisticalDrafter]
__all__ = ["Cascade", "Draft", "Drafter", "GenerationResult", "StopGeneration"]

# Prompts are prefilled in passes of at most this many tokens (llama.cpp's default batch), between which
# a caller may stop the generation (on_prefill).
PREFILL_CHUNK = 512


class StopGeneration(Exception):
    """Raised by an `on_tokens` or `on_prefill` callback to end a generation.

    From on_tokens (between two target steps) the tokens of the step just passed are kept; from on_prefill
    (between two prefill passes) the generation ends with no tokens. `reason` becomes the result's
    finish_reason (a server uses "stop" for a stop string it found, "cancelled" for a client that left).
    """

    def __init__(self, reason: str = "stop") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class GenerationResult:
    tokens: list[int]
    finish_reason: str  # "eos", "length", or the reason of a StopGeneration raised by a callback
    metrics: GenerationMetrics
    config: dict


def may_cut_drafted_end(run: Run, lv: Level) -> bool:
    """Whether a drafted EOS from `lv` may be left out of the draft (Draft.clip, keep_eos=False): always under
    greedy decoding; under sampling only a statistical level's, fixed by the context before any coin (a
    sampled token cut for its value would change the law of the review's output at its position)."""
    return run.sampling.greedy or isinstance(lv, StatisticalLevel)


class Cascade:
    """A target, its drafters (largest first, optionally ending in a statistical drafter) and a CascadeConfig.

    What a cascade learns that outlives its requests (where the target's texts end, routing's path statistics)
    is kept per model instance and shared by every cascade of the same K, levels and `scope`: a server makes
    one cascade per request and leaves the scope empty, so its requests learn from each other; a benchmark gives
    each method its own scope, so that no method learns from another's text of the prompt at hand.
    """

    def __init__(self, target: LanguageModel, drafters: Sequence[Drafter] = (), config: CascadeConfig | None = None,
                 scope: str = "") -> None:
        self.config = config or CascadeConfig()
        drafters = list(drafters)
        self.config.check_levels(len(drafters))
        if not isinstance(target, LanguageModel):
            raise CSDraftingError(f"the target must be a neural model (got {type(target).__name__})")
        for i, d in enumerate(drafters):
            if isinstance(d, StatisticalDrafter):
                if i != len(drafters) - 1:
                    raise CSDraftingError(f"{d.name} can only be the last (smallest) drafter: it reviews nothing")
                if d.vocab_size is not None and d.vocab_size != target.info.vocab_size:
                    raise CSDraftingError(
                        f"{d.name}'s tables cover {d.vocab_size} tokens but the target's vocabulary has "
                        f"{target.info.vocab_size}: build them with the target's tokenizer"
                    )
            elif isinstance(d, LanguageModel):
                check_compatible(target.info, d.info)
            else:
                raise CSDraftingError(
                    f"drafter {i} is a {type(d).__name__}, neither a LanguageModel nor a StatisticalDrafter"
                )
        self.target = target
        self.drafters = drafters
        self.bottom = len(drafters)
        self.dynamic = self.config.dynamic and self.bottom > 0  # plain decoding has nothing to plan
        costs = self._check_costs([target, *drafters])
        self.levels: list[Level] = [
            StatisticalLevel(i, m, self.config.bottom_length) if isinstance(m, StatisticalDrafter) else ModelLevel(i, m, c)
            for i, (m, c) in enumerate(zip([target, *drafters], costs))
        ]
        self.eos = frozenset(target.info.eos_token_ids)
        # routing needs a reviewer with a neural drafter to go around and a near-free bottom to look at
        routable = self.bottom >= 2 and isinstance(self.levels[-1], StatisticalLevel)
        k = self.config.k
        shape = json.dumps([None if k is None else k.to_json(), [lv.metrics.name for lv in self.levels], scope])
        # where the target's texts ended, learned across the cascades of this shape over this target: a
        # statistical drafter's proposal after a token that often ends the text is planned with that chance (it
        # knows nothing of ends: after a code edit's closing fence it proposes what followed the fence in the
        # prompt, and a review of it costs more than the plain step that gives the end token)
        self.ends: EndStats | None = None
        if self.dynamic and isinstance(self.levels[-1], StatisticalLevel):
            self.ends = text_ends(target, shape)
        self.router = None
        if self.config.route and self.dynamic and routable:
            # paths are measured per drafter instance across cascades (a server makes one per request): a
            # reviewer of the same name, in a cascade of the same K, levels and scope
            self.router = Router([lv.model if isinstance(lv, ModelLevel) else None for lv in self.levels], shape,
                                 self.eos)
        # The clock that prices the drafting a step has done so far, for the cost-aware planner (it weighs the
        # levels' own time against the review's). A replay that stands in for the target (bench/replay.py)
        # stops it, so that its plans do not depend on how busy the machine running the replay is.
        self.clock: Callable[[], float] = time.perf_counter
        # The planner prices reviews by each reviewer's curve corrected by what its passes measurably cost in
        # this cascade's generations so far (planning.PassCosts); the replay, whose stand-in target costs
        # nothing real, turns that off.
        self.adapt_costs = True

    # ----------------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        keep_cache: bool = False,
        on_prefill: Callable[[int, int], None] | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> GenerationResult:
        """Generate up to max_new_tokens after `prompt`, calling on_tokens with each batch of new tokens.

        The prompt but its last token is first prefilled into every neural level in passes of at most
        `prefill_chunk` tokens (the last one goes with the first draft into the first review, so prefilling
        apart adds no pass); `on_prefill(done, total)` runs after each pass. Either callback may raise StopGeneration to end the
        generation there (stop strings, cancellation); they run between forward passes, so every model's
        cache is consistent when they do. `metrics.prefill_seconds` is the time of that phase, so
        `metrics.decode_seconds` is what decoding alone took.

        keep_cache=True lets each model reuse the KV cache of the previous generation for the prefix it
        shares with this one (same output, less prefill); the default starts every model cold, so that
        timings of different configurations on the same models are comparable.
        """
        sampling = sampling or SamplingConfig()
        prompt = [int(t) for t in prompt]
        self._check_inputs(prompt, max_new_tokens)
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise CSDraftingError(f"prefill_chunk must be a positive integer (got {prefill_chunk!r})")
        self.max_new = max_new_tokens
        metrics = GenerationMetrics([lv.metrics for lv in self.levels])
        run = self.run = Run(
            sampling=sampling,
            rng=np.random.default_rng(sampling.seed),
            lenience=self.config.lenience,
            want_q=sampling.do_sample or self.config.lenience > 1,
            dynamic=self.dynamic,
            eos=self.eos,
            prompt=prompt,
            metrics=metrics,
        )
        t0 = time.perf_counter()
        for lv in self.levels:
            lv.begin(prompt, keep_cache)
        metrics.levels = [lv.metrics for lv in self.levels]
        self._check_context(prompt, max_new_tokens)

        generated: list[int] = []
        finish = "length"
        routes0 = dict(self.router.decisions) if self.router is not None else {}
        routes0_s = self.router.seconds if self.router is not None else 0.0
        if self.router is not None:
            self.router.pending.clear()  # positions in an earlier generation's text
        try:
            for lv in self.levels:
                lv.prefill(run, prefill_chunk, on_prefill)
        except StopGeneration as stop:
            finish = stop.reason
        metrics.prefill_seconds = time.perf_counter() - t0
        while finish == "length" and len(generated) < max_new_tokens:
            got = self.levels[0].propose(run, generated, 1) if self.bottom == 0 else self._step(0, generated)
            ends = got.clip(max_new_tokens - len(generated), self.eos)
            generated += got.tokens
            metrics.target_steps += 1
            if self.router is not None:
                self.router.resolve(generated)
            for lv in self.levels:
                lv.committed(run, generated)
            if on_tokens:
                try:
                    on_tokens(list(got.tokens))
                except StopGeneration as stop:
                    finish = stop.reason
                    break
            if ends:
                finish = "eos"
        metrics.seconds = time.perf_counter() - t0
        metrics.new_tokens = len(generated)
        if self.ends is not None:
            self.ends.learn(generated, self.eos)
        if self.router is not None:
            metrics.routes = {k: v - routes0[k] for k, v in self.router.decisions.items()}
            metrics.routes["seconds"] = self.router.seconds - routes0_s
        for lv in self.levels:
            lv.end(prompt + generated)
        return GenerationResult(generated, finish, metrics, self.describe())

    def describe(self) -> dict:
        return {
            "models": [lv.metrics.name for lv in self.levels],
            "K": self.config.k.to_json() if self.config.k else None,
            "lenience": self.config.lenience,
            "maxgram_length": self.config.bottom_length,
            "dynamic": self.config.dynamic,
            "route": self.config.route,
        }

    def _check_costs(self, models: list) -> list[CostCurve | None]:
        """Dynamic drafting needs a measured cost curve for every neural level (target first)."""
        if not self.dynamic:
            return [None] * len(models)
        costs = list(self.config.costs or ())
        if len(costs) != len(models):
            raise CSDraftingError(
                f"dynamic drafting needs one cost curve per level ({len(models)}: the target, then each drafter; "
                f"None for a statistical one), got {len(costs)}: measure them with `csdrafting tune` or "
                "csdrafting.cascade.planning.measure"
            )
        for i, (m, c) in enumerate(zip(models, costs)):
            if isinstance(m, LanguageModel) and not isinstance(c, CostCurve):
                raise CSDraftingError(f"level {i} ({m.info.label}) is a neural model and needs a CostCurve, got {c!r}")
        return costs

    # ----------------------------------------------------------------------------------------------------
    def _check_inputs(self, prompt: list[int], max_new_tokens: int) -> None:
        if not prompt:
            raise CSDraftingError("the prompt is empty: give at least one token (e.g. the BOS token) to condition on")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise CSDraftingError(f"max_new_tokens must be a positive integer (got {max_new_tokens!r})")
        v = self.target.info.vocab_size
        bad = [t for t in prompt if not 0 <= t < v]
        if bad:
            raise CSDraftingError(f"prompt token ids {bad[:5]} are outside the target's vocabulary [0, {v})")

    def _check_context(self, prompt: list[int], max_new_tokens: int) -> None:
        for lv in self.levels:
            if isinstance(lv, ModelLevel):
                info = lv.model.info
                need = len(lv.prefix) + max_new_tokens
                if need > info.context_length:
                    room = info.context_length - len(lv.prefix)
                    hint = f"lower max_new_tokens to {room}" if room > 0 else "shorten the prompt"
                    raise CSDraftingError(
                        f"{info.label} holds at most {info.context_length} tokens, but the prompt has {len(prompt)} "
                        f"and max_new_tokens is {max_new_tokens} ({need} in all): {hint}, or load the model with a "
                        "larger context"
                    )

    def _step(self, r: int, base: list[int], first: Draft | None = None) -> Draft:
        """Reviewer r: fill a draft from the levels below it (K row r), then review it in one pass.

        Horizontal: drafter levels j = r+1, r+2, ... fill the draft in turn up to their cumulative quotas
        K[r][j]. Vertical: a neural drafter fills its share by reviewing drafts of the levels below it;
        the bottom level (and a drafter whose K row is zero) drafts alone. With dynamic drafting each level
        keeps only what pays at r's measured cost, and a level whose confidence falls hands over to the next;
        with routing, a neural drafter is skipped whenever the levels below it are predicted to pay more.
        `first`: the bottom's proposal after `base`, when the caller has already asked for it.
        """
        run, k = self.run, self.config.k
        draft = Draft()
        room = self.max_new - len(base) - 1  # draft tokens that can still matter: the review adds one more
        plan = StepPlan(self.levels[r].planning_cost(self.adapt_costs), self.clock) if self.dynamic else None
        through: dict[int, tuple[int, float]] = {}  # routing's bookkeeping: drafter j -> (first position, seconds)
        around: tuple[int, int] | None = None  # routing went around drafter j from this draft position on: (j, at)
        after_neural: int | None = None  # the last neural drafter that added tokens to this draft
        # the bottom's first token after them (the draft's tail): (its position, its confidence as calibrated, the
        # yield such tokens measurably have), to discount its promise and then measure it (planning.TailYield)
        tail: tuple[int, float, TailYield] | None = None
        for j in range(r + 1, self.bottom + 1):
            lv = self.levels[j]
            quota = min(k.quota(r, j), room)
            ends = stalled = False
            while len(draft) < quota:
                ctx = base + draft.tokens
                if j == self.bottom or not k.reviews(j):  # the bottom, or a drafter with a zero K row, drafts alone
                    if first is not None and j == self.bottom and len(draft) == first.at:
                        got, first = first, None
                        got.truncate(quota - len(draft))
                    else:
                        got = lv.propose(run, ctx, quota - len(draft), plan, len(draft))
                else:
                    if plan is not None and not plan.worth_more(plan.value, len(draft), lv.cost(1)):
                        break  # even a sure token from D_j would not pay for its pass: hand over to the next level
                    # routing decides once per draft, before j's first step: the whole rest of the draft through j
                    # (as the paper's cascade would draft it) or around it
                    decide = self.router is not None and j not in through
                    peek = self._peek(r, j, ctx, plan, len(draft), room) if decide else None
                    if peek is not None and peek.direct:
                        first, around = peek, (j, len(draft))
                        break  # the levels below j pay more on their own: go around j for the rest of this draft
                    if peek is not None:
                        peek.at = 0  # j's own draft after ctx starts with it
                    if self.router is None:
                        got = self._step(j, ctx)
                    else:
                        t0 = self._priced(j)
                        # a draft through j is measured without j's catch-up on text it skipped (that is priced
                        # apart, at each decision, as what going through j costs then)
                        at, sec = through.get(j, (len(draft), -(peek.catch_up if peek is not None else 0.0)))
                        got = self._step(j, ctx, peek)
                        through[j] = (at, sec + self._priced(j) - t0)
                if (j == self.bottom and after_neural is not None and tail is None and plan is not None and got
                        and got.conf[0] is not None):
                    ty = tail_yield(self.levels[after_neural].model)
                    tail = (len(draft), got.conf[0], ty)
                    got.conf = [got.conf[0] * ty.factor, *got.conf[1:]]
                if plan is not None and got:
                    planned = got.conf
                    if r == 0 and not draft and isinstance(lv, StatisticalLevel) and got.conf[0] is not None:
                        # the text may end before the proposal's first token (its promise, as routing measures
                        # it, is kept as proposed: it is judged only where the text went on)
                        planned = [got.conf[0] * (1.0 - self._end_chance(base)), *got.conf[1:]]
                    keep = plan.keep(planned, len(draft))
                    if keep < len(got):
                        stalled = True  # confidence fell: the rest of the draft goes to the cheaper level below
                        # A sampled token is never dropped for its own value (or its successors'): which tokens
                        # reach the reviewer would then depend on them, and a reviewed token would no longer be
                        # distributed as the q it carries. Under sampling a neural level's tokens are kept whole
                        # and only the drafting after them stops; a statistical level's tokens are fixed by
                        # the context, so cutting them is a choice made before any coin.
                        if run.sampling.greedy or isinstance(lv, StatisticalLevel):
                            lv.metrics.dropped += len(got) - keep
                            got.truncate(keep)
                    plan.add(planned)
                if not got:
                    break  # the level had nothing (worth) offering; leave the rest of this quota to the next
                draft.extend(got)
                if isinstance(lv, ModelLevel):
                    after_neural = j
                # a drafted EOS is left to the reviewer's own token after the draft where that keeps the law
                ends = draft.clip(room, self.eos, keep_eos=not may_cut_drafted_end(run, lv))
                if ends or stalled:
                    break
            if ends:
                break
        out = self.levels[r].review(run, base, draft)
        # the text ended at this draft position (no level's tokens could come after it): a path is not judged there
        end_at = len(out) - 1 if out.tokens and out.tokens[-1] in self.eos else None
        if tail is not None and len(draft) > tail[0] and len(out) - 1 >= tail[0]:  # the review reached the tail
            tail[2].observe(tail[1], len(out) - 1 > tail[0])
        if through:
            self.router.observe(r, {j: v for j, v in through.items() if end_at is None or end_at > v[0]},
                                len(draft), len(out) - 1)
        if around is not None and len(out) - 1 >= around[1]:  # the direct tokens were reached: measure them
            if end_at is None or end_at > around[1]:  # those before the text's end, if it ended within them
                predicted = sum(survival(draft.conf[around[1]:end_at]))
                self.router.observe_direct(r, around[0], predicted, len(out) - 1 - around[1])
        return out

    def _end_chance(self, generated: list[int]) -> float:
        """The measured chance that the target's text ends right after `generated` (`EndStats`; none after the
        output's first token, which the statistics leave out)."""
        return self.ends.p_end(generated[-1]) if self.ends is not None and len(generated) >= 2 else 0.0

    def _priced(self, j: int) -> float:
        """What the levels from j down have cost so far, priced by their cost curves: the units of the
        planner, and the same on every run of the same text (routing then depends on no clock)."""
        return sum(lv.priced for lv in self.levels[j:])

    def _peek(self, r: int, j: int, ctx: list[int], plan: StepPlan, have: int, room: int) -> "_Peek | None":
        """Routing at reviewer r before a step of neural drafter j: the bottom's proposal after ctx (as long as
        row r lets the bottom draft), and whether r should take it directly instead of asking j."""
        b = self.bottom
        n = min(self.config.k.quota(r, b), room) - have
        if n <= 0:
            return None  # K gives the bottom no positions of r's draft: the paper's path through j
        t0 = time.perf_counter()
        prop = self.levels[b].propose(self.run, ctx, n)
        peek = _Peek(prop.tokens, prop.qs, prop.src, prop.conf)
        peek.at = have
        peek.catch_up = self._catch_up(j, ctx)
        peek.direct = self.router.go_direct(r, j, plan.value, plan.review, have, plan.spent(), prop.conf,
                                            peek.catch_up, prop.tokens, len(ctx) if r == 0 else None,
                                            self._end_chance(ctx) if r == 0 else 0.0)
        self.router.seconds += time.perf_counter() - t0
        return peek

    def _catch_up(self, j: int, ctx: list[int]) -> float:
        """The price, by their cost curves, of what the neural levels from j down would evaluate beyond a
        normal step's first pass before drafting after ctx: the text they missed while routing went around
        them (a drafter that took every step lags by one token, the last one committed)."""
        price = 0.0
        for lv in self.levels[j:]:
            if isinstance(lv, ModelLevel) and lv.cost is not None:
                full = lv.prefix + ctx
                lag = len(full) - common_prefix(lv.model.cached_tokens, full)
                if lag > 1:
                    price += lv.cost(lag) - lv.cost(1)
        return price


class _Peek(Draft):
    """A proposal of the bottom level that routing looked at, kept for whichever level takes it next."""

    at: int = 0  # the draft length it continues
    direct: bool = False
    catch_up: float = 0.0  # what the drafter gone around would first have to evaluate of the text it missed
