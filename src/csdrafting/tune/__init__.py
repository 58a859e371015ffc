"""`csdrafting tune`: choose the cascade and K from costs and acceptance measured on this machine.

- costs.py: cost curves cost(model, n new tokens) measured on the current backend, precision and threads;
- acceptance.py: calibration traces (the target's greedy text and every model's predictions along it)
  and per-position acceptance profiles for every (reviewer, drafter) pair;
- model.py: the EWIF-style analytic model of tokens/second from those measurements;
- replay.py: the engine's recursion replayed on the recorded calibration text;
- search.py: the search over drafter chains, K and the Max-Gram length;
- tuner.py: the pipeline on live models; cli.py: the command line.
"""

from .model import CascadeModel, Config, CostCurve, Measurements, Prediction, Profile, predict
from .replay import replay
from .search import SearchResult, SearchSpace, search

__all__ = ["CascadeModel", "Config", "CostCurve", "Measurements", "Prediction", "Profile", "predict", "replay",
           "SearchResult", "SearchSpace", "search"]
