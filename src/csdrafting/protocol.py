"""The narrow protocol through which the cascade engine talks to a neural model.

A backend (transformers, llama.cpp, ...) keeps a KV cache over a token sequence. The engine only ever
asks it to *extend* that sequence by tokens it has not seen (returning the logits at the new positions)
and to *roll back* to a shorter prefix. Backends know nothing about drafting.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


class CSDraftingError(ValueError):
    """Bad input or configuration; the message says what to change."""


def run_guarded(command: Callable[[], int], interrupted: str = "interrupted") -> int:
    """The exit rule of every command line: a CSDraftingError prints `error: ...` and exits 2, Ctrl-C 130."""
    try:
        return command()
    except CSDraftingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about a model, besides its logits."""

    name: str
    vocab_size: int  # width of a logits row
    n_params: int  # for the paper's standardized cost (runs x parameter count)
    eos_token_ids: frozenset[int]
    bos_token_id: int | None = None
    context_length: int = 1 << 30  # maximum sequence length the model's cache can hold
    # A digest of the token table (strings and specials) when the backend can read it; two models with
    # different fingerprints tokenize differently even if their vocab sizes agree.
    vocab_fingerprint: str | None = None
    precision: str = "unknown"  # e.g. "F32", "Q4_K_M", "float32"; printed wherever the model is named
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.precision}]"


@runtime_checkable
class LanguageModel(Protocol):
    """A causal model with a KV cache that can be extended and rolled back.

    `cached_tokens` is the sequence whose keys/values are in the cache. `extend(tokens)` appends tokens
    the model has not seen and returns float32 logits of shape `[len(tokens) - logits_from, vocab_size]`,
    row i predicting the token after `tokens[logits_from + i]`. Backends may skip computing rows before
    `logits_from` (llama.cpp does: a 151,936-wide row per prompt token is expensive). `rollback(n)` keeps
    the first n cached tokens without recomputing them.

    `begin(prompt)` prepares a new generation and returns the token sequence that precedes the first
    generated token in this model's cache: the prompt itself for a decoder-only model, the decoder start
    token for an encoder-decoder model (whose encoder consumes the prompt).

    Optional, not part of the structural check: `cache_stamps`, a sequence parallel to `cached_tokens`
    giving, for each cached position, the id of the write (the `extend` call, or the `begin` that
    reset the cache) that put it there. Ids grow over the life of the instance and are never reused,
    so a logits row computed at position i is still the row of the current cache exactly while
    `cache_stamps[i]` is unchanged: anything that rewrote position i, or any position before it, had
    to roll back past i first. The engine uses this to keep rows across calls safely when several
    levels or cascades share one model instance; see `cache_stamps()`.
    """

    info: ModelInfo

    @property
    def cached_tokens(self) -> Sequence[int]: ...

    def begin(self, prompt: Sequence[int]) -> list[int]: ...

    def extend(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray: ...

    def rollback(self, n: int) -> None: ...


@runtime_checkable
class ArgmaxExtension(Protocol):
    """Optional extension of `LanguageModel` for models whose logits live on an accelerator.

    `extend_argmax(tokens, logits_from)` does exactly what `extend` does to the cache but returns only
    each row's argmax (int ids, shape `[len(tokens) - logits_from]`, ties to the lowest id as np.argmax).
    The engine calls it wherever it needs nothing else: every review and proposal of greedy decoding
    with lenience 1. Lenient greedy review (which needs p(x) of drafted tokens) and sampling (whole
    distributions) still read float32 rows through `extend`. A model without it loses nothing but the
    host copy of vocabulary-wide rows.
    """

    def extend_argmax(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray: ...


def cache_stamps(model: LanguageModel) -> Sequence[int] | None:
    """The model's per-position write ids (see LanguageModel), or None if its backend keeps none."""
    return getattr(model, "cache_stamps", None)


class Tokenizer(Protocol):
    """Text <-> token ids, as the CLI and the benchmarks need it (the engine never tokenizes)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...


def check_compatible(target: ModelInfo, drafter: ModelInfo) -> None:
    """Raise if a drafter cannot draft for the target (different vocabulary)."""
    if drafter.vocab_size != target.vocab_size:
        raise CSDraftingError(
            f"drafter {drafter.label} has a vocabulary of {drafter.vocab_size} tokens but the target "
            f"{target.label} has {target.vocab_size}: every drafter must share the target's tokenizer; "
            "choose a drafter from the same model family"
        )
    if (
        drafter.vocab_fingerprint is not None
        and target.vocab_fingerprint is not None
        and drafter.vocab_fingerprint != target.vocab_fingerprint
    ):
        raise CSDraftingError(
            f"drafter {drafter.label} and target {target.label} have vocabularies of the same size but "
            "different token tables: every drafter must share the target's tokenizer"
        )
    if drafter.eos_token_ids and target.eos_token_ids and not (drafter.eos_token_ids & target.eos_token_ids):
        raise CSDraftingError(
            f"drafter {drafter.label} ends text with tokens {sorted(drafter.eos_token_ids)} but the target "
            f"{target.label} with {sorted(target.eos_token_ids)}: their special tokens differ"
        )
