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

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence, Union

import numpy as np

from ..drafters.base import StatisticalDrafter
from ..protocol import ArgmaxExtension, CSDraftingError, LanguageModel, cache_stamps, check_compatible, common_prefix
from . import acceptance
from .acceptance import Q
from .config import CascadeConfig, SamplingConfig
from .metrics import GenerationMetrics, LevelMetrics
from .planning import CostCurve, DraftValue, best_length, worth_more
from .sampling import sample, softmax, warp

Drafter = Union[LanguageModel, StatisticalDrafter]


class StopGeneration(Exception):
    """Raised by an `on_tokens` callback to end a generation between two target steps.

    The tokens of the step that was just passed to the callback are kept; `reason` becomes the result's
    finish_reason (a server uses "stop" for a stop string it found, "cancelled" for a client that left).
    """

    def __init__(self, reason: str = "stop") -> None:
        super().__init__(reason)
        self.reason = reason


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

    def clip(self, n: int, eos: frozenset[int]) -> bool:
        """Keep at most n tokens and nothing after an EOS; True if the draft now ends in EOS."""
        for i, t in enumerate(self.tokens[:n]):
            if t in eos:
                n = i + 1
                break
        self.truncate(n)
        return bool(self.tokens) and self.tokens[-1] in eos


class _ModelLevel:
    """A neural model as seen by the engine: maps (generated tokens, start) to logits rows.

    It keeps the logits rows it has computed for positions still in the cache, so that after a rollback
    the row at the divergence point is reused instead of re-evaluating the token before it. When such a
    row is gone (it was never computed, or was forgotten), the cache rolls back one token further and
    recomputes it: always correct, at the price of one extra token in the batch.

    The model instance may be shared (one model at two levels, or by two cascades), and then another
    user may have rolled back and rewritten the cache since a row was kept. Each row is therefore kept
    with the cache stamp of its position (protocol.LanguageModel.cache_stamps) and reused only while
    that stamp is unchanged. A model without stamps gets no reuse across calls: its rows live for one
    call only, which costs one extra token per review but cannot go stale.

    Under strict greedy decoding only each row's argmax is needed (`top_only`); a model with
    `extend_argmax` then keeps its rows on its device and only the id is kept here.
    """

    def __init__(self, level: int, model: LanguageModel, kind: str) -> None:
        self.model = model
        self.argmax_ext = isinstance(model, ArgmaxExtension)  # a runtime Protocol check: once, not per call
        self.prefix: list[int] = []
        # position -> (its cache stamp then, full row or argmax id)
        self.rows: dict[int, tuple[int, np.ndarray | int]] = {}
        self.metrics = LevelMetrics(level, model.info.label, kind, model.info.n_params)

    def begin(self, prompt: Sequence[int]) -> None:
        # kept rows need no filtering here: logits_after checks each against the cache's tokens and stamps
        self.prefix = list(self.model.begin(prompt))

    def logits_after(self, generated: Sequence[int], start: int, top_only: bool = False) -> np.ndarray:
        """Rows predicting generated[start], ..., generated[-1] and the token after: len - start + 1 rows
        (with top_only, only their argmax ids)."""
        seq = self.prefix + list(generated)
        first = len(self.prefix) + start - 1  # input position whose output predicts generated[start]
        cached = self.model.cached_tokens
        stamps = cache_stamps(self.model)
        if stamps is None:
            self.rows = {}
        keep = min(common_prefix(cached, seq), len(seq))
        rows = self.rows
        for pos in range(first, keep):
            kept = rows.get(pos)
            if kept is None or kept[0] != stamps[pos] or not (top_only or isinstance(kept[1], np.ndarray)):
                keep = pos
                break
        if keep < len(cached):
            self.model.rollback(keep)
            for p in [p for p in rows if p >= keep]:
                del rows[p]
        if keep < len(seq):
            new = seq[keep:]
            logits_from = max(0, first - keep)
            ids_only = top_only and self.argmax_ext
            t0 = time.perf_counter()
            if ids_only:
                out = self.model.extend_argmax(new, logits_from=logits_from)
            else:
                out = self.model.extend(new, logits_from=logits_from)
            self.metrics.seconds += time.perf_counter() - t0
            self.metrics.forward_passes += 1
            self.metrics.tokens_evaluated += len(new)
            at = keep + logits_from
            stamps = cache_stamps(self.model)
            for i, row in enumerate(out):
                rows[at + i] = (stamps[at + i] if stamps is not None else 0, int(row) if ids_only else row)
            if at == first and not top_only:  # the new rows are exactly the ones asked for: no need to copy
                return out
        got = [rows[p][1] for p in range(first, len(seq))]
        if top_only:
            return np.array([r if isinstance(r, int) else int(np.argmax(r)) for r in got], dtype=np.int64)
        return np.stack(got)

    def forget_before(self, pos: int) -> None:
        """Drop rows the engine can no longer ask for (positions before the committed text)."""
        for p in [p for p in self.rows if p < pos]:
            del self.rows[p]


