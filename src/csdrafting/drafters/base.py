"""The interface of a statistical (model-free) drafter: the bottom level of a cascade.

Like llama.cpp's `common_speculative` implementations, every way of drafting without a neural model is
one class behind this small interface, and the engine knows them only through it:

- `propose(seq, n)`: up to n tokens continuing `seq` (prompt + text so far). Proposals are deterministic,
  so each token's q is a point mass (cs-drafting.md section 8) and the usual review rule keeps the output
  exact, whatever the drafter proposes.
- `propose_scored(seq, n)`: the same tokens, each with the drafter's predicted probability that it is
  accepted given that the tokens before it were (None where the drafter cannot say). The engine's
  cost-aware drafting (cascade/planning.py) uses it to decide how many of them are worth a review.
- `begin(prompt)` / `end(tokens)`: a generation starts / has finished with these tokens (prompt and
  output); drafters that learn across requests update there. `begin` runs in the engine's prefill
  phase, so indexing the prompt there is prompt work, not decoding.
- `committed(seq)`: the target has committed seq (prompt + output so far); drafters that learn within a
  request update there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Proposal:
    """Proposed tokens and, per token, its predicted conditional acceptance (None: unknown)."""

    tokens: list[int] = field(default_factory=list)
    confidence: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


class StatisticalDrafter(ABC):
    """A drafter that needs no forward pass; it sits at the bottom of a cascade and reviews nothing."""

    name: str = "statistical"
    vocab_size: int | None = None  # the vocabulary its tables cover, when it has tables

    @abstractmethod
    def propose(self, seq: Sequence[int], n: int) -> list[int]:
        """Up to n tokens continuing seq."""

    def propose_scored(self, seq: Sequence[int], n: int) -> Proposal:
        toks = self.propose(seq, n)
        return Proposal(toks, [None] * len(toks))

    def begin(self, prompt: Sequence[int]) -> None:
        """A new generation starts after `prompt`."""

    def committed(self, seq: Sequence[int]) -> None:
        """The target has committed `seq` (prompt + output so far); drafters that learn within a request
        (how often their proposals were right) look at the new tokens here."""

    def end(self, tokens: Sequence[int]) -> None:
        """The generation has finished: `tokens` is the prompt followed by everything generated."""
