"""Sampling exactness: the cascade's output follows the target's own sampling distribution.

Two designs, each with its power stated (computed from the noncentral chi-square distribution for a
named effect size, Cohen's w) and each shown to reject deliberately broken cascades.

Short texts, whole joint law (table model). With a 5-token vocabulary (token 0 is EOS) and 3 new tokens
there are 156 possible outputs; their exact probabilities under the target (after temperature / top-k /
top-p) are enumerated, and N seeded cascade runs are compared with them by a chi-square test at
significance 1e-3 (the false-alarm rate). Cells with an expected count below 5 are pooled.

Long texts, marginals (context model). 14 new tokens with long drafts, repeated horizontal hand-offs
between two neural drafters and Max-Gram, lenience at the intermediate levels, top-k and top-p together
and two EOS ids, on a model whose logits depend on the whole context (context_lm). The joint law of 14
tokens cannot be enumerated, but the exact law of simpler statistics can (a dynamic program over the
model's hash state): the token at each of several positions (with a cell for "already ended") and the
length of the text. Each statistic gets a chi-square test; a Bonferroni correction keeps the
family-wise false-alarm rate at 1e-3.

Broken variants the tests must reject: a cascade that hands the reviewer's own distribution p upward
instead of the emission distribution r of its lenient review, one that applies lenience at the
target too, and one that cuts a neural drafter's sampled EOS out of its draft.
"""

from __future__ import annotations


import numpy as np
import pytest
from scipy import stats

import context_lm
import table_lm
from csdrafting import Cascade, CascadeConfig, MaxGram
from csdrafting.cascade import acceptance, engine
from csdrafting.cascade.config import SamplingConfig
from csdrafting.cascade.sampling import softmax, warp

ALPHA = 1e-3
N_RUNS = 60_000
N_NEW = 3
PROMPT = [1, 2, 3, 1, 2]


def exact_distribution(target: table_lm.TableLM, cfg: SamplingConfig) -> dict[tuple, float]:
    v = target.info.vocab_size
    eos = target.info.eos_token_ids
    out: dict[tuple, float] = {}

    def walk(seq: list[int], prob: float, depth: int) -> None:
        if depth == N_NEW:
            out[tuple(seq[len(PROMPT):])] = prob
            return
        p = warp(target.logits_at(seq, len(seq) - 1), cfg)
        for t in range(v):
            if p[t] == 0:
                continue
            if t in eos:
                out[tuple(seq[len(PROMPT):] + [t])] = prob * p[t]
            else:
                walk(seq + [t], prob * p[t], depth + 1)

    walk(list(PROMPT), 1.0, 0)
    assert abs(sum(out.values()) - 1) < 1e-9
    return out


def chi_square_pvalue(counts: dict[tuple, int], exact: dict[tuple, float], n: int) -> float:
    assert set(counts) <= set(exact), f"impossible outputs: {set(counts) - set(exact)}"
    keys = list(exact)
    obs = np.array([counts.get(k, 0) for k in keys], dtype=float)
    exp = np.array([exact[k] * n for k in keys])
    return _pooled_chisquare(obs, exp)  # pools the rarest outcomes until each cell expects at least 5


def run_cascade(drafters_fn, k, lenience, cfg: SamplingConfig, n: int = N_RUNS) -> dict[tuple, int]:
    target, drafters = drafters_fn()
    cascade = Cascade(target, drafters, CascadeConfig.make(k, lenience=lenience))
    counts: dict[tuple, int] = {}
    for seed in range(n):
        r = cascade.generate(PROMPT, N_NEW, SamplingConfig(True, cfg.temperature, cfg.top_k, cfg.top_p, seed=seed))
        key = tuple(r.tokens)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _fam():
    return table_lm.family()


def _target_only():
    t, _ = table_lm.family()
    return t, []


def _two_plus_mag():
    t, ds = table_lm.family()
    return t, [ds[0], ds[1], MaxGram()]


def _one_plus_mag():
    t, ds = table_lm.family()
    return t, [ds[0], MaxGram()]


