import sys
from pathlib import Path

# tests/ helpers (tiny models, table models) are imported as plain modules
sys.path.insert(0, str(Path(__file__).parent))
