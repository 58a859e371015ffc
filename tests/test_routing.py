"""Per-step routing (cascade/routing.py): exact whatever path each step takes, and it does take both paths.

- greedy: routed cascades reproduce transformers' own greedy decoding, decoder-only and encoder-decoder,
  with the router both going around the neural drafter and through it;
- sampling: a routed cascade's output law is the target's (chi-square against the enumerated law, the
  power of tests/test_sampling_exact.py), and the same test rejects routed cascades broken two ways (the
  direct path's tokens given a wrong q; a lenient drafter on the other path handing p upward). Note that
  labelling a drafter's sampled tokens as point masses is NOT a bug: a review against a one-hot q is exact
  for any draft drawn independently of the reviewer's coins, only slower;
- the decision itself: a confident copy goes straight to the reviewer, an unconfident one through the
  neural drafter, and the paper's path is kept while the drafter is unmeasured.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import table_lm
import tiny
from csdrafting import Cascade, CascadeConfig, CSDraftingError
from csdrafting.cascade import acceptance, engine
from csdrafting.cascade.config import SamplingConfig
from csdrafting.cascade.planning import CostCurve, DraftValue, EndStats
from csdrafting.cascade.routing import WARMUP, Router, direct_rate
from csdrafting.drafters.base import Proposal, StatisticalDrafter
from csdrafting.drafters.suffix import SuffixDrafter
from test_dynamic import CHEAP, MEMORY, _calibration
from test_greedy_exact import PROMPTS, _family, _reference
from test_sampling_exact import ALPHA, N_RUNS, PROMPT, chi_square_pvalue, exact_distribution

K = [[6, 12], [0, 4]]  # the 0.5B-like drafter may fill 6 positions (reviewing the suffix drafter), the suffix 12


def _routed(T, D, cal=None, k=K, costs=(MEMORY, CHEAP, None), lenience=1.0):
    cfg = CascadeConfig.make(k, lenience=lenience, dynamic=True, costs=list(costs), route=True)
    return Cascade(T, [D, SuffixDrafter(cal or _calibration())], cfg)


@pytest.mark.parametrize("kind", ["decoder-only", "encoder-decoder"])
def test_routed_greedy_equals_target_generate(kind):
    make = tiny.causal if kind == "decoder-only" else tiny.seq2seq
    target, drafters = _family(make)
    T, D = tiny.wrap(target, "target"), tiny.wrap(drafters[0], "d1")
    cascades = {
        "routed": _routed(T, D),
        "routed, lenience 2": _routed(T, D, lenience=2.0),
        "routed, the drafter reviews 2 only": _routed(T, D, k=[[4, 10], [0, 2]]),
    }
    decisions = Counter()
    # a prompt that repeats itself, so the suffix drafter has copies to offer, beside the usual ones
    prompts = PROMPTS + [PROMPTS[0] + PROMPTS[0] + PROMPTS[0][:3]]
    for prompt in prompts:
        for n in (2, 40):
            expect = _reference(target, prompt, n)
            for name, c in cascades.items():
                r = c.generate(prompt, n)
                assert r.tokens == expect, f"{name}, prompt {prompt}, n={n}"
                decisions.update({k: v for k, v in r.metrics.routes.items() if k != "seconds"})
    assert decisions["direct"] > 0 and decisions["via"] + decisions["measure"] > 0, decisions


def test_static_and_unrouted_cascades_take_no_decisions():
    target, drafters = _family(tiny.causal)
    T, D = tiny.wrap(target, "t"), tiny.wrap(drafters[0], "d")
    plain_dyn = Cascade(T, [D, SuffixDrafter(_calibration())],
                        CascadeConfig.make(K, dynamic=True, costs=[MEMORY, CHEAP, None]))
    assert plain_dyn.router is None and plain_dyn.generate(PROMPTS[0], 12).metrics.routes == {}
    with pytest.raises(CSDraftingError, match="route needs dynamic"):
        CascadeConfig.make(K, route=True)


def test_decision_rule():
    """Direct when the bottom's proposal beats what a step through the drafter has yielded, else via;
    unmeasured drafters are always taken (the paper's path), and re-measured after a run of skips."""
    review = CostCurve((1, 64), (1.0, 1.3))  # memory-bound reviewer
    router = Router()
    value = DraftValue()
    sure = [0.97] * 10
    for _ in range(WARMUP):
        assert not router.go_direct(0, 1, value, review, 0, 0.0, sure)  # not measured yet
        router.observe(0, {1: (0, 0.2)}, 3, 2)  # a draft through level 1: 3 tokens, 2 accepted, its steps 0.2 s
    assert router.go_direct(0, 1, value, review, 0, 0.0, sure)  # 10 sure tokens at ~1.05 s beat 3 at 1.25 s
    assert not router.go_direct(0, 1, value, review, 0, 0.0, [0.2, 0.1])  # a weak guess does not
    assert direct_rate(value, review, 0, 0.0, []) == pytest.approx(1.0)  # nothing proposed: r reviews alone
    # a drafter skipped again and again is measured once more
    for _ in range(40):
        if not router.go_direct(0, 1, value, review, 0, 0.0, sure):
            break
    else:
        pytest.fail("a skipped drafter was never measured again")
    assert router.decisions["measure"] >= WARMUP + 1


def test_routing_goes_around_the_drafter_on_copies():
    """On text that truly copies its input (a target whose next token depends on the last two, continuing a
    prompt that is its own greedy trajectory), the suffix drafter's long matches go straight to the target:
    the drafter's passes drop against the same cascade unrouted, and the output is the same."""
    rng = np.random.default_rng(3)
    table = rng.normal(0, 2.0, size=(40, 40, 40))
    T = table_lm.TableLM(table, "table-target", eos=None)
    D = table_lm.TableLM(table + rng.normal(0, 1.0, size=table.shape), "table-drafter", eos=None)
    prompt = [5, 9]
    while len(prompt) < 90:
        prompt.append(int(np.argmax(table[prompt[-2], prompt[-1]])))
    expect = Cascade(T).generate(prompt, 40).tokens
    cal = _calibration(high=0.97, low=0.3)
    routed = _routed(T, D, cal=cal)
    unrouted = Cascade(T, [D, SuffixDrafter(cal)], CascadeConfig.make(K, dynamic=True, costs=[MEMORY, CHEAP, None]))
    for _ in range(2):  # the second generation starts with measured paths
        a, b = routed.generate(prompt, 40), unrouted.generate(prompt, 40)
    assert a.tokens == b.tokens == expect
    assert a.metrics.routes["direct"] > 0
    assert a.metrics.levels[1].forward_passes < b.metrics.levels[1].forward_passes


def test_direct_drafts_that_do_not_deliver_are_priced_as_they_yield():
    """The bottom's confidences are what it predicts; routing weighs them by what its direct drafts then
    yielded at the reviewer. Direct drafts that promised ten sure tokens and got none accepted stop being
    preferred to a drafter that delivers; had they delivered, they would still be."""
    review = CostCurve((1, 64), (1.0, 1.3))
    sure = [0.97] * 10
    for delivered, expect_direct in ((True, True), (False, False)):
        router = Router()
        for _ in range(WARMUP):
            router.go_direct(0, 1, DraftValue(), review, 0, 0.0, sure)
            router.observe(0, {1: (0, 0.2)}, 3, 2)
        promised = sum(0.97 ** i for i in range(1, 11))
        for _ in range(5):
            router.observe_direct(0, 1, promised, 10 if delivered else 0)
        assert router.go_direct(0, 1, DraftValue(), review, 0, 0.0, sure) is expect_direct


def test_a_drafter_that_must_catch_up_is_priced_with_it():
    """Going through a drafter that was gone around costs its catch-up on the text it missed first (priced
    at each decision, from how far it lags), weighed by the chance that the direct draft is accepted whole:
    a likely copy that loses to a drafter in step wins against one that must first evaluate a long missed
    span, while a weak guess does not (going around with it would only leave the drafter further behind)."""
    review = CostCurve((1, 64), (1.0, 1.3))
    router = Router()
    for _ in range(WARMUP):
        router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [])
        router.observe(0, {1: (0, 0.2)}, 12, 11)  # drafts through level 1: 12 tokens, 11 accepted, 0.2 s
    likely, weak = [0.9] * 6, [0.5, 0.5]
    assert not router.go_direct(0, 1, DraftValue(), review, 0, 0.0, likely, catch_up=0.0)
    assert router.go_direct(0, 1, DraftValue(), review, 0, 0.0, likely, catch_up=3.0)
    # charged a whole 10 s catch-up, the path through the drafter would lose to the weak guess (12 tokens in
    # 11.3 s against 1.75 in 1.01 s); weighed by the guess surviving whole (0.25), it does not (12 in 3.8 s)
    assert not router.go_direct(0, 1, DraftValue(), review, 0, 0.0, weak, catch_up=10.0)
    assert router.go_direct(0, 1, DraftValue(), review, 0, 0.0, weak, catch_up=30.0)  # 12 in 8.8 s: it does