def _spec():
    t, ds = table_lm.family()
    return t, [ds[1]]


CONFIGS = {
    "plain, temperature 0.8": (_target_only, None, 1.0, SamplingConfig(True, 0.8)),
    "speculative k=3, top-p 0.9": (_spec, [[3]], 1.0, SamplingConfig(True, 1.0, top_p=0.9)),
    "2 drafters + Max-Gram, horizontal K, lenience 3, temperature 0.7, top-p 0.85": (
        _two_plus_mag, [[1, 2, 3], [0, 2, 3], [0, 0, 2]], 3.0, SamplingConfig(True, 0.7, top_p=0.85)),
    "horizontal only (zero K row), temperature 1.3": (_two_plus_mag, [[1, 2, 3], [0, 0, 0], [0, 0, 2]], 2.0, SamplingConfig(True, 1.3)),
    "1 drafter + Max-Gram, lenience 5, top-k 4": (_one_plus_mag, [[2, 4], [0, 3]], 5.0, SamplingConfig(True, 1.0, top_k=4)),
}


@pytest.mark.slow  # N_RUNS = 60,000 seeded generations per configuration
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cascade_sampling_matches_target_distribution(name):
    fn, k, lenience, cfg = CONFIGS[name]
    target, _ = fn()
    exact = exact_distribution(target, cfg)
    counts = run_cascade(fn, k, lenience, cfg)
    p = chi_square_pvalue(counts, exact, N_RUNS)
    assert p > ALPHA, f"{name}: chi-square p-value {p:.2e} says the output is not the target's distribution"


