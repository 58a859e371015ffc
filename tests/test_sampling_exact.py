"""Sampling exactness: the cascade's output follows the target's own sampling distribution.

With a 5-token vocabulary (token 0 is EOS) and 3 new tokens there are 156 possible outputs; their exact
probabilities under the target (after temperature / top-p) are enumerated, and N seeded cascade runs are
compared with them by a chi-square test at significance 1e-3 (the false-alarm rate). Cells with an
expected count below 5 are pooled. The test's power is stated, not hoped for: `test_power_is_known`
computes it from the noncentral chi-square distribution for the effect size we want to catch.

The same test must reject a deliberately broken cascade that hands the reviewer's own distribution p
upward instead of the emission distribution r of its lenient review.
"""

from __future__ import annotations


import numpy as np
import pytest
from scipy import stats

import table_lm
from csdrafting import MaxGram, generate
from csdrafting.cascade import acceptance
from csdrafting.cascade.config import SamplingConfig
from csdrafting.cascade.sampling import warp

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
    keys = sorted(exact, key=lambda k: exact[k])
    obs, exp = [], []
    pool_o = pool_e = 0.0
    for k in keys:  # pool the rarest outcomes until each cell expects at least 5
        pool_o += counts.get(k, 0)
        pool_e += exact[k] * n
        if pool_e >= 5:
            obs.append(pool_o)
            exp.append(pool_e)
            pool_o = pool_e = 0.0
    if pool_e > 0:
        obs[-1] += pool_o
        exp[-1] += pool_e
    return float(stats.chisquare(obs, exp).pvalue)


def run_cascade(drafters_fn, k, lenience, cfg: SamplingConfig, n: int = N_RUNS, maxgram_length=None) -> dict[tuple, int]:
    target, drafters = drafters_fn()
    counts: dict[tuple, int] = {}
    for seed in range(n):
        r = generate(
            target, PROMPT, drafters, k=k, lenience=lenience, max_new_tokens=N_NEW, do_sample=True,
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=seed,
        )
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


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cascade_sampling_matches_target_distribution(name):
    fn, k, lenience, cfg = CONFIGS[name]
    target, _ = fn()
    exact = exact_distribution(target, cfg)
    counts = run_cascade(fn, k, lenience, cfg)
    p = chi_square_pvalue(counts, exact, N_RUNS)
    assert p > ALPHA, f"{name}: chi-square p-value {p:.2e} says the output is not the target's distribution"


def test_broken_variant_is_rejected(monkeypatch):
    """Handing p (instead of the emission mixture r) upward after a lenient review breaks exactness."""
    fn, k, lenience, cfg = CONFIGS["2 drafters + Max-Gram, horizontal K, lenience 3, temperature 0.7, top-p 0.85"]
    target, _ = fn()
    exact = exact_distribution(target, cfg)
    monkeypatch.setattr(acceptance, "emission", lambda p, a: p)
    counts = run_cascade(fn, k, lenience, cfg)
    p = chi_square_pvalue(counts, exact, N_RUNS)
    assert p < ALPHA, f"the broken cascade passed the exactness test (p = {p:.3g}): the test has no power"


def test_power_is_known():
    """With N_RUNS samples over <= 156 cells, the test detects a deviation of Cohen's w = 0.04 (total
    variation around 0.02) with probability above 0.9 at false-alarm rate 1e-3."""
    df = 155
    crit = stats.chi2.ppf(1 - ALPHA, df)
    power = stats.ncx2.sf(crit, df, N_RUNS * 0.04**2)
    assert power > 0.9, power


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