def test_nothing_to_draft_directly_leaves_the_choice_to_the_drafter():
    """When the bottom proposes nothing (or nothing that pays), going around the drafter would be a plain step of the
    reviewer: routing leaves that choice to the drafter's own planner (its live confidences), however poorly
    the drafts through it did lately; a paying proposal still goes direct."""
    review = CostCurve((1, 64), (1.0, 1.3))
    router = Router()
    for _ in range(WARMUP):
        router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [])
        router.observe(0, {1: (0, 0.5)}, 3, 0)  # drafts through level 1 that were all rejected, 0.5 s each
    # by the path averages a plain step (rate 1.0) beats the drafter (1 / 1.51): yet nothing to draft is no route
    assert direct_rate(DraftValue(), review, 0, 0.0, []) > 1 / (0.5 + review(4))
    assert not router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [])
    assert router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [0.9, 0.9])


def test_where_texts_end_is_counted_after_each_token():
    """EndStats: how often the text ended right after a token, over earlier generations; an output's first token
    is not counted (an opening code fence is the token that closes the block and ends the answer), nor a last
    token that nothing followed (a text cut by its length)."""
    ends = EndStats()
    fence, end = 5, 0
    for _ in range(3):
        ends.learn([fence, 1, 2, fence, end], frozenset({end}))  # an answer in one code block
    ends.learn([fence, 1, 2, 3], frozenset({end}))  # cut by its length after 3
    assert ends.counts[fence] == [3, 3] and ends.counts[1] == [0, 4] and 3 not in ends.counts
    assert ends.p_end(fence) == pytest.approx(3 / 4) and ends.p_end(1) == 0.0 and ends.p_end(9) == 0.0


def test_a_drafter_is_not_caught_up_where_the_text_likely_ends():
    """Where the text likely ends, a drafter that must first catch up on a long missed span is gone around even
    with nothing worth drafting directly: if the text ends, the catch-up buys nothing; if not, its tokens
    are only put off by one step. Where ending is unlikely, it is taken."""
    review = CostCurve((1, 64), (1.0, 1.3))
    eos = frozenset({0})

    def router() -> Router:
        r = Router(eos=eos)
        for _ in range(WARMUP):
            r.go_direct(0, 1, DraftValue(), review, 0, 0.0, [])
            r.observe(0, {1: (0, 0.2)}, 12, 11)  # drafts through level 1: 12 tokens, 11 accepted, 0.2 s
        return r

    likely, unlikely = EndStats(), EndStats()  # after token 5, the text ended 5 times in 5, and once in 10
    for i in range(10):
        if i < 5:
            likely.learn([9, 5, 0], eos)
        unlikely.learn([9, 5, 0] if i == 0 else [9, 5, 6, 7], eos)
    assert likely.p_end(5) == pytest.approx(5 / 6) and unlikely.p_end(5) == pytest.approx(1 / 11)
    assert router().go_direct(0, 1, DraftValue(), review, 0, 0.0, [], catch_up=1.0, p_end=likely.p_end(5))
    assert not router().go_direct(0, 1, DraftValue(), review, 0, 0.0, [], catch_up=1.0, p_end=unlikely.p_end(5))
    assert not router().go_direct(0, 1, DraftValue(), review, 0, 0.0, [], catch_up=1.0)  # no end in sight


