"""How each family of methods runs one (prompt, method): the engine, llama-cpp-python's Llama, transformers.

An executor loads its models once, warms each of them up with a short generation (the first forward
of a freshly mapped 7 GB F32 file pages it in from disk and would distort the first timed prompt), and
returns for every run the generated tokens and a `GenerationMetrics` in the engine's shape, so the
summary treats all methods alike. For the peers the per-level, per-position numbers are reconstructed
from the forward passes they make (see `review_passes`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

from ..cascade.config import CascadeConfig
from ..cascade.engine import Cascade
from ..cascade.metrics import GenerationMetrics, LevelMetrics
from ..cascade.overrides import override
from ..drafters import registry
from ..protocol import CSDraftingError
from ..spec import CascadeSpec, drafter_objects, load_models, resolve, split_ref
from .methods import ENGINE, HF, LLAMA, LLAMA_BIN, ORACLE, Method, Oracle, model_name

WARMUP_TEXT = "def fibonacci(n):\n"
WARMUP_TOKENS = 4


@dataclass
class Outcome:
    tokens: list[int]
    finish_reason: str
    metrics: GenerationMetrics
    config: dict


def review_passes(passes: Sequence[tuple[int, Sequence[int]]], full: Sequence[int], prompt_len: int) -> list[tuple[int, int]]:
    """(draft length, accepted) for each target forward pass, from what the pass was fed.

    `passes` holds (position of the first input token, input tokens) per forward pass; `full` is prompt +
    output. In a pass, the tokens at positions >= max(start + 1, prompt_len) are a draft: the first input
    token of a later pass is the target's own last token, and in a first pass that already carries a draft
    (transformers' assisted generation) the draft starts right after the prompt. A drafted token counts as
    accepted iff it and every draft token before it equal the output at its position (greedy review).
    Draft positions beyond the end of the output were never decided and are not counted.
    """
    out = []
    for start, tokens in passes:
        first = max(start + 1, prompt_len)
        draft = list(tokens[first - start :])
        draft = draft[: max(0, len(full) - first)]
        n = 0
        while n < len(draft) and draft[n] == full[first + n]:
            n += 1
        out.append((len(draft), n))
    return out


def _fill_target_level(lv: LevelMetrics, reviews: list[tuple[int, int]]) -> tuple[int, int]:
    drafted = accepted = 0
    for d, a in reviews:
        if d:
            lv.record_review(d, a)
        drafted += d
        accepted += a
    return drafted, accepted


# ------------------------------------------------------------------------------------------------ engine


class EngineExecutor:
    """Every engine method as a `Cascade` over one set of loaded models (spec's target and backend)."""

    family = ENGINE

    def __init__(self, target, models: dict, spec_config: CascadeConfig | None = None,
                 spec: CascadeSpec | None = None) -> None:
        """`models` maps each neural drafter ref used by the methods to its loaded model; `spec_config` is
        the spec's CascadeConfig, the base of methods marked `from_spec` (csd, vertical, horizontal); `spec`
        gives the statistical drafters' settings (unless a method brings its own) and cost curves for
        dynamic methods."""
        self.target = target
        self.models = dict(models)
        self.spec_config = spec_config
        self.spec = spec
        self.oracle = Oracle()
        self._curves: dict[str, object] = {}
        self._stores: dict[tuple[str, str], object] = {}  # (method, ref) -> a statistical drafter with a store

    @classmethod
    def from_spec(cls, spec: CascadeSpec, methods: Sequence[Method], progress: bool = True) -> "EngineExecutor":
        """Load the spec's target and every neural drafter the methods name, on the spec's backend."""
        target = load_models(spec, [spec.target], progress)[spec.target]
        refs = [ref for m in methods for ref in m.drafters if ref != ORACLE]
        return cls(target, load_models(spec, refs, progress), spec.cascade_config(), spec)

    def describe_models(self) -> dict:
        return {ref: m.info.label for ref, m in {"target": self.target, **self.models}.items()}

    def warmup(self) -> None:
        from ..text import encode

        ids = encode(self.target, WARMUP_TEXT) if getattr(self.target, "tokenizer", None) is not None else [1, 2, 3]
        for model in [self.target, *self.models.values()]:
            Cascade(model, []).generate(ids, WARMUP_TOKENS)

    def cascade(self, params: dict, method: str = "") -> Cascade:
        """The engine for one run. A statistical drafter with a cross-request store is kept per (method,
        drafter) across runs, as one server process keeps it across requests; each method has its own, so no
        method sees another's output of the same prompt."""
        refs = params["drafters"]
        settings = params["drafter_settings"] if "drafter_settings" in params else (
            self.spec.drafter_settings if self.spec is not None else {})
        given = {ORACLE: self.oracle, **{ref: d for (m, ref), d in self._stores.items() if m == method}}
        drafters = drafter_objects(refs, settings, self.target.info.vocab_size, self.models, given)
        for ref, d in zip(refs, drafters):
            if registry.is_statistical(ref) and getattr(d, "store", None) is not None:
                self._stores[(method, ref)] = d
        base = self.spec_config if params.get("from_spec") and self.spec_config is not None else CascadeConfig()
        config = method_config(base, params)
        if config.dynamic and drafters and config.costs is None:
            refs = ["target", *params["drafters"]]
            config = dataclasses.replace(config, costs=tuple(self._curve(r) for r in refs))
        return Cascade(self.target, drafters, config)

    def _curve(self, ref: str):
        """The cost curve of a level for dynamic methods: the spec's measured one, else measured once here."""
        if ref == ORACLE or registry.is_statistical(ref):
            return None
        if ref not in self._curves:
            from ..cascade.planning import CostCurve, measure

            name = self.spec.target if ref == "target" and self.spec is not None else ref
            known = (self.spec.costs or {}) if self.spec is not None else {}
            model = self.target if ref == "target" else self.models[ref]
            self._curves[ref] = CostCurve.from_json(known[name]) if name in known else measure(model)
        return self._curves[ref]

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None,
            timing: str = "e2e") -> Outcome:
        if "oracle" in params["drafters"]:
            if reference is None:
                raise CSDraftingError("the oracle needs the plain output of this prompt; run 'plain' first")
            self.oracle.set_reference(prompt, reference)
        engine = self.cascade(params, method.name)
        if timing == "decode":
            # prefill every model with the prompt but its last token, untimed; the timed generation then
            # starts from the last prompt token, so tokens/s measure decoding alone
            for lv in engine.levels:
                model = getattr(lv, "model", None)
                if model is not None:
                    model.rollback(0)
                    if len(prompt) > 1:
                        model.extend(prompt[:-1], logits_from=len(prompt) - 1)
        res = engine.generate(prompt, max_new, keep_cache=timing == "decode")
        return Outcome(res.tokens, res.finish_reason, res.metrics, res.config)

    def examine(self, prompt: list[int], reference: list[int], candidate: list[int], timing: str = "e2e"):
        """Tie or mismatch: the target's logits at the first token where `candidate` leaves plain's output."""
        from ..exactness import examine, noise_threshold

        return examine(self.target, prompt, reference, candidate, noise_threshold(self.target),
                       split_last=timing == "decode")

    def close(self) -> None:
        for m in [self.target, *self.models.values()]:
            close = getattr(m, "close", None)
            if close:
                close()


def method_config(base: CascadeConfig, params: dict) -> CascadeConfig:
    """`base` with the method's K, lenience and bottom length, then its `config` fields by name.

    Any field of CascadeConfig can be set through params["config"] (a dict; a field holding a dataclass
    takes a dict of the fields to change in it), so knobs added to the configuration later need no bench code.
    """
    length = params.get("bottom_length", params.get("maxgram_length"))  # records before the rename
    config = override(base, {"k": params.get("k"), "lenience": float(params.get("lenience", 1.0)), "bottom_length": length})
    return override(config, params.get("config") or {}, "method config field")


# ------------------------------------------------------------------------------------------------ llama.cpp


class LlamaExecutor:
    """llama-cpp-python's high-level `Llama`, run by its own `generate` (greedy, temp 0, no penalties).

    Two instances on the same GGUF file (memory-mapped, so the weights are shared): one as the library
    builds it by default, for plain decoding, and one with `draft_model=LlamaPromptLookupDecoding(...)`,
    which the library forces to `logits_all=True` (it needs a row per drafted position).
    """

    family = LLAMA

    def __init__(self, target_ref: str, threads: int, n_ctx: int, eos: frozenset[int], progress: bool = True) -> None:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self._L = llama_cpp
        self.path = resolve(target_ref, "llamacpp", progress)
        if self.path.is_dir():
            raise CSDraftingError(f"{target_ref} resolves to a directory; llama-cpp-python needs a .gguf file")
        self.eos = eos
        self.name = target_ref
        common = dict(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                      n_gpu_layers=0, verbose=False)
        self.plain = llama_cpp.Llama(**common)
        self.lookup = LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=10)
        self.pld = llama_cpp.Llama(**common, draft_model=self.lookup, logits_all=True)
        self.n_params = int(llama_cpp.llama_model_n_params(self.plain.model))
        self._passes: list[tuple[int, list[int]]] = []
        self._seconds = 0.0
        for llm in (self.plain, self.pld):
            self._count_evals(llm)

    def _count_evals(self, llm) -> None:
        orig = llm.eval

        def counted(tokens):
            start = llm.n_tokens
            t0 = time.perf_counter()
            out = orig(tokens)
            self._seconds += time.perf_counter() - t0
            self._passes.append((start, list(tokens)))
            return out

        llm.eval = counted

    def describe_models(self) -> dict:
        return {"llama-cpp-python": f"{self.name} ({self.path.name})"}

    def warmup(self) -> None:
        ids = self.plain.tokenize(WARMUP_TEXT.encode(), add_bos=False, special=True)
        for llm in (self.plain, self.pld):
            self._generate(llm, ids, WARMUP_TOKENS, "e2e")

    def _generate(self, llm, prompt: list[int], max_new: int, timing: str) -> tuple[list[int], str, float]:
        llm.reset()
        if timing == "decode" and len(prompt) > 1:
            llm.eval(prompt[:-1])  # generate() then reuses this prefix and evaluates the last token alone
        self._passes, self._seconds = [], 0.0
        out: list[int] = []
        finish = "length"
        t0 = time.perf_counter()
        for tok in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(tok))
            if tok in self.eos:
                finish = "eos"
                break
            if len(out) >= max_new:
                break
        return out, finish, time.perf_counter() - t0

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None,
            timing: str = "e2e") -> Outcome:
        if method.name == "llama-plain":
            llm, drafter = self.plain, None
        elif method.name == "llama-pld":
            llm = self.pld
            self.lookup.num_pred_tokens = int(params["draft_length"])
            self.lookup.max_ngram_size = int(params.get("max_ngram_size", 2))
            drafter = f"prompt lookup (llama-cpp-python, num_pred_tokens={self.lookup.num_pred_tokens})"
        else:
            raise CSDraftingError(f"the llama.cpp executor does not run {method.name}")
        tokens, finish, seconds = self._generate(llm, prompt, max_new, timing)
        t = LevelMetrics(0, f"{self.name} (llama-cpp-python)", "target", self.n_params)
        t.forward_passes = len(self._passes)
        t.tokens_evaluated = sum(len(p) for _, p in self._passes)
        t.seconds = self._seconds
        levels = [t]
        reviews = review_passes(self._passes, list(prompt) + tokens, len(prompt))
        drafted, accepted = _fill_target_level(t, reviews)
        if drafter:
            d = LevelMetrics(1, drafter, "statistical", 0, proposals=max(0, len(self._passes) - 1),
                             drafted=drafted, accepted=accepted)
            levels.append(d)
        m = GenerationMetrics(levels, new_tokens=len(tokens), seconds=seconds, target_steps=len(self._passes))
        return Outcome(tokens, finish, m, {"library": "llama-cpp-python", "logits_all": llm._logits_all,
                                           **({"num_pred_tokens": self.lookup.num_pred_tokens,
                                               "max_ngram_size": self.lookup.max_ngram_size} if drafter else {})})

    def close(self) -> None:
        for llm in (self.plain, self.pld):
            try:
                llm.close()
            except Exception:  # older bindings have no close(); the objects are freed with the executor
                pass