@dataclass
class GenerationResult:
    tokens: list[int]
    finish_reason: str  # "eos", "length", or the reason of a StopGeneration raised by on_tokens
    metrics: GenerationMetrics
    config: dict


class Cascade:
    """A target, its drafters (largest first, optionally ending in a statistical drafter) and a CascadeConfig."""

    def __init__(self, target: LanguageModel, drafters: Sequence[Drafter] = (), config: CascadeConfig | None = None) -> None:
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
        self.levels: list[_ModelLevel | StatisticalDrafter] = [_ModelLevel(0, target, "target")]
        for i, d in enumerate(drafters, start=1):
            self.levels.append(d if isinstance(d, StatisticalDrafter) else _ModelLevel(i, d, "drafter"))
        self.bottom = len(self.levels) - 1
        self.eos = frozenset(target.info.eos_token_ids)
        self.dynamic = self.config.dynamic and self.bottom > 0  # plain decoding has nothing to plan
        self.costs = self._check_costs()

    # ----------------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        keep_cache: bool = False,
    ) -> GenerationResult:
        """Generate up to max_new_tokens after `prompt`, calling on_tokens with each batch of new tokens.

        on_tokens may raise StopGeneration to end the generation there (stop strings, cancellation); it is
        called between target steps, so every model's cache is consistent when it does.

        keep_cache=True lets each model reuse the KV cache of the previous generation for the prefix it
        shares with this one (same output, less prefill); the default starts every model cold, so that
        timings of different configurations on the same models are comparable.
        """
        sampling = sampling or SamplingConfig()
        prompt = [int(t) for t in prompt]
        self._check_inputs(prompt, max_new_tokens)
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.max_new = max_new_tokens
        self.want_q = sampling.do_sample or self.config.lenience > 1
        self.prompt = prompt
        self.metrics = GenerationMetrics(self._fresh_metrics())
        for lv in self.levels:
            if isinstance(lv, _ModelLevel):
                if not keep_cache:
                    lv.model.rollback(0)
                lv.begin(prompt)
            else:
                lv.begin(prompt)
        self._check_context(prompt, max_new_tokens)

        t0 = time.perf_counter()
        generated: list[int] = []
        finish = "length"
        while len(generated) < max_new_tokens:
            got = self._propose(self.bottom, generated, 1) if self.bottom == 0 else self._step(0, generated)
            ends = got.clip(max_new_tokens - len(generated), self.eos)
            generated += got.tokens
            self.metrics.target_steps += 1
            for lv in self.levels:
                if isinstance(lv, _ModelLevel):
                    lv.forget_before(len(lv.prefix) + len(generated) - 1)
            if on_tokens:
                try:
                    on_tokens(list(got.tokens))
                except StopGeneration as stop:
                    finish = stop.reason
                    break
            if ends:
                finish = "eos"
                break
        self.metrics.seconds = time.perf_counter() - t0
        self.metrics.new_tokens = len(generated)
        if isinstance(self.levels[self.bottom], StatisticalDrafter):
            self.levels[self.bottom].end(prompt + generated)
        return GenerationResult(generated, finish, self.metrics, self.describe())

    def describe(self) -> dict:
        names = [self.target.info.label] + [
            d.name if isinstance(d, StatisticalDrafter) else d.info.label for d in self.drafters
        ]
        return {
            "models": names,
            "K": self.config.k.to_json() if self.config.k else None,
            "lenience": self.config.lenience,
            "maxgram_length": self.config.bottom_length,
            "dynamic": self.config.dynamic,
        }

    def _check_costs(self) -> list[CostCurve | None]:
        """Dynamic drafting needs a measured cost curve for every neural level (target first)."""
        if not self.dynamic:
            return [None] * len(self.levels)
        costs = list(self.config.costs or ())
        if len(costs) != len(self.levels):
            raise CSDraftingError(
                f"dynamic drafting needs one cost curve per level ({len(self.levels)}: the target, then each drafter; "
                f"None for a statistical one), got {len(costs)}: measure them with `csdrafting tune` or "
                "csdrafting.cascade.planning.measure"
            )
        for i, (lv, c) in enumerate(zip(self.levels, costs)):
            if isinstance(lv, _ModelLevel) and not isinstance(c, CostCurve):
                raise CSDraftingError(f"level {i} ({lv.metrics.name}) is a neural model and needs a CostCurve, got {c!r}")
        return costs

    # ----------------------------------------------------------------------------------------------------
    def _fresh_metrics(self) -> list[LevelMetrics]:
        out = []
        for i, lv in enumerate(self.levels):
            if isinstance(lv, _ModelLevel):
                lv.metrics = LevelMetrics(i, lv.metrics.name, lv.metrics.kind, lv.metrics.n_params)
                out.append(lv.metrics)
            else:
                out.append(LevelMetrics(i, lv.name, "statistical", 0))
        return out

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
            if isinstance(lv, _ModelLevel):
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

    def _room(self, base: Sequence[int]) -> int:
        """Draft tokens that can still matter after `base`: the review adds one more."""
        return self.max_new - len(base) - 1

    def _step(self, r: int, base: list[int]) -> Draft:
        """Reviewer r: fill a draft from the levels below it (K row r), then review it in one pass."""
        draft = Draft()
        room = self._room(base)
        k = self.config.k
        plan = _Plan(self.costs[r]) if self.dynamic else None
        for j in range(r + 1, self.bottom + 1):
            quota = min(k.quota(r, j), room)
            ends = stalled = False
            while len(draft) < quota:
                ctx = base + draft.tokens
                if j == self.bottom or not k.reviews(j):  # a drafter with a zero K row drafts by itself
                    n = quota - len(draft)
                    if isinstance(self.levels[j], StatisticalDrafter) and self.config.bottom_length:
                        n = self.config.bottom_length
                    got = self._propose(j, ctx, n, plan, len(draft))
                else:
                    if plan is not None and not plan.worth_more(plan.value, len(draft), self.costs[j](1)):
                        break  # even a sure token from D_j would not pay for its pass: hand over to the next level
                    got = self._step(j, ctx)
                if plan is not None and got:
                    keep = plan.keep(got.conf, len(draft))
                    if keep < len(got):
                        self.metrics.levels[j].dropped += len(got) - keep
                        got.truncate(keep)
                        stalled = True  # confidence fell: the rest of the draft goes to the cheaper level below
                    plan.add(got.conf)
                if not got:
                    break  # the level had nothing (worth) offering; leave the rest of this quota to the next
                draft.extend(got)
                ends = draft.clip(room, self.eos)
                if ends or stalled:
                    break
            if ends:
                break
        return self._review(r, base, draft)

    def _review(self, r: int, base: list[int], draft: Draft) -> Draft:
        lv = self.levels[r]
        lenience = 1.0 if r == 0 else self.config.lenience
        want_q = self.want_q and r > 0
        # argmax ids suffice, unless a dynamic drafting reviewer hands its confidence upward
        strict_greedy = self.sampling.greedy and lenience == 1.0 and not want_q and not (self.dynamic and r > 0)
        rows = lv.logits_after(base + draft.tokens, len(base), top_only=strict_greedy)
        if strict_greedy:
            v = acceptance.review_argmax(rows, draft.tokens)
        elif self.sampling.greedy:
            v = acceptance.review_greedy(rows, draft.tokens, draft.qs, lenience, want_q)
        else:
            v = acceptance.review_sampling(_Warped(rows, self.sampling), draft.tokens, draft.qs, lenience, self.rng, want_q)
        lv.metrics.record_review(len(draft), v.n_accepted)
        for i, s in enumerate(draft.src):
            m = self.metrics.levels[s]
            m.drafted += 1
            m.accepted += i < v.n_accepted
        n = len(v.tokens)
        # a drafting reviewer's confidence in what it hands upward: its own probability of each token
        conf = [_prob(rows[i], t) for i, t in enumerate(v.tokens)] if self.dynamic and r > 0 else [None] * n
        return Draft(v.tokens, v.qs if want_q else [None] * n, [r] * n, conf)

    def _propose(self, j: int, base: list[int], n: int, plan: "_Plan | None" = None, have: int = 0) -> Draft:
        """The bottom level proposes up to n tokens after base (`have` tokens already in the reviewer's draft)."""
        lv = self.levels[j]
        if isinstance(lv, StatisticalDrafter):
            t0 = time.perf_counter()
            prop = lv.propose_scored(self.prompt + base, n)
            m = self.metrics.levels[j]
            m.seconds += time.perf_counter() - t0
            m.proposals += 1
            k = len(prop.tokens)
            return Draft(prop.tokens, [None] * k, [j] * k, prop.confidence)
        # a neural bottom drafts autoregressively (classic speculative decoding; plain decoding when j == 0)
        lv.metrics.proposals += 1
        out = Draft()
        want_q = self.want_q and j > 0
        value = replace(plan.value) if plan is not None else None
        # argmax ids suffice unless a probability is needed (lenience's q, or a dynamic drafter's confidence)
        strict_greedy = self.sampling.greedy and not want_q and not (self.dynamic and j > 0)
        for _ in range(n):
            if plan is not None and not plan.worth_more(value, have + len(out), self.costs[j](1)):
                break
            row = lv.logits_after(base + out.tokens, len(base) + len(out), top_only=strict_greedy)[-1]
            if strict_greedy:
                x, q, c = int(row), None, None
            elif self.sampling.greedy:
                x = int(np.argmax(row))
                q: Q = float(softmax(row)[x]) if want_q else None
                c = q if isinstance(q, float) else (_prob(row, x) if self.dynamic else None)
            else:
                p = warp(row, self.sampling)
                x = sample(p, self.rng)
                q = p if want_q else None
                c = float(p[x])
            out.tokens.append(x)
            out.qs.append(q)
            out.src.append(j)
            out.conf.append(c)
            if value is not None:
                value.add(c)
            if x in self.eos:
                break
        return out


def _prob(row: np.ndarray, token: int) -> float:
    """softmax(row)[token], without materializing the distribution."""
    x = np.asarray(row, dtype=np.float64)
    return float(1.0 / np.exp(x - x[token]).sum())


class _Plan:
    """Cost-aware drafting for one reviewer's step: the draft's value so far and the time spent on it."""

    def __init__(self, review: CostCurve) -> None:
        self.review = review
        self.value = DraftValue()
        self.t0 = time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.t0

    def keep(self, conf: Sequence[float | None], have: int) -> int:
        return best_length(conf, self.review, self.value, have, self.spent())

    def worth_more(self, value: DraftValue, have: int, next_cost: float) -> bool:
        return worth_more(value, self.review, have, self.spent(), next_cost)

    def add(self, conf: Sequence[float | None]) -> None:
        for c in conf:
            self.value.add(c)


class _Warped:
    """Lazily warped rows: a review that rejects early never pays for the rows after it."""

    def __init__(self, rows: np.ndarray, cfg: SamplingConfig) -> None:
        self.rows, self.cfg, self.cache = rows, cfg, {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.cache:
            self.cache[i] = warp(self.rows[i], self.cfg)
        return self.cache[i]