def test_the_end_of_a_text_judges_neither_path():
    """A proposal whose text ended at its first token is not counted against the direct path (no level's
    token could have come there); one that the end cut later counts what came before the end. The end
    statistics are learned by the engine after each generation and kept across cascades."""
    review = CostCurve((1, 64), (1.0, 1.3))
    router = Router(eos=frozenset({0}))
    for _ in range(WARMUP):
        router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [])
        router.observe(0, {1: (0, 0.45)}, 8, 5)
    s = router.stats(0, 1)
    router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [0.8] * 3, proposal=[7, 7, 7], at=10)
    router.resolve([3] * 10 + [0])
    assert router.pending == [] and (s.predicted, s.realized) == (0.0, 0.0)
    router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [0.8] * 3, proposal=[7, 7, 7], at=20)
    router.resolve([3] * 20 + [7, 0])  # one right, then the end: that one against its promise
    assert (s.predicted, s.realized) == (pytest.approx(0.8), 1.0)
    target, drafters = _family(tiny.causal)
    T, D = tiny.wrap(target, "ends-t"), tiny.wrap(drafters[0], "ends-d")
    first = _routed(T, D)
    out = first.generate(PROMPTS[0], 30).tokens
    assert sum(c[1] for c in first.ends.counts.values()) == len(out) - 2  # neither the first token nor the last
    assert _routed(T, D).ends is first.ends


def test_direct_drafts_not_taken_are_measured_once_their_text_is_committed():
    """Where routing goes through the drafter, the bottom's proposal it looked at is still measured: once the
    text at its place is committed, how many of its tokens came against how many its confidences promised
    moves the direct path's yield as a direct draft would. A proposal whose text is not yet known waits (a
    draft that stopped inside it says nothing about the rest)."""
    review = CostCurve((1, 64), (1.0, 1.3))
    router = Router()
    for _ in range(WARMUP):
        router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [])
        router.observe(0, {1: (0, 0.45)}, 8, 5)  # drafts through level 1: 8 tokens, 5 accepted, 0.45 s
    s = router.stats(0, 1)
    assert s.direct_yield == 1.0
    copy = [0.8] * 6
    for _ in range(3):
        assert not router.go_direct(0, 1, DraftValue(), review, 0, 0.0, copy, proposal=[7] * 6, at=10)
    assert len(router.pending) == 3 and s.direct_yield == 1.0
    router.resolve([0] * 10 + [7] * 3)  # three of six known, all right: not yet measured
    assert len(router.pending) == 3 and s.direct_yield == 1.0
    router.resolve([0] * 10 + [7] * 6)  # every token came, where the confidences promised 2.95
    assert router.pending == [] and s.direct_yield > 1.5
    # the copy now pays more than the drafter: the same proposal goes direct
    assert router.go_direct(0, 1, DraftValue(), review, 0, 0.0, copy, proposal=[7] * 6, at=20)
    # a proposal wrong at its first token measures 0 at once, without waiting for the rest of its text
    s.realized, s.predicted = 0.0, 0.0
    router.stats(0, 1).skipped = 0
    router.go_direct(0, 1, DraftValue(), review, 0, 0.0, [0.3] * 2, proposal=[7, 7], at=30)
    router.resolve([0] * 30 + [8])
    assert router.pending == [] and s.direct_yield < 1.0


def test_paths_are_measured_per_drafter_across_cascades():
    """A server builds one cascade per request: the paths through a drafter instance are measured across them
    (a second cascade over the same models starts measured, without the paper's warm-up drafts), but not
    across cascades of another K, nor for a drafter instance the first never used."""
    target, drafters = _family(tiny.causal)
    T, D = tiny.wrap(target, "shared-t"), tiny.wrap(drafters[0], "shared-d")
    prompt = PROMPTS[0] + PROMPTS[0] + PROMPTS[0][:3]
    first = _routed(T, D)
    measured = sum(first.generate(p, 40).metrics.routes["measure"] for p in (prompt, PROMPTS[1]))
    assert measured >= WARMUP and first.router.stats(0, 1).observed >= WARMUP
    again = _routed(T, D)
    assert again.router.stats(0, 1) is first.router.stats(0, 1)
    assert again.generate(prompt, 40).metrics.routes["measure"] == 0
    other_k = _routed(T, D, k=[[4, 10], [0, 2]])
    assert other_k.router.stats(0, 1).observed == 0
    D2 = tiny.wrap(drafters[0], "shared-d")
    assert _routed(T, D2).router.stats(0, 1).observed == 0


