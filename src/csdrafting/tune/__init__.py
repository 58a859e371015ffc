"""`csdrafting tune`: choose the cascade and K from costs and acceptance measured on this machine.

- costs.py: cost curves cost(model, n new tokens) measured on the current backend, precision and threads;
- acceptance_stats.py: calibration traces (the target's greedy text and every model's predictions along
  it) and per-position acceptance profiles for every (reviewer, drafter) pair;
- speed.py: the EWIF-style analytic model of tokens/second from those measurements;
- replay.py: the engine's recursion replayed on the recorded calibration text;
- search.py: the search over drafter chains, K and the bottom length;
- tuner.py: calibration and search on live models; race.py: cost-aware candidates raced with the engine;
- inputs.py: loading the candidates and the calibration prompts;
- pipeline.py, validate.py: `run_tune(TuneOptions(...))` and `run_validate(ValidateOptions(...))`, the
  whole command as a Python call; report.py: the report file; calibrate.py: the suffix drafter's table;
- cli.py: the command lines (`tune`, `calibrate`): flags in, tables out.
"""

from .pipeline import TuneOptions, TuneRun, run_tune
from .replay import replay
from .search import SearchResult, SearchSpace, search
from .speed import CascadeModel, Config, CostCurve, Measurements, Prediction, Profile, predict
from .validate import ValidateOptions, ValidateRun, run_validate

__all__ = ["CascadeModel", "Config", "CostCurve", "Measurements", "Prediction", "Profile", "predict", "replay",
           "SearchResult", "SearchSpace", "search", "TuneOptions", "TuneRun", "run_tune", "ValidateOptions",
           "ValidateRun", "run_validate"]
