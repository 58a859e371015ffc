"""Trace replay: run a configuration's cascade along the recorded calibration text, without any model.

The analytic model (speed.py) assumes acceptance is independent across positions and levels given the
profiles. Real acceptance is not: disagreements cluster (a draft that starts right after a correction
is more often wrong than an average position), and when a small drafter agrees with a larger one both
are usually right. Replaying the engine's recursion on the traces keeps all of that wherever it is
known: along the target's path every model's greedy token is recorded (acceptance_stats.Trace), and so
is every proposal of each statistical drafter. Only where a draft has left the target's path (everything there will be
rejected by the target, but it still costs passes below) are model predictions unknown; there an
intermediate review accepts with the measured profile, drawn from a seeded generator.

Costs are charged exactly as the model charges them (a review of L tokens = cost(L + 1), a neural bottom
= L single-token passes, a statistical drafter = its proposal cost), plus each model's prompt prefill, so the two
predictions differ only in how acceptance is treated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from ..drafters.registry import is_statistical
from .acceptance_stats import Trace
from .speed import Config, Measurements


class _Table:
    """A cost curve looked up by integer n (the replay asks it for every pass)."""

    def __init__(self, curve) -> None:
        self.curve, self.tab = curve, curve.table(128)

    def __call__(self, n: int) -> float:
        return self.tab[n] if n < len(self.tab) else self.curve(n)


@dataclass
class ReplayResult:
    tokens: int
    target_steps: int
    seconds: float  # decoding seconds, prefill excluded
    prefill_seconds: float
    passes: dict[str, float]

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.target_steps if self.target_steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        """End to end, prefill included (what `demo` and `bench` measure)."""
        total = self.seconds + self.prefill_seconds
        return self.tokens / total if total else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# A drafted token: (token id or None where its context has left the target's path, source level, idx)
_Tok = tuple


class _Replay:
    def __init__(self, meas: Measurements, config: Config, trace: Trace, rng: random.Random, costs: dict) -> None:
        self.meas, self.cfg, self.tr, self.rng = meas, config, trace, rng
        self.names = (meas.target,) + tuple(config.drafters)
        self.bottom = len(self.names) - 1
        self.y = trace.tokens
        self.n = len(self.y)
        self.seconds = 0.0
        self.passes: dict[str, float] = {}
        self.costs = costs
        self.profiles = {(r, d): meas.profile(r, d) for i, r in enumerate(self.names) for d in self.names[i + 1:]}

    def charge(self, name: str, seconds: float, passes: float = 1.0) -> None:
        self.seconds += seconds
        self.passes[name] = self.passes.get(name, 0.0) + passes

    def predicted(self, name: str, pos: int) -> int:
        return int(self.tr.greedy[name][pos]) if pos < self.n else -1

    # --------------------------------------------------------------------------------------------
    def run(self) -> int:
        t, steps = 0, 0
        while t < self.n:
            if self.bottom == 0:  # plain decoding: one single-token pass per token
                self.charge(self.names[0], self.costs[self.names[0]](1))
                got = 1
            else:
                emitted = self.step(0, t, True)
                got = len(emitted)
            t += got
            steps += 1
        return steps

    def step(self, r: int, pos: int, on_path: bool) -> list[_Tok]:
        """Reviewer r's step with its draft starting at absolute position pos of y."""
        room = self.n - pos - 1
        draft: list[_Tok] = []
        draft_on = on_path  # whether the context after the draft so far is still the target's path
        for j in range(r + 1, self.bottom + 1):
            quota = min(self.cfg.k[r][j - 1], room)
            while len(draft) < quota:
                at = pos + len(draft)
                if j == self.bottom:
                    n = quota - len(draft)
                    if self.cfg.statistical_bottom and self.cfg.bottom_length:
                        n = self.cfg.bottom_length
                    got = self.propose(j, at, n, draft_on)
                else:
                    got = self.step(j, at, draft_on)
                if not got:
                    break
                for tok in got:
                    draft.append(tok)
                    if draft_on and (tok[0] is None or at >= self.n or tok[0] != self.y[at]):
                        draft_on = False
                    at += 1
                del draft[max(0, room):]
        return self.review(r, pos, draft, on_path)

    def propose(self, j: int, pos: int, n: int, on_path: bool) -> list[_Tok]:
        name = self.names[j]
        if is_statistical(name):
            self.charge(name, self.costs[name](n))
            recorded = self.tr.proposals.get(name)
            prop = recorded[pos] if on_path and pos < self.n and recorded else []
            out, on = [], on_path
            for i in range(n):
                tok = prop[i] if on and i < len(prop) else None
                out.append((tok, j, i + 1))
                if on and (tok is None or pos + i >= self.n or tok != self.y[pos + i]):
                    on = False
            return out
        self.charge(name, n * self.costs[name](1), n)
        out, on = [], on_path
        for i in range(n):
            tok = self.predicted(name, pos + i) if on else None
            out.append((tok, j, None))
            if on and (pos + i >= self.n or tok != self.y[pos + i]):
                on = False
        return out

    def review(self, r: int, pos: int, draft: list[_Tok], on_path: bool) -> list[_Tok]:
        name = self.names[r]
        self.charge(name, self.costs[name](len(draft) + 1))
        out: list[_Tok] = []
        on = on_path
        run_src, run_idx = None, 0
        for i, (tok, src, idx) in enumerate(draft):
            at = pos + i
            if src != run_src:
                run_src, run_idx = src, 0
            run_idx += 1
            if on and at < self.n:
                mine = self.y[at] if r == 0 else self.predicted(name, at)
                if tok is not None and tok == mine:
                    out.append((tok, r, None))
                    on = tok == self.y[at]
                    continue
                out.append((mine, r, None))  # the correction, in an on-path context
                return out
            # off the target's path: nothing is recorded; accept with the measured profile
            if r == 0:
                out.append((None, r, None))
                return out
            prof = self.profiles[(name, self.names[src])]
            if self.rng.random() < prof.at(idx if idx is not None else run_idx):
                out.append((None, r, None))
                continue
            out.append((None, r, None))
            return out
        at = pos + len(draft)
        bonus = (self.y[at] if r == 0 else self.predicted(name, at)) if on and at < self.n else None
        out.append((bonus, r, None))
        return out


def replay(config: Config, meas: Measurements, traces: Sequence[Trace], seed: int = 0) -> ReplayResult:
    """Replay `config` on every trace; tokens, target steps and seconds summed over them."""
    rng = random.Random(seed)
    tokens = steps = 0
    seconds = pre = 0.0
    passes: dict[str, float] = {}
    names = (meas.target,) + tuple(config.drafters)
    costs = {n: _Table(meas.cost(n)) for n in names}
    for tr in traces:
        rp = _Replay(meas, config, tr, rng, costs)
        steps += rp.run()
        tokens += rp.n
        seconds += rp.seconds
        for k, v in rp.passes.items():
            passes[k] = passes.get(k, 0.0) + v
        pre += sum(meas.cost(n).prefill_seconds(len(tr.prompt)) for n in names if not is_statistical(n))
    return ReplayResult(tokens, steps, seconds, pre, passes)

