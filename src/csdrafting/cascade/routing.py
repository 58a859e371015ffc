"""Per-step routing: at each step, the path a draft takes through the levels the cascade allows.

The paper's cascade fixes, through K, which levels see which positions: with a target T, a neural drafter D
and a statistical level S below it, S's drafts always go through D before T sees them (vertical). On
copy-heavy text that is often the slower path: when S is copying a long span with high confidence, a
memory-bound T reviews it directly for about the price of one pass, and passing it through D first only adds
D's passes. On text S cannot predict, D's own tokens are what pays. No fixed K is best on every step.

With routing on, a reviewer r about to ask a neural drafter j for the first time in a draft compares two
predicted rates (expected tokens per second of r's step, as cascade/planning.py prices drafts), once per draft:

- **direct**: the levels below j draft the rest for r themselves. The bottom's proposal is looked at (it is
  near free) and its calibrated confidences are priced at r's measured cost curve (the best prefix's rate),
  each token's promise weighed by what the direct path's earlier drafts measurably yielded per promised token
  (`direct_yield`: confidences calibrated on other text can be optimistic on this one).
- **via j**: the rest of the draft as the paper's cascade drafts it, j's steps (j reviewing the levels below
  it, recursively) and what follows them: on average `tokens` tokens of which r accepts `accepted`, j's steps
  costing `seconds`, priced by each level's measured cost curve (the planner's units; a decision then depends
  on no clock). These are decayed sums over the earlier drafts of this cascade that went through j. A drafter
  gone around has not seen the text committed since; its first pass then evaluates all of it. That catch-up
  is priced apart, at each decision, from how far j lags then (on a compute-bound drafter, the 0.5B Q4_K_M
  here, 30 missed tokens cost about 17 of its single-token passes), and left out of the measured `seconds`,
  which would otherwise charge every later draft through j for it and keep routing away from j. Going
  around j avoids that catch-up only while the direct path keeps delivering: once a direct draft breaks, j
  is usually needed again and evaluates everything it missed then. So the path through j is charged the
  catch-up weighed by the chance that the direct draft is accepted whole (its tokens' weighed confidences).
  Charged in full, it made a weak direct proposal look better than j; each such step left j further behind
  and its catch-up dearer: on MMLU abstract_algebra/1 at the F32 tier routing went around the 0.5B 18 and 12
  times in the two rounds, for 34 and 31 target steps against cost-aware speculative decoding's 25 and 24
  (docs/bench/f32-routing7's records; a one-off trace of that answer, not kept, showed ten direct drafts in a
  row with proposals such as [0.16, 0.08]).

The direct path's yield is measured on every decision, not only on those that took it: a proposal that went
through j instead is kept, and once the text at its place is committed, how many of its tokens came against
how many its confidences promised counts as a direct draft's would (`Router.resolve`). Measured only where it
was taken, the yield of a path rarely taken stayed at its prior, and on copies (where the bottom's calibrated
confidences are pessimistic: in one replayed EditEval edit, a proposal starting at 0.85 ran on for 31 tokens)
routing kept sending long copies through j. The path statistics are kept per drafter instance across cascades (`shared_stats`): a server or a
bench builds one cascade per request, and a short request (a code edit: 2-13 target steps) spent its first two
drafts measuring the path through j and decided the rest from two or three drafts. Replayed on the F32 tier's
8 EditEval and 8 summary prompts (geometric means of the predicted speedups over plain; the suffix drafter alone
3.26x and 2.62x): 2.85x and 2.47x before, 3.12x and 2.59x with both, 2.84x and 2.54x with the sharing alone;
measuring every decision without the sharing changed EditEval by nothing (2.84x): a request is too short to
learn from its own decisions. (Those two groups were replayed on their own; README, "Routing", has the whole
replay, where the statistics carry over from the other groups.)

Rates per step mislead where the text ends. After a code edit's closing fence the target's next token is the
end; the bottom proposes, weakly, what followed the fence in the prompt, and the path through j, which
measurably yields many tokens, wins by rate: j first catches up on everything it missed, then proposes the end
token that r's review gives anyway (replayed on the F32 tier's 8 EditEval edits: 0.07-0.53 s of the 0.5B,
priced, for no token, on 5 of them; `scripts/trace-routes.py`, README "Where the text ends"). The engine counts,
per target instance across requests, how often the target's text ended right after each token
(`planning.EndStats`), and `Router._end_pays` weighs that chance as a bet beside the rates. A text's end
judges neither path.

If direct is at least as fast and has something to draft, j is skipped for the whole draft (the next level
fills it, within its K quota); otherwise j drafts it as in the unrouted cascade. A direct draft of nothing is a
plain step of r, and whether j's tokens beat a plain step is what j's own cost-aware planner decides, from its
live confidences, token by token: routing never takes that choice from it. Both alternatives are whole
drafts: deciding again before each of j's steps compared one more step of j with a whole direct draft,
which on a memory-bound reviewer (where longer drafts amortize the review) cut drafts short and lost to the
unrouted cascade (README, "Routing"). K stays the cap of every level's positions. Until j has been
measured, and once in a while after that (so a path that stopped paying can come back), the paper's path
through j is taken.

Every input is known on the drafting side before r's review (confidences, measured costs, what earlier
reviews accepted), never r's probabilities for the positions being decided, so the output stays exact
(cs-drafting.md section 8).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

from ..sequences import common_prefix
from .planning import CostCurve, DraftValue
from .rows import per_model

DECAY = 0.9  # weight of the past in the measured path statistics, per observed review
WARMUP = 2  # drafts through a drafter measured before routing may skip it
EXPLORE = 16  # a drafter skipped this many times in a row is taken once more, to measure it again
DIRECT_PRIOR = 2.0  # pseudo-tokens at face value behind the direct path's measured yield (a few steps move it)


@dataclass
class PathStats:
    """Decayed sums, over reviews by r of drafts that went through drafter j, of what j's steps cost and what
    the draft from j's first step on came to: its tokens (whichever level drafted them) and those r accepted."""

    drafts: float = 0.0
    seconds: float = 0.0
    tokens: float = 0.0
    accepted: float = 0.0
    observed: int = 0  # reviews of drafts that went through j
    skipped: int = 0  # decisions in a row that went around j
    # the direct path, measured the same way: decayed sums over reviews of drafts that went around j, of the
    # tokens the bottom's confidences predicted r would accept there and of those r did accept
    predicted: float = 0.0
    realized: float = 0.0

    def add(self, seconds: float, tokens: int, accepted: int) -> None:
        d = DECAY
        self.drafts = d * self.drafts + 1
        self.seconds = d * self.seconds + seconds
        self.tokens = d * self.tokens + tokens
        self.accepted = d * self.accepted + accepted
        self.observed += 1

    def add_direct(self, predicted: float, realized: int) -> None:
        d = DECAY
        self.predicted = d * self.predicted + predicted
        self.realized = d * self.realized + realized

    @property
    def direct_yield(self) -> float:
        """What the direct path's drafts yielded for each token their confidences promised (1: as promised)."""
        return (self.realized + DIRECT_PRIOR) / (self.predicted + DIRECT_PRIOR)


