import sys
from pathlib import Path

# tests/ helpers (tiny models, table models) are imported as plain modules
sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture(scope="session")
def qwen05_gguf():
    """The real Qwen2.5-Coder-0.5B Q4_K_M, from the model store (installed by `make test` if missing)."""
    from csdrafting.store import ensure_model

    return ensure_model("qwen2.5-coder-0.5b", progress=False)
