"""A cascade described as data: which models (by store name, tier or path), K, lenience, backend.

`generate`, `demo` and `bench` take such a spec (a JSON file written by `csdrafting tune`, or the built-in
default); `build()` turns it into live models. A model reference is one of:
- `NAME:TIER` from the model store, e.g. `qwen2.5-coder-1.5b:F32` (tier defaults to Q4_K_M);
- a path to a `.gguf` file (llama.cpp backend, or transformers with backend "hf");
- a path to a transformers checkpoint directory (transformers backend);
- the name of a registered statistical drafter (drafters/registry.py: `suffix`, the confident suffix
  drafter; `maxgram`, the paper's Max-Gram), last drafter only, configured by `drafter_settings`.

With `dynamic: true` the cascade drafts cost-aware (cascade/planning.py) from the cost curves in `costs`
(model ref -> measured curve, as `csdrafting tune` writes them); a neural model without a curve there is
measured when the cascade is built (a few seconds).

Placement: with backend "hf" every model runs on `device` in `dtype`, unless `devices` names another
device for it (e.g. the target on "cuda:0" and a drafter on "cuda:1" or "cpu"); with backend "llamacpp"
each model offloads `n_gpu_layers` layers to the GPU (0: CPU only) and runs in its GGUF tier's precision.
"""

from __future__ import annotations

import copy
import os
import re
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .cascade.config import LEGACY_FIELDS, CascadeConfig, KMatrix
from .drafters import registry
from .files import atomic_write, read_json
from .protocol import CSDraftingError


