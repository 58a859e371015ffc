import sys
from pathlib import Path

# tests/ helpers (tiny models, table models) are imported as plain modules
sys.path.insert(0, str(Path(__file__).parent))

import pytest

# fixtures that hand a test the packaged real weights: a test using one must say so (`real`)
REAL_WEIGHTS = {"qwen05_gguf"}


def pytest_collection_modifyitems(config, items):
    """Tests say what they cost: one that loads real weights without the `real` marker is a collection
    error, so that `-m "not real"` never downloads or loads gigabytes by surprise."""
    unmarked = [i.nodeid for i in items if REAL_WEIGHTS & set(getattr(i, "fixturenames", ())) and
                i.get_closest_marker("real") is None]
    if unmarked:
        raise pytest.UsageError(f"these tests load real weights but are not marked real: {unmarked}")


@pytest.fixture(scope="session")
def qwen05_gguf():
    """The real Qwen2.5-Coder-0.5B Q4_K_M, from the model store (installed by `make test` if missing)."""
    from csdrafting.store import ensure_model

    return ensure_model("qwen2.5-coder-0.5b", progress=False)
