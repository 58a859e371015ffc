"""llama.cpp backend (llama-cpp-python 0.3.36, low-level API): GGUF models, quantized or not.

Decoding goes through `llama_batch` / `llama_decode` with a per-token output flag, so logits are
computed only for the rows the engine asks for: a prompt prefill does not pay a vocabulary-wide output
row (151,936 floats for Qwen2.5) per prompt token. Rollback removes the tail of the KV cache
(`llama_memory_seq_rm`); the kept prefix is never recomputed.

The high-level `llama_cpp.Llama` is not used: it keeps its own token/score state (and allocates an
`n_batch x n_vocab` score buffer) that would fight ours.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..protocol import CSDraftingError, ModelInfo

try:
    import llama_cpp as _L
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "the llama.cpp backend needs llama-cpp-python: pip install 'csdrafting[llamacpp]'"
    ) from exc

log = logging.getLogger("csdrafting.llamacpp")

# ggml_log_level of this llama.cpp: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5.
# llama-cpp-python's own callback assumes an older numbering (it takes WARN for ERROR), so even with
# verbose=False it prints load-time warnings; we install a callback that routes to `logging` instead.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.DEBUG, 4: logging.ERROR}
_last_level = logging.DEBUG
_backend_ready = False


@_L.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    lvl = _last_level if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
    _last_level = lvl
    if log.isEnabledFor(lvl):
        log.log(lvl, "%s", text.decode("utf-8", "replace").rstrip("\n"))


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        _L.llama_log_set(_log_callback, ctypes.c_void_p(0))
        _L.llama_backend_init()
        _backend_ready = True


def _ftype_names() -> dict[int, str]:
    """LLAMA_FTYPE_MOSTLY_Q4_K_M -> "Q4_K_M", LLAMA_FTYPE_ALL_F32 -> "F32", from the binding's constants."""
    out = {}
    for k, v in vars(_L).items():
        if k.startswith("LLAMA_FTYPE_") and isinstance(v, int) and k != "LLAMA_FTYPE_GUESSED":
            out[v] = k.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return out


_FTYPE_GUESSED = 1024


class LlamaCppTokenizer:
    """Text <-> token ids with the GGUF's own tokenizer, and its chat template rendered by jinja2."""

    def __init__(self, vocab, chat_template: str | None, bos_token: str, eos_token: str) -> None:
        self._vocab = vocab
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = None
        self._buf = ctypes.create_string_buffer(256)

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written as text (e.g. <|im_start|>) become their ids."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        for _ in range(2):
            arr = (_L.llama_token * cap)()
            n = _L.llama_tokenize(self._vocab, data, len(data), arr, cap, add_special, True)
            if n >= 0:
                return list(arr[:n])
            cap = -n  # a negative count is the size it needs
        raise CSDraftingError(f"llama.cpp could not tokenize a text of {len(data)} bytes")

    def piece(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token (a token may hold part of a UTF-8 character)."""
        n = _L.llama_token_to_piece(self._vocab, int(token), self._buf, len(self._buf), 0, special)
        if n < 0:  # buffer too small: -n is the size it needs
            self._buf = ctypes.create_string_buffer(-n)
            n = _L.llama_token_to_piece(self._vocab, int(token), self._buf, len(self._buf), 0, special)
        return self._buf.raw[:n]

    def decode(self, tokens: Sequence[int], skip_special: bool = False) -> str:
        """Text of `tokens`; special tokens are rendered unless skip_special."""
        return b"".join(self.piece(t, not skip_special) for t in tokens).decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = False) -> "StreamDecoder":
        """An incremental decoder: feed it tokens as they come, it returns only complete characters."""
        return StreamDecoder(self, skip_special)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render the GGUF's `tokenizer.chat_template` (as transformers would) for `messages`."""
        if self.chat_template is None:
            raise CSDraftingError("this GGUF has no tokenizer.chat_template; build the prompt text yourself")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
                # jinja2's own tojson HTML-escapes; transformers' does not, and templates expect that
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **kwargs,
        )


