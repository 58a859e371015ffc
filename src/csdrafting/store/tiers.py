"""Derived precision tiers (F32, F16, Q8_0, Q4_0) written from the Q4_K_M file by llama.cpp's quantizer.

IMPORTANT: a derived tier does not recover the original full-precision model. Its weights are the
Q4_K_M values re-encoded: exactly for F32, rounded to half precision for F16, re-quantized for Q8_0.
What changes is the cost profile (memory traffic, compute-bound vs memory-bound forward passes).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from .errors import StoreError

# llama_ftype values (llama.h); spelled out so this module imports without llama_cpp.
FTYPES: dict[str, tuple[int, str]] = {
    "F32": (0, "LLAMA_FTYPE_ALL_F32"),
    "F16": (1, "LLAMA_FTYPE_MOSTLY_F16"),
    "Q8_0": (7, "LLAMA_FTYPE_MOSTLY_Q8_0"),
    "Q4_0": (2, "LLAMA_FTYPE_MOSTLY_Q4_0"),
}
# Approximate bytes per parameter of each tier, for the progress bar and the free-disk check.
BYTES_PER_PARAM = {"F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32, "Q4_0": 18 / 32}

VALUES_NOTE = {
    "F32": "weights are the Q4_K_M values, dequantized exactly to float32; NOT the original full-precision "
           "model: only the storage format and cost profile differ from Q4_K_M",
    "F16": "weights are the Q4_K_M values rounded to float16 (1-D tensors stay float32); NOT the original "
           "full-precision model: only the storage format and cost profile differ from Q4_K_M",
    "Q8_0": "weights are the Q4_K_M values re-quantized to Q8_0 (small extra rounding); NOT the original "
            "model: the cost profile differs from Q4_K_M",
    "Q4_0": "weights are the Q4_K_M values re-quantized to Q4_0 (extra rounding: its greedy output can differ "
            "from Q4_K_M's); its kernels batch better on CPUs, so a cheaper drafter",
}


def estimated_size(n_params: int, tier: str) -> int:
    return int(n_params * BYTES_PER_PARAM[tier])


def llama_cpp_version() -> str:
    # From the distribution metadata: importing llama_cpp just for this would load the shared library.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "unavailable"


def quantize(src: Path, dst: Path, tier: str, *, estimate: int = 0, progress: bool = True,
             nthread: int = 0) -> None:
    """Rewrite the GGUF ``src`` as ``dst`` in ``tier`` with ``llama_model_quantize`` (allow_requantize).

    ``dst`` is written in place (callers pass a ``.partial`` path). The tqdm bar follows the size of
    ``dst`` against ``estimate``, since the C call reports no progress of its own.
    """
    try:
        import llama_cpp
        from llama_cpp import _logger as llama_logger
    except ImportError as exc:
        raise StoreError(
            f"making the {tier} tier needs llama-cpp-python (pip install 'csdrafting[llamacpp]'): {exc}"
        ) from exc
    ftype, _ = FTYPES[tier]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = nthread  # <= 0: all hardware threads
    # The quantizer logs a line per tensor through llama-cpp-python's logger; keep only errors.
    old_level = llama_logger.logger.level
    llama_logger.logger.setLevel(logging.ERROR)
    done = threading.Event()

    def watch(bar: tqdm) -> None:
        while not done.wait(0.5):
            try:
                bar.n = min(dst.stat().st_size, bar.total or 0) if bar.total else dst.stat().st_size
                bar.refresh()
            except OSError:
                pass

    try:
        with tqdm(total=estimate or None, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"quantize -> {tier}", disable=not progress, file=sys.stderr) as bar:
            watcher = threading.Thread(target=watch, args=(bar,), daemon=True)
            watcher.start()
            try:
                rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
            finally:
                done.set()
                watcher.join()
            if rc == 0 and dst.exists():
                bar.total = bar.n = dst.stat().st_size
                bar.refresh()
    finally:
        llama_logger.logger.setLevel(old_level)
    if rc != 0 or not dst.exists():
        raise StoreError(f"llama_model_quantize({src.name} -> {tier}) failed with code {rc}")
