"""The logits rows a neural level has computed, kept for as long as they are still the cache's rows.

After a rejected draft the cache rolls back to the divergence point, and the row there (which predicts
the reviewer's correction) was already computed by the review: keeping it saves re-evaluating the token
before it. When such a row is gone (never computed, or forgotten), the cache rolls back one token further
and recomputes it: always correct, at the price of one extra token in the batch.

The model instance may be shared (one model at two levels, or by two cascades), and then another user may
have rolled back and rewritten the cache since a row was kept. Each row is therefore kept with the cache
stamp of its position (protocol.LanguageModel.cache_stamps) and reused only while that stamp is unchanged.
A model without stamps gets no reuse across calls: its rows live for one call only, which costs one extra
token per review but cannot go stale.

Under strict greedy decoding only each row's argmax is needed (`top_only`); a model with `extend_argmax`
then keeps its rows on its device and only the id is kept here.
"""

from __future__ import annotations

import time
import weakref
from typing import Callable, Sequence

import numpy as np

from ..protocol import ArgmaxExtension, LanguageModel, cache_stamps
from ..sequences import common_prefix
from .metrics import LevelMetrics
from .planning import EndStats, PassCosts, TailYield


_MEASURED: "weakref.WeakKeyDictionary[LanguageModel, PassCosts]" = weakref.WeakKeyDictionary()
_TAILS: "weakref.WeakKeyDictionary[LanguageModel, TailYield]" = weakref.WeakKeyDictionary()
_ENDS: "weakref.WeakKeyDictionary[LanguageModel, dict[str, EndStats]]" = weakref.WeakKeyDictionary()


def per_model(registry: weakref.WeakKeyDictionary, model: LanguageModel, make: Callable):
    try:
        got = registry.get(model)
        if got is None:
            got = registry[model] = make()
        return got
    except TypeError:  # not weakly referable or not hashable: measured for this cascade only
        return make()


def measured_costs(model: LanguageModel) -> PassCosts:
    """The measured pass costs of a model instance, shared by every cascade that uses it (a server or a bench
    makes one cascade per request: what the machine's passes cost is a property of the model and the machine,
    not of the request)."""
    return per_model(_MEASURED, model, PassCosts)


def tail_yield(drafter: LanguageModel) -> TailYield:
    """What statistical tokens drafted after this neural drafter's tokens measurably yield (planning.TailYield),
    shared, as `measured_costs`, by every cascade that uses the drafter: a request has too few tails to learn
    it from its own."""
    return per_model(_TAILS, drafter, TailYield)


def text_ends(target: LanguageModel, shape: str) -> EndStats:
    """Where the texts of the cascades of this shape (their K, levels and scope: `Cascade`) over this target
    instance ended (`EndStats`), shared by every such cascade: a server or a bench makes one cascade per request,
    and one request ends once. Per shape, so that cascades of other K or levels, or a bench's other methods,
    compared on the same prompts, do not learn from each other's text of the prompt at hand."""
    return per_model(_ENDS, target, dict).setdefault(shape, EndStats())


