"""transformers' own `generate`: plain decoding, assisted generation and prompt lookup."""

from __future__ import annotations

import time

from ...cascade.metrics import GenerationMetrics, LevelMetrics
from ...protocol import CSDraftingError
from ...spec import split_ref
from ..methods import HF, Method, model_name
from .common import WARMUP_TOKENS, Outcome, target_level


class _ForwardLog:
    """Forward hooks on a transformers model: per call, the cache length before it and the input ids."""

    def __init__(self, model) -> None:
        self.passes: list[tuple[int, list[int]]] = []
        self.seconds = 0.0
        self.first_end: float | None = None  # when the first pass (the prompt's) ended
        self._t0 = 0.0
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
        ]

    def reset(self) -> None:
        self.passes, self.seconds, self.first_end = [], 0.0, None

    def _pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        start = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            start = int(cache.get_seq_length())
        elif kwargs.get("position_ids") is not None:
            start = int(kwargs["position_ids"].reshape(-1)[0])
        self.passes.append((start, [] if ids is None else [int(t) for t in ids[0].tolist()]))
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        now = time.perf_counter()
        self.seconds += now - self._t0
        if self.first_end is None:
            self.first_end = now


class HFExecutor:
    """transformers `generate` on the float32 checkpoint of the same weights: plain, assisted, prompt lookup."""

    family = HF

    def __init__(self, target_ref: str, assistant_ref: str | None, threads: int, eos: frozenset[int],
                 pad: int | None = None, progress: bool = True) -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch = torch
        self.eos = sorted(eos)
        self.pad = pad if pad is not None else self.eos[0]
        self.target_ref, self.assistant_ref = target_ref, assistant_ref
        self.model = AutoModelForCausalLM.from_pretrained(hf_path(target_ref, progress), dtype=torch.float32).eval()
        self.assistant = None
        if assistant_ref:
            self.assistant = AutoModelForCausalLM.from_pretrained(hf_path(assistant_ref, progress), dtype=torch.float32).eval()
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.log = _ForwardLog(self.model)
        self.alog = _ForwardLog(self.assistant) if self.assistant is not None else None

    def describe_models(self) -> dict:
        out = {"hf target": f"{self.target_ref} (transformers, float32)"}
        if self.assistant_ref:
            out["hf assistant"] = f"{self.assistant_ref} (transformers, float32)"
        return out

    def _config(self, max_new: int, **kw):
        from transformers import GenerationConfig

        # explicit greedy settings: the checkpoint's generation_config must not add sampling or penalties
        return GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, repetition_penalty=1.0,
                                eos_token_id=self.eos, pad_token_id=self.pad, **kw)

    def warmup(self) -> None:
        ids = self.torch.tensor([[9707, 11, 1879, 0]])  # any few valid ids
        for model in (self.model, self.assistant):
            if model is not None:
                with self.torch.inference_mode():
                    model.generate(ids, attention_mask=self.torch.ones_like(ids), generation_config=self._config(WARMUP_TOKENS))

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None) -> Outcome:
        kw: dict = {}
        cfg: dict = {}
        drafter = None
        if method.name == "hf-assisted":
            if self.assistant is None:
                raise CSDraftingError("hf-assisted needs an assistant model")
            kw["assistant_model"] = self.assistant
            drafter = ("assistant", f"{model_name(self.assistant_ref)} [float32] (transformers)",
                       sum(p.numel() for p in self.assistant.parameters()))
        elif method.name == "hf-pld":
            cfg["prompt_lookup_num_tokens"] = int(params["draft_length"])
            drafter = ("statistical", f"prompt lookup (transformers, {cfg['prompt_lookup_num_tokens']} tokens)", 0)
        elif method.name != "hf-plain":
            raise CSDraftingError(f"the transformers executor does not run {method.name}")
        gc = self._config(max_new, **cfg)
        ids = self.torch.tensor([list(prompt)])
        self.log.reset()
        if self.alog:
            self.alog.reset()
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), generation_config=gc, **kw)
        seconds = time.perf_counter() - t0
        tokens = [int(t) for t in out[0, len(prompt):].tolist()]
        # generate pads nothing for batch 1, but cut at the first EOS to be safe
        for i, t in enumerate(tokens):
            if t in self.eos:
                tokens = tokens[: i + 1]
                break
        finish = "eos" if tokens and tokens[-1] in self.eos else "length"
        first = (self.log.first_end - t0) if self.log.first_end is not None else 0.0
        return Outcome(tokens, finish, self._metrics(drafter, prompt, tokens, seconds, first), self._record(gc, drafter))

    def _metrics(self, drafter, prompt: list[int], tokens: list[int], seconds: float, first: float) -> GenerationMetrics:
        """`first`: seconds until the prompt's pass (which yields the first token) ended. Decoding alone is
        the rest, with the first token priced at the rate of the others (as llama.cpp's llama-completion
        figure is read); with a single token there is no rate to price it at, and decode = end to end."""
        t, drafted, accepted = target_level(f"{model_name(self.target_ref)} [float32] (transformers)", self.n_params,
                                            self.log.passes, self.log.seconds, prompt, tokens)
        levels = [t]
        if drafter:
            kind, name, n_params = drafter
            d = LevelMetrics(1, name, "drafter" if kind == "assistant" else "statistical", n_params,
                             drafted=drafted, accepted=accepted)
            if kind == "assistant" and self.alog:
                d.forward_passes = len(self.alog.passes)
                d.tokens_evaluated = sum(len(p) for _, p in self.alog.passes)
                d.seconds = self.alog.seconds
            levels.append(d)
        n = len(tokens)
        decode = (seconds - first) * n / (n - 1) if n > 1 else seconds
        return GenerationMetrics(levels, new_tokens=n, seconds=seconds, target_steps=len(self.log.passes),
                                 prefill_seconds=max(0.0, seconds - decode))

    def _record(self, gc, drafter) -> dict:
        """The generation settings that ran, for the record."""
        conf = {"library": "transformers", **{k: v for k, v in gc.to_diff_dict().items()
                                              if k in ("prompt_lookup_num_tokens", "num_assistant_tokens",
                                                       "num_assistant_tokens_schedule", "max_new_tokens")}}
        if drafter and drafter[0] == "assistant":
            from transformers import GenerationConfig

            # what the assistant's candidate generator used: its own config, library defaults where unset
            defaults = GenerationConfig._get_default_generation_params()
            agc = self.assistant.generation_config
            for key in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"):
                v = getattr(agc, key, None)
                conf[key] = defaults.get(key) if v is None else v
        return conf

    def close(self) -> None:
        self.model = self.assistant = None


def hf_path(ref: str, progress: bool = True):
    """A transformers checkpoint for `ref`: a store model's float32 weights (dequantized once from its
    Q4_K_M GGUF, whatever tier `ref` names: every tier holds the same values), or a directory."""
    from pathlib import Path

    from ... import store

    name, _ = split_ref(ref)
    if name in store.REGISTRY:
        return store.ensure_hf_weights(name, store.BASE_TIER, progress=progress)
    path = Path(name)
    if not path.is_dir():
        raise CSDraftingError(f"{ref} is neither a store model nor a transformers checkpoint directory")
    return path