# ------------------------------------------------------------------------------------------------ sampling
DEAR = CostCurve((1, 64), (0.4, 0.64))  # a drafter at 40% of the memory-bound target's price


def _routed_table(lenience: float = 1.0):
    def make():
        t, ds = table_lm.family()
        # confidences and a drafter's price under which the router takes both paths often: going around the
        # drafter in about a fifth of the decisions with lenience 3 (where the drafter's lenient reviews pay)
        cal = _calibration(high=0.75, low=0.45)
        return Cascade(t, [ds[0], SuffixDrafter(cal)], CascadeConfig.make(
            [[2, 3], [0, 2]], lenience=lenience, dynamic=True, costs=[MEMORY, DEAR, None], route=True))
    return make


def _counts(make, cfg: SamplingConfig, n: int) -> tuple[Counter, Counter]:
    cascade = make()
    counts, decisions = Counter(), Counter()
    for seed in range(n):
        r = cascade.generate(PROMPT, 3, SamplingConfig(True, cfg.temperature, cfg.top_k, cfg.top_p, seed))
        counts[tuple(r.tokens)] += 1
        decisions.update({k: v for k, v in r.metrics.routes.items() if k != "seconds"})
    return counts, decisions


ROUTED = {
    "routed, temperature 0.9": (_routed_table(), SamplingConfig(True, 0.9)),
    "routed, lenience 3, top-p 0.9": (_routed_table(3.0), SamplingConfig(True, 1.0, top_p=0.9)),
}


@pytest.mark.slow  # N_RUNS = 60,000 seeded generations per configuration
@pytest.mark.parametrize("name", list(ROUTED))
def test_routed_sampling_matches_target_distribution(name):
    make, cfg = ROUTED[name]
    exact = exact_distribution(make().target, cfg)
    counts, decisions = _counts(make, cfg, N_RUNS)
    assert min(decisions["direct"], decisions["via"]) > 0.1 * sum(decisions.values()), decisions  # both paths taken
    p = chi_square_pvalue(counts, exact, N_RUNS)
    assert p > ALPHA, f"{name}: chi-square p-value {p:.2e}"


def _direct_tokens_claimed_sampled(monkeypatch):
    """Broken: the bottom's tokens that routing sends straight to the reviewer are labelled as if drawn
    from a distribution (uniform) instead of proposed deterministically, so the reviewer accepts them with
    min(1, p/q) instead of p: the output leans towards the suffix drafter's proposals."""
    orig = engine.Cascade._peek

    def peek(self, *a, **kw):
        got = orig(self, *a, **kw)
        if got is not None and got.direct:
            v = self.target.info.vocab_size
            got.qs = [np.full(v, 1.0 / v) for _ in got.tokens]
        return got

    monkeypatch.setattr(engine.Cascade, "_peek", peek)


def _p_handed_up(monkeypatch):
    """Broken: a lenient reviewer hands its own p upward instead of the emission law r."""
    monkeypatch.setattr(acceptance, "emission", lambda p, a: p)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [_direct_tokens_claimed_sampled, _p_handed_up],
                         ids=["direct tokens claimed sampled", "p handed up"])
