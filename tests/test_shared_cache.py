"""One model instance shared by several users of its KV cache: kept logits rows must never go stale.

The engine keeps the logits rows it computed, to reuse the row at a divergence point after a rollback.
When the same model instance serves two levels (`Cascade(t, [t, ...])`) or two cascades (keep_cache=True),
another user may roll the cache back and rewrite it between two calls; a kept row then belongs to a
history the cache no longer holds. The model here (context_lm) sees its whole context, so a stale row
is always a wrong row, and these tests fail on an engine that trusts kept rows blindly.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import context_lm
from csdrafting import Cascade, CascadeConfig, MaxGram
from csdrafting.cascade.rows import RowCache

PROMPT = [3, 4, 5, 3, 4]


def _fresh_rows(model, seq, start):
    """What logits_after(seq, start) must return: each row recomputed from scratch over its history."""
    return np.stack([model.logits_after(seq[: i + 1]) for i in range(start - 1, len(seq))])


@pytest.mark.parametrize("cls", [context_lm.ContextLM, context_lm.StamplessContextLM], ids=["stamped", "stampless"])
def test_two_levels_on_one_model_never_see_stale_rows(cls):
    """Two engine levels over one instance, interleaved at random: every row matches a fresh computation."""
    target, _ = context_lm.family(cls=cls)
    users = [RowCache(target), RowCache(target)]
    for u in users:
        u.begin(PROMPT)
    texts = [[], []]  # what each user has generated so far
    rng = random.Random(0)
    checked = 0
    for _ in range(400):
        i = rng.randrange(2)
        gen = texts[i]
        if gen and rng.random() < 0.4:  # a rejected draft: back to a shorter text with another tail
            del gen[rng.randrange(len(gen)):]
        if rng.random() < 0.3:  # the other user's text, as when one level reviews what the other wrote
            gen[:] = list(texts[1 - i])
        start = rng.randrange(max(1, len(gen) - 3), len(gen) + 1) if gen else 0
        gen += [rng.randrange(2, 8) for _ in range(rng.randrange(1, 5))]
        start = max(1, min(start, len(gen)))
        rows = users[i].logits_after(gen, start)
        np.testing.assert_array_equal(rows, _fresh_rows(target, PROMPT + gen, len(PROMPT) + start))
        checked += len(rows)
        if len(gen) > 40:
            gen[:] = gen[:5]
    assert checked > 800


def test_stamped_model_still_reuses_its_own_rows():
    """The safety costs nothing when nobody else touched the cache: the row at the divergence point is
    reused, so a rejected draft costs only the new tokens."""
    target, _ = context_lm.family()
    lv = RowCache(target)
    lv.begin(PROMPT)
    lv.logits_after([5, 6, 7, 2], 0)
    before = target.tokens_evaluated
    lv.logits_after([5, 6, 3, 4], 2)  # keeps [5, 6], needs the row after 6: kept, so only [3, 4] run
    assert target.tokens_evaluated - before == 2


def test_stampless_model_pays_one_token_instead_of_reusing():
    target, _ = context_lm.family(cls=context_lm.StamplessContextLM)
    lv = RowCache(target)
    lv.begin(PROMPT)
    lv.logits_after([5, 6, 7, 2], 0)
    before = target.tokens_evaluated
    rows = lv.logits_after([5, 6, 3, 4], 2)
    assert target.tokens_evaluated - before == 3  # 6 is evaluated again for its row
    np.testing.assert_array_equal(rows, _fresh_rows(target, PROMPT + [5, 6, 3, 4], len(PROMPT) + 2))


def _plain(target, prompt, n):
    return Cascade(target, []).generate(prompt, n).tokens


@pytest.mark.parametrize("k", [[[4, 9], [0, 5]], [[3, 8], [0, 0]]], ids=["vertical+horizontal", "horizontal"])
def test_target_drafting_for_itself_is_exact(k):
    """`Cascade(t, [t, Max-Gram])`: the target reviews drafts that it wrote with the same cache."""
    target, _ = context_lm.family(seed=3)
    prompts = [PROMPT, [2, 2, 7, 5, 2, 2, 7], [6, 5, 4, 3, 2, 6, 5, 4]]
    cascade = Cascade(target, [target, MaxGram()], CascadeConfig.make(k, lenience=2.0))
    for p in prompts:
        want = _plain(target, p, 40)
        got = cascade.generate(p, 40)
        assert got.tokens == want
        assert got.metrics.levels[1].accepted > 0


def test_two_cascades_over_one_model_with_keep_cache():
    """Cascade a ends its text at an EOS it reviewed, keeping that row; cascade b rewrites the cache with a
    text of the same length that differs in one early token; a then continues b's text with
    keep_cache=True. The row a kept at that position belongs to a's old text, and the cache's tokens alone
    cannot tell."""
    target, drafters = context_lm.family(seed=5)
    fresh_target, _ = context_lm.family(seed=5)
    a = Cascade(target, [drafters[0], MaxGram()], CascadeConfig.make([[5, 9], [0, 4]], lenience=2.0))
    b = Cascade(target, [])
    rng = random.Random(2)
    exercised = 0
    for _ in range(40):
        p1 = [rng.randrange(2, 8) for _ in range(6)]
        p2 = p1[:2] + [2 + (p1[2] - 1) % 6] + p1[3:]
        out_a = a.generate(p1, 30, keep_cache=True)
        out_b = b.generate(p2, len(out_a.tokens) + 4, keep_cache=True).tokens
        p3 = p2 + out_b[: len(out_a.tokens)]
        exercised += out_a.finish_reason == "eos" and len(p3) == len(p1) + len(out_a.tokens)
        assert a.generate(p3, 12, keep_cache=True).tokens == _plain(fresh_target, p3, 12)
    assert exercised >= 10  # the case that matters happened often
