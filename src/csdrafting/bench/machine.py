"""What a benchmark ran on, for its summary: the machine, the placement of the models, the libraries."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}{_gpus()}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _gpus() -> str:
    """The accelerators torch sees (named in the summary: GPU figures must say which GPU)."""
    try:
        import torch

        if torch.cuda.is_available():
            return ", " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # no torch, or a broken driver: the CPU line still stands
        pass
    return ""


def placement(spec: dict) -> str:
    if spec.get("backend") == "hf":
        own = "".join(f", {r} on {d}" for r, d in (spec.get("devices") or {}).items())
        return f"transformers {spec.get('dtype', 'float32')} on {spec.get('device', 'cpu')}{own}; "
    n = spec.get("n_gpu_layers") or 0
    return f"llama.cpp, {n if n >= 0 else 'all'} GPU layers; " if n else ""  # as CascadeSpec describes it


def versions() -> str:
    out = []
    for mod in ("llama_cpp", "transformers", "torch"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    return ", ".join(out)
