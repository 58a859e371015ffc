"""Bigram fallback table for Max-Gram: for each token, its most frequent successor in a corpus.

Stored compactly as one int32 array indexed by token id (-1 where the token was never seen followed by
anything), plus a small JSON header saying how it was built, in a single compressed .npz file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..files import atomic_path
from ..protocol import CSDraftingError


class BigramTable:
    def __init__(self, successor: np.ndarray, meta: dict | None = None) -> None:
        self.successor = np.asarray(successor, dtype=np.int32)
        self.meta = dict(meta or {})

    @property
    def vocab_size(self) -> int:
        return int(self.successor.shape[0])

    def next_token(self, token: int) -> int | None:
        if 0 <= token < self.successor.shape[0]:
            nxt = int(self.successor[token])
            return nxt if nxt >= 0 else None
        return None

    @classmethod
    def from_sequences(cls, sequences: Iterable[Iterable[int]], vocab_size: int, meta: dict | None = None) -> "BigramTable":
        """Count token pairs over token sequences; ties go to the smaller successor id."""
        counts: dict[int, int] = {}
        n_pairs = 0
        for seq in sequences:
            ids = np.fromiter(seq, dtype=np.int64)
            if ids.size < 2:
                continue
            if ids.min() < 0 or ids.max() >= vocab_size:
                raise CSDraftingError(f"token id out of range for a vocabulary of {vocab_size}")
            keys, c = np.unique(ids[:-1] * vocab_size + ids[1:], return_counts=True)
            for k, v in zip(keys.tolist(), c.tolist()):
                counts[k] = counts.get(k, 0) + v
            n_pairs += int(ids.size - 1)
        successor = np.full(vocab_size, -1, dtype=np.int32)
        if counts:
            keys = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            vals = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
            src, dst = keys // vocab_size, keys % vocab_size
            # sort by source, then count descending, then successor ascending; keep the first per source
            order = np.lexsort((dst, -vals, src))
            src, dst = src[order], dst[order]
            first = np.ones(src.size, dtype=bool)
            first[1:] = src[1:] != src[:-1]
            successor[src[first]] = dst[first]
        info = dict(meta or {})
        info.update(n_pairs=n_pairs, n_sources=int((successor >= 0).sum()))
        return cls(successor, info)

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], encode: Callable[[str], list[int]], vocab_size: int, meta: dict | None = None
    ) -> "BigramTable":
        return cls.from_sequences((encode(t) for t in texts), vocab_size, meta)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, successor=self.successor, meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: str | Path) -> "BigramTable":
        path = Path(path)
        if not path.exists():
            raise CSDraftingError(f"bigram table {path} does not exist; build it with `csdrafting bigram` or pass none")
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode()) if "meta" in z else {}
            return cls(z["successor"], meta)