def direct_draft(value: DraftValue, review: CostCurve, have: int, spent: float, conf: Sequence[float | None],
                 scale: float = 1.0) -> tuple[float, int, float]:
    """(the best rate of r's step if the draft so far is extended by a prefix of a proposal with these
    confidences, that prefix's length, the chance that the draft with it is accepted whole): each token's
    expected yield scaled by `scale` (what the direct path measurably yielded per promised token), none
    counting for more than the draft so far surviving; length 0 when r does best reviewing what it has."""
    best, best_n, whole = value.expected / (spent + review(have + 1)), 0, value.survive
    e, p = value.expected, value.survive
    for i, c in enumerate(conf, start=1):
        if c is None:
            break
        p *= max(0.0, min(1.0, c))
        gain = min(value.survive, p * scale)  # this token's expected yield: the chance the draft survives to it
        e += gain
        rate = e / (spent + review(have + i + 1))
        if rate > best:
            best, best_n, whole = rate, i, gain
    return best, best_n, whole


def survival(conf: Sequence[float | None]) -> list[float]:
    """The chance that a draft of these confidences survives to each of its tokens."""
    p, out = 1.0, []
    for c in conf:
        p *= 1.0 if c is None else max(0.0, min(1.0, c))
        out.append(p)
    return out


def direct_rate(value: DraftValue, review: CostCurve, have: int, spent: float, conf: Sequence[float | None],
                scale: float = 1.0) -> float:
    """The rate of `direct_draft` (none proposed: r reviews what it has)."""
    return direct_draft(value, review, have, spent, conf, scale)[0]


