"""Every engine method as a `Cascade` over one set of loaded models."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ...cascade.config import CascadeConfig
from ...cascade.engine import Cascade
from ...cascade.overrides import override
from ...drafters import registry
from ...protocol import CSDraftingError
from ...spec import CascadeSpec, drafter_objects, load_models
from ..methods import ENGINE, ORACLE, Method, Oracle
from .common import WARMUP_TEXT, WARMUP_TOKENS, Outcome


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
        from ...text import encode

        ids = encode(self.target, WARMUP_TEXT) if getattr(self.target, "tokenizer", None) is not None else [1, 2, 3]
        for model in [self.target, *self.models.values()]:
            Cascade(model, []).generate(ids, WARMUP_TOKENS)
        self._curve("target")  # measured now (unless the spec has one): every engine record reports it

    def cost_curve(self) -> dict | None:
        """The target's cost curve as the dynamic methods use it (seconds of one pass over n new tokens),
        and where it came from; None before warmup."""
        curve = self._curves.get("target")
        if curve is None:
            return None
        known = self.spec is not None and self.spec.target in (self.spec.costs or {})
        return {**curve.to_json(), "source": "the spec's costs" if known else "measured at start (planning.measure)"}

    def cascade(self, params: dict, method: str = "") -> Cascade:
        """The engine for one run. A statistical drafter with a cross-request store is kept per (method,
        drafter) across runs, as one server process keeps it across requests; each method has its own, so no
        method sees another's output of the same prompt; for the same reason the cascade's statistics learned
        across requests (where texts end, routing's paths) are scoped to the method."""
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
        return Cascade(self.target, drafters, config, scope=method)

    def _curve(self, ref: str):
        """The cost curve of a level for dynamic methods: the spec's measured one, else measured once here."""
        if ref == ORACLE or registry.is_statistical(ref):
            return None
        if ref not in self._curves:
            from ...cascade.planning import QUICK_GRID, REVIEW_GRID, CostCurve, measure

            name = self.spec.target if ref == "target" and self.spec is not None else ref
            known = (self.spec.costs or {}) if self.spec is not None else {}
            model = self.target if ref == "target" else self.models[ref]
            # measured in this run (a benchmark does not reuse a curve from another day): every review size
            # up to a 64-token draft for the target, short drafts for a drafter
            grid = REVIEW_GRID if ref == "target" else QUICK_GRID
            self._curves[ref] = CostCurve.from_json(known[name]) if name in known else measure(model, grid)
        return self._curves[ref]

    def conversation(self, method: Method, params: dict) -> "EngineTurns":
        """Turns of one conversation on ONE Cascade: the KV caches and the drafters' state of a turn stay for
        the next (turn k+1's prompt starts with turn k's prompt and answer)."""
        return EngineTurns(self, self.cascade(params, method.name), "oracle" in params["drafters"])

    def run(self, method: Method, params: dict, prompt: list[int], max_new: int, reference: list[int] | None) -> Outcome:
        return self.conversation(method, params).turn(prompt, max_new, reference)

    def examine(self, prompt: list[int], reference: list[int], candidate: list[int], turn: int = 0):
        """Tie or mismatch: the target's logits at the first token where `candidate` leaves plain's output
        (replayed as the engine runs plain decoding: the prompt but its last token, then that token).

        A later turn of a conversation (`turn` > 0) ran on the KV cache each method kept from its earlier
        turns, built in that method's own batch shapes; the cold replay is a third history, so it may pick
        either token. There a divergence is a tie when the two tokens' logits are within the measured noise
        in the replay, whichever it prefers (the noise of one pass, while the histories differ over many:
        no looser than the first turn's rule)."""
        import dataclasses

        from ...exactness import MISMATCH, TIE, examine, noise_threshold

        d = examine(self.target, prompt, reference, candidate, noise_threshold(self.target), split_last=True)
        if (turn > 0 and d.verdict == MISMATCH and d.margin_single is not None and d.threshold is not None
                and abs(d.margin_single) <= d.threshold):
            note = (f"turn {turn + 1} ran on the cache kept from the earlier turns, which a cold replay does not "
                    "reproduce: within the noise either way")
            d = dataclasses.replace(d, verdict=TIE, reason="; ".join(x for x in (d.reason, note) if x))
        return d

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


class EngineTurns:
    """The turns of one conversation on one Cascade: the first starts every model cold, later ones keep
    each model's KV cache for the prefix they share with it (keep_cache) and the same drafter objects."""

    def __init__(self, executor: EngineExecutor, engine: Cascade, oracle: bool) -> None:
        self.executor, self.engine, self.oracle = executor, engine, oracle
        self.turns = 0

    def turn(self, prompt: list[int], max_new: int, reference: list[int] | None) -> Outcome:
        if self.oracle:
            if reference is None:
                raise CSDraftingError("the oracle needs the plain output of this prompt; run 'plain' first")
            self.executor.oracle.set_reference(prompt, reference)
        res = self.engine.generate(prompt, max_new, keep_cache=self.turns > 0)
        self.turns += 1
        return Outcome(res.tokens, res.finish_reason, res.metrics, res.config)