# ------------------------------------------------------------------------------------------------ transformers


class _ForwardLog:
    """Forward hooks on a transformers model: per call, the cache length before it and the input ids."""

    def __init__(self, model) -> None:
        self.passes: list[tuple[int, list[int]]] = []
        self.seconds = 0.0
        self._t0 = 0.0
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
        ]

    def reset(self) -> None:
        self.passes, self.seconds = [], 0.0

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
        self.seconds += time.perf_counter() - self._t0


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

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None,
            timing: str = "e2e") -> Outcome:
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
        t = LevelMetrics(0, f"{model_name(self.target_ref)} [float32] (transformers)", "target", self.n_params)
        t.forward_passes = len(self.log.passes)
        t.tokens_evaluated = sum(len(p) for _, p in self.log.passes)
        t.seconds = self.log.seconds
        levels = [t]
        drafted, accepted = _fill_target_level(t, review_passes(self.log.passes, list(prompt) + tokens, len(prompt)))
        if drafter:
            kind, name, n_params = drafter
            d = LevelMetrics(1, name, "drafter" if kind == "assistant" else "statistical", n_params,
                             drafted=drafted, accepted=accepted)
            if kind == "assistant" and self.alog:
                d.forward_passes = len(self.alog.passes)
                d.tokens_evaluated = sum(len(p) for _, p in self.alog.passes)
                d.seconds = self.alog.seconds
            levels.append(d)
        m = GenerationMetrics(levels, new_tokens=len(tokens), seconds=seconds, target_steps=len(self.log.passes))
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
        return Outcome(tokens, finish, m, conf)

    def close(self) -> None:
        self.model = self.assistant = None


