"""A cascade described as data: which models (by store name, tier or path), K, lenience, backend.

`generate`, `demo` and `bench` take such a spec (a JSON file written by `csdrafting tune`, or the built-in
default); `build()` turns it into live models. A model reference is one of:
- `NAME:TIER` from the model store, e.g. `qwen2.5-coder-1.5b:F32` (tier defaults to Q4_K_M);
- a path to a `.gguf` file (llama.cpp backend, or transformers with backend "hf");
- a path to a transformers checkpoint directory (transformers backend);
- `maxgram` for the Max-Gram drafter, `suffix` for the confident suffix drafter (last drafter only).

With `dynamic: true` the cascade drafts cost-aware (cascade/planning.py) from the cost curves in `costs`
(model ref -> measured curve, as `csdrafting tune` writes them); a neural model without a curve there is
measured when the cascade is built (a few seconds).

Placement: with backend "hf" every model runs on `device` in `dtype`, unless `devices` names another
device for it (e.g. the target on "cuda:0" and a drafter on "cuda:1" or "cpu"); with backend "llamacpp"
each model offloads `n_gpu_layers` layers to the GPU (0: CPU only) and runs in its GGUF tier's precision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cascade.config import CascadeConfig, KMatrix
from .drafters.maxgram import MaxGram
from .protocol import CSDraftingError

MAXGRAM = "maxgram"
SUFFIX = "suffix"
STATISTICAL = (MAXGRAM, SUFFIX)


@dataclass
class CascadeSpec:
    target: str
    drafters: list[str] = field(default_factory=list)
    k: list[list[int]] | None = None
    k_spelling: str = "cumulative"
    lenience: float = 1.0
    maxgram_length: int | None = None
    backend: str = "llamacpp"  # or "hf"
    threads: int = 2
    n_ctx: int = 4096
    bigram: str | None = "default"  # "default" (the packaged Qwen table), a path, or None
    dynamic: bool = False  # cost-aware drafting; K is then a cap
    costs: dict[str, dict] | None = None  # model ref -> CostCurve JSON (measured), for dynamic drafting
    # the suffix drafter: calibration ("default": packaged, measured with the default target; a path;
    # None: no confidences), longest context, min-hits gate, store of earlier outputs across requests (off
    # by default: speed-neutral on the Q4_K_M target although its proposals are accepted far more often than
    # the bigram guesses they replace, and with it a seeded sample depends on earlier requests; see README)
    suffix_calibration: str | None = "default"
    suffix_max_ngram: int = 12
    suffix_min_count: int = 1
    suffix_persist: bool = False
    note: str = ""  # free text: where the spec came from (e.g. the tuner's prediction)
    device: str = "cpu"  # hf backend: cpu, cuda, cuda:N, mps, auto (accelerate's device map)
    dtype: str = "float32"  # hf backend: float32, bfloat16, float16
    devices: dict[str, str] = field(default_factory=dict)  # hf backend: model reference -> its own device
    n_gpu_layers: int = 0  # llamacpp backend: layers offloaded to the GPU, -1 = all

    def cascade_config(self, costs: list | None = None) -> CascadeConfig:
        return CascadeConfig.make(self.k, self.k_spelling, self.lenience, self.maxgram_length, self.dynamic, costs)

    def validate(self) -> None:
        if self.backend not in ("llamacpp", "hf"):
            raise CSDraftingError(f"backend must be 'llamacpp' or 'hf', not {self.backend!r}")
        for name in STATISTICAL:
            if name in self.drafters[:-1]:
                raise CSDraftingError(f"{name} can only be the last drafter")
        CascadeConfig.check_levels(self.cascade_config(), len(self.drafters))
        if self.suffix_max_ngram < 1 or self.suffix_min_count < 1:
            raise CSDraftingError("suffix_max_ngram and suffix_min_count must be >= 1")
        if self.costs is not None:
            from .cascade.planning import CostCurve

            if not isinstance(self.costs, dict):
                raise CSDraftingError("costs must map model refs to cost curves ({'ns': [...], 'seconds': [...]})")
            for ref, curve in self.costs.items():
                try:
                    CostCurve.from_json(curve)
                except (KeyError, TypeError) as exc:
                    raise CSDraftingError(f"costs[{ref!r}] is not a cost curve ({{'ns': [...], 'seconds': [...]}}): {exc}") from None
        for ref in [self.target, *self.drafters]:
            if ref not in STATISTICAL:
                check_ref(ref)
        self.validate_placement()

    def validate_placement(self) -> None:
        from .backends.devices import normalize_device, normalize_dtype

        self.device, self.dtype = normalize_device(self.device), normalize_dtype(self.dtype)
        if not isinstance(self.devices, dict):
            raise CSDraftingError(f"devices must map model references to devices, e.g. {{\"{self.target}\": \"cuda:0\"}}")
        models = [self.target, *(d for d in self.drafters if d not in STATISTICAL)]
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

    def to_json(self) -> dict[str, Any]:
        # placement at its defaults is left out, so that specs (and benchmark settings) written before
        # these fields existed still compare equal
        return {k: v for k, v in asdict(self).items() if not (k in PLACEMENT_DEFAULTS and v == PLACEMENT_DEFAULTS[k])}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CascadeSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CSDraftingError(f"unknown keys in cascade config: {sorted(unknown)}; known: {sorted(known)}")
        if "target" not in data:
            raise CSDraftingError("a cascade config needs a 'target'")
        spec = cls(**data)
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> "CascadeSpec":
        path = Path(path)
        if not path.is_file():
            raise CSDraftingError(f"cascade config {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CSDraftingError(f"cascade config {path} is not valid JSON: {exc}") from None
        cal = data.get("suffix_calibration") if isinstance(data, dict) else None
        if cal not in (None, "default") and not Path(cal).is_absolute():
            data["suffix_calibration"] = str(path.parent / cal)  # written beside the config by `tune`
        return cls.from_json(data)

    def describe(self) -> str:
        k = KMatrix.parse(self.k, self.k_spelling).cumulative if self.k else None
        return (
            f"target {self.target}; drafters {', '.join(self.drafters) or '(none: plain decoding)'}; "
            f"K (cumulative) {[list(r) for r in k] if k else '-'}{' as a cap, cost-aware' if self.dynamic else ''}; "
            f"lenience {self.lenience}; backend {self.backend}, {self.threads} threads{self._describe_placement()}"
        )

    def _describe_placement(self) -> str:
        if self.backend == "llamacpp":
            return f", {self.n_gpu_layers if self.n_gpu_layers >= 0 else 'all'} GPU layers" if self.n_gpu_layers else ""
        own = "".join(f", {ref} on {dev}" for ref, dev in self.devices.items())
        return f", {self.dtype} on {self.device}{own}"


PLACEMENT_DEFAULTS: dict[str, Any] = {"device": "cpu", "dtype": "float32", "devices": {}, "n_gpu_layers": 0}


# The embedded default: the shipped Qwen2.5-Coder-1.5B Q4_K_M file (what a CPU user runs) with the
# confident suffix drafter below it, drafting cost-aware up to 16 tokens (README, "Choosing the default").
# At this precision every model here is compute-bound on a CPU (reviewing k tokens costs about k/2
# passes), so a neural drafter cannot pay and only a near-free level that drafts when it is confident
# can. The target's cost curve (seconds of one pass over n new tokens) is measured on this machine when
# the cascade is built (a few seconds): its shape differs between machines of the same kind (2 tokens cost
# 1.5x one token on one, 1.7x on another), and a curve from another machine makes the planner over-draft.
# `csdrafting tune` measures it more thoroughly, and re-decides the cascade, per machine.
DEFAULT_TARGET = "qwen2.5-coder-1.5b:Q4_K_M"
# the CascadeSpec fields that configure statistical drafters (spec.statistical_drafter reads them)
STATISTICAL_FIELDS = ("bigram", "suffix_calibration", "suffix_max_ngram", "suffix_min_count", "suffix_persist")

DEFAULT_SPEC = CascadeSpec(
    target=DEFAULT_TARGET,
    drafters=[SUFFIX],
    k=[[16]],
    k_spelling="cumulative",
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


def bigram_table(spec: CascadeSpec, vocab_size: int):
    """The bigram fallback the spec names ("default": the packaged Qwen table, if the vocabulary fits)."""
    from .drafters.bigram import BigramTable
    from .drafters.corpus import load_default_qwen_bigram

    if spec.bigram == "default":
        table = load_default_qwen_bigram()
        return table if table.vocab_size == vocab_size else None
    return BigramTable.load(spec.bigram) if spec.bigram else None


def statistical_drafter(spec: CascadeSpec, ref: str, vocab_size: int):
    """The statistical drafter `ref` names (maxgram or suffix), configured as the spec says."""
    if ref == MAXGRAM:
        return MaxGram(bigram_table(spec, vocab_size))
    from .drafters.suffix import Calibration, SuffixDrafter, default_calibration

    if spec.suffix_calibration == "default":
        cal = default_calibration()
    else:
        cal = Calibration.load(spec.suffix_calibration) if spec.suffix_calibration else None
    return SuffixDrafter(cal, bigram_table(spec, vocab_size), spec.suffix_max_ngram, spec.suffix_min_count, spec.suffix_persist)


def cost_curves(spec: CascadeSpec, models: list, progress: bool = True) -> list | None:
    """One CostCurve per level (None for statistical ones) for dynamic drafting; measures what is missing."""
    if not spec.dynamic or not spec.drafters:
        return None
    from .cascade.planning import CostCurve, measure

    refs = [spec.target, *spec.drafters]
    out = []
    for ref, model in zip(refs, models):
        if ref in STATISTICAL:
            out.append(None)
        elif spec.costs and ref in spec.costs:
            out.append(CostCurve.from_json(spec.costs[ref]))
        else:
            if progress:
                import sys

                print(f"measuring the cost curve of {ref} for cost-aware drafting ...", file=sys.stderr)
            out.append(measure(model))
    return out


def build(spec: CascadeSpec, progress: bool = True):
    """(target, drafters, CascadeConfig) ready for `Cascade`."""
    spec.validate()
    target = load_model(spec.target, spec.backend, spec.threads, spec.n_ctx, progress, **spec.placement(spec.target))
    drafters = []
    for ref in spec.drafters:
        if ref in STATISTICAL:
            drafters.append(statistical_drafter(spec, ref, target.info.vocab_size))
        else:
            drafters.append(load_model(ref, spec.backend, spec.threads, spec.n_ctx, progress, **spec.placement(ref)))
    return target, drafters, spec.cascade_config(cost_curves(spec, [target, *drafters], progress))
