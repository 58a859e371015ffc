"""Cost-aware dynamic drafting and the confident suffix drafter.

- the planner's rule itself (best length, the optimistic stop for neural drafters), against brute force;
- the suffix drafter's index against a brute-force counter, with rollbacks, and its calibration;
- exactness: greedy equality with transformers' generate and sampling chi-square, with dynamic drafting at
  every level (a statistical bottom that trims its proposals, a neural drafter that stops when its
  confidence no longer pays and hands over to the level below, a neural drafter reviewing the suffix
  drafter), under compute-bound and memory-bound cost curves;
- and the point of it: under a compute-bound cost, an unconfident level drafts nothing (plain steps); nor does
  a statistical level right after a token that has often ended the target's text.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

import table_lm
import tiny
from csdrafting import Cascade, CascadeConfig, CSDraftingError
from csdrafting.cascade.config import SamplingConfig
from csdrafting.cascade.planning import AdaptedCurve, CostCurve, DraftValue, EndStats, PassCosts, best_length, worth_more
from csdrafting.drafters.base import Proposal, StatisticalDrafter
from csdrafting.drafters.suffix import BIGRAM, Calibration, NgramCounts, SuffixDrafter, bucket
from test_greedy_exact import PROMPTS, _family, _reference
from test_sampling_exact import ALPHA, N_RUNS, PROMPT, chi_square_pvalue, exact_distribution

# review of n new tokens: compute-bound (the shape measured for the 1.5B Q4_K_M on 2 cores: 2 tokens cost
# 1.5 passes, 8 cost 4) or memory-bound (nearly flat, like the F32 tier or a GPU)
COMPUTE = CostCurve((1, 2, 4, 8, 16), (1.0, 1.5, 2.0, 4.0, 5.5))
MEMORY = CostCurve((1, 64), (1.0, 1.3))
CHEAP = CostCurve((1, 64), (0.05, 0.08))  # a small drafter next to a memory-bound target


def _calibration(high: float = 0.9, low: float = 0.3) -> Calibration:
    """Long or unanimous matches are trusted, single short ones and bigram guesses are not."""
    cal = Calibration()
    for key in ["req:1:once", "req:1:split", "req:2:once", BIGRAM, "req:1:maj"]:
        cal.counts[key] = [int(1000 * low), 1000]
    for key in ["req:3:once", "req:4:once", "req:5-6:once", "req:7-9:once", "req:10+:once", "req:1:all", "req:2:all", "req:3:all"]:
        cal.counts[key] = [int(1000 * high), 1000]
    return cal


# ------------------------------------------------------------------------------------------------ planner
def _brute(conf, review, start_e=1.0, start_p=1.0, have=0, spent=0.0):
    rates = []
    for n in range(len(conf) + 1):
        p, e = start_p, start_e
        for c in conf[:n]:
            p *= c
            e += p
        rates.append(e / (spent + review(have + n + 1)))
    best = max(rates)
    return next(n for n, r in enumerate(rates) if r >= best * (1 - 1e-9))


@pytest.mark.parametrize("curve", [COMPUTE, MEMORY, CostCurve((1, 2, 4, 8, 16), (86, 132, 170, 348, 477))])
def test_best_length_is_the_argmax(curve):
    rng = random.Random(0)
    for _ in range(300):
        conf = [rng.random() ** rng.choice([0.2, 1, 3]) for _ in range(rng.randint(0, 12))]
        have = rng.randint(0, 4)
        start = DraftValue()
        for c in [rng.random() for _ in range(have)]:
            start.add(c)
        spent = rng.random() * curve(1)
        n = best_length(conf, curve, start, have, spent)
        assert n == _brute(conf, curve, start.expected, start.survive, have, spent)


def test_best_length_cases():
    # compute-bound: one token must be accepted more than half the time to pay for a pass 1.5x as long
    assert best_length([0.4], COMPUTE, DraftValue(), 0) == 0
    assert best_length([0.6], COMPUTE, DraftValue(), 0) == 1
    # memory-bound: even a modest guess pays, and a long confident chain is kept whole
    assert best_length([0.4], MEMORY, DraftValue(), 0) == 1
    assert best_length([0.95] * 10, MEMORY, DraftValue(), 0) == 10
    # a confident head then junk: keep the head
    assert best_length([0.95, 0.95, 0.95, 0.05, 0.9], COMPUTE, DraftValue(), 0) == 3
    # unknown confidence: nothing to plan with, keep everything (the static K behaviour)
    assert best_length([0.1, None], COMPUTE, DraftValue(), 0) == 2


def test_worth_more_is_an_upper_bound():
    """If drafting one more (even surely accepted) token would not pay, best_length never keeps it."""
    rng = random.Random(1)
    for _ in range(200):
        v = DraftValue()
        have = rng.randint(0, 6)
        for _ in range(have):
            v.add(rng.random())
        cost = rng.random() * 2
        if not worth_more(v, MEMORY, have, 0.0, cost):
            assert best_length([1.0], MEMORY, v, have, 0.0, per_token=cost) == 0


def test_pass_costs_track_longer_passes_against_one_token_passes():
    """The correction is the ratio of the two kinds of pass's measured-over-priced means: ones at 0.9 of their
    price and longer passes at 1.1 make longer passes 1.1 / 0.9 dearer than the curve says; a pass the OS
    preempted (10x its price) moves it by a clipped amount only; it never leaves [1/LIMIT, LIMIT]."""
    m = PassCosts()
    assert m.factor == 1.0  # nothing measured: the curve as it is
    for _ in range(200):
        m.observe(1, 0.09, 0.1)
        m.observe(8, 0.22, 0.2)
    assert m.factor == pytest.approx(1.1 / 0.9, rel=1e-3)
    curve = AdaptedCurve(COMPUTE, m)
    assert curve(1) == COMPUTE(1) and curve(5) == pytest.approx(COMPUTE(5) * 1.1 / 0.9, rel=1e-3)
    before = m.factor
    m.observe(8, 2.0, 0.2)  # one preempted review
    assert before < m.factor < before * 1.05
    for _ in range(200):
        m.observe(8, 0.6, 0.2)  # reviews three times their price, for a long while: the correction is capped
    assert m.factor == PassCosts.LIMIT
    m.observe(0, 1.0, 0.1)
    m.observe(4, 1.0, 0.0)  # nothing to learn from: ignored
    assert m.factor == PassCosts.LIMIT
    m.reset()  # as a fresh process starts it
    assert m.factor == 1.0 and m.passes == 0


def test_corrected_curve_stops_break_even_drafts():
    """A draft that the curve prices just above a plain step is dropped once reviews measurably cost 5% more
    than the curve says, relative to one-token passes; a clearly paying draft is kept."""
    m = PassCosts()
    conf = [0.55]  # on COMPUTE (1.5x for 2 tokens): 1.55 / 1.5 = a 3% gain by the curve
    assert best_length(conf, COMPUTE, DraftValue(), 0) == 1
    for _ in range(100):
        m.observe(1, 1.0, 1.0)
        m.observe(2, 1.05 * COMPUTE(2), COMPUTE(2))
    assert best_length(conf, AdaptedCurve(COMPUTE, m), DraftValue(), 0) == 0
    assert best_length([0.9, 0.9], AdaptedCurve(COMPUTE, m), DraftValue(), 0) == 2


def test_cascades_on_one_model_share_its_measured_costs():
    """A server or a bench builds a cascade per request: what a model's passes cost is learned across them
    (kept per model instance), used by the planner unless the cascade turns it off (the replay does)."""
    from csdrafting.cascade.rows import measured_costs

    target, _ = _family(tiny.causal)
    T = tiny.wrap(target, "t")
    config = CascadeConfig.make([[8]], dynamic=True, costs=[COMPUTE, None])
    first = Cascade(T, [SuffixDrafter(_calibration())], config)
    first.generate(PROMPTS[0], 12)
    seen = measured_costs(T).passes
    assert seen >= 1 and first.levels[0].rows.measured is measured_costs(T)
    second = Cascade(T, [SuffixDrafter(_calibration())], config)
    assert second.levels[0].rows.measured is measured_costs(T)
    assert isinstance(second.levels[0].planning_cost(True), AdaptedCurve)
    assert second.levels[0].planning_cost(False) is COMPUTE
    second.generate(PROMPTS[1], 12)
    assert measured_costs(T).passes > seen


# ------------------------------------------------------------------------------------------------ suffix drafter
def _brute_lookup(text, max_n, min_count):
    for n in range(min(max_n, len(text)), 0, -1):
        ctx = tuple(text[-n:])
        follow = Counter(text[i + n] for i in range(len(text) - n) if tuple(text[i : i + n]) == ctx)
        if follow and max(follow.values()) >= min_count:
            return n, max(follow.values()), sum(follow.values()), follow
    return None


def test_ngram_counts_match_brute_force_under_rollback():
    rng = random.Random(0)
    idx = NgramCounts(5)
    text: list[int] = []
    for step in range(600):
        if text and rng.random() < 0.2:
            keep = rng.randint(0, len(text))
            idx.truncate(keep)
            del text[keep:]
        else:
            t = rng.choice([1, 2, 3, 4]) if rng.random() < 0.8 else rng.randint(5, 9)
            idx.append(t)
            text.append(t)
        for min_count in (1, 2):
            got = idx.lookup(text, min_count)
            want = _brute_lookup(text, 5, min_count)
            if want is None:
                assert got is None
            else:
                n, best, total, follow = want
                assert got is not None and got[0] == n and got[2] == best and got[3] == total
                assert follow[got[1]] == best


def test_suffix_drafter_proposes_copies_with_confidence():
    d = SuffixDrafter(_calibration())
    text = [1, 10, 11, 12, 13, 14, 15, 20, 10, 11, 12]
    prop = d.propose_scored(text, 4)
    assert prop.tokens == [13, 14, 15, 20]
    assert all(c is not None and 0 < c < 1 for c in prop.confidence)
    # the index is back where it was: proposing does not change what the drafter has seen
    assert d.index.text == text
    # no match and no bigram: nothing to propose
    assert SuffixDrafter().propose([1, 2, 3], 4) == []
    assert SuffixDrafter().propose_scored([1, 2, 3, 2], 2).confidence == [None, None]


def test_suffix_store_persists_across_requests():
    d = SuffixDrafter(persist=True)
    d.begin([1])
    d.end([1, 40, 41, 42, 43])
    d.begin([7, 40, 41])
    assert d.propose([7, 40, 41], 2) == [42, 43]
    assert SuffixDrafter(persist=False).propose([7, 40, 41], 2) == []


def test_suffix_store_stays_bounded():
    """Past store_max_tokens the oldest half of the stored outputs is forgotten, the newest kept."""
    d = SuffixDrafter(persist=True, store_max_tokens=10)
    for i in range(5):  # five outputs of 4 tokens: 100+i, 200+i, 300+i, 400+i
        d.begin([1])
        d.end([1, 100 + i, 200 + i, 300 + i, 400 + i])
    assert sum(len(o) for o in d._stored) <= 10 and len(d.store.text) == 4
    assert d.propose([9, 100 + 4, 200 + 4], 2) == [300 + 4, 400 + 4]  # the newest output is still there
    assert d.propose([9, 100, 200], 2) == []  # the oldest was forgotten
    with pytest.raises(CSDraftingError):
        SuffixDrafter(persist=True, store_max_tokens=0)


def test_unmeasured_source_is_not_trusted():
    """A calibration made without the store (or a bigram table) gives that source confidence 0, so a
    cost-aware cascade never pays a review for it; measured sources keep their shrunk rates."""
    cal = _calibration()
    assert cal.rate("store:3:once") == 0.0 and cal.rate("store:10+:all") == 0.0
    assert cal.rate("req:3:once") == pytest.approx(0.9, abs=0.01)
    assert 0.0 < cal.rate("req:10+:split") < 1.0  # an unseen bucket of a measured source: the source's pool


def test_calibration_counts_acceptance_per_bucket():
    d = SuffixDrafter()
    prompt, out = [5, 6, 7, 8], [5, 6, 7, 9, 5, 6]
    cal = d.calibrate([(prompt, out)])
    # position by position: after [..8] nothing matched "8"; after 5: 1-gram '5'->6 (right); after 6: 2-gram
    # '5 6'->7 (right); after 7: 3-gram -> 8 but 9 came (wrong); after 9: no match; after 5: '5'->6 seen twice
    assert cal.counts[bucket("req", 1, 1, 1)] == [1, 1]
    assert cal.counts[bucket("req", 2, 1, 1)] == [1, 1]
    assert cal.counts[bucket("req", 3, 1, 1)] == [0, 1]
    assert cal.counts[bucket("req", 1, 2, 2)] == [1, 1]
    assert sum(t for _, t in cal.counts.values()) == 4
    back = Calibration.from_json(cal.to_json())
    assert back.counts == cal.counts and abs(back.rate("req:3:once") - cal.rate("req:3:once")) < 1e-12


def test_bad_inputs():
    with pytest.raises(CSDraftingError):
        SuffixDrafter(max_ngram=0)
    with pytest.raises(CSDraftingError):
        Calibration.from_json({"nope": 1})
    t, ds = table_lm.family()
    with pytest.raises(CSDraftingError, match="cost curve per level"):
        Cascade(t, [SuffixDrafter()], CascadeConfig.make([[4]], dynamic=True, costs=[COMPUTE]))
    with pytest.raises(CSDraftingError, match="needs a CostCurve"):
        Cascade(t, [ds[0], SuffixDrafter()], CascadeConfig.make([[2, 4], [0, 2]], dynamic=True, costs=[COMPUTE, None, None]))
    with pytest.raises(CSDraftingError, match="last"):
        Cascade(t, [SuffixDrafter(), ds[0]], CascadeConfig.make([[2, 4], [0, 2]]))


# ------------------------------------------------------------------------------------------------ exactness
def _dynamic_runs(T, D1, D2):
    cal = _calibration()
    dyn = lambda k, costs, lenience=1.0: CascadeConfig.make(k, lenience=lenience, dynamic=True, costs=costs)  # noqa: E731
    return {
        "suffix, static K (no calibration)": (Cascade(T, [SuffixDrafter()], CascadeConfig.make([[5]]))),
        "suffix dynamic, compute-bound": Cascade(T, [SuffixDrafter(cal)], dyn([[8]], [COMPUTE, None])),
        "suffix dynamic, memory-bound": Cascade(T, [SuffixDrafter(cal)], dyn([[8]], [MEMORY, None])),
        "D1 autoregressive then suffix (dynamic horizontal)": Cascade(T, [D1, SuffixDrafter(cal)], dyn([[6, 12], [0, 0]], [MEMORY, CHEAP, None])),
        "D1 reviewing suffix (dynamic vertical)": Cascade(T, [D1, SuffixDrafter(cal)], dyn([[6, 6], [0, 4]], [MEMORY, CHEAP, None])),
        "D1 dynamic, compute-bound target": Cascade(T, [D1], dyn([[6]], [COMPUTE, CHEAP])),
        "D1, D2, suffix, dynamic, lenience 2": Cascade(
            T, [D1, D2, SuffixDrafter(cal)], dyn([[2, 6, 8], [0, 2, 4], [0, 0, 4]], [MEMORY, CHEAP, CHEAP, None], 2.0)),
    }


@pytest.mark.parametrize("kind", ["decoder-only", "encoder-decoder"])
def test_dynamic_greedy_equals_target_generate(kind):
    make = tiny.causal if kind == "decoder-only" else tiny.seq2seq
    target, drafters = _family(make)
    T = tiny.wrap(target, "target")
    D1, D2 = (tiny.wrap(d, f"d{i + 1}") for i, d in enumerate(drafters))
    cascades = _dynamic_runs(T, D1, D2)
    accepted = dropped = 0
    for prompt in PROMPTS:
        for n in (3, 40):
            expect = _reference(target, prompt, n)
            for name, c in cascades.items():
                r = c.generate(prompt, n)
                assert r.tokens == expect, f"{name}, prompt {prompt}, n={n}: {r.tokens} != {expect}"
                accepted += sum(lv.accepted for lv in r.metrics.levels[1:])
                dropped += sum(lv.dropped for lv in r.metrics.levels[1:])
    assert accepted > 0 and dropped > 0  # drafts were used, and the planner did trim some


def test_unconfident_level_drafts_nothing_when_reviews_are_compute_bound():
    """A suffix drafter whose every bucket is accepted 30% of the time never pays for a compute-bound
    review: every step is a plain step, exactly as many target passes as tokens."""
    target, _ = _family(tiny.causal)
    T = tiny.wrap(target, "t")
    cal = _calibration(high=0.3, low=0.3)
    r = Cascade(T, [SuffixDrafter(cal)], CascadeConfig.make([[8]], dynamic=True, costs=[COMPUTE, None])).generate(PROMPTS[0], 30)
    assert r.tokens == _reference(target, PROMPTS[0], 30)
    assert r.metrics.levels[1].drafted == 0 and r.metrics.levels[1].dropped > 0
    assert r.metrics.levels[0].forward_passes == len(r.tokens)  # one pass per token, as in plain decoding
    # the same drafter under a memory-bound review drafts, and the target needs fewer passes
    r2 = Cascade(T, [SuffixDrafter(cal)], CascadeConfig.make([[8]], dynamic=True, costs=[MEMORY, None])).generate(PROMPTS[0], 30)
    assert r2.tokens == r.tokens and r2.metrics.levels[1].drafted > 0


class _UpTo(StatisticalDrafter):
    """Proposes the target's own next tokens (known from the reference), confidently, up to the next occurrence
    of one token: every target step then ends with that token (the review's own), and the next starts after it."""

    name = "up-to"

    def __init__(self, full: list[int], stop: int) -> None:
        self.full, self.stop = full, stop

    def propose(self, seq, n):
        return self.propose_scored(seq, n).tokens

    def propose_scored(self, seq, n):
        rest = self.full[len(seq):len(seq) + n]
        cut = rest.index(self.stop) if self.stop in rest else len(rest)
        return Proposal(rest[:cut], [0.95] * cut)


def test_a_statistical_draft_after_a_likely_end_is_planned_with_that_chance():
    """A statistical drafter knows nothing of where texts end (after a code edit's closing fence the suffix
    drafter proposes what followed the fence in the prompt). The engine counts, across the generations of the
    cascades over a target (one per request), how often the text ended right after each token, and plans the
    first token a statistical level proposes after the committed text with that chance: where the text has
    always ended, a compute-bound review does not pay for a draft, and the step is a plain one. The output is
    the target's own either way, and the statistics are learned by the engine and shared by cascades of the
    same target and shape."""
    target, _ = _family(tiny.causal)
    prompt = PROMPTS[0]
    out = _reference(target, prompt, 30)
    # a token that occurs after the output's first and is followed by another: the steps after it are watched
    stop = next(t for i, t in enumerate(out[1:-1], start=1) if out[i + 1] != t)
    cfg = CascadeConfig.make([[8]], dynamic=True, costs=[COMPUTE, None])

    def steps_after_stop(T, learned: EndStats | None = None) -> list[int]:
        c = Cascade(T, [_UpTo(list(prompt) + out, stop)], cfg)
        if learned is not None:
            c.ends = learned.copy()
        batches: list[list[int]] = []
        r = c.generate(prompt, 30, on_tokens=batches.append)
        assert r.tokens == out
        return [len(b) for i, b in enumerate(batches[1:], start=1) if batches[i - 1][-1] == stop
                and sum(map(len, batches[:i])) >= 2 and sum(map(len, batches[:i])) < len(out) - 1]

    unknown = steps_after_stop(tiny.wrap(target, "no ends known"))
    assert unknown and all(n > 1 for n in unknown)  # the drafts after the token were reviewed, and accepted
    ended = EndStats()
    for _ in range(9):
        ended.learn([out[0], stop, 0], frozenset({0}))  # the text ended right after it, 9 times in 9
    known = steps_after_stop(tiny.wrap(target, "ends known"), ended)
    assert len(known) == len(unknown) and all(n == 1 for n in known)  # plain steps there
    # learned by the engine, shared by the cascades of one target and shape, not by another shape's
    T = tiny.wrap(target, "learning")
    first = Cascade(T, [_UpTo(list(prompt) + out, stop)], cfg)
    first.generate(prompt, 30)
    assert sum(c[1] for c in first.ends.counts.values()) == len(out) - 2
    assert Cascade(T, [_UpTo([], stop)], cfg).ends is first.ends
    assert Cascade(T, [_UpTo([], stop)], cfg, scope="a bench method").ends is not first.ends  # another scope
    assert Cascade(T, [_UpTo([], stop)], CascadeConfig.make([[4]], dynamic=True, costs=[COMPUTE, None])).ends is not first.ends
    assert Cascade(T, [_UpTo([], stop)], CascadeConfig.make([[8]])).ends is None  # nothing to plan


def _sample_counts(make_cascade, cfg: SamplingConfig, n: int = N_RUNS) -> dict[tuple, int]:
    cascade = make_cascade()
    counts: Counter = Counter()
    for seed in range(n):
        s = SamplingConfig(True, cfg.temperature, cfg.top_k, cfg.top_p, seed)
        counts[tuple(cascade.generate(PROMPT, 3, s).tokens)] += 1
    return counts


def _dyn_cascades():
    cal = _calibration(high=0.8, low=0.5)

    def suffix_only():
        t, _ = table_lm.family()
        return Cascade(t, [SuffixDrafter(cal)], CascadeConfig.make([[3]], dynamic=True, costs=[MEMORY, None]))

    def three_levels():
        t, ds = table_lm.family()
        return Cascade(t, [ds[0], ds[1], SuffixDrafter(cal)], CascadeConfig.make(
            [[1, 2, 3], [0, 2, 3], [0, 0, 2]], lenience=3.0, dynamic=True, costs=[MEMORY, CHEAP, CHEAP, None]))

    return {"suffix dynamic, temperature 0.9": (suffix_only, SamplingConfig(True, 0.9)),
            "2 drafters + suffix, dynamic, lenience 3, top-p 0.9": (three_levels, SamplingConfig(True, 1.0, top_p=0.9))}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_dyn_cascades()))
