"""llama.cpp's own programs, one process per run (see bench/llamacpp_bin.py)."""

from __future__ import annotations

import os
from typing import Sequence

from ...cascade.metrics import GenerationMetrics, LevelMetrics
from ...spec import resolve
from ...store.paths import ENV_VAR, cache_dir
from ..methods import LLAMA_BIN, Method, model_name
from .common import WARMUP_TEXT, WARMUP_TOKENS, Outcome


def portable(arg: str) -> str:
    """A program argument as a record keeps it: a path under the cache written from `$CSDRAFTING_CACHE`, one
    under the home directory from `~` (records are evidence that gets committed; a machine's paths are not)."""
    cache, home = cache_dir(), os.path.expanduser("~")
    # the cache as spelled and as resolved (a cache reached through a link), before the home that may hold it
    for root, name in ((str(cache), "$" + ENV_VAR), (str(cache.resolve()), "$" + ENV_VAR), (home, "~"),
                       (os.path.realpath(home), "~")):
        if root not in ("", "~", os.sep) and (arg == root or arg.startswith(root + os.sep)):
            return name + arg[len(root):]
    return arg


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

        from .. import llamacpp_bin as lb

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

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None) -> Outcome:
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
        # decode_seconds prices the first token at the decode rate too, for the decode-only figure, and the
        # prefill is what remains of the end-to-end time
        e2e = o.prefill_seconds + o.eval_seconds
        m = GenerationMetrics(levels, new_tokens=o.new_tokens, seconds=e2e, target_steps=passes,
                              prefill_seconds=max(0.0, e2e - o.decode_seconds))
        conf = {
            "program": prog, "spec_type": self.lb.SPEC_TYPES[method.name],
            "argv": [portable(x) if x != text else "<prompt text>" for x in argv],
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
