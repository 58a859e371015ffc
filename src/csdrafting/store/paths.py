"""Where the store keeps things: one per-user cache directory, never inside the source checkout."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreError

ENV_VAR = "CSDRAFTING_CACHE"


def _checkout_root() -> Path | None:
    """The source checkout this package runs from (src layout), or None when installed normally."""
    here = Path(__file__).resolve()
    # .../<root>/src/csdrafting/store/paths.py -> parents[3] == <root>
    if len(here.parents) > 3:
        root = here.parents[3]
        if (root / "pyproject.toml").is_file() and (root / "src" / "csdrafting").is_dir():
            return root
    return None


def cache_dir() -> Path:
    """The cache root: ``$CSDRAFTING_CACHE``, else ``$XDG_CACHE_HOME/csdrafting``, else ``~/.cache/csdrafting``.

    Multi-GB weights must never land in the repository (they would be committed or copied around), so a
    location inside the source checkout is refused.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base).expanduser() / "csdrafting"
    path = path.absolute()
    root = _checkout_root()
    if root is not None:
        resolved = path.resolve()
        if resolved == root or root in resolved.parents:
            raise StoreError(
                f"the model cache {path} lies inside the source checkout {root}; "
                f"set ${ENV_VAR} to a directory outside it"
            )
    return path


def models_dir() -> Path:
    """GGUF files, their manifests and verified-stamps."""
    return cache_dir() / "models"


def wheels_dir() -> Path:
    """Downloaded wheels (``pip download --no-deps``); shared with csdrafting.datasets."""
    return cache_dir() / "wheels"


def hf_dir() -> Path:
    """Dequantized transformers checkpoints (safetensors)."""
    return cache_dir() / "hf"


def locks_dir() -> Path:
    """fcntl lock files, one per thing being built."""
    return cache_dir() / "locks"