_SHARED: "weakref.WeakKeyDictionary[object, dict[tuple, PathStats]]" = weakref.WeakKeyDictionary()


def shared_stats(drafter: object, key: tuple) -> PathStats:
    """The path statistics of a neural drafter instance in one place of one cascade shape (`key`), shared by
    every cascade that uses it (as rows.measured_costs shares its pass costs): a server or a bench makes one
    cascade per request, and a short request (a code edit of 20-90 tokens: 2-13 target steps) would otherwise
    spend its first drafts measuring paths through the drafter (WARMUP) and decide the rest from two or three
    of them."""
    return per_model(_SHARED, drafter, dict).setdefault(key, PathStats())


class Router:
    """Routing decisions for one cascade, and the path statistics behind them: with `models` (the cascade's
    levels, None for a statistical one) those are kept per drafter instance across cascades and generations
    (`shared_stats`), else for this cascade only (across its generations)."""

    def __init__(self, models: Sequence[object | None] = (), shape: str = "", eos: frozenset[int] = frozenset()) -> None:
        self.models = list(models)
        self.shape = shape  # what else makes two cascades' paths alike: their K, their levels' names, their scope
        self.eos = frozenset(eos)
        self.paths: dict[tuple[int, int], PathStats] = {}
        self.decisions = {"via": 0, "direct": 0, "measure": 0}
        self.seconds = 0.0  # wall time spent deciding (the bottom's look-ahead proposals included)
        # direct drafts not taken, to be measured against the text once it is committed: (r, j, the position in
        # the generated text it would have started at, its tokens, the chance of surviving to each of them)
        self.pending: list[tuple[int, int, int, list[int], list[float]]] = []

    def stats(self, r: int, j: int) -> PathStats:
        s = self.paths.get((r, j))
        if s is None:
            drafter = self.models[j] if j < len(self.models) else None
            s = self.paths[(r, j)] = PathStats() if drafter is None else shared_stats(drafter, (r, j, self.shape))
        return s

    def go_direct(self, r: int, j: int, value: DraftValue, review: CostCurve, have: int, spent: float,
                  conf: Sequence[float | None], catch_up: float = 0.0, proposal: Sequence[int] = (),
                  at: int | None = None, p_end: float = 0.0) -> bool:
        """Whether r's draft should go around drafter j, given the bottom's proposal confidences `conf` and
        what j would first spend catching up on text it missed (`catch_up` seconds). With `at` (the proposal's
        position in the generated text, for r the target) a direct draft not taken is kept to be measured
        once the text there is committed (`resolve`). `p_end`: the chance that the text ends before the
        proposal (for r the target: `EndStats` of the token it follows), when neither path's tokens come."""
        s = self.stats(r, j)
        if value.unknown:
            self.decisions["via"] += 1
            s.skipped = 0
            return False
        live = list(conf)
        if p_end and live and live[0] is not None:
            live[0] *= 1.0 - p_end  # the text may end before the proposal's first token
        rate, n_direct, whole = direct_draft(value, review, have, spent, live, s.direct_yield)
        measure = s.observed < WARMUP or s.skipped >= EXPLORE
        go = False
        if not measure and s.drafts > 0:
            n, on = s.drafts, 1.0 - p_end
            # the catch-up is saved only if the direct path carries on: weighed by the direct draft surviving
            # whole, or the text ending after it (then j's tokens never come and it is never needed again)
            via = (value.expected + value.survive * on * s.accepted / n) / (
                spent + catch_up * (whole + p_end * (1.0 - whole)) + s.seconds / n + review(have + on * s.tokens / n + 1))
            # a direct draft of nothing is a plain step (r reviews what it has): whether j's own tokens beat that
            # is j's planner's call, token by token from its live confidences, not the paths' averages (which,
            # after a few poor drafts, sent every step of an open-ended answer around the 0.5B: 19 target steps
            # for 24 tokens against the unrouted cascade's 13; README, "Routing")
            go = n_direct > 0 and rate >= via
            if not go and p_end:
                go = self._end_pays(p_end, catch_up + s.seconds / n + review(have + s.tokens / n + 1),
                                    review(have + n_direct + 1), s.accepted / n)
        if go:
            s.skipped += 1
            self.decisions["direct"] += 1
            return True
        if at is not None and n_direct > 0 and len(proposal) >= n_direct:
            self.pending.append((r, j, at, list(proposal[:n_direct]), survival(conf[:n_direct])))
        s.skipped = 0
        self.decisions["measure" if measure else "via"] += 1
        return False

    @staticmethod
    def _end_pays(p_end: float, via: float, direct: float, tokens_via: float) -> bool:
        """Whether going around j pays where the text may end (chance `p_end`): a rate per step undervalues that
        bet, since j's tokens are only put off by a step if the text goes on, while its catch-up on all it
        missed buys nothing if the text ends. Going around saves, if the text ends, what the step through j
        would cost (`via` seconds: the catch-up, j's steps, r's review) beyond the direct step (`direct`
        seconds); if the text goes on, it costs one more step of r, less the share of the step through j that
        the token it yields would have taken (`tokens_via` tokens from j on). On the F32 tier's EditEval edits,
        which end with a code fence and the end token, that last step through the 0.5B cost 0.07-0.53 s, up to
        two of the target's passes, for no token (README, "Routing")."""
        saved_if_ends = via - direct
        lost_if_not = direct - via / (1.0 + tokens_via)
        return p_end * saved_if_ends > (1.0 - p_end) * lost_if_not

    def resolve(self, generated: Sequence[int]) -> None:
        """Measure the direct drafts not taken whose text is now known: how many of their tokens the target
        committed against how many their confidences promised. The direct path is then measured on every
        decision, not only on those that took it (which, where routing rarely goes direct, left its yield at
        the prior: confidences calibrated on other text can be pessimistic on a copy as well as optimistic)."""
        left = []
        for r, j, at, tokens, promised in self.pending:
            known = generated[at:at + len(tokens)]
            right = common_prefix(tokens, known)
            if right < len(known) and known[right] in self.eos:
                if right:  # the text ended within it: what came before the end, against its promise
                    self.stats(r, j).add_direct(sum(promised[:right]), right)
            elif right < len(known) or len(known) == len(tokens):
                self.stats(r, j).add_direct(sum(promised), right)
            else:
                left.append((r, j, at, tokens, promised))
        self.pending = left

    def observe(self, r: int, through: dict[int, tuple[int, float]], n_drafted: int, n_accepted: int) -> None:
        """After r's review of a draft of n_drafted tokens, n_accepted of them accepted: for each drafter j
        the draft went through, (the draft position of j's first step, the seconds j's steps cost)."""
        for j, (at, seconds) in through.items():
            self.stats(r, j).add(seconds, n_drafted - at, max(0, n_accepted - at))

    def observe_direct(self, r: int, j: int, predicted: float, realized: int) -> None:
        """After r's review of a draft that went around j from some position on, with everything before that
        position accepted: the tokens the bottom's confidences predicted r would accept after it, and how
        many r did."""
        self.stats(r, j).add_direct(predicted, realized)

    def to_dict(self) -> dict:
        return {
            "decisions": dict(self.decisions),
            "paths": {f"{r}<-{j}": {"drafts": s.drafts, "seconds": s.seconds, "tokens": s.tokens,
                                     "accepted": s.accepted, "observed": s.observed,
                                     "direct_yield": s.direct_yield}
                      for (r, j), s in self.paths.items()},
        }
