"""transformers / PyTorch backend: any causal LM, and encoder-decoder models (the T5 family).

The KV cache is a transformers DynamicCache (EncoderDecoderCache for T5); rollback crops it, so the
kept prefix is never recomputed. A model runs on any device torch offers ("cpu", "cuda", "cuda:1",
"mps", or "auto": accelerate's device map over several) in float32, bfloat16 or float16. Token ids go
to the device of the input embeddings; what comes back is what the engine reads: float32 rows from
`extend`, or only their argmax from `extend_argmax` (greedy review), so greedy decoding on a GPU copies
a few integers per pass to the host, not vocabulary-wide rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..protocol import CSDraftingError, ModelInfo
from .devices import torch_device, torch_dtype


def _eos_ids(model) -> frozenset[int]:
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            return frozenset([eos] if isinstance(eos, int) else eos)
    return frozenset()


def vocab_fingerprint(tokenizer) -> str | None:
    """Digest of a transformers tokenizer's token table, to tell tokenizers of equal size apart."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{i}\t{tok}\n".encode())
    return h.hexdigest()[:16]


def _to_host(logits: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16, and a CUDA tensor must be copied to the host first
    return logits.float().cpu().numpy()


def _load(auto_cls, path: str | Path, dtype, device: str, kw: dict):
    """from_pretrained on `device` in `dtype`, with errors that say what to change."""
    path = Path(path)
    if not path.exists():
        raise CSDraftingError(f"model path {path} does not exist")
    dtype = dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)
    device = torch_device(device)
    if device == "auto":  # accelerate splits a model too large for one device over all of them
        kw = {"device_map": "auto", **kw}
    model = auto_cls.from_pretrained(path, dtype=dtype, **kw)
    if device != "auto":
        model = model.to(device)
    return model


