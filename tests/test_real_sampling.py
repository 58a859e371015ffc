"""Sampling on the real llama.cpp path: a cascade's first token follows the target's own law.

Target: the packaged Qwen2.5-Coder-0.5B Q4_K_M (151,936-token vocabulary, float32 logits from llama.cpp).
Drafter: Max-Gram, whose proposal after this prompt ("1", copied from the earlier `range(10)`) the target
rates at about 0.5 after warping, so the target's review accepts it about half the time and otherwise
draws the correction from the residual: both branches of the rejection rule run on real rows.

The exact law of the first token is the warped row of the target after the prompt (as a one-token pass
computes it; the cascade's two-token pass differs by llama.cpp's batch-shape noise, a total variation of
about 0.005 here, far below what N runs can see). N seeded runs of the
cascade, and N of plain sampling, are each compared with it by a chi-square test (false-alarm rate 1e-3,
rare tokens pooled), and with each other by a two-sample test; the power is stated in
`test_real_first_token_power_is_known`. A broken cascade (lenience at the target) must be rejected with
N_BROKEN runs. All runs share one model instance with keep_cache=True (two cascades over one cache), so
each run re-evaluates the prompt's last token (and the draft) over the kept cache: one short forward pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from csdrafting import Cascade, CascadeConfig, MaxGram
from csdrafting.cascade import acceptance
from csdrafting.cascade.config import SamplingConfig
from csdrafting.cascade.sampling import warp

pytestmark = pytest.mark.real

ALPHA = 1e-3
N = 400  # each run costs the target a forward pass: the engine drops the rows before the committed text
N_BROKEN = 200
W = 0.3  # effect size (Cohen's w) this smoke test is sized for
# temperature only: a top-k or top-p cut would turn llama.cpp's batch-shape noise (the logits of one
# position differ slightly between a one-token and a two-token pass) into a different support
SAMPLING = SamplingConfig(True, 1.5)
PROMPT_TEXT = "for i in range(10):\n    print(i)\nfor j in range("


@pytest.fixture(scope="module")
def setup(qwen05_gguf):
    from csdrafting.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(qwen05_gguf, n_threads=2, n_ctx=256)
    prompt = model.tokenizer.encode(PROMPT_TEXT)
    model.extend(prompt[:-1])
    row = model.extend(prompt[-1:])[0]  # the one-token pass that plain sampling's runs make
    model.rollback(0)
    exact = warp(row, SAMPLING)
    yield model, prompt, exact
    model.close()


class _FirstStep(Exception):
    """Raised from on_tokens to stop a generation after its first target step: only the first token is
    tested, and the later steps would cost forward passes."""


def _first_tokens(engine: Cascade, prompt: list[int], n: int, max_new: int) -> np.ndarray:
    s = SAMPLING
    out = []

    def stop(tokens: list[int]) -> None:
        out.append(tokens[0])
        raise _FirstStep

    for seed in range(n):
        cfg = SamplingConfig(True, s.temperature, s.top_k, s.top_p, seed=seed)
        with pytest.raises(_FirstStep):
            engine.generate(prompt, max_new, cfg, on_tokens=stop, keep_cache=True)
    assert len(out) == n
    return np.array(out)


def _cells(exact: np.ndarray, n: int) -> list[np.ndarray]:
    """Token groups with an expected count of at least 5: the likeliest tokens alone, the rest pooled."""
    order = np.argsort(-exact)
    support = order[exact[order] > 0]
    single = [np.array([t]) for t in support if exact[t] * n >= 5]
    rest = np.array([t for t in support if exact[t] * n < 5])
    return single + ([rest] if len(rest) else [])


def _counts(tokens: np.ndarray, cells: list[np.ndarray]) -> np.ndarray:
    return np.array([np.isin(tokens, c).sum() for c in cells])


def _gof(tokens: np.ndarray, exact: np.ndarray) -> float:
    assert np.all(exact[tokens] > 0), "a token the warped target cannot produce"
    cells = _cells(exact, len(tokens))
    return float(stats.chisquare(_counts(tokens, cells), [exact[c].sum() * len(tokens) for c in cells]).pvalue)


def _cascade(model) -> Cascade:
    # K=[[1]] and two new tokens: Max-Gram drafts the first token, the target reviews it (one row more)
    return Cascade(model, [MaxGram()], CascadeConfig.make([[1]], lenience=1.0))


def test_real_cascade_and_plain_first_token_follow_the_target(setup):
    model, prompt, exact = setup
    drafted = MaxGram().propose(prompt, 1)
    assert drafted and 0.2 < exact[drafted[0]] < 0.8, "the prompt no longer exercises both branches of the review"
    assert len(_cells(exact, N)) >= 5  # a spread law, not a near-certain token
    plain = _first_tokens(Cascade(model, []), prompt, N, 1)
    cascade = _first_tokens(_cascade(model), prompt, N, 2)
    accepted = np.mean(cascade == drafted[0])
    assert 0.1 < accepted < 0.9
    p_plain, p_cascade = _gof(plain, exact), _gof(cascade, exact)
    cells = _cells(exact, N)
    p_two = stats.chi2_contingency(np.stack([_counts(plain, cells), _counts(cascade, cells)])).pvalue
    assert min(p_plain, p_cascade, p_two) > ALPHA, (p_plain, p_cascade, p_two)


def test_real_broken_cascade_is_rejected(setup, monkeypatch):
    model, prompt, exact = setup
    orig = acceptance.review_sampling
    monkeypatch.setattr(acceptance, "review_sampling",
                        lambda ps, draft, qs, lenience, rng, want_q: orig(ps, draft, qs, 1.5, rng, want_q))
    cascade = _first_tokens(_cascade(model), prompt, N_BROKEN, 2)
    assert _gof(cascade, exact) < ALPHA


def test_real_first_token_power_is_known(setup):
    """With N runs, the goodness-of-fit test detects a deviation of Cohen's w = 0.3 from the target's
    first-token law with probability above 0.9 at false-alarm rate 1e-3 (its cells are those of the
    actual law after pooling). A smoke test: the tiny-model tests carry the fine-grained power; the
    broken cascade here deviates by w of about 0.6."""
    _, _, exact = setup
    df = len(_cells(exact, N)) - 1
    power = stats.ncx2.sf(stats.chi2.ppf(1 - ALPHA, df), df, N * W**2)
    assert power > 0.9, (df, power)