def hf_path(ref: str, progress: bool = True):
    """A transformers checkpoint for `ref`: a store model's float32 weights (dequantized once from its
    Q4_K_M GGUF, whatever tier `ref` names: every tier holds the same values), or a directory."""
    from pathlib import Path

    from .. import store

    name, _ = split_ref(ref)
    if name in store.REGISTRY:
        return store.ensure_hf_weights(name, store.BASE_TIER, progress=progress)
    path = Path(name)
    if not path.is_dir():
        raise CSDraftingError(f"{ref} is neither a store model nor a transformers checkpoint directory")
    return path


# ------------------------------------------------------------------------------------------------ llama.cpp programs


class LlamaCppBinExecutor:
    """llama.cpp's own programs, one process per run: `llama-completion` for plain decoding and
    `llama-speculative-simple` for the speculative modes (see `llamacpp_bin`).

    Prompts go in as text (our token ids detokenized with their special tokens; the program tokenizes it
    again, and each record says whether that gives the same ids); the generated text it prints is tokenized
    with the same vocabulary for the records' `tokens`, so agreement with our plain decoding is counted on
    tokens. The program does not print the end-of-text token: `tokens` never hold it.
    """

    family = LLAMA_BIN

    def __init__(self, target_ref: str, draft_ref: str | None, threads: int, n_ctx: int, progress: bool = True,
                 binaries=None, extra: dict[str, Sequence[str]] | None = None) -> None:
        import llama_cpp

        from . import llamacpp_bin as lb

        self.lb = lb
        self.binaries = binaries or lb.ensure_binaries()
        self.target_ref, self.draft_ref = target_ref, draft_ref
        self.model = resolve(target_ref, "llamacpp", progress)
        self.draft = resolve(draft_ref, "llamacpp", progress) if draft_ref else None
        self.threads, self.n_ctx = threads, n_ctx
        self.extra = {k: tuple(v) for k, v in (extra or {}).items()}
        # the vocabulary alone (no weights): detokenize prompts, tokenize what the program printed
        self.vocab = llama_cpp.Llama(model_path=str(self.model), vocab_only=True, verbose=False)

    def describe_models(self) -> dict:
        out = {"llama.cpp programs": f"{self.binaries.bin_dir} (from the llama-cpp-python {self.binaries.version} sdist)",
               "llama.cpp target": f"{self.target_ref} ({self.model.name})"}
        if self.draft:
            out["llama.cpp draft"] = f"{self.draft_ref} ({self.draft.name})"
        return out

    def _text(self, ids: Sequence[int]) -> str:
        return self.vocab.detokenize(list(ids), special=True).decode("utf-8", "replace")

    def _ids(self, text: str, add_bos: bool) -> list[int]:
        return [int(t) for t in self.vocab.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)]

    def warmup(self) -> None:
        # pages the weights in: the first process on a cold file would charge its disk reads to one prompt
        for method in ("llama-cpp-plain", "llama-cpp-draft-simple") if self.draft else ("llama-cpp-plain",):
            a = self.lb.PeerArgs(self.model, WARMUP_TEXT, WARMUP_TOKENS, self.threads, 512, self.draft)
            self.lb.run_peer(self.lb.command(self.binaries, method, a), WARMUP_TEXT)

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None,
            timing: str = "e2e") -> Outcome:
        text = self._text(prompt)
        extra = tuple(params.get("extra", ())) + self.extra.get(method.name, ())
        a = self.lb.PeerArgs(self.model, text, max_new, self.threads, self.n_ctx,
                             self.draft if method.name == "llama-cpp-draft-simple" else None, extra)
        argv = self.lb.command(self.binaries, method.name, a)
        run = self.lb.run_peer(argv, text)
        o = run.output
        # llama-speculative-simple may accept a whole draft past -n: compare only the tokens asked for
        tokens = self._ids(o.text, add_bos=False)[:max_new]
        finish = ("eos" if o.ended_by_eos else "length") if o.ended_by_eos is not None else (
            "length" if o.new_tokens >= max_new else "eos")
        c = o.counters
        n_accept = c.get("n_accept", 0) if method.name != "llama-cpp-plain" else 0
        passes = max(0, o.new_tokens - n_accept)  # each pass yields its accepted drafts plus one token
        prog = self.lb.program(method.name)
        t = LevelMetrics(0, f"{model_name(self.target_ref)} (llama.cpp {prog})", "target", 0)
        t.forward_passes = passes
        t.tokens_evaluated = passes + c.get("n_drafted", 0)
        t.seconds = o.decode_seconds
        levels = [t]
        if method.name != "llama-cpp-plain":
            kind = "drafter" if method.name == "llama-cpp-draft-simple" else "statistical"
            levels.append(LevelMetrics(1, f"llama.cpp --spec-type {self.lb.SPEC_TYPES[method.name]}", kind, 0,
                                       drafted=c.get("n_drafted", 0), accepted=n_accept))
        # end to end: the printed prompt pass (which yields the first token) plus the printed decode runs;
        # decode_seconds prices the first token at the decode rate too, for the decode-only figure
        e2e = o.prefill_seconds + o.eval_seconds
        seconds = o.decode_seconds if timing == "decode" else e2e
        m = GenerationMetrics(levels, new_tokens=o.new_tokens, seconds=seconds, target_steps=passes)
        conf = {
            "program": prog, "spec_type": self.lb.SPEC_TYPES[method.name],
            "argv": [x if x != text else "<prompt text>" for x in argv],
            "prompt_ids_identical": self._ids(text, add_bos=True) == list(prompt),
            "decode_seconds": o.decode_seconds, "decode_tokens_per_second_printed": o.decode_speed,
            "eval_seconds_printed": o.eval_seconds,
            "prefill_seconds": o.prefill_seconds, "process_seconds": run.wall_seconds,
            "load_and_exit_seconds": run.wall_seconds - e2e,
            "load_ms_printed": o.load_ms, "counters": c, "eos_not_in_tokens": True,
            "printed_tokens": o.new_tokens, "retokenized_tokens": len(tokens),
        }
        return Outcome(tokens, finish, m, conf)

    def close(self) -> None:
        self.vocab = None
