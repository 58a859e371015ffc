"""How a reviewer judges a draft: pure functions, no models, no state.

Every drafted token travels with the distribution `q` it was drawn from (cs-drafting.md section 5):
- `None`: a deterministic proposal (Max-Gram, greedy), i.e. one-hot at the token;
- a float: greedy mode only, the drafter's probability of the token, used by greedy lenience;
- a vector: sampling mode, the exact distribution the token was drawn from.

Sampling with lenience l >= 1 (l = 1 is Leviathan et al.'s rule):
    A(y) = min(q(y), l * p(y))
    accept x with probability A(x) / q(x) = min(1, l * p(x) / q(x))
    on rejection draw from norm(max(0, p - A))
so the emitted token follows r = A + (1 - sum A) * norm(max(0, p - A)), which is handed upward as its q.
With l = 1, r = p and the output is distributed exactly as the reviewer's own sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from .sampling import sample, softmax

Q = Union[None, float, np.ndarray]


@dataclass
class Verdict:
    """Outcome of one review: accepted draft prefix plus the reviewer's own correction or bonus token."""

    n_accepted: int
    tokens: list[int]
    qs: list[Q] = field(default_factory=list)  # the distribution each emitted token was drawn from


def q_at(q: Q, x: int) -> float:
    if q is None:
        return 1.0
    if isinstance(q, float):
        return q
    return float(q[x])


def lenient_mass(p: np.ndarray, q: Q, x: int, lenience: float) -> np.ndarray:
    """A = min(q, l * p) as a dense vector (q one-hot at x when q is None)."""
    if q is None:
        a = np.zeros_like(p)
        a[x] = min(1.0, lenience * p[x])
        return a
    return np.minimum(q, lenience * p)


def residual(p: np.ndarray, a: np.ndarray) -> np.ndarray:
    """norm(max(0, p - A)): where a rejected position draws its correction from."""
    res = np.maximum(p - a, 0.0)
    s = res.sum()
    # s == 0 means p <= A everywhere, so a rejection had probability 0; only rounding gets here.
    return res / s if s > 0 else p


def emission(p: np.ndarray, a: np.ndarray) -> np.ndarray:
    """r = A + (1 - sum A) * norm(max(0, p - A)): the exact law of the token a lenient reviewer emits."""
    return a + max(0.0, 1.0 - a.sum()) * residual(p, a)


def review_sampling(
    ps: Sequence[np.ndarray],
    draft: Sequence[int],
    qs: Sequence[Q],
    lenience: float,
    rng: np.random.Generator,
    want_q: bool,
) -> Verdict:
    """Review `draft` against the reviewer's warped distributions `ps` (len(draft) + 1 rows)."""
    out, out_q = [], []
    for i, x in enumerate(draft):
        p = ps[i]
        a = lenient_mass(p, qs[i], x, lenience)
        qx = q_at(qs[i], x)
        accepted = qx > 0 and rng.random() * qx < a[x]
        if accepted:
            out.append(x)
        else:
            out.append(sample(residual(p, a), rng))
        if want_q:
            out_q.append(emission(p, a) if lenience != 1.0 else p)
        if not accepted:
            return Verdict(i, out, out_q)
    out.append(sample(ps[len(draft)], rng))
    if want_q:
        out_q.append(ps[len(draft)])
    return Verdict(len(draft), out, out_q)


def review_argmax(top: Sequence[int], draft: Sequence[int]) -> Verdict:
    """The strict greedy rule on the reviewer's argmax ids (len(draft) + 1): accept the longest prefix of
    the draft that matches them, then emit the reviewer's own token there (correction, or bonus after a
    fully accepted draft). Equals `review_greedy` with lenience 1 and no q, without vocabulary-wide rows."""
    n = 0
    while n < len(draft) and draft[n] == top[n]:
        n += 1
    return Verdict(n, [int(t) for t in draft[:n]] + [int(top[n])], [])


def review_greedy(
    logits: np.ndarray,
    draft: Sequence[int],
    qs: Sequence[Q],
    lenience: float,
    want_q: bool,
) -> Verdict:
    """Greedy review against raw logits rows (len(draft) + 1).

    A token is accepted when it is the reviewer's argmax, or, with lenience l > 1 (intermediate levels
    only), when l * p(x) > q(x), p being the reviewer's softmax and q(x) the drafter's probability of x.
    The first rejected position is replaced by the reviewer's argmax; if all pass, the argmax after the
    draft is the bonus. With l = 1 the emitted text is exactly the reviewer's greedy decoding.
    """
    out, out_q = [], []
    n = len(draft)
    top = np.argmax(logits[: n + 1], axis=1)
    for i in range(n + 1):
        t = int(top[i])
        if i < n:
            x = draft[i]
            ok = x == t
            probs = None
            if not ok and lenience > 1.0:
                probs = softmax(logits[i])
                ok = lenience * probs[x] > q_at(qs[i], x)
            tok = x if ok else t
        else:
            ok, probs, tok = False, None, t
        out.append(tok)
        if want_q:
            probs = softmax(logits[i]) if probs is None else probs
            out_q.append(float(probs[tok]))
        if not ok:
            return Verdict(min(i, n), out, out_q)
    raise AssertionError("unreachable")  # the bonus position always returns
