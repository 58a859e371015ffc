"""ensure_hf_weights: a transformers checkpoint (safetensors, float32) dequantized once from the GGUF.

Dequantizing a GGUF in transformers takes ~100 s; loading the saved safetensors takes a few seconds.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import integrity
from .errors import StoreError
from .models import _expected, ensure_model
from .paths import hf_dir, locks_dir
from .registry import BASE_TIER, get_spec, normalize_tier

MARKER = "csdrafting-source.json"


def hf_weights_path(name: str, tier: str = BASE_TIER) -> Path:
    """Where the dequantized checkpoint of ``name`` (from its ``tier`` GGUF) lives in the cache."""
    get_spec(name)
    return hf_dir() / f"{name}-{normalize_tier(tier).lower()}"


def _source_sha(name: str, tier: str, gguf: Path) -> str:
    expected = _expected(get_spec(name), tier, gguf)
    if expected is None:  # ensure_model just verified it, so its manifest must exist
        raise StoreError(f"{gguf} has no manifest")
    return expected[1]


def _is_complete(out: Path, sha: str) -> bool:
    marker = integrity.read_json(out / MARKER)
    if not marker or marker.get("source_sha256") != sha:
        return False
    return any(out.glob("*.safetensors")) and (out / "config.json").is_file()


def ensure_hf_weights(name: str, tier: str = BASE_TIER, progress: bool = True) -> Path:
    """Directory with ``name`` as a float32 transformers checkpoint (model + tokenizer, safetensors).

    Made once from the verified GGUF of ``tier`` via ``AutoModelForCausalLM.from_pretrained(dir,
    gguf_file=..., dtype=torch.float32)`` and ``save_pretrained``; load it with
    ``AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)``. The values are those of the
    GGUF (i.e. of Q4_K_M, dequantized). Built in a temporary directory that is renamed into place, so
    the directory is either absent or complete; a ``csdrafting-source.json`` inside records the GGUF hash.
    """
    tier = normalize_tier(tier)
    gguf = ensure_model(name, tier, progress)
    sha = _source_sha(name, tier, gguf)
    out = hf_weights_path(name, tier)
    if _is_complete(out, sha):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with integrity.file_lock(locks_dir() / f"hf-{out.name}.lock", f"{out.name} (transformers)", progress=progress):
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; we hold the lock
        if _is_complete(out, sha):
            return out
        if out.exists():
            shutil.rmtree(out)  # made from another GGUF, or incomplete
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            _dequantize(gguf, tmp, progress)
            integrity.atomic_write_json(tmp / MARKER, {
                "model": name,
                "tier": tier,
                "source_file": gguf.name,
                "source_sha256": sha,
                "dtype": "float32",
                "values": f"dequantized from the {tier} GGUF (values of {BASE_TIER})",
                "transformers": _transformers_version(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            })
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _transformers_version() -> str:
    try:
        import transformers
    except ImportError:
        return "unavailable"
    return transformers.__version__


def _dequantize(gguf: Path, dest: Path, progress: bool) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise StoreError(f"ensure_hf_weights needs torch and transformers: {exc}") from exc
    t0 = time.perf_counter()
    if progress:
        print(f"csdrafting: dequantizing {gguf.name} with transformers (about 100 s, once) ...", file=sys.stderr)
    try:
        from transformers import GgufConfig

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: a plain dense float32 model even where GGUF matmul kernels are installed.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    except ImportError as exc:  # transformers reports missing gguf/accelerate this way
        raise StoreError(f"loading a GGUF in transformers needs the packages gguf and accelerate: {exc}") from exc
    # transformers keeps its GGUF "quantizer" attached and then refuses save_pretrained, although the
    # weights are already dense; detach it once we have checked that they really are.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise StoreError(f"{gguf.name}: transformers left some weights packed; cannot save a dense copy")
        quantizer.remove_quantization_config(model)
    bad = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if bad:
        raise StoreError(f"{gguf.name}: dequantized model has parameters of dtype {bad}, expected float32")
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    if progress:
        print(f"csdrafting: dequantized {gguf.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
