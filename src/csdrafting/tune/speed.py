"""An EWIF-style model of a cascade's speed, driven by MEASURED cost curves (cs-drafting.md section 6).

What it computes, for one configuration (target, drafters largest first, cumulative K, bottom length):
the expected number of tokens one target step emits, E[T_0], and the expected seconds it takes, E[S_0];
the steady decoding rate is E[T_0] / E[S_0] (renewal-reward: the ratio of expectations is the long-run rate).

How a step is modelled, mirroring `Cascade._step` exactly:
- Reviewer r fills its draft level by level, j = r+1 .. bottom, each up to its cumulative quota K[r][j].
  A neural drafter j above the bottom fills by running its own step, which emits T_j = A_j + 1 tokens
  (A_j = how many of ITS draft it accepted); the bottom proposes the rest of the quota in one call (a
  neural bottom autoregressively, one forward pass per token; a statistical bottom (drafters/registry.py:
  Max-Gram, the suffix drafter, ...) at its measured proposal cost, in calls of `bottom_length` tokens
  when set). A sub-step may overshoot the quota; the next level then adds nothing.
- Then r reviews the draft of length L in ONE forward pass over L + 1 new tokens (the token before the
  draft, which r has not seen yet, plus the draft), costing `cost_r(L + 1)`.
- With lenience 1 every token a neural level emits is that level's own greedy token, so whether reviewer
  r accepts position i depends only on which level produced it: r accepts it with the conditional
  probability `alpha[r, src](idx)` (given the positions before it were accepted), idx counting from the
  start of that source's run in the draft (for a statistical drafter, from the start of each proposal).

Assumptions, stated once: acceptance at different levels is independent given the draft's composition,
and the T_j of successive sub-steps are independent and identically distributed. Then a dynamic program
over the draft length gives the exact distribution of A_r, hence of T_r, level by level from the bottom up.

One refinement at the target, where it matters most: rejections cluster, so a draft that starts right
after a rejected position (the target's correction) is accepted less often than one that starts after a
fully accepted draft (the bonus). With `Measurements.restart` profiles for those two kinds of start, the
target's steps form a two-state Markov chain (the next start is "after a hit" exactly when the whole
draft was accepted) and the rate is the stationary mix. With equal profiles it is the single-state model.
Where the model still errs (correlation between levels, the last steps clipped by max_new_tokens),
replay.py replays the recorded calibration text instead; the search uses both.

With constant costs it reduces to the paper's formulas (tested in tests/test_tune.py):
- speculative decoding, one neural drafter, K = [[k]]:
  E[T_0] = (1 - a^(k+1)) / (1 - a), E[S_0] = 1 + k c, EWIF = E[T_0] / E[S_0];
- horizontal cascade: positions drafted by models with acceptance a_i and cost c_i give
  (sum_i prod_{j<=i} a_j) / (1 + sum_i c_i);
- vertical cascade with a FIXED number n of reviews by D_1 (the paper's setting; `calls=`, the engine
  uses quotas instead): (1 - a phi(a)^n) / ((1 - a)(1 + n c_1 + n k c_2)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..cascade.planning import CostCurve
from ..drafters.registry import is_statistical
from ..protocol import CSDraftingError


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Profile:
    """Per-position conditional acceptance: alphas[i-1] = P(position i accepted | positions < i were).

    Past the last entry the last value holds (a constant profile is the paper's single alpha).
    """

    alphas: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise CSDraftingError(f"acceptance profile entries must lie in [0, 1]: {self.alphas}")

    @classmethod
    def constant(cls, alpha: float) -> "Profile":
        return cls((float(alpha),))

    def at(self, i: int) -> float:
        return self.alphas[min(i, len(self.alphas)) - 1]

    def log_cumprod(self, n: int) -> np.ndarray:
        """lc[i] = log prod_{l<=i} alpha(l), i = 0..n (alphas floored at 1e-12 so ratios stay finite)."""
        a = np.array([self.at(i) for i in range(1, n + 1)], dtype=float)
        return np.concatenate([[0.0], np.cumsum(np.log(np.maximum(a, 1e-12)))])

    def survival(self, n: int) -> np.ndarray:
        """P(the first i positions are all accepted), i = 0..n."""
        return np.exp(self.log_cumprod(n))

    def to_json(self) -> list[float]:
        return [round(a, 6) for a in self.alphas]


@dataclass
class Measurements:
    """Everything the model needs: one cost curve per model (and per statistical drafter: the seconds of one
    proposal of n tokens), one profile per (reviewer, drafter) pair."""

    target: str
    costs: dict[str, CostCurve]
    acceptance: dict[tuple[str, str], Profile]  # (reviewer, drafter) -> profile
    meta: dict = field(default_factory=dict)
    # optional, target as reviewer only: the profile of drafts that start right after a rejected position
    # ("miss") and right after an accepted one ("hit"); see CascadeModel
    restart: dict[tuple[str, str], tuple[Profile, Profile]] = field(default_factory=dict)

    def cost(self, name: str) -> CostCurve:
        if name not in self.costs:
            if is_statistical(name):
                return CostCurve.constant(0.0)  # the paper's accounting; measured when available
            raise CSDraftingError(f"no cost curve measured for {name!r}; measured: {sorted(self.costs)}")
        return self.costs[name]

    def profile(self, reviewer: str, drafter: str) -> Profile:
        try:
            return self.acceptance[(reviewer, drafter)]
        except KeyError:
            raise CSDraftingError(f"no acceptance measured for {drafter!r} reviewed by {reviewer!r}") from None

    @property
    def drafters(self) -> list[str]:
        return [n for n in self.costs if n != self.target]

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "costs": {k: v.to_json() for k, v in self.costs.items()},
            "acceptance": [{"reviewer": r, "drafter": d, "alphas": p.to_json()} for (r, d), p in self.acceptance.items()],
            "restart": [{"reviewer": r, "drafter": d, "after_miss": a.to_json(), "after_hit": b.to_json()}
                        for (r, d), (a, b) in self.restart.items()],
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Measurements":
        return cls(
            d["target"],
            {k: CostCurve.from_json(v) for k, v in d["costs"].items()},
            {(a["reviewer"], a["drafter"]): Profile(tuple(a["alphas"])) for a in d["acceptance"]},
            d.get("meta", {}),
            {(a["reviewer"], a["drafter"]): (Profile(tuple(a["after_miss"])), Profile(tuple(a["after_hit"])))
             for a in d.get("restart", [])},
        )


@dataclass(frozen=True)
class Config:
    """A cascade configuration the model can evaluate: drafters largest first, K cumulative (paper spelling).

    `calls` (theory only, not an engine mode): calls[r][j] = how many times reviewer r invokes level j
    instead of filling a quota; the bottom then proposes K[r][j] tokens per call. It reproduces the
    paper's vertical-cascade setting, where D_1 reviews a fixed number of drafts.
    """

    drafters: tuple[str, ...] = ()
    k: tuple[tuple[int, ...], ...] | None = None
    bottom_length: int | None = None  # tokens per call of a statistical bottom (None: what its quota asks)
    calls: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        m = len(self.drafters)
        for name in self.drafters[:-1]:
            if is_statistical(name):
                raise CSDraftingError(f"{name} can only be the last drafter")
        if m == 0:
            if self.k is not None:
                raise CSDraftingError("K was given but there are no drafters")
            return
        if self.k is None or len(self.k) != m or any(len(r) != m for r in self.k):
            raise CSDraftingError(f"{m} drafter(s) need an {m}x{m} K")

    @property
    def statistical_bottom(self) -> bool:
        return bool(self.drafters) and is_statistical(self.drafters[-1])

    @property
    def key(self) -> tuple:
        return (self.drafters, self.k, self.bottom_length if self.statistical_bottom else None)

    def describe(self) -> str:
        if not self.drafters:
            return "plain decoding"
        k = "[" + ",".join("[" + ",".join(str(v) for v in row) + "]" for row in self.k) + "]"
        bl = f", bottom length {self.bottom_length}" if self.statistical_bottom and self.bottom_length else ""
        return f"{' > '.join(self.drafters)}  K={k}{bl}"


# ------------------------------------------------------------------------------------------------ output


@dataclass
class Prediction:
    config: Config
    tokens_per_step: float  # E[T_0]: tokens per target forward pass
    seconds_per_step: float  # E[S_0]
    target_token_seconds: float  # cost_0(1): one step of plain decoding
    passes: dict[str, float]  # expected forward passes (statistical drafters: proposals) per target step
    draft_length: float  # expected length of the target's draft
    prefill: dict[str, CostCurve] = field(default_factory=dict, repr=False)

    @property
    def tokens_per_second(self) -> float:
        """Steady decoding rate, prompt prefill not included."""
        return self.tokens_per_step / self.seconds_per_step

    @property
    def ewif(self) -> float:
        """Expected walltime improvement factor over plain decoding of the same target."""
        return self.tokens_per_second * self.target_token_seconds

    def seconds(self, prompt_tokens: int, new_tokens: int) -> float:
        """Predicted wall time of one generation, the prompt's prefill by every model included."""
        pre = sum(c.prefill_seconds(prompt_tokens) for c in self.prefill.values())
        return pre + new_tokens / self.tokens_per_second

    def end_to_end(self, workload: Iterable[tuple[int, int]]) -> float:
        """tok/s over generations of (prompt tokens, new tokens), as `demo` and `bench` measure it."""
        work = list(workload)
        total = sum(n for _, n in work)
        return total / sum(self.seconds(p, n) for p, n in work) if total else 0.0

    def to_json(self) -> dict:
        return {
            "drafters": list(self.config.drafters),
            "k": [list(r) for r in self.config.k] if self.config.k else None,
            "bottom_length": self.config.bottom_length,
            "tokens_per_step": self.tokens_per_step,
            "seconds_per_step": self.seconds_per_step,
            "tokens_per_second": self.tokens_per_second,
            "ewif": self.ewif,
            "passes_per_step": self.passes,
            "draft_length": self.draft_length,
        }


# ------------------------------------------------------------------------------------------------ model


@dataclass
class _Step:
    """One step of reviewer r: distribution of the tokens it emits, its expected time and passes."""

    p_tokens: np.ndarray  # p_tokens[t] = P(T = t); index 0 unused
    seconds: float
    passes: dict[str, float]
    draft_length: float
    p_full: float = 0.0  # P(the whole draft is accepted): the next step then starts after a hit


class CascadeModel:
    """Evaluates configurations against one set of measurements; caches sub-cascades across calls."""

    def __init__(self, meas: Measurements, max_draft: int = 256) -> None:
        self.meas = meas
        self.max_draft = max_draft
        self._cache: dict[tuple, _Step] = {}
        self._lc: dict[tuple, np.ndarray] = {}

    def predict(self, config: Config) -> Prediction:
        names = (self.meas.target,) + tuple(config.drafters)
        c0 = self.meas.cost(self.meas.target)
        models = {n: self.meas.cost(n) for n in names if not is_statistical(n)}
        if not config.drafters:
            return Prediction(config, 1.0, c0(1), c0(1), {self.meas.target: 1.0}, 0.0, models)
        if any((self.meas.target, d) in self.meas.restart for d in config.drafters) and config.calls is None:
            # Drafts start either right after a rejected position (the correction) or after a fully accepted
            # draft (the bonus), and rejections cluster: the two kinds of start have their own profiles.
            # Which kind the next step starts with is a two-state Markov chain; its stationary mix weighs them.
            miss = self._step(names, 0, config, "miss")
            hit = self._step(names, 0, config, "hit")
            pi_hit = miss.p_full / (1.0 - hit.p_full + miss.p_full) if miss.p_full > 0 else 0.0
            steps = [(1.0 - pi_hit, miss), (pi_hit, hit)]
        else:
            steps = [(1.0, self._step(names, 0, config))]
        tokens = sum(w * float((np.arange(len(st.p_tokens)) * st.p_tokens).sum()) for w, st in steps)
        seconds = sum(w * st.seconds for w, st in steps)
        passes: dict[str, float] = {}
        for w, st in steps:
            for k, v in st.passes.items():
                passes[k] = passes.get(k, 0.0) + w * v
        draft = sum(w * st.draft_length for w, st in steps)
        return Prediction(config, tokens, seconds, c0(1), passes, draft, models)

    # The DP state after some levels have filled: (s, l) -> [probability, survival mass], where l is the
    # draft length, s where the current source's run started (idx = position - s), and the survival mass
    # is E[1{state} * prod over positions so far of alpha]: the probability that the reviewer would accept
    # everything drafted so far. surv[i] accumulates P(A_r >= i).
    # `start` ("miss" / "hit", top level only) picks the restart profiles for the run that opens the draft.
    def _step(self, names: tuple[str, ...], r: int, cfg: Config, start: str | None = None) -> _Step:
        key = (names[r:], tuple(row[r:] for row in cfg.k[r:]), cfg.bottom_length if cfg.statistical_bottom else None,
               tuple(row[r:] for row in cfg.calls[r:]) if cfg.calls else None, start)
        if key in self._cache:
            return self._cache[key]
        b = len(names) - 1
        reviewer = names[r]
        cap = self.max_draft
        surv = np.zeros(cap + 2)
        surv[0] = 1.0
        states: dict[tuple[int, int], list[float]] = {(0, 0): [1.0, 1.0]}
        seconds = 0.0
        passes: dict[str, float] = {}

        def add_pass(name: str, n: float) -> None:
            passes[name] = passes.get(name, 0.0) + n

        for j in range(r + 1, b + 1):
            src = names[j]
            src_statistical = is_statistical(src)
            quota = cfg.k[r][j - 1]
            n_calls = cfg.calls[r][j - 1] if cfg.calls else None
            lc_all = self._log_cumprod(reviewer, src)
            lc_open = self._log_cumprod(reviewer, src, start) if start else lc_all
            sub = self._step(names, j, cfg) if j < b else None
            if sub is not None:
                tail = np.cumsum(sub.p_tokens[::-1])[::-1]  # tail[i] = P(T_j >= i)
            # a new source: its run starts at the current length
            fresh: dict[tuple[int, int], list[float]] = {}
            for (s, l), (p, m) in states.items():
                v = fresh.setdefault((l, l), [0.0, 0.0])
                v[0] += p
                v[1] += m
            states = fresh
            done: dict[tuple[int, int], list[float]] = {}
            call = 0
            while states:
                nxt: dict[tuple[int, int], list[float]] = {}
                for (s, l), (p, m) in states.items():
                    if (l >= quota if n_calls is None else call >= n_calls) or l >= cap:
                        v = done.setdefault((s, l), [0.0, 0.0])
                        v[0] += p
                        v[1] += m
                        continue
                    if sub is None:  # the bottom proposes n tokens in one call
                        if n_calls is not None:
                            n = quota
                        elif src_statistical and cfg.bottom_length:
                            n = cfg.bottom_length
                        else:
                            n = quota - l
                        n = max(1, min(n, cap - l))
                        if src_statistical:
                            s = l  # each proposal is a new search: its idx restarts
                            seconds += p * self.meas.cost(src)(n)
                            add_pass(src, p)
                        else:
                            # autoregressive drafting: one single-token pass per token
                            seconds += p * n * self.meas.cost(src)(1)
                            add_pass(src, p * n)
                        lc = lc_open if s == 0 else lc_all  # does this run open the draft?
                        g = np.exp(lc[l - s + 1 : l - s + n + 1] - lc[l - s])
                        surv[l + 1 : l + n + 1] += m * g
                        v = nxt.setdefault((s, l + n), [0.0, 0.0])
                        v[0] += p
                        v[1] += m * g[-1]
                    else:
                        seconds += p * sub.seconds
                        for name, n in sub.passes.items():
                            add_pass(name, p * n)
                        tmax = min(len(sub.p_tokens) - 1, cap - l)
                        lc = lc_open if s == 0 else lc_all
                        g = np.exp(lc[l - s + 1 : l - s + tmax + 1] - lc[l - s])
                        surv[l + 1 : l + tmax + 1] += m * g * tail[1 : tmax + 1]
                        for t in range(1, tmax + 1):
                            pt = sub.p_tokens[t]
                            if pt <= 0.0:
                                continue
                            v = nxt.setdefault((s, l + t), [0.0, 0.0])
                            v[0] += p * pt
                            v[1] += m * pt * g[t - 1]
                states = nxt
                call += 1
            states = done

        length = np.zeros(cap + 1)
        p_full = 0.0
        for (_, l), (p, m) in states.items():
            length[l] += p
            p_full += m
        ls = np.nonzero(length)[0]
        cost_r = self.meas.cost(reviewer)
        seconds += float(sum(length[l] * cost_r(l + 1) for l in ls))
        add_pass(reviewer, 1.0)
        lmax = int(ls.max())
        a_ge = np.minimum(surv[: lmax + 2], 1.0)  # P(A >= i), i = 0..lmax+1 (the last is 0)
        a_ge[lmax + 1] = 0.0
        p_a = a_ge[:-1] - a_ge[1:]
        p_tokens = np.concatenate([[0.0], np.maximum(p_a, 0.0)])  # T = A + 1
        p_tokens /= p_tokens.sum()
        st = _Step(p_tokens, seconds, passes, float((length * np.arange(cap + 1)).sum()), min(1.0, p_full))
        self._cache[key] = st
        return st

    def _log_cumprod(self, reviewer: str, drafter: str, start: str | None = None) -> np.ndarray:
        key = (reviewer, drafter, start)
        if key not in self._lc:
            if start is None or (reviewer, drafter) not in self.meas.restart:
                prof = self.meas.profile(reviewer, drafter)
            else:
                prof = self.meas.restart[(reviewer, drafter)][0 if start == "miss" else 1]
            self._lc[key] = prof.log_cumprod(self.max_draft + 1)
        return self._lc[key]


def predict(config: Config, meas: Measurements) -> Prediction:
    return CascadeModel(meas).predict(config)


# ------------------------------------------------------------------------------------------------ formulas


def ewif_speculative(alpha: float, c: float, k: int) -> float:
    """Leviathan et al.: (1 - a^(k+1)) / ((1 - a)(1 + k c))."""
    return _geom_sum(alpha, k) / (1 + k * c)


def ewif_horizontal(alphas: Sequence[float], costs: Sequence[float]) -> float:
    """(sum_{i=0..k} prod_{j<=i} a_j) / (1 + sum_i c_i), position i drafted with acceptance a_i, cost c_i."""
    num, prod = 1.0, 1.0
    for a in alphas:
        prod *= a
        num += prod
    return num / (1 + sum(costs))


def ewif_vertical(alpha: float, alpha_inner: float, c1: float, c2: float, n: int, k: int) -> float:
    """D_1 reviews n times a k-token draft of D_2: (1 - a phi(a)^n) / ((1 - a)(1 + n c_1 + n k c_2))."""
    ap = alpha_inner
    phi = sum(ap ** (i - 1) * (1 - ap) * alpha**i for i in range(1, k + 1)) + ap**k * alpha ** (k + 1)
    return (1 - alpha * phi**n) / ((1 - alpha) * (1 + n * c1 + n * k * c2))


def _geom_sum(a: float, k: int) -> float:
    return float(k + 1) if a == 1.0 else (1 - a ** (k + 1)) / (1 - a)


def best_speculative_k(alpha: float, c: float, k_max: int = 64) -> int:
    """argmax_k of the speculative-decoding EWIF (the paper's closed form, by enumeration)."""
    return max(range(1, k_max + 1), key=lambda k: (ewif_speculative(alpha, c, k), -k))


__all__ = [
    "CostCurve", "Profile", "Measurements", "Config", "Prediction", "CascadeModel", "predict",
    "ewif_speculative", "ewif_horizontal", "ewif_vertical", "best_speculative_k",
]
