"""A tiny model whose logits depend on the WHOLE context, prompt included.

Its logits after a sequence are a random table row indexed by a rolling hash of every token so far,
h <- (A * h + t + 1) mod M with M prime. Two sequences of equal length that differ in one token, anywhere,
get different hashes (A is invertible mod M), so a logits row computed over a different history can
never pass for the right one by looking at the last tokens only: the class of bug that a model seeing
only the last two tokens (table_lm) hides.

The hash is also a sufficient state: the exact distribution of any statistic of a sampled continuation
follows from a dynamic program over the M hash values (`exact_marginals`), however long the text.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from csdrafting.protocol import ModelInfo

M = 257  # prime: the hash update is a bijection of the previous hash for each token
A = 31


def next_hash(h: int, t: int) -> int:
    return (A * h + t + 1) % M


def hash_of(seq: Sequence[int]) -> int:
    h = 0
    for t in seq:
        h = next_hash(h, int(t))
    return h


class StamplessContextLM:
    """The model without `cache_stamps`: what a third-party backend may look like."""

    def __init__(self, table: np.ndarray, name: str, eos: Iterable[int] = (0,), n_params: int = 1000) -> None:
        self.table = table  # [M, V]: logits after a context with that hash
        self.info = ModelInfo(name=name, vocab_size=table.shape[1], n_params=n_params,
                              eos_token_ids=frozenset(int(e) for e in eos), precision="float64")
        self._tokens: list[int] = []
        self._hashes: list[int] = []  # hash of tokens[: i + 1]
        self.calls = 0
        self.tokens_evaluated = 0

    @property
    def cached_tokens(self) -> Sequence[int]:
        return self._tokens

    def begin(self, prompt):
        return list(prompt)

    def logits_after(self, seq: Sequence[int]) -> np.ndarray:
        """Logits predicting the token after `seq` (a fresh computation, for checking)."""
        return self.table[hash_of(seq)]

    def extend(self, tokens, logits_from=0):
        self.calls += 1
        self.tokens_evaluated += len(tokens)
        h = self._hashes[-1] if self._hashes else 0
        for t in tokens:
            h = next_hash(h, int(t))
            self._tokens.append(int(t))
            self._hashes.append(h)
        n = len(tokens)
        return self.table[self._hashes[len(self._hashes) - n + logits_from:]].copy()

    def rollback(self, n):
        assert 0 <= n <= len(self._tokens)
        del self._tokens[n:], self._hashes[n:]


class ContextLM(StamplessContextLM):
    """The model with per-position cache stamps (protocol.LanguageModel.cache_stamps)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stamps: list[int] = []

    @property
    def cache_stamps(self) -> Sequence[int]:
        return self._stamps

    def extend(self, tokens, logits_from=0):
        out = super().extend(tokens, logits_from)
        self._stamps.extend([self.calls] * len(tokens))
        return out

    def rollback(self, n):
        super().rollback(n)
        del self._stamps[n:]


def family(vocab: int = 8, seed: int = 0, noise=(0.5, 1.0), scale: float = 1.5, eos=(0, 1), eos_bias: float = -1.5,
           cls=ContextLM):
    """A target and drafters whose tables are the target's plus noise of growing size. The EOS logits are
    lowered by eos_bias so that texts of a dozen tokens are common."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, scale, size=(M, vocab))
    base[:, list(eos)] += eos_bias
    target = cls(base, "ctx-target", eos, n_params=10_000)
    drafters = [cls(base + rng.normal(0, s, size=base.shape), f"ctx-drafter-{i + 1}", eos, n_params=1000 // (i + 1))
                for i, s in enumerate(noise)]
    return target, drafters


def exact_marginals(target: StamplessContextLM, prompt: Sequence[int], n_new: int, warp_row) -> tuple[np.ndarray, np.ndarray]:
    """Exact law of the target's own sampling of n_new tokens after `prompt`.

    Returns (tokens, lengths): tokens[i] is the distribution of the (i+1)-th generated token over the
    vocabulary plus a last cell for "the text already ended"; lengths[n] the probability that the text
    has n tokens (ending at an EOS, or cut at n_new). warp_row maps a logits row to the probabilities
    sampled from.
    """
    v = target.info.vocab_size
    eos = sorted(target.info.eos_token_ids)
    live = [t for t in range(v) if t not in target.info.eos_token_ids]
    p = np.stack([warp_row(target.table[h]) for h in range(M)])  # [M, V]
    nxt = (A * np.arange(M)[:, None] + np.arange(v)[None, :] + 1) % M  # [M, V]
    alive = np.zeros(M)
    alive[hash_of(prompt)] = 1.0
    tokens = np.zeros((n_new, v + 1))
    lengths = np.zeros(n_new + 1)
    for i in range(n_new):
        joint = alive[:, None] * p  # [M, V]
        tokens[i, :v] = joint.sum(0)
        tokens[i, v] = 1.0 - alive.sum()
        lengths[i + 1] += joint[:, eos].sum()
        alive = np.zeros(M)
        np.add.at(alive, nxt[:, live].ravel(), joint[:, live].ravel())
    lengths[n_new] += alive.sum()
    assert abs(lengths.sum() - 1) < 1e-9 and np.allclose(tokens.sum(1), 1)
    return tokens, lengths
