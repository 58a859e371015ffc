"""A tiny random model implemented directly on the protocol: logits are a random table of the last two
tokens. It is cheap enough to run a cascade tens of thousands of times for distribution tests."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from csdrafting.protocol import ModelInfo


class TableLM:
    def __init__(self, table: np.ndarray, name: str, eos: int | None = 0, n_params: int = 1000) -> None:
        self.table = table  # [V, V, V]: logits after (t[-2], t[-1])
        v = table.shape[0]
        self.info = ModelInfo(name=name, vocab_size=v, n_params=n_params,
                              eos_token_ids=frozenset() if eos is None else frozenset([eos]), precision="float64")
        self._tokens: list[int] = []
        self._stamps: list[int] = []
        self.calls = 0

    @property
    def cached_tokens(self) -> Sequence[int]:
        return self._tokens

    @property
    def cache_stamps(self) -> Sequence[int]:
        return self._stamps

    def begin(self, prompt):
        return list(prompt)

    def logits_at(self, seq: Sequence[int], i: int) -> np.ndarray:
        """Logits after seq[: i + 1]."""
        a = seq[i - 1] if i >= 1 else 0
        return self.table[a, seq[i]]

    def extend(self, tokens, logits_from=0):
        self.calls += 1
        start = len(self._tokens)
        self._tokens.extend(int(t) for t in tokens)
        self._stamps.extend([self.calls] * len(tokens))
        rows = [self.logits_at(self._tokens, start + i) for i in range(logits_from, len(tokens))]
        return np.stack(rows) if rows else np.zeros((0, self.table.shape[0]))  # logits_from=len: none wanted

    def rollback(self, n):
        assert 0 <= n <= len(self._tokens)
        del self._tokens[n:]
        del self._stamps[n:]


def family(vocab: int = 5, seed: int = 0, noise=(0.6, 1.2), scale: float = 1.5, eos: int | None = 0):
    """A target and drafters whose logits are the target's plus noise of growing size."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, scale, size=(vocab, vocab, vocab))
    target = TableLM(base, "table-target", eos, n_params=10_000)
    drafters = [
        TableLM(base + rng.normal(0, s, size=base.shape), f"table-drafter-{i + 1}", eos, n_params=1000 // (i + 1))
        for i, s in enumerate(noise)
    ]
    return target, drafters