@dataclass
class CascadeSpec:
    """A cascade as data. `k` is a KMatrix (rows given here are read in the paper's cumulative spelling;
    config files may say `"k_spelling": "increments"`); `drafter_settings` maps a statistical drafter's
    name to its settings (drafters/registry.py; only those that differ from the defaults are kept)."""

    target: str
    drafters: list[str] = field(default_factory=list)
    k: KMatrix | None = None
    lenience: float = 1.0
    bottom_length: int | None = None  # tokens the bottom statistical level proposes per call (None: its quota)
    backend: str = "llamacpp"  # or "hf"
    threads: int = 2
    n_ctx: int = 4096
    dynamic: bool = False  # cost-aware drafting; K is then a cap
    costs: dict[str, dict] | None = None  # model ref -> CostCurve JSON (measured), for dynamic drafting
    route: bool = False  # per-step routing around neural drafters (needs dynamic; cascade/routing.py)
    drafter_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""  # free text: where the spec came from (e.g. the tuner's prediction)
    device: str = "cpu"  # hf backend: cpu, cuda, cuda:N, mps, auto (accelerate's device map)
    dtype: str = "float32"  # hf backend: float32, bfloat16, float16
    devices: dict[str, str] = field(default_factory=dict)  # hf backend: model reference -> its own device
    n_gpu_layers: int = 0  # llamacpp backend: layers offloaded to the GPU, -1 = all

    def __post_init__(self) -> None:
        if self.k is not None:
            self.k = KMatrix.parse(self.k)  # rows from Python callers: cumulative, validated here once

    def cascade_config(self, costs: list | None = None) -> CascadeConfig:
        return CascadeConfig(self.k, float(self.lenience), self.bottom_length, self.dynamic,
                             tuple(costs) if costs is not None else None, self.route)

    def settings_of(self, drafter: str) -> dict[str, Any]:
        """The settings this spec gives a statistical drafter (those not given are the registry's defaults)."""
        return dict(self.drafter_settings.get(drafter, {}))

    def validate(self) -> None:
        if self.backend not in ("llamacpp", "hf"):
            raise CSDraftingError(f"backend must be 'llamacpp' or 'hf', not {self.backend!r}")
        for name in self.drafters[:-1]:
            if registry.is_statistical(name):
                raise CSDraftingError(f"{name} can only be the last drafter")
        CascadeConfig.check_levels(self.cascade_config(), len(self.drafters))
        self.drafter_settings = check_drafter_settings(self.drafter_settings)
        if self.costs is not None:
            from .cascade.planning import CostCurve

            if not isinstance(self.costs, dict):
                raise CSDraftingError("costs must map model refs to cost curves ({'ns': [...], 'seconds': [...]})")
            for ref, curve in self.costs.items():
                try:
                    CostCurve.from_json(curve)
                except (KeyError, TypeError) as exc:
                    raise CSDraftingError(f"costs[{ref!r}] is not a cost curve ({{'ns': [...], 'seconds': [...]}}): {exc}") from None
        for ref in [self.target, *neural(self.drafters)]:
            check_ref(ref)
        self.validate_placement()

    def validate_placement(self) -> None:
        from .backends.devices import normalize_device, normalize_dtype

        self.device, self.dtype = normalize_device(self.device), normalize_dtype(self.dtype)
        if not isinstance(self.devices, dict):
            raise CSDraftingError(f"devices must map model references to devices, e.g. {{\"{self.target}\": \"cuda:0\"}}")
        models = [self.target, *neural(self.drafters)]
        for ref in self.devices:
            if ref not in models:
                raise CSDraftingError(f"devices names {ref!r}, which is not a model of this cascade ({', '.join(models)})")
        self.devices = {ref: normalize_device(dev) for ref, dev in self.devices.items()}
        n = self.n_gpu_layers
        if isinstance(n, bool) or not isinstance(n, int) or n < -1:
            raise CSDraftingError(f"n_gpu_layers must be an integer >= -1 (-1: all layers; got {n!r})")
        if self.backend == "llamacpp":
            placed = [f"{k} {v}" for k, v in (("device", self.device), ("dtype", self.dtype)) if v != PLACEMENT_DEFAULTS[k]]
            if placed or self.devices:
                raise CSDraftingError(
                    f"{', '.join(placed) or 'devices'} applies to the transformers backend: add --backend hf (spec "
                    "\"backend\": \"hf\"); llama.cpp runs a GGUF tier's own precision and offloads with --n-gpu-layers"
                )
        elif n != 0:
            raise CSDraftingError("n_gpu_layers applies to the llama.cpp backend; with --backend hf use --device (e.g. cuda)")

    def placement(self, ref: str) -> dict[str, Any]:
        """Keyword arguments of `load_model` that place model `ref` (device and dtype, or GPU layers)."""
        if self.backend == "hf":
            return {"device": self.devices.get(ref, self.device), "dtype": self.dtype}
        return {"n_gpu_layers": self.n_gpu_layers}

    def copy(self) -> "CascadeSpec":
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        # placement at its defaults and empty drafter settings are left out, so that specs (and benchmark
        # settings) written before these fields existed still compare equal
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d.update(k=self.k.rows() if self.k else None, k_spelling="cumulative", costs=copy.deepcopy(self.costs),
                 drafter_settings=copy.deepcopy(self.drafter_settings), devices=dict(self.devices))
        omit = {**PLACEMENT_DEFAULTS, "drafter_settings": {}, "route": False}
        return {k: v for k, v in d.items() if not (k in omit and v == omit[k])}

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def parse(cls, data: Any, folder: Path | None = None) -> "CascadeSpec":
        """A spec from config-file JSON, old spellings included, K read in its spelling; not yet validated
        (`from_json` validates). `folder`: where the file lies, for relative paths in drafter settings."""
        if not isinstance(data, dict):
            raise CSDraftingError(f"a cascade config is a JSON object, not {type(data).__name__}")
        data = dict(data)
        for old, new in LEGACY_FIELDS.items():
            if old in data:
                if new in data and data[new] != data[old]:
                    raise CSDraftingError(f"the cascade config gives both {old!r} (the old name) and {new!r}; keep {new!r}")
                data[new] = data.pop(old)
        settings = check_drafter_settings(_legacy_settings(data))
        if folder is not None:
            settings = {name: {key: registry.get(name).setting(key).relative_to(v, folder) for key, v in s.items()}
                        for name, s in settings.items()}
        data["drafter_settings"] = settings
        known = set(cls.__dataclass_fields__) | {"k_spelling"}
        unknown = set(data) - known
        if unknown:
            raise CSDraftingError(f"unknown keys in cascade config: {sorted(unknown)}; known: {sorted(known)}")
        if "target" not in data:
            raise CSDraftingError("a cascade config needs a 'target'")
        spelling = data.pop("k_spelling", "cumulative")
        if data.get("k") is not None:
            data["k"] = KMatrix.parse(data["k"], spelling)
        return cls(**data)

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path | None = None) -> "CascadeSpec":
        spec = cls.parse(data, folder)
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> "CascadeSpec":
        path = Path(path)
        return cls.from_json(read_json(path, "cascade config"), folder=path.parent)  # e.g. a calibration `tune` wrote beside the config

    def describe(self) -> str:
        k = self.k.rows() if self.k else "-"
        return (
            f"target {self.target}; drafters {', '.join(self.drafters) or '(none: plain decoding)'}; "
            f"K (cumulative) {k}{' as a cap, cost-aware' if self.dynamic else ''}{', routed' if self.route else ''}; "
            f"lenience {self.lenience}; backend {self.backend}, {self.threads} threads{self._describe_placement()}"
        )

    def _describe_placement(self) -> str:
        if self.backend == "llamacpp":
            return f", {self.n_gpu_layers if self.n_gpu_layers >= 0 else 'all'} GPU layers" if self.n_gpu_layers else ""
        own = "".join(f", {ref} on {dev}" for ref, dev in self.devices.items())
        return f", {self.dtype} on {self.device}{own}"