class StreamDecoder:
    """Tokens -> text, holding back the bytes of a UTF-8 character split across tokens."""

    def __init__(self, tokenizer: LlamaCppTokenizer, skip_special: bool = False) -> None:
        self._tok = tokenizer
        self._special = not skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, tokens: Sequence[int]) -> str:
        return self._dec.decode(b"".join(self._tok.piece(t, self._special) for t in tokens))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def check_n_gpu_layers(n_gpu_layers: int) -> None:
    """Refuse an offload this build of llama.cpp cannot do, instead of silently running on the CPU."""
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
        raise CSDraftingError(f"n_gpu_layers must be an integer >= -1 (-1: all layers; got {n_gpu_layers!r})")
    if n_gpu_layers != 0 and not _L.llama_supports_gpu_offload():
        raise CSDraftingError(
            f"n_gpu_layers={n_gpu_layers} asks for GPU offload, but this llama-cpp-python was built without a GPU "
            "backend: use n_gpu_layers 0, or rebuild it with one (e.g. CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install "
            "--force-reinstall --no-cache-dir llama-cpp-python==0.3.36)"
        )


class LlamaCppModel:
    """A GGUF model run by llama.cpp (on the CPU, or partly on a GPU), implementing the `LanguageModel` protocol."""

    def __init__(
        self,
        path: str | Path,
        n_threads: int = 2,
        n_ctx: int = 4096,
        n_batch: int = 512,
        name: str | None = None,
        n_threads_batch: int | None = None,
        flash_attn: bool = False,
        eos_token_ids: Iterable[int] | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        """Load `path` with a context of n_ctx tokens, decoding at most n_batch tokens per pass.

        n_gpu_layers: layers offloaded to the GPU (llama.cpp's -ngl; -1 = all of them); 0 runs on the CPU.
        Offloading needs a llama-cpp-python built with a GPU backend (e.g. CMAKE_ARGS="-DGGML_CUDA=on").

        eos_token_ids defaults to every token llama.cpp marks as end-of-generation (for Qwen2.5 that
        includes <|endoftext|>, <|im_end|>, the FIM/repo specials and the plain-text token '</s>').
        """
        self._model = self._ctx = self._batch = None
        path = Path(path)
        if not path.is_file():
            raise CSDraftingError(f"GGUF model file {path} does not exist; give the path of a .gguf file")
        if n_ctx <= 0 or n_batch <= 0 or n_threads <= 0:
            raise CSDraftingError(f"n_ctx, n_batch and n_threads must be positive (got {n_ctx}, {n_batch}, {n_threads})")
        check_n_gpu_layers(n_gpu_layers)
        _init_backend()
        mp = _L.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers  # negative: all layers (llama.cpp's convention)
        self._model = _L.llama_model_load_from_file(str(path).encode("utf-8"), mp)
        if not self._model:
            self._model = None
            raise CSDraftingError(f"llama.cpp could not load {path}: not a GGUF model of an architecture it supports")
        self._vocab = _L.llama_model_get_vocab(self._model)

        n_batch = min(n_batch, n_ctx)
        cp = _L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch  # one physical pass per logical batch: a verification is one forward
        cp.n_seq_max = 1
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads_batch or n_threads
        cp.flash_attn_type = 1 if flash_attn else 0  # llama_cpp.Llama's default is off; AUTO (-1) would vary
        cp.no_perf = True
        self._ctx = _L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self._ctx = None
            self.close()
            raise CSDraftingError(f"llama.cpp could not create a context of {n_ctx} tokens for {path}; lower n_ctx")
        self._mem = _L.llama_get_memory(self._ctx)
        self._batch = _L.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch or n_threads
        self.path = path
        self._tokens: list[int] = []
        self._stamps: list[int] = []  # per cached position, the id of the extend() that wrote it
        self._writes = 0

        n_vocab = int(_L.llama_vocab_n_tokens(self._vocab))
        self._n_vocab = n_vocab
        eos, fingerprint = self._scan_vocab(n_vocab)
        bos = int(_L.llama_vocab_bos(self._vocab))
        ftype = int(_L.llama_model_ftype(self._model)) & ~_FTYPE_GUESSED
        tmpl = _L.llama_model_chat_template(self._model, None)
        self.tokenizer = LlamaCppTokenizer(
            self._vocab,
            tmpl.decode("utf-8") if tmpl else None,
            self._text(bos) if bos >= 0 else "",
            self._text(int(_L.llama_vocab_eos(self._vocab))),
        )
        self.info = ModelInfo(
            name=name or path.stem,
            vocab_size=n_vocab,
            n_params=int(_L.llama_model_n_params(self._model)),
            eos_token_ids=frozenset(int(t) for t in eos_token_ids) if eos_token_ids is not None else eos,
            bos_token_id=bos if bos >= 0 else None,
            context_length=n_ctx,
            vocab_fingerprint=fingerprint,
            precision=_ftype_names().get(ftype, f"ftype{ftype}"),
            extra={"path": str(path), "n_threads": n_threads, "n_batch": n_batch, "backend": "llama.cpp",
                   "n_gpu_layers": n_gpu_layers},
        )

    def _text(self, token: int) -> str:
        return (_L.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    def _scan_vocab(self, n_vocab: int) -> tuple[frozenset[int], str]:
        """End-of-generation ids and the token-table digest, in one pass over the vocabulary."""
        eos = {int(t) for t in (_L.llama_vocab_eos(self._vocab), _L.llama_vocab_eot(self._vocab)) if t >= 0}
        h = hashlib.sha256()
        for i in range(n_vocab):
            if _L.llama_vocab_is_eog(self._vocab, i):
                eos.add(i)
            # same format as backends.hf.vocab_fingerprint, so a transformers tokenizer loaded from the
            # same GGUF gets the same digest and the two backends can be mixed in one cascade
            h.update(f"{i}\t{self._text(i)}\n".encode())
        return frozenset(eos), h.hexdigest()[:16]

    # ---------------------------------------------------------------------------------------------- protocol
    @property
    def cached_tokens(self) -> Sequence[int]:
        return self._tokens

    @property
    def cache_stamps(self) -> Sequence[int]:
        return self._stamps

    def begin(self, prompt: Sequence[int]) -> list[int]:
        return list(prompt)

    def extend(self, tokens: Sequence[int], logits_from: int = 0) -> np.ndarray:
        """Append tokens to the cache; float32 logits for positions logits_from.. of `tokens`."""
        n = len(tokens)
        if n == 0:
            raise CSDraftingError("extend() needs at least one new token")
        if not 0 <= logits_from <= n:
            raise CSDraftingError(f"logits_from={logits_from} is outside [0, {n}]")
        ctx_len = self.info.context_length
        if len(self._tokens) + n > ctx_len:
            raise CSDraftingError(
                f"{self.info.label} was loaded with n_ctx={ctx_len}, but the cache holds {len(self._tokens)} tokens "
                f"and {n} more were asked for: load it with a larger n_ctx, or shorten the prompt or max_new_tokens"
            )
        nv = self._n_vocab
        self._writes += 1
        out = np.empty((n - logits_from, nv), dtype=np.float32)
        b = self._batch
        for start in range(0, n, self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            pos0 = len(self._tokens)
            n_out = 0
            for i, t in enumerate(chunk):
                b.token[i] = int(t)
                b.pos[i] = pos0 + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                want = start + i >= logits_from
                b.logits[i] = want
                n_out += want
            b.n_tokens = len(chunk)
            rc = _L.llama_decode(self._ctx, b)
            if rc != 0:
                # a fatal error may leave part of the batch in the cache: drop it to stay in sync
                _L.llama_memory_seq_rm(self._mem, 0, pos0, -1)
                raise CSDraftingError(
                    f"llama_decode failed with code {rc} on {len(chunk)} tokens at position {pos0}"
                    + ("; the KV cache has no room: load the model with a larger n_ctx" if rc == 1 else "")
                )
            if n_out:
                # llama_get_logits holds the flagged rows contiguously, in batch order (llama.h); one memcpy
                # into our array (the buffer is overwritten by the next decode, and the engine keeps rows)
                first = start + len(chunk) - n_out - logits_from
                ctypes.memmove(out.ctypes.data + first * nv * 4, _L.llama_get_logits(self._ctx), n_out * nv * 4)
            self._tokens.extend(int(t) for t in chunk)
            self._stamps.extend([self._writes] * len(chunk))
        return out

    def rollback(self, n: int) -> None:
        if n < 0 or n > len(self._tokens):
            raise CSDraftingError(f"cannot roll back to {n} tokens: the cache holds {len(self._tokens)}")
        if n < len(self._tokens):
            if not _L.llama_memory_seq_rm(self._mem, 0, n, -1):
                raise CSDraftingError(f"{self.info.label} cannot drop the tail of its cache (a recurrent model?)")
            del self._tokens[n:]
            del self._stamps[n:]

    # ---------------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Free the batch, context and model (in that order); the object is unusable afterwards."""
        if self._batch is not None:
            _L.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            _L.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            _L.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown may have torn down the binding already
            pass

    def __repr__(self) -> str:
        return f"LlamaCppModel({self.info.label}, n_ctx={self.info.context_length}, threads={self.n_threads})"
