"""csdrafting: Cascade Speculative Drafting (Chen et al., arXiv 2312.11462), exact to the last token."""

from .cascade.config import CascadeConfig, KMatrix, SamplingConfig
from .cascade.engine import Cascade, GenerationResult
from .drafters.bigram import BigramTable
from .drafters.maxgram import MaxGram
from .protocol import CSDraftingError, LanguageModel, ModelInfo
from .api import generate

__all__ = [
    "BigramTable",
    "CSDraftingError",
    "Cascade",
    "CascadeConfig",
    "GenerationResult",
    "KMatrix",
    "LanguageModel",
    "MaxGram",
    "ModelInfo",
    "SamplingConfig",
    "generate",
]
__version__ = "0.1.0"
