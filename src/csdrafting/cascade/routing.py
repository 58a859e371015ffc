"""Per-step routing: at each step, the path a draft takes through the levels the cascade allows.

The paper's cascade fixes, through K, which levels see which positions: with a target T, a neural drafter D
and a statistical level S below it, S's drafts always go through D before T sees them (vertical). On
copy-heavy text that is often the slower path: when S is copying a long span with high confidence, a
memory-bound T reviews it directly for about the price of one pass, and passing it through D first only adds
D's passes. On text S cannot predict, D's own tokens are what pays. No fixed K is best on every step.

With routing on, a reviewer r about to ask a neural drafter j for more of its draft first compares two
predicted rates (expected tokens per second of r's step, as cascade/planning.py prices drafts):

- **direct**: the levels below j draft the rest for r themselves. The bottom's proposal is looked at (it is
  near free), and its calibrated confidences priced at r's measured cost curve: the best prefix's rate.
- **via j**: one more step of j (j reviewing the levels below it, recursively) adds, on average, `tokens`
  tokens of which r accepts `accepted`, and costs `seconds`: the passes it made, priced by each level's
  measured cost curve (the planner's units; a decision then depends on no clock). These are decayed sums
  over the earlier steps of this cascade.

If direct is at least as fast, j is skipped for the rest of this draft (the next level fills it, within its
K quota); otherwise j drafts as usual. K stays the cap of every level's positions. Until j has been
measured a few times, and once in a while after that (so a path that stopped paying can come back), the
paper's path through j is taken.

Every input is known on the drafting side before r's review (confidences, measured costs, what earlier
reviews accepted), never r's probabilities for the positions being decided, so the output stays exact
(cs-drafting.md section 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .planning import CostCurve, DraftValue

DECAY = 0.9  # weight of the past in the measured path statistics, per observed review
WARMUP = 2  # steps through a drafter measured before routing may skip it
EXPLORE = 16  # a drafter skipped this many times in a row is taken once more, to measure it again


@dataclass
class PathStats:
    """Decayed sums over reviews by r of what steps through drafter j cost and yielded."""

    steps: float = 0.0
    seconds: float = 0.0
    tokens: float = 0.0
    accepted: float = 0.0
    observed: int = 0  # reviews that had at least one step through j
    skipped: int = 0  # decisions in a row that went around j

    def add(self, steps: int, seconds: float, tokens: int, accepted: int) -> None:
        d = DECAY
        self.steps = d * self.steps + steps
        self.seconds = d * self.seconds + seconds
        self.tokens = d * self.tokens + tokens
        self.accepted = d * self.accepted + accepted
        self.observed += 1


def direct_rate(value: DraftValue, review: CostCurve, have: int, spent: float, conf: Sequence[float | None]) -> float:
    """The best rate of r's step if the draft so far is extended by a prefix of a proposal with these
    confidences (none at all: r reviews what it has)."""
    best = value.expected / (spent + review(have + 1))
    e, p = value.expected, value.survive
    for i, c in enumerate(conf, start=1):
        if c is None:
            break
        p *= max(0.0, min(1.0, c))
        e += p
        best = max(best, e / (spent + review(have + i + 1)))
    return best


class Router:
    """Routing decisions and the path statistics behind them, for one cascade (kept across generations)."""

    def __init__(self) -> None:
        self.paths: dict[tuple[int, int], PathStats] = {}
        self.decisions = {"via": 0, "direct": 0, "measure": 0}
        self.seconds = 0.0  # wall time spent deciding (the bottom's look-ahead proposals included)

    def stats(self, r: int, j: int) -> PathStats:
        s = self.paths.get((r, j))
        if s is None:
            s = self.paths[(r, j)] = PathStats()
        return s

    def go_direct(self, r: int, j: int, value: DraftValue, review: CostCurve, have: int, spent: float,
                  conf: Sequence[float | None]) -> bool:
        """Whether r's draft should go around drafter j, given the bottom's proposal confidences `conf`."""
        s = self.stats(r, j)
        if value.unknown or s.observed < WARMUP or s.skipped >= EXPLORE or s.steps <= 0:
            self.decisions["measure" if s.observed < WARMUP or s.skipped >= EXPLORE else "via"] += 1
            s.skipped = 0
            return False
        n = s.steps
        via = (value.expected + value.survive * s.accepted / n) / (
            spent + s.seconds / n + review(have + s.tokens / n + 1))
        if direct_rate(value, review, have, spent, conf) >= via:
            s.skipped += 1
            self.decisions["direct"] += 1
            return True
        s.skipped = 0
        self.decisions["via"] += 1
        return False

    def observe(self, r: int, steps: dict[int, tuple[int, float]], src: Sequence[int], n_accepted: int) -> None:
        """After r's review: for each drafter j that took steps (count, seconds) in this draft, how many of
        the draft's tokens came from j and how many of those r accepted."""
        for j, (count, seconds) in steps.items():
            tokens = sum(1 for s in src if s == j)
            accepted = sum(1 for s in src[:n_accepted] if s == j)
            self.stats(r, j).add(count, seconds, tokens, accepted)

    def to_dict(self) -> dict:
        return {
            "decisions": dict(self.decisions),
            "paths": {f"{r}<-{j}": {"steps": s.steps, "seconds": s.seconds, "tokens": s.tokens,
                                     "accepted": s.accepted, "observed": s.observed}
                      for (r, j), s in self.paths.items()},
        }