PLACEMENT_DEFAULTS: dict[str, Any] = {"device": "cpu", "dtype": "float32", "devices": {}, "n_gpu_layers": 0}


def _legacy_settings(data: dict[str, Any]) -> dict[str, Any]:
    """`drafter_settings` with the old top-level keys (`suffix_persist`, `bigram`, ...) folded in and popped."""
    settings = data.get("drafter_settings") or {}
    if not isinstance(settings, dict):
        raise CSDraftingError(f"drafter_settings maps a drafter's name to its settings, e.g. "
                              f"{{\"suffix\": {{\"persist\": true}}}}, not {settings!r}")
    settings = {name: dict(s) if isinstance(s, dict) else s for name, s in settings.items()}
    for old, pairs in registry.legacy_keys().items():
        if old not in data:
            continue
        value = data.pop(old)
        for drafter, key in pairs:
            mine = settings.setdefault(drafter, {})
            if not isinstance(mine, dict):
                raise CSDraftingError(f"drafter_settings[{drafter!r}] must be a JSON object, not {mine!r}")
            if key in mine and mine[key] != value:
                raise CSDraftingError(f"the cascade config gives {old!r} (the old spelling) and drafter_settings"
                                      f"[{drafter!r}][{key!r}]; keep the second")
            mine[key] = value
    return settings


def check_drafter_settings(settings: Any) -> dict[str, dict[str, Any]]:
    """Every drafter's settings checked against the registry; default values and empty entries dropped."""
    if not isinstance(settings, Mapping):
        raise CSDraftingError(f"drafter_settings maps a drafter's name to its settings, not {settings!r}")
    out = {}
    for name, given in settings.items():
        checked = registry.get(name).check(given)
        if checked:
            out[name] = checked
    return out


def neural(refs: Sequence[str]) -> list[str]:
    """The references that name models (not registered statistical drafters)."""
    return [r for r in refs if not registry.is_statistical(r)]


# The embedded default: the shipped Qwen2.5-Coder-1.5B Q4_K_M file (what a CPU user runs) with the
# confident suffix drafter below it, drafting cost-aware up to 64 tokens (README, "Choosing the default").
# At this precision every model here is compute-bound on a CPU (reviewing k tokens costs about k/2
# passes), so a neural drafter cannot pay and only a near-free level that drafts when it is confident
# can. Why 64 now, after 16: a long draft pays only when the planner does not over-trust the copy it
# continues. With confidences up to 0.995 (before 2026-12-02) a cap of 64 lost on short EditEval edits
# (0.84x of 16, worst prompt 0.54x: a 31-token draft rejected at an edit point costs ~15 single passes);
# with the suffix drafter's ceiling of 0.98 (drafters/suffix.py MAX_CONFIDENCE) replaying the planner
# along the target's own outputs of 40 code-edit prompts, under three measured cost curves, gave library
# edits +5..+19% over the old default and EditEval 0.98-1.01x; measured side by side on the real target
# (8 prompts each): library functions 1.57x against 1.42x, EditEval 0.93x against 0.99x (README, "Trusting
# a copy"). `docs/bench/configs/q4-suffix-cap16.json` keeps the old cap. The target's cost
# curve (seconds of one pass over n new tokens) is measured on this machine, once, and kept for a week
# (`measured_curve`, over review sizes up to 65 so that a cap of 64 is priced): its shape differs
# between machines of the same kind (2 tokens cost 1.5x one token on one, 1.8x on another), and a curve
# from another machine makes the planner over-draft.
# `csdrafting tune` measures it again, and re-decides the cascade, per machine.
# The suffix drafter's settings stay at the registry's defaults: the packaged calibration, no store across
# requests (speed-neutral on the Q4_K_M target although its proposals are accepted far more often than the
# bigram guesses they replace, and with it a seeded sample depends on earlier requests; see README).
DEFAULT_TARGET = "qwen2.5-coder-1.5b:Q4_K_M"

