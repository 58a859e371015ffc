"""After any sequence of extensions and rollbacks, a model's next logits equal a fresh recomputation."""

import random

import numpy as np
import pytest

import tiny


@pytest.mark.parametrize("kind", ["decoder-only", "encoder-decoder"])
def test_random_extend_rollback_matches_fresh(kind):
    m = tiny.causal(3) if kind == "decoder-only" else tiny.seq2seq(3)
    live = tiny.wrap(m, "live")
    prompt = [1, 4, 9, 16, 25, 36]
    prefix = live.begin(prompt)
    seq = list(prefix)
    rng = random.Random(0)
    live.extend(seq[:], logits_from=len(seq) - 1)
    for step in range(25):
        if rng.random() < 0.4 and len(seq) > len(prefix) + 1:
            n = rng.randrange(len(prefix), len(seq))
            live.rollback(n)
            seq = seq[:n]
        new = [rng.randrange(3, tiny.VOCAB) for _ in range(rng.randrange(1, 6))]
        got = live.extend(new)
        seq += new
        fresh = tiny.wrap(m, "fresh")
        fresh.begin(prompt)
        want = fresh.extend(seq)[-len(new):]
        assert list(live.cached_tokens) == seq
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_logits_from_returns_the_tail_rows():
    live = tiny.wrap(tiny.causal(4), "m")
    seq = [1, 2, 3, 4, 5, 6, 7]
    full = tiny.wrap(tiny.causal(4), "m").extend(seq)
    tail = live.extend(seq, logits_from=4)
    assert tail.shape == (3, tiny.VOCAB)
    np.testing.assert_allclose(tail, full[4:], atol=1e-9)


def test_rollback_beyond_cache_is_refused():
    from csdrafting import CSDraftingError

    live = tiny.wrap(tiny.causal(4), "m")
    live.extend([1, 2, 3])
    with pytest.raises(CSDraftingError):
        live.rollback(5)
