"""How each family of methods runs one (prompt, method), one module per family: the engine (engine.py),
llama-cpp-python's Llama (llama.py), transformers (hf_generate.py) and llama.cpp's own programs (programs.py).

An executor loads its models once, warms each of them up with a short generation (the first forward
of a freshly mapped 7 GB F32 file pages it in from disk and would distort the first timed prompt), and
returns for every run the generated tokens and a `GenerationMetrics` in the engine's shape, so the
summary treats all methods alike. For the peers the per-level, per-position numbers are reconstructed
from the forward passes they make (common.review_passes).
"""

from .common import Outcome, review_passes
from .engine import EngineExecutor, method_config
from .hf_generate import HFExecutor, hf_path
from .llama import LlamaExecutor
from .programs import LlamaCppBinExecutor

__all__ = ["EngineExecutor", "HFExecutor", "LlamaCppBinExecutor", "LlamaExecutor", "Outcome", "hf_path",
           "method_config", "review_passes"]