@pytest.mark.slow
def test_broken_variant_is_rejected(monkeypatch):
    """Handing p (instead of the emission mixture r) upward after a lenient review breaks exactness."""
    fn, k, lenience, cfg = CONFIGS["2 drafters + Max-Gram, horizontal K, lenience 3, temperature 0.7, top-p 0.85"]
    target, _ = fn()
    exact = exact_distribution(target, cfg)
    monkeypatch.setattr(acceptance, "emission", lambda p, a: p)
    counts = run_cascade(fn, k, lenience, cfg, n=N_RUNS // 2)
    p = chi_square_pvalue(counts, exact, N_RUNS // 2)
    assert p < ALPHA, f"the broken cascade passed the exactness test (p = {p:.3g}): the test has no power"


def test_cutting_a_sampled_eos_out_of_a_neural_draft_is_rejected(monkeypatch):
    """The engine leaves a drafted EOS to the reviewer's own token only where that cannot move the law (greedy
    decoding, or a statistical level's token): cutting a neural drafter's *sampled* EOS as well makes the
    review at its position emit p on the drafter's EOS branch where the review's mixture belongs, and the
    test sees it in 10,000 runs (the correct engine passes this configuration above, in 60,000)."""
    fn, k, lenience, cfg = CONFIGS["speculative k=3, top-p 0.9"]
    exact = exact_distribution(fn()[0], cfg)
    monkeypatch.setattr(engine, "may_cut_drafted_end", lambda run, lv: True)
    n = 10_000
    counts = run_cascade(fn, k, lenience, cfg, n=n)
    p = chi_square_pvalue(counts, exact, n)
    assert p < ALPHA, f"cutting sampled EOS tokens passed the exactness test (p = {p:.3g}): the test has no power"


def perturbed(p: np.ndarray, w: float, rng: np.random.Generator) -> np.ndarray:
    """A law at Cohen's w = `w` from `p`: every possible outcome's probability moved up or down (half of
    them each way, at random) by the same few percent."""
    support = np.flatnonzero(p > 0)
    signs = np.resize([1.0, -1.0], support.size)
    rng.shuffle(signs)
    z = np.zeros(p.size)
    z[support] = signs
    z[support] -= (p * z).sum()  # keeps the total at 1
    c = w / np.sqrt((p * z**2).sum())  # sum (q - p)^2 / p = c^2 sum p z^2 = w^2
    q = p * (1 + c * z)
    assert q.min() >= 0 and abs(q.sum() - 1) < 1e-12
    return q


def rejection_rate(law: np.ndarray, exact: np.ndarray, n: int, alpha: float, reps: int, rng) -> float:
    """How often the test's own statistic (pooled chi-square against the exact law) rejects n draws of `law`."""
    return float(np.mean([_pooled_chisquare(rng.multinomial(n, law).astype(float), exact * n) < alpha
                          for _ in range(reps)]))


def test_power_is_known():
    """With N_RUNS samples, the test detects a deviation of Cohen's w = 0.04 (total variation around 0.02)
    with probability above 0.9 at false-alarm rate 1e-3: its own statistic, on a target law enumerated
    by the project's warping, rejects a law perturbed by w = 0.04 and keeps the law itself."""
    fn, _, _, cfg = CONFIGS["2 drafters + Max-Gram, horizontal K, lenience 3, temperature 0.7, top-p 0.85"]
    exact = np.array(list(exact_distribution(fn()[0], cfg).values()))
    rng = np.random.default_rng(0)
    assert rejection_rate(perturbed(exact, 0.04, rng), exact, N_RUNS, ALPHA, 400, rng) > 0.9
    assert rejection_rate(exact, exact, N_RUNS, ALPHA, 400, rng) <= 3 / 400


@pytest.mark.parametrize("lenience", [1.0, 2.5])
@pytest.mark.parametrize("q_kind", ["dense", "one-hot"])
def test_single_review_emits_r(lenience, q_kind):
    """The acceptance rule alone: the emitted token at a reviewed position follows r (= p when l = 1)."""
    rng = np.random.default_rng(0)
    v = 6
    p = rng.dirichlet(np.ones(v))
    q = rng.dirichlet(np.ones(v))
    n = 40_000
    counts = np.zeros(v)
    for i in range(n):
        if q_kind == "dense":
            x = int(rng.choice(v, p=q))
            qi = q
        else:
            x, qi = 2, None
        verdict = acceptance.review_sampling([p, p], [x], [qi], lenience, rng, want_q=True)
        counts[verdict.tokens[0]] += 1
    a = np.minimum(q, lenience * p) if q_kind == "dense" else acceptance.lenient_mass(p, None, 2, lenience)
    r = acceptance.emission(p, a)
    if lenience == 1.0:
        assert np.allclose(r, p)
    assert stats.chisquare(counts, r * n).pvalue > ALPHA


# ------------------------------------------------------------------------------------------ long texts
DEEP_N = 3000
DEEP_NEW = 14
DEEP_PROMPT = [3, 4, 5, 3, 4]
DEEP_POSITIONS = (0, 1, 3, 6, 9, 13)  # 0-based positions of generated tokens whose law is tested
DEEP_K = [[3, 8, 14], [0, 3, 6], [0, 0, 4]]  # cumulative: L1 fills to 3, L2 to 8, Max-Gram to 14
DEEP_SAMPLING = SamplingConfig(True, 0.8, top_k=5, top_p=0.9)
DEEP_LENIENCE = 2.5
DEEP_W = 0.13  # effect size the long-text test is sized for (see test_power_is_known)


def deep_cascade(lenience: float) -> Cascade:
    target, drafters = context_lm.family()
    assert len(target.info.eos_token_ids) == 2
    return Cascade(target, [drafters[0], drafters[1], MaxGram()], CascadeConfig.make(DEEP_K, lenience=lenience))


def deep_runs(lenience: float, n: int = DEEP_N) -> dict:
    """n seeded generations: the token at every position (vocab size = "ended"), lengths, and how often
    the intermediate reviewers (levels 1 and 2) accepted what they reviewed."""
    c = deep_cascade(lenience)
    v = c.target.info.vocab_size
    tokens = np.full((n, DEEP_NEW), v)
    lengths = np.zeros(n, dtype=int)
    reviewed = accepted = cascaded = 0
    s = DEEP_SAMPLING
    for seed in range(n):
        r = c.generate(DEEP_PROMPT, DEEP_NEW, SamplingConfig(True, s.temperature, s.top_k, s.top_p, seed=seed))
        tokens[seed, : len(r.tokens)] = r.tokens
        lengths[seed] = len(r.tokens)
        for lv in r.metrics.levels[1:3]:
            reviewed += sum(lv.reviewed_by_position)
            accepted += sum(lv.accepted_by_position)
        # every drafting level handed tokens on, over more than one target step
        cascaded += all(lv.drafted for lv in r.metrics.levels[1:]) and r.metrics.target_steps > 1
    return {"tokens": tokens, "lengths": lengths, "reviewed": reviewed, "accepted": accepted, "cascaded": cascaded, "n": n}


_DEEP_CACHE: dict[float, dict] = {}


def deep(lenience: float) -> dict:
    if lenience not in _DEEP_CACHE:
        _DEEP_CACHE[lenience] = deep_runs(lenience)
    return _DEEP_CACHE[lenience]


def deep_exact() -> tuple[np.ndarray, np.ndarray]:
    target, _ = context_lm.family()
    return context_lm.exact_marginals(target, DEEP_PROMPT, DEEP_NEW, lambda row: warp(row, DEEP_SAMPLING))


def _pooled_chisquare(obs: np.ndarray, exp: np.ndarray) -> float:
    """Chi-square goodness of fit, pooling the rarest cells until each expects at least 5."""
    order = np.argsort(exp)
    o, e = [], []
    po = pe = 0.0
    for i in order:
        po += obs[i]
        pe += exp[i]
        if pe >= 5:
            o.append(po)
            e.append(pe)
            po = pe = 0.0
    if pe > 0:
        o[-1] += po
        e[-1] += pe
    return float(stats.chisquare(o, e).pvalue) if len(o) > 1 else 1.0


def deep_pvalues(runs: dict) -> dict[str, float]:
    tok_exact, len_exact = deep_exact()
    n, v = runs["n"], tok_exact.shape[1]
    out = {}
    for i in DEEP_POSITIONS:
        obs = np.bincount(runs["tokens"][:, i], minlength=v)
        assert np.all(obs[tok_exact[i] == 0] == 0), f"token {i + 1}: outcomes the target cannot produce"
        out[f"token {i + 1}"] = _pooled_chisquare(obs, tok_exact[i] * n)
    obs = np.bincount(runs["lengths"], minlength=DEEP_NEW + 1)
    assert np.all(obs[len_exact == 0] == 0), "lengths the target cannot produce"
    out["length"] = _pooled_chisquare(obs, len_exact * n)
    return out


DEEP_ALPHA_EACH = ALPHA / (len(DEEP_POSITIONS) + 1)  # Bonferroni: family-wise false-alarm rate <= ALPHA


@pytest.mark.slow  # DEEP_N = 3,000 generations of 14 tokens through three drafting levels, per lenience
@pytest.mark.parametrize("lenience", [1.0, DEEP_LENIENCE])
def test_long_cascade_sampling_matches_target_marginals(lenience):
    runs = deep(lenience)
    assert runs["lengths"].mean() > 8 and (runs["lengths"] == DEEP_NEW).mean() > 0.3  # long texts, really
    assert runs["cascaded"] / runs["n"] > 0.5  # most texts went through every level, more than once
    ps = deep_pvalues(runs)
    bad = {k: f"{p:.2e}" for k, p in ps.items() if p <= DEEP_ALPHA_EACH}
    assert not bad, f"lenience {lenience}: these statistics are not the target's: {bad}"


@pytest.mark.slow
def test_lenience_raises_intermediate_acceptance_without_moving_the_output():
    """Lenience is a speed knob for the drafting levels only: the intermediate reviewers accept more, and
    the output (already tested against the exact law at both settings) is the same law at both."""
    strict, lenient = deep(1.0), deep(DEEP_LENIENCE)
    a1 = strict["accepted"] / strict["reviewed"]
    a2 = lenient["accepted"] / lenient["reviewed"]
    pooled = (strict["accepted"] + lenient["accepted"]) / (strict["reviewed"] + lenient["reviewed"])
    z = (a2 - a1) / np.sqrt(pooled * (1 - pooled) * (1 / strict["reviewed"] + 1 / lenient["reviewed"]))
    assert a2 > a1 + 0.05 and z > 6, (a1, a2, z)
    # two-sample homogeneity of each statistic between the two settings (Bonferroni as above)
    v = context_lm.family()[0].info.vocab_size
    for i in DEEP_POSITIONS:
        table = np.stack([np.bincount(r["tokens"][:, i], minlength=v + 1) for r in (strict, lenient)])
        table = table[:, table.sum(0) > 0]
        assert stats.chi2_contingency(table).pvalue > DEEP_ALPHA_EACH, f"token {i + 1} moved with lenience"


def _lenient_target(monkeypatch):
    """Broken: the target reviews with the intermediate levels' lenience instead of 1."""
    orig = acceptance.review_sampling
    monkeypatch.setattr(acceptance, "review_sampling",
                        lambda ps, draft, qs, lenience, rng, want_q: orig(ps, draft, qs, DEEP_LENIENCE, rng, want_q))


def _p_handed_up(monkeypatch):
    """Broken: a lenient reviewer hands its own p upward instead of the emission law r."""
    monkeypatch.setattr(acceptance, "emission", lambda p, a: p)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [_p_handed_up, _lenient_target], ids=["p handed up", "lenient target"])
def test_long_test_rejects_broken_cascades(monkeypatch, breakage):
    breakage(monkeypatch)
    ps = deep_pvalues(deep_runs(DEEP_LENIENCE, n=DEEP_N // 2))
    assert min(ps.values()) < DEEP_ALPHA_EACH, f"a broken cascade passed the long-text test: {ps}"


def test_long_test_power_is_known():
    """Each statistic of the long-text test (the length: 15 cells before pooling) with DEEP_N runs, at the
    Bonferroni level 1e-3 / 7, detects a deviation of Cohen's w = 0.13 with probability above 0.9: its own
    statistic, on the exact laws from the model's dynamic program, rejects laws perturbed by w = 0.13 and
    keeps the laws themselves."""
    tok_exact, len_exact = deep_exact()
    rng = np.random.default_rng(0)
    for name, law in [("length", len_exact)] + [(f"token {i + 1}", tok_exact[i]) for i in DEEP_POSITIONS]:
        assert rejection_rate(perturbed(law, DEEP_W, rng), law, DEEP_N, DEEP_ALPHA_EACH, 200, rng) > 0.9, name
        assert rejection_rate(law, law, DEEP_N, DEEP_ALPHA_EACH, 200, rng) <= 1 / 200, name


# ------------------------------------------------------------------------- warping, against transformers
WARPS = [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.8, 10, 0.9), (0.5, 3, 0.5), (1.0, 1, 1.0), (2.0, 40, 0.95), (1.0, 0, 0.3)]


@pytest.mark.parametrize("temperature, top_k, top_p", WARPS)
def test_warp_matches_transformers_logits_warpers(temperature, top_k, top_p):
    """Temperature, then top-k, then top-p, as transformers' generate() chains its warpers."""
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs = [TemperatureLogitsWarper(temperature)]
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    rng = np.random.default_rng(int(temperature * 100) + top_k)
    rows = rng.normal(0, 3, size=(50, 300))
    if top_p == 1.0:
        rows[25:] = np.round(rows[25:])  # many ties at the k-th value: both keep every tied token
    cfg = SamplingConfig(True, temperature, top_k, top_p)
    for row in rows:
        scores = torch.tensor(row[None], dtype=torch.float64)
        for proc in procs:
            scores = proc(None, scores)
        want = softmax(scores[0].numpy())
        got = warp(row, cfg)
        np.testing.assert_array_equal(got > 0, want > 0)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