class RowCache:
    """A neural model seen as a map from (text after the prompt, start) to logits rows."""

    def __init__(self, model: LanguageModel, metrics: LevelMetrics | None = None) -> None:
        self.model = model
        self.argmax_ext = isinstance(model, ArgmaxExtension)  # a runtime Protocol check: once, not per call
        self.metrics = metrics or LevelMetrics(0, model.info.label, "model", model.info.n_params)
        # with a measured cost curve, the seconds its passes cost by that curve (routing prices paths by it)
        self.cost = None
        self.priced = 0.0
        self.measured = measured_costs(model)  # what its passes cost against that price lately (kept per model)
        self.prefix: list[int] = []  # what precedes the generated text in this model's cache
        # position -> (its cache stamp then, full row or argmax id)
        self.rows: dict[int, tuple[int, np.ndarray | int]] = {}

    def begin(self, prompt: Sequence[int]) -> None:
        # kept rows need no filtering here: logits_after checks each against the cache's tokens and stamps
        self.prefix = list(self.model.begin(prompt))

    def _sync(self, seq: list[int], first: int, top_only: bool) -> int:
        """Roll the cache back to the longest prefix of seq it holds whose kept rows from `first` on are
        still valid; returns that length."""
        cached = self.model.cached_tokens
        stamps = cache_stamps(self.model)
        if stamps is None:
            self.rows = {}
        keep = min(common_prefix(cached, seq), len(seq))
        rows = self.rows
        for pos in range(max(first, 0), keep):
            kept = rows.get(pos)
            if kept is None or kept[0] != stamps[pos] or not (top_only or isinstance(kept[1], np.ndarray)):
                keep = pos
                break
        if keep < len(cached):
            self.model.rollback(keep)
            for p in [p for p in rows if p >= keep]:
                del rows[p]
        return keep

    def _extend(self, tokens: list[int], at: int, logits_from: int, ids_only: bool, prefill: bool = False) -> np.ndarray:
        """One forward pass over tokens (cache length `at` before it); keeps the rows it returns."""
        t0 = time.perf_counter()
        if ids_only:
            out = self.model.extend_argmax(tokens, logits_from=logits_from)
        else:
            out = self.model.extend(tokens, logits_from=logits_from)
        m = self.metrics
        dt = time.perf_counter() - t0
        m.seconds += dt
        if prefill:  # prompt work: not a review or a proposal (the paper's cost counts those)
            m.prefill_passes += 1
            m.prefill_seconds += dt
        else:
            m.forward_passes += 1
            if self.cost is not None:
                price = self.cost(len(tokens))
                self.priced += price
                self.measured.observe(len(tokens), dt, price)
        m.tokens_evaluated += len(tokens)
        at += logits_from
        stamps = cache_stamps(self.model)
        rows = self.rows
        for i, row in enumerate(out):
            rows[at + i] = (stamps[at + i] if stamps is not None else 0, int(row) if ids_only else row)
        return out

    def logits_after(self, generated: Sequence[int], start: int, top_only: bool = False) -> np.ndarray:
        """Rows predicting generated[start], ..., generated[-1] and the token after: len - start + 1 rows
        (with top_only, only their argmax ids)."""
        seq = self.prefix + list(generated)
        first = len(self.prefix) + start - 1  # input position whose output predicts generated[start]
        keep = self._sync(seq, first, top_only)
        if keep < len(seq):
            logits_from = max(0, first - keep)
            ids_only = top_only and self.argmax_ext
            out = self._extend(seq[keep:], keep, logits_from, ids_only)
            if keep + logits_from == first and not top_only:  # exactly the rows asked for: no copy needed
                return out
        rows = self.rows
        got = [rows[p][1] for p in range(first, len(seq))]
        if top_only:
            return np.array([r if isinstance(r, int) else int(np.argmax(r)) for r in got], dtype=np.int64)
        return np.stack(got)

    def prefill(self, chunk: int, on_chunk: Callable[[int, int], None] | None = None, top_only: bool = False) -> None:
        """Bring the prefix (the prompt) but its last token into the cache, in passes of at most `chunk`
        tokens. The last token is left to the first step, which evaluates it
        together with the first draft, so the prefill adds no pass to the decoding. `on_chunk(done, total)`
        runs after each pass and may raise to stop (a client that left); the cache then holds a prefix of
        the prompt, which is valid."""
        seq = self.prefix[:-1]
        total = len(seq)
        # a cache that already holds the prompt (keep_cache, or a caller's own prefill) is left as it is:
        # the first review keeps whatever of it is still valid
        keep = total if common_prefix(self.model.cached_tokens, seq) == total else self._sync(seq, total, False)
        while keep < total:
            end = min(total, keep + max(1, chunk))
            # one row per pass (the protocol allows none, but not every model implements zero rows); nobody
            # reads it, so where argmax ids are all the generation needs, only the id leaves the device
            self._extend(seq[keep:end], keep, end - keep - 1, top_only and self.argmax_ext, prefill=True)
            keep = end
            if on_chunk is not None:
                on_chunk(keep, total)

    def forget_before(self, pos: int) -> None:
        """Drop rows the engine can no longer ask for (positions before the committed text)."""
        for p in [p for p in self.rows if p < pos]:
            del self.rows[p]
