"""The engine's own cost: its plain decoding against llama-cpp-python's on the same GGUF file.

    python -m csdrafting.bench.overhead --model qwen2.5-coder-0.5b:Q4_K_M --tokens 64 --reps 5

Both load the same file with the same threads and n_ctx, decode the same prompts greedily for the same
number of tokens (EOS ignored by both, so the work is equal), and take turns: each repetition runs every
prompt on one then the other, alternating which goes first, so drifts of a shared machine hit both
alike. Timed: decoding only (the prompt is prefilled before the clock starts; the first generated token
comes from the prefill's row in both). Printed: median tokens/s of each and the median of the per-run
ratios, which is the figure to quote.

    python -m csdrafting.bench.overhead --engine-only

times the engine alone: plain decoding of a model whose forward pass is free (one 151,936-wide row copied
from a buffer, as the llama.cpp backend copies its output), in microseconds per token. It needs no model
file and is steady on a busy machine, where the ratio above is not.
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import json\n\n\ndef load_config(path):\n",
    "class Stack:\n    \"\"\"A LIFO stack backed by a list.\"\"\"\n\n    def __init__(self):\n",
    "def is_palindrome(s: str) -> bool:\n",
]


def _engine(cascade, prompt: list[int], n: int) -> tuple[list[int], float]:
    """The full engine (Cascade.generate with no drafters); EOS is made impossible to stop on by setting
    the engine's EOS set empty, so that every run decodes exactly n tokens."""
    cascade.eos = frozenset()
    cascade.target.rollback(0)
    rows = cascade.levels[0].rows
    rows.begin(prompt)
    rows.logits_after([], 0)  # the whole prompt's pass outside the clock, as for llama-cpp-python
    r = cascade.generate(prompt, n, keep_cache=True)
    return r.tokens, r.metrics.decode_seconds


def _theirs(llm, prompt: list[int], n: int) -> tuple[list[int], float]:
    llm.reset()
    llm.eval(prompt[:-1])  # generate() finds this prefix in the cache and evaluates the last token alone
    out: list[int] = []
    t0 = None
    for tok in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if t0 is None:
            t0 = time.perf_counter()  # the first token comes from the prompt's pass
        if len(out) >= n:
            break
    return out, time.perf_counter() - t0


class _FreeModel:
    """A model whose forward pass costs one row copy: what is left is the engine's own work."""

    def __init__(self, vocab: int = 151_936) -> None:
        import numpy as np

        from ..protocol import ModelInfo

        self.info = ModelInfo(name="free", vocab_size=vocab, n_params=1, eos_token_ids=frozenset([vocab - 1]))
        self._tokens: list[int] = []
        self._stamps: list[int] = []
        self._writes = 0
        self._buf = np.random.default_rng(0).normal(size=vocab).astype(np.float32)

    @property
    def cached_tokens(self) -> list[int]:
        return self._tokens

    @property
    def cache_stamps(self) -> list[int]:
        return self._stamps

    def begin(self, prompt):
        return list(prompt)

    def extend(self, tokens, logits_from=0):
        import numpy as np

        self._writes += 1
        self._tokens.extend(int(t) for t in tokens)
        self._stamps.extend([self._writes] * len(tokens))
        out = np.empty((len(tokens) - logits_from, len(self._buf)), np.float32)
        out[:] = self._buf
        self._buf[int(tokens[-1]) % 1000] += 1.0  # move the argmax, so the text is not one repeated token
        return out

    def rollback(self, n: int) -> None:
        del self._tokens[n:], self._stamps[n:]


def engine_only(tokens: int = 256, reps: int = 7) -> float:
    """Median microseconds per token of the engine's plain decoding around a free model."""
    from ..cascade.engine import Cascade

    c = Cascade(_FreeModel(), [])
    per = []
    for _ in range(reps):
        r = c.generate(list(range(200)), tokens)
        per.append(r.metrics.seconds / len(r.tokens) * 1e6)
    return statistics.median(per)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b:Q4_K_M")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--profile", action="store_true", help="cProfile our decoding once and print the top entries")
    ap.add_argument("--engine-only", action="store_true", help="time the engine around a free model (no model file)")
    a = ap.parse_args(argv)
    if a.engine_only:
        print(f"engine plain decoding around a free model: median {engine_only():.0f} us per token")
        return

    import llama_cpp

    from ..cascade.engine import Cascade
    from ..spec import load_model
    from ..text import encode

    model = load_model(a.model, threads=a.threads, n_ctx=a.n_ctx, progress=False)
    llm = llama_cpp.Llama(model_path=str(model.path), n_ctx=a.n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
                          n_gpu_layers=0, verbose=False)
    cascade = Cascade(model, [])
    prompts = [encode(model, p) for p in PROMPTS[: a.prompts]]
    n = a.tokens + 1  # + the token from the prefill's row, which neither side times

    if a.profile:
        import cProfile
        import pstats

        _engine(cascade, prompts[0], n)
        prof = cProfile.Profile()
        prof.enable()
        _engine(cascade, prompts[0], n)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return

    for p in prompts:  # warm up both, and check they decode the same tokens
        mine, theirs = _engine(cascade, p, n)[0], _theirs(llm, p, n)[0]
        if mine != theirs:
            print(f"note: outputs differ at token {next(i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y)}")
    ours_tps, their_tps, ratios = [], [], []
    for rep in range(a.reps):
        for i, p in enumerate(prompts):
            runs = [("ours", _engine, cascade), ("theirs", _theirs, llm)]
            if (rep + i) % 2:
                runs.reverse()
            res = {}
            for name, fn, obj in runs:
                toks, sec = fn(obj, p, n)
                res[name] = (len(toks) - 1) / sec
            ours_tps.append(res["ours"])
            their_tps.append(res["theirs"])
            ratios.append(res["ours"] / res["theirs"])
    print(f"model {model.info.label}, {a.threads} threads, n_ctx {a.n_ctx}, {a.tokens} decoded tokens, "
          f"{len(prompts)} prompts x {a.reps} repetitions, interleaved")
    print(f"engine plain:            median {statistics.median(ours_tps):.2f} tok/s")
    print(f"llama-cpp-python plain:  median {statistics.median(their_tps):.2f} tok/s")
    print(f"engine / llama-cpp-python: median ratio {statistics.median(ratios):.4f} "
          f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.4f} .. {statistics.quantiles(ratios, n=4)[2]:.4f})")


if __name__ == "__main__":
    main()