def test_dynamic_sampling_matches_target_distribution(name):
    make, cfg = _dyn_cascades()[name]
    exact = exact_distribution(make().target, cfg)
    counts = _sample_counts(make, cfg)
    p = chi_square_pvalue(counts, exact, N_RUNS)
    assert p > ALPHA, f"{name}: chi-square p-value {p:.2e}"


def test_confidence_is_the_drafters_probability():
    """What a neural drafter hands upward carries its own probability of each token as confidence."""
    t, ds = table_lm.family()
    c = Cascade(t, [ds[0]], CascadeConfig.make([[3]], dynamic=True, costs=[MEMORY, CHEAP]))
    c.generate(PROMPT, 4)
    row = ds[0].logits_at(PROMPT, len(PROMPT) - 1)
    p = np.exp(row - row.max())
    p /= p.sum()
    d = c.levels[1].propose(c.run, [], 1)  # the state generate() left: same prompt, greedy
    assert d.tokens == [int(np.argmax(row))] and abs(d.conf[0] - p.max()) < 1e-9


def test_calibration_texts_resume_from_their_cache(tmp_path):
    """`csdrafting calibrate` records the target's outputs as it goes; a rerun reuses them (no new passes)."""
    from csdrafting.tune.calibrate import calibrate, reference_texts, tree_headroom

    t, _ = table_lm.family(vocab=7, eos=None)
    cache = tmp_path / "texts.jsonl"
    prompts = [[1, 2, 3, 1, 2], [4, 5, 4, 5]]
    first = reference_texts(t, prompts, 12, progress=False, cache=cache)
    calls = t.calls
    again = reference_texts(t, prompts, 12, progress=False, cache=cache)
    assert again == first and t.calls == calls and len(cache.read_text().splitlines()) == 2
    assert all(len(out) == 12 for _, out in first)
    cal = calibrate(t, {"a": prompts[:1], "b": prompts[1:]}, 12, progress=False, cache=cache)
    assert t.calls == calls and set(cal.meta["per_dataset"]) == {"a", "b"}
    assert cal.meta["tree_headroom"]["positions"] == 24
    assert sum(v[1] for v in cal.counts.values()) == sum(sum(v[1] for v in c.values()) for c in cal.meta["per_dataset"].values())
    head = tree_headroom(first)
    assert head["positions"] == 24 and head["first_right"] <= head["matched"] <= 24
    assert head["runner_up_right"] <= head["with_runner_up"] <= head["matched"]
