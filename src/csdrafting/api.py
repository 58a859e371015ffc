"""The one-call Python API."""

from __future__ import annotations

from typing import Callable, Sequence

from .cascade.config import CascadeConfig, KMatrix, SamplingConfig, Spelling
from .cascade.engine import Cascade, Drafter, GenerationResult
from .protocol import CSDraftingError, LanguageModel, Tokenizer


def generate(
    target: LanguageModel,
    prompt: Sequence[int] | str,
    drafters: Sequence[Drafter] = (),
    config: CascadeConfig | None = None,
    *,
    k: KMatrix | Sequence[Sequence[int]] | str | None = None,
    k_spelling: Spelling = "cumulative",
    lenience: float = 1.0,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    tokenizer: Tokenizer | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
    keep_cache: bool = False,
) -> GenerationResult:
    """Generate with Cascade Speculative Drafting; the result is exactly the target's own decoding.

    `drafters` are ordered largest first and may end with a `MaxGram`. Either pass a `CascadeConfig`
    or `k` / `k_spelling` / `lenience`. With no drafters this is plain decoding; with one neural drafter
    and `k=[[n]]` it is classic speculative decoding. A string prompt needs a `tokenizer`.
    """
    if config is None:
        config = CascadeConfig.make(k, k_spelling, lenience)
    elif k is not None:
        raise CSDraftingError("pass K either inside config or as k=, not both")
    if isinstance(prompt, str):
        if tokenizer is None:
            tokenizer = getattr(target, "tokenizer", None)
        if tokenizer is None:
            raise CSDraftingError("a text prompt needs a tokenizer; pass tokenizer= or token ids")
        prompt = tokenizer.encode(prompt)
    sampling = SamplingConfig(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return Cascade(target, drafters, config).generate(prompt, max_new_tokens, sampling, on_tokens, keep_cache)
