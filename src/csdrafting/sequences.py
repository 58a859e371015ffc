"""Small helpers over token sequences, shared by the engine and the drafters."""

from __future__ import annotations

from typing import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of a and b.

    Called on every review and proposal with the whole text (prompt included), so the comparison runs
    in C: whole-slice equality first (the usual case: one sequence extends the other), then a bisection
    over slice comparisons instead of a Python loop over tokens.
    """
    n = min(len(a), len(b))
    if not n:
        return 0
    a = a if isinstance(a, list) else list(a)
    b = b if isinstance(b, list) else list(b)
    if a[n - 1] == b[n - 1] and a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo
