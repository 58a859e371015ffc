"""Where a transformers model runs and in which precision: device and dtype names, checked once.

The names are checked here without importing torch (spec files and the CLI validate them before any
model loads); `torch_device` and `torch_dtype` then check that this machine's torch can honour them.
"""

from __future__ import annotations

import re

from ..protocol import CSDraftingError

DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
_DEVICE = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")
DEVICE_HELP = "'cpu', 'cuda', 'cuda:N', 'mps', or 'auto' (accelerate's device map over every visible accelerator)"


def normalize_dtype(name: str) -> str:
    """'bf16' -> 'bfloat16' etc.; raise on a name that is not float32, bfloat16 or float16."""
    key = str(name).strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise CSDraftingError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)} (or bf16, fp16, fp32)")
    return key


def normalize_device(device: str) -> str:
    """Check the spelling of a device name ('CUDA:0' -> 'cuda:0'); availability is checked at load time."""
    key = str(device).strip().lower()
    if not _DEVICE.match(key):
        raise CSDraftingError(f"unknown device {device!r}: choose {DEVICE_HELP}")
    return key


def torch_dtype(name: str):
    import torch

    return getattr(torch, normalize_dtype(name))


def torch_device(device: str) -> str:
    """The device name, after checking that this torch build and machine have it."""
    import torch

    key = normalize_device(device)
    if key == "auto":
        try:
            import accelerate  # noqa: F401  (transformers needs it for device_map="auto")
        except ImportError:
            raise CSDraftingError("device 'auto' needs the package accelerate (pip install 'csdrafting[gguf]')") from None
        return key  # accelerate spreads the model over what there is (the CPU alone, if nothing else)
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CSDraftingError(
                f"device {device!r} asked for, but torch.cuda.is_available() is False (torch {torch.__version__}"
                f"{', a CPU-only build' if torch.version.cuda is None else ''}): use --device cpu, or install a "
                "CUDA build of torch on a machine with an NVIDIA GPU"
            )
        if ":" in key:
            index, count = int(key.split(":")[1]), torch.cuda.device_count()
            if index >= count:
                raise CSDraftingError(f"device {device!r} does not exist: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if key == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CSDraftingError("device 'mps' asked for, but torch.backends.mps.is_available() is False: use --device cpu")
    return key