def test_routed_sampling_test_rejects_broken_cascades(monkeypatch, breakage):
    make, cfg = ROUTED["routed, lenience 3, top-p 0.9"]
    exact = exact_distribution(make().target, cfg)
    breakage(monkeypatch)
    counts, _ = _counts(make, cfg, N_RUNS // 2)
    p = chi_square_pvalue(counts, exact, N_RUNS // 2)
    assert p < ALPHA, f"the broken routed cascade passed the exactness test (p = {p:.3g})"


def _cost_aware_unrouted():
    make, _ = ROUTED["routed, temperature 0.9"]
    c = make()
    return Cascade(c.target, c.drafters, CascadeConfig.make([[2, 3], [0, 2]], dynamic=True, costs=[MEMORY, CHEAP, None]))


@pytest.mark.slow  # 2 x N_RUNS seeded generations
def test_cost_aware_sampling_never_drops_a_sampled_token_for_its_value(monkeypatch):
    """Regression (2026-12-02): the planner cut a neural drafter's output by the probabilities of the tokens it
    had sampled, so which sampled tokens reached the target depended on their values and the law moved
    (this configuration: p = 1.8e-4 at 20,000 runs). Now a sampled token is kept and only the drafting after
    it stops. The old behaviour, put back, is rejected by the same test."""
    _, cfg = ROUTED["routed, temperature 0.9"]
    exact = exact_distribution(_cost_aware_unrouted().target, cfg)
    counts, _ = _counts(_cost_aware_unrouted, cfg, N_RUNS)
    assert chi_square_pvalue(counts, exact, N_RUNS) > ALPHA
    # broken: every level's output cut by the planner, sampled or not (the engine before the fix)
    broken = _cost_aware_unrouted()
    monkeypatch.setattr(engine, "StatisticalLevel", object)  # (after the levels are built)
    counts, _ = _counts(lambda: broken, cfg, N_RUNS)
    assert chi_square_pvalue(counts, exact, N_RUNS) < ALPHA


# ------------------------------------------------------------------------------------------------ the draft's tail
def test_tail_yield_only_discounts_and_learns_from_what_the_review_reached():
    from csdrafting.cascade.planning import TailYield

    ty = TailYield()
    assert ty.factor == 1.0  # nothing measured: face value
    for _ in range(10):
        ty.observe(0.9, True)  # over-delivered promises never raise a confidence
    assert ty.factor == 1.0
    for _ in range(20):
        ty.observe(0.9, False)
    assert ty.factor < 0.5 and ty.observed == 30


class _WrongTail(StatisticalDrafter):
    """Proposes, confidently, a token the target will not pick: the one after its greedy choice (known from the
    reference), so that a tail of it is always rejected."""

    name = "wrong-tail"

    def __init__(self, full: list[int], vocab: int) -> None:
        self.full, self.vocab = full, vocab

    def propose(self, seq, n):
        return self.propose_scored(seq, n).tokens

    def propose_scored(self, seq, n):
        i = len(seq)
        return Proposal([(self.full[i] + 1) % self.vocab], [0.95]) if n > 0 and i < len(self.full) else Proposal()


def test_tail_after_a_neural_drafter_is_discounted_by_what_tails_yield():
    """In a horizontal cascade the bottom's tokens after the neural drafter's (the tail) start where that drafter's
    confidence fell or its quota ended. A bottom whose tails keep being rejected has them discounted (the yield is
    measured per drafter, across cascades, as a server builds one per request): fewer of its tokens reach the
    target, and the output stays the target's own."""
    from csdrafting.cascade.rows import tail_yield

    target, _ = _family(tiny.causal)
    T, D = tiny.wrap(target, "target"), tiny.wrap(target, "the target as its own drafter")  # its tokens all pass
    steep = CostCurve((1, 64), (1.0, 7.3))  # each reviewed token 0.1 of a pass: a doubtful one does not pay
    cfg = CascadeConfig.make([[2, 12], [0, 4]], dynamic=True, costs=[steep, CHEAP, None])
    tails = []
    for prompt in PROMPTS * 3:
        expect = _reference(target, prompt, 24)
        r = Cascade(T, [D, _WrongTail(prompt + expect, T.info.vocab_size)], cfg).generate(prompt, 24)
        assert r.tokens == expect, prompt
        tails.append(r.metrics.levels[2].drafted)
    ty = tail_yield(D)
    assert ty.observed > 0 and ty.factor < 0.5, (ty.observed, ty.factor)
    assert sum(tails[-len(PROMPTS):]) < sum(tails[:len(PROMPTS)]), tails
    assert tail_yield(T).observed == 0  # measured for the drafter that handed over, not for the reviewer