DEFAULT_SPEC = CascadeSpec(
    target=DEFAULT_TARGET,
    drafters=["suffix"],
    k=KMatrix.parse([[64]]),
    lenience=1.0,
    dynamic=True,
    note="built-in default (measured fastest at the shipped precision on 2-core x86-64 CPUs; see README)",
)


def split_ref(ref: str) -> tuple[str, str | None]:
    """'name:TIER' -> (name, TIER); a path -> (path, None)."""
    if ":" in ref and not Path(ref).exists():
        name, tier = ref.rsplit(":", 1)
        return name, tier
    return ref, None


def check_ref(ref: str) -> None:
    """Raise a clear error if `ref` names neither a store model nor an existing path."""
    from . import store

    name, tier = split_ref(ref)
    if name in store.REGISTRY:
        if tier is not None:
            store.normalize_tier(tier)
        return
    if not Path(name).exists():
        raise CSDraftingError(
            f"model {ref!r} is neither a model of the store ({', '.join(store.list_models())}, as NAME:TIER with "
            f"TIER in {', '.join(store.TIERS)}) nor an existing path"
        )


def resolve(ref: str, backend: str, progress: bool = True) -> Path:
    """The file or directory that `ref` stands for, preparing it in the store when needed."""
    from . import store

    check_ref(ref)
    name, tier = split_ref(ref)
    if name in store.REGISTRY:
        tier = store.normalize_tier(tier or store.BASE_TIER)
        if backend == "hf":
            return store.ensure_hf_weights(name, tier, progress=progress)
        return store.ensure_model(name, tier, progress=progress)
    return Path(name)


def load_model(
    ref: str,
    backend: str = "llamacpp",
    threads: int = 2,
    n_ctx: int = 4096,
    progress: bool = True,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    n_gpu_layers: int = 0,
):
    """A LanguageModel for `ref` (see module docstring); device and dtype for "hf", n_gpu_layers for llama.cpp."""
    from .backends.devices import normalize_device, normalize_dtype

    device, dtype = normalize_device(device), normalize_dtype(dtype)  # bad names fail before any loading
    if backend == "llamacpp" and (device, dtype) != ("cpu", "float32"):
        raise CSDraftingError("device and dtype apply to the transformers backend (backend 'hf'); llama.cpp offloads with n_gpu_layers")
    if backend == "hf" and n_gpu_layers:
        raise CSDraftingError("n_gpu_layers applies to the llama.cpp backend; the transformers backend takes device=")
    if backend == "hf":
        from .backends.devices import torch_device

        torch_device(device)  # a device this machine lacks fails before gigabytes are prepared
    path = resolve(ref, backend, progress)
    name, tier = split_ref(ref)
    label = Path(name).name if tier is None else name
    if backend == "llamacpp":
        if path.is_dir():
            raise CSDraftingError(f"{path} is a directory; the llama.cpp backend needs a .gguf file (or use --backend hf)")
        from .backends.llamacpp import LlamaCppModel

        return LlamaCppModel(path, n_threads=threads, n_ctx=n_ctx, name=label, n_gpu_layers=n_gpu_layers)
    import torch

    torch.set_num_threads(threads)
    from .backends.hf import load_hf

    model = load_hf(path, dtype=dtype, name=label, device=device)
    if tier is not None:  # dequantized from a GGUF tier: name the tier its values come from
        model.info = type(model.info)(**{**model.info.__dict__, "precision": f"{dtype} from {tier}"})
    return model