class _HFBase:
    def __init__(self, model, name: str | None = None, tokenizer=None, precision: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._tokens: list[int] = []
        self._stamps: list[int] = []  # per cached position, the id of the write that put it there
        self._writes = 0
        self._cache = None
        cfg = model.config
        dtype = next(model.parameters()).dtype
        # With a device map the layers sit on several devices; the ids go where the embeddings are.
        self.device = model.get_input_embeddings().weight.device
        self.info = ModelInfo(
            name=name or getattr(cfg, "name_or_path", None) or type(model).__name__,
            vocab_size=int(model.get_output_embeddings().out_features),
            n_params=int(sum(p.numel() for p in model.parameters())),
            eos_token_ids=_eos_ids(model),
            bos_token_id=getattr(cfg, "bos_token_id", None),
            context_length=int(getattr(cfg, "max_position_embeddings", None) or (1 << 30)),
            vocab_fingerprint=vocab_fingerprint(tokenizer),
            precision=precision or str(dtype).replace("torch.", ""),
            extra={"backend": "transformers", "device": str(self.device), "dtype": str(dtype).replace("torch.", "")},
        )

    def _ids(self, tokens: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(tokens)], dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def extend(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray:
        return _to_host(self._forward(tokens, logits_from))

    @torch.inference_mode()
    def extend_argmax(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray:
        """As `extend`, but only each row's argmax (int64) leaves the device."""
        return self._forward(tokens, logits_from).argmax(dim=-1).cpu().numpy()

    def _forward(self, tokens: Sequence[int], logits_from: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def cached_tokens(self) -> Sequence[int]:
        return self._tokens

    @property
    def cache_stamps(self) -> Sequence[int]:
        return self._stamps

    def _written(self, tokens: Sequence[int]) -> None:
        """Record tokens just appended to the cache under a fresh write id."""
        self._writes += 1
        self._tokens.extend(int(t) for t in tokens)
        self._stamps.extend([self._writes] * len(tokens))

    def rollback(self, n: int) -> None:
        if n < 0 or n > len(self._tokens):
            raise CSDraftingError(f"cannot roll back to {n} tokens: the cache holds {len(self._tokens)}")
        drop = len(self._tokens) - n
        if drop and self._cache is not None:
            self._cache.crop(-drop)
        del self._tokens[n:]
        del self._stamps[n:]


class HFCausalLM(_HFBase):
    """A decoder-only transformers model (any AutoModelForCausalLM)."""

    def begin(self, prompt: Sequence[int]) -> list[int]:
        return list(prompt)

    def _forward(self, tokens: Sequence[int], logits_from: int) -> torch.Tensor:
        if not tokens:
            raise CSDraftingError("extend() needs at least one new token")
        if len(self._tokens) + len(tokens) > self.info.context_length:
            raise CSDraftingError(
                f"{self.info.label} holds at most {self.info.context_length} tokens; shorten the prompt or max_new_tokens"
            )
        if self._cache is None or not self._tokens:
            from transformers import DynamicCache

            self._cache = DynamicCache(config=self.model.config)
        if not 0 <= logits_from <= len(tokens):
            raise CSDraftingError(f"logits_from={logits_from} is outside [0, {len(tokens)}]")
        # logits_to_keep=0 means "all rows" to transformers: a pass that needs none keeps one and drops it
        keep = len(tokens) - logits_from
        out = self.model(input_ids=self._ids(tokens), cache=self._cache, use_cache=True, logits_to_keep=max(keep, 1))
        self._written(tokens)
        return out.logits[0, out.logits.shape[1] - keep:]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: str | torch.dtype = "float32", name: str | None = None, device: str = "cpu", **kw
    ) -> "HFCausalLM":
        """Load a checkpoint directory on `device` (see module docstring) in `dtype`."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        model = _load(AutoModelForCausalLM, path, dtype, device, kw)
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception:  # a bare checkpoint without tokenizer files still runs on token ids
            tok = None
        return cls(model, name=name or path.name, tokenizer=tok)


class HFSeq2SeqLM(_HFBase):
    """An encoder-decoder transformers model (T5 / FLAN-T5). The encoder reads the prompt once; the cache
    and the engine's sequence are the decoder's, which starts with the decoder start token."""

    def __init__(self, model, name: str | None = None, tokenizer=None, precision: str | None = None) -> None:
        super().__init__(model, name, tokenizer, precision)
        self._prompt: list[int] | None = None
        self._encoder_out = None
        start = model.config.decoder_start_token_id
        if start is None:
            raise CSDraftingError(f"{self.info.name} has no decoder_start_token_id in its config")
        self.decoder_start = int(start)
        self.info = ModelInfo(**{**self.info.__dict__, "context_length": 1 << 30})  # relative positions

    @torch.inference_mode()
    def begin(self, prompt: Sequence[int]) -> list[int]:
        prompt = list(prompt)
        if prompt != self._prompt:
            self._encoder_out = self.model.get_encoder()(input_ids=self._ids(prompt))
            self._prompt = prompt
            self._tokens, self._stamps, self._cache = [], [], None
        return [self.decoder_start]

    def _forward(self, tokens: Sequence[int], logits_from: int) -> torch.Tensor:
        if self._encoder_out is None:
            raise CSDraftingError("call begin(prompt) before extend()")
        if self._cache is None or not self._tokens:
            from transformers import DynamicCache, EncoderDecoderCache

            self._cache = EncoderDecoderCache(DynamicCache(config=self.model.config), DynamicCache(config=self.model.config))
        out = self.model(encoder_outputs=self._encoder_out, decoder_input_ids=self._ids(tokens), cache=self._cache, use_cache=True)
        self._written(tokens)
        return out.logits[0, logits_from:]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: str | torch.dtype = "float32", name: str | None = None, device: str = "cpu", **kw
    ) -> "HFSeq2SeqLM":
        """Load a checkpoint directory on `device` (see module docstring) in `dtype`."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        path = Path(path)
        model = _load(AutoModelForSeq2SeqLM, path, dtype, device, kw)
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception:
            tok = None
        return cls(model, name=name or path.name, tokenizer=tok)


def load_hf(path: str | Path, dtype: str | torch.dtype = "float32", name: str | None = None, device: str = "cpu"):
    """Load a transformers checkpoint directory as the right backend class, on `device` in `dtype`."""
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        raise CSDraftingError(f"model path {path} does not exist")
    cfg = AutoConfig.from_pretrained(path)
    cls = HFSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else HFCausalLM
    return cls.from_pretrained(path, dtype=dtype, name=name, device=device)
