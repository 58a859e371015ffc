"""llama-cpp-python's own `Llama.generate`: plain decoding and its prompt-lookup drafting."""

from __future__ import annotations

import time

from ...cascade.metrics import GenerationMetrics, LevelMetrics
from ...protocol import CSDraftingError
from ...spec import resolve
from ..methods import LLAMA, Method
from .common import WARMUP_TEXT, WARMUP_TOKENS, Outcome, target_level


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
            self._generate(llm, ids, WARMUP_TOKENS)

    def _generate(self, llm, prompt: list[int], max_new: int) -> tuple[list[int], str, float, float]:
        """(tokens, finish, seconds end to end, prefill seconds). The prompt but its last token is evaluated
        first, timed apart (as the engine prefills); generate() then reuses that prefix and evaluates the
        last token alone."""
        llm.reset()
        t0 = time.perf_counter()
        if len(prompt) > 1:
            llm.eval(prompt[:-1])
        prefill = time.perf_counter() - t0
        self._passes, self._seconds = [], 0.0
        out: list[int] = []
        finish = "length"
        for tok in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(tok))
            if tok in self.eos:
                finish = "eos"
                break
            if len(out) >= max_new:
                break
        return out, finish, time.perf_counter() - t0, prefill

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None) -> Outcome:
        if method.name == "llama-plain":
            llm, drafter = self.plain, None
        elif method.name == "llama-pld":
            llm = self.pld
            self.lookup.num_pred_tokens = int(params["draft_length"])
            self.lookup.max_ngram_size = int(params.get("max_ngram_size", 2))
            drafter = f"prompt lookup (llama-cpp-python, num_pred_tokens={self.lookup.num_pred_tokens})"
        else:
            raise CSDraftingError(f"the llama.cpp executor does not run {method.name}")
        tokens, finish, seconds, prefill = self._generate(llm, prompt, max_new)
        t, drafted, accepted = target_level(f"{self.name} (llama-cpp-python)", self.n_params, self._passes,
                                            self._seconds, prompt, tokens)
        levels = [t]
        if drafter:
            d = LevelMetrics(1, drafter, "statistical", 0, proposals=max(0, len(self._passes) - 1),
                             drafted=drafted, accepted=accepted)
            levels.append(d)
        m = GenerationMetrics(levels, new_tokens=len(tokens), seconds=seconds, target_steps=len(self._passes),
                              prefill_seconds=prefill)
        return Outcome(tokens, finish, m, {"library": "llama-cpp-python", "logits_all": llm._logits_all,
                                           **({"num_pred_tokens": self.lookup.num_pred_tokens,
                                               "max_ngram_size": self.lookup.max_ngram_size} if drafter else {})})

    def close(self) -> None:
        for llm in (self.plain, self.pld):
            try:
                llm.close()
            except Exception:  # older bindings have no close(); the objects are freed with the executor
                pass