def drafter_objects(refs: Sequence[str], settings: Mapping[str, Mapping[str, Any]], vocab_size: int | None,
                    models: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> list:
    """The drafter object for each reference: `given` ones as they are (e.g. the bench's oracle), registered
    statistical drafters built with their `settings`, and models looked up in `models` (already loaded)."""
    out = []
    for ref in refs:
        if given and ref in given:
            out.append(given[ref])
        elif registry.is_statistical(ref):
            out.append(registry.build(ref, settings.get(ref), vocab_size))
        elif ref in models:
            out.append(models[ref])
        else:
            raise CSDraftingError(f"drafter {ref!r} is neither a loaded model nor a registered statistical drafter "
                                  f"({', '.join(registry.names())})")
    return out


def cost_curves(spec: CascadeSpec, models: list, progress: bool = True) -> list | None:
    """One CostCurve per level (None for statistical ones) for dynamic drafting; measures what is missing.
    A level given as None (a model not loaded here, such as the target a replay stands in for) gets None."""
    if not spec.dynamic or not spec.drafters:
        return None
    from .cascade.planning import CostCurve, measure

    refs = [spec.target, *spec.drafters]
    out = []
    for ref, model in zip(refs, models):
        if registry.is_statistical(ref) or model is None:
            out.append(None)
        elif spec.costs and ref in spec.costs:
            out.append(CostCurve.from_json(spec.costs[ref]))
        else:
            out.append(measured_curve(model, spec.threads, target=ref == spec.target, progress=progress))
    return out


CURVE_DAYS = 7  # a cost curve measured on this machine is reused this long (tune re-measures its own)


def measured_curve(model, threads: int, target: bool = True, progress: bool = True):
    """The model's cost curve on this machine: measured once (the target over every review size a 64-token
    draft may need, a drafter over short ones), then kept in the cache for CURVE_DAYS, keyed by the model,
    its precision and file, the thread count and the machine; delete costs/ in the cache to re-measure."""
    import platform
    import sys
    import time

    from .cascade.planning import QUICK_GRID, REVIEW_GRID, RUN_OF_ONES, CostCurve, measure
    from .store.paths import cache_dir

    grid = REVIEW_GRID if target else QUICK_GRID
    info = model.info
    key = {"model": info.label, "file": str(info.extra.get("path", "")), "backend": str(info.extra.get("backend", "")),
           "threads": threads, "grid": list(grid), "run_of_ones": RUN_OF_ONES, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()}"}
    path = cache_dir() / "costs" / (re.sub(r"[^A-Za-z0-9._-]+", "_", info.label) + ".json")
    try:
        kept = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, json.JSONDecodeError):
        kept = []
    for entry in kept:
        if entry.get("key") == key and time.time() - entry.get("time", 0) < CURVE_DAYS * 86400:
            return CostCurve.from_json(entry["curve"])
    if progress:
        print(f"measuring the cost curve of {info.label} for cost-aware drafting (once per machine, kept "
              f"{CURVE_DAYS} days in {path.parent}) ...", file=sys.stderr)
    curve = measure(model, grid)
    kept = [e for e in kept if e.get("key") != key] + [{"key": key, "time": time.time(), "curve": curve.to_json()}]
    atomic_write(path, json.dumps(kept, indent=1) + "\n")
    return curve


def load_models(spec: CascadeSpec, refs: Sequence[str], progress: bool = True) -> dict[str, Any]:
    """The models among `refs` (statistical drafters skipped), each loaded once and placed as the spec says."""
    out: dict[str, Any] = {}
    for ref in neural(refs):
        if ref not in out:
            out[ref] = load_model(ref, spec.backend, spec.threads, spec.n_ctx, progress, **spec.placement(ref))
    return out


def build(spec: CascadeSpec, progress: bool = True):
    """(target, drafters, CascadeConfig) ready for `Cascade`."""
    spec.validate()
    target = load_models(spec, [spec.target], progress)[spec.target]
    models = load_models(spec, spec.drafters, progress)
    drafters = drafter_objects(spec.drafters, spec.drafter_settings, target.info.vocab_size, models)
    return target, drafters, spec.cascade_config(cost_curves(spec, [target, *drafters], progress))
