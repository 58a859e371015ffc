"""From logits to the distribution a model samples from (temperature, top-k, top-p).

The order and tie rules follow transformers' logits warpers (temperature, then top-k, then top-p keeping
the smallest set whose mass reaches top_p, at least one token), so `do_sample=True` here means what it
means there.
"""

from __future__ import annotations

import numpy as np

from .config import SamplingConfig


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    e = np.exp(x)
    return e / e.sum()


def warp(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Probability vector (float64) that `cfg` samples from, given one row of logits."""
    x = np.asarray(logits, dtype=np.float64) / cfg.temperature
    v = x.shape[0]
    if 0 < cfg.top_k < v:
        kth = np.partition(x, v - cfg.top_k)[v - cfg.top_k]
        x = np.where(x < kth, -np.inf, x)
    p = softmax(x)
    if cfg.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        sorted_p = p[order]
        mass_before = np.cumsum(sorted_p) - sorted_p
        keep = mass_before < cfg.top_p
        keep[0] = True
        mask = np.zeros(v, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token from probability vector p by inverse CDF (one uniform per draw)."""
    c = np.cumsum(p)
    u = rng.random() * c[-1]
    return int(min(np.searchsorted(c, u, side="right"), len(p) - 1))
