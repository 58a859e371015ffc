"""`csdrafting tune` as a library call: `run_tune(TuneOptions(...))` calibrates on the dataset's calibration
split, searches, races the best static configuration against cost-aware candidates, and writes the cascade
config and its report; the command line (cli.py) only parses flags and prints what this returns.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..files import atomic_write
from ..protocol import CSDraftingError
from ..spec import DEFAULT_TARGET, CascadeSpec  # the shipped precision: what a user runs
from .inputs import load_models, load_prompts
from .report import ranked_json, report_path, traces_to_json
from .tuner import TuneResult

# the candidates: the 0.5B at the shipped precision and at Q4_0 (whose kernels batch better), and Max-Gram
DEFAULT_DRAFTERS = ("qwen2.5-coder-0.5b:Q4_K_M", "qwen2.5-coder-0.5b:Q4_0", "maxgram")


@dataclass(frozen=True)
class TuneOptions:
    """What `run_tune` measures and where it writes (the command line's flags, with their defaults)."""

    target: str = DEFAULT_TARGET
    drafters: tuple[str, ...] = DEFAULT_DRAFTERS
    out: str = "tuned.json"
    report: str | None = None  # default <out>.report.json
    prompts: int = 8
    max_new_tokens: int = 64
    dataset: str = "humaneval"
    reps: int = 3  # timings per cost-curve point (median kept)
    max_quota: int = 48  # largest cumulative draft length the search considers
    race: bool = True
    race_prompts: int = 4
    backend: str = "llamacpp"
    threads: int = 2
    n_ctx: int = 4096
    device: str = "cpu"
    dtype: str = "float32"
    n_gpu_layers: int = 0
    progress: bool = True

    def check(self) -> CascadeSpec:
        """Numbers and placement checked before anything loads; the placement as a spec places it."""
        for name in ("prompts", "max_new_tokens", "threads", "reps"):
            positive(f"--{name.replace('_', '-')}", getattr(self, name))
        if not self.drafters:
            raise CSDraftingError("give at least one candidate drafter (or 'maxgram')")
        placed = CascadeSpec(target=self.target, backend=self.backend, threads=self.threads, n_ctx=self.n_ctx,
                             device=self.device, dtype=self.dtype, n_gpu_layers=self.n_gpu_layers)
        placed.validate_placement()
        return placed

    @property
    def report_file(self) -> Path:
        return Path(self.report) if self.report else report_path(self.out)


def positive(name: str, v: int | None) -> None:
    if v is not None and v <= 0:
        raise CSDraftingError(f"{name} must be a positive integer (got {v})")


@dataclass
class TuneRun:
    """What `run_tune` measured, chose and wrote."""

    options: TuneOptions
    result: TuneResult
    prompts: list[tuple[str, list[int]]]
    spec: CascadeSpec  # the config written to options.out
    report: dict
    seconds: float
    load_seconds: float
    race: list[dict] = field(default_factory=list)  # one row per raced candidate (empty without the race)


def run_tune(opts: TuneOptions) -> TuneRun:
    from .tuner import to_spec, tune

    placed = opts.check()
    t0 = time.perf_counter()
    target, neural, statistical = load_models(opts.target, list(opts.drafters), opts.backend, opts.threads, opts.n_ctx,
                                              placed.placement)
    t_load = time.perf_counter() - t0
    prompts = load_prompts(target, opts.dataset, opts.prompts, "calibration", opts.n_ctx, opts.max_new_tokens)
    res = tune(target, opts.target, neural, [p for _, p in prompts], opts.max_new_tokens, list(opts.drafters),
               statistical, reps=opts.reps, max_quota=opts.max_quota, progress=opts.progress)
    elapsed = time.perf_counter() - t0
    best, plain = res.result.best, res.result.best_per_chain[()]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = (f"csdrafting tune {stamp}: predicted {best.score:.2f} tok/s end to end (analytic model {best.analytic:.2f}; "
            f"{tokens_per_pass(best):.2f} tokens/target pass; plain decoding {plain.score:.2f}) for "
            f"{opts.dataset} prompts, {opts.max_new_tokens} new tokens, {opts.backend}, {opts.threads} threads; "
            f"measurements in {opts.report_file.name}")
    spec = to_spec(best.config, opts.target, opts.backend, opts.threads, opts.n_ctx, note,
                   device=placed.device, dtype=placed.dtype, n_gpu_layers=placed.n_gpu_layers)
    race_table: list[dict] = []
    if opts.race:
        from .race import race_dynamic

        spec, race_table = race_dynamic(spec, target, neural, res, prompts[: max(1, opts.race_prompts)],
                                        opts.max_new_tokens, Path(opts.out), opts.progress)
        spec.note = (f"csdrafting tune {stamp}: {spec.note} (median over {min(len(prompts), max(1, opts.race_prompts))} "
                     f"{opts.dataset} calibration prompts, {opts.max_new_tokens} tokens, {opts.backend}, "
                     f"{opts.threads} threads); measurements in {opts.report_file.name}")
    spec.save(opts.out)
    report = build_report(opts, placed, res, prompts, spec, race_table, elapsed, t_load)
    atomic_write(opts.report_file, json.dumps(report, indent=1) + "\n")
    return TuneRun(opts, res, prompts, spec, report, elapsed, t_load, race_table)


def tokens_per_pass(ranked) -> float:
    return ranked.replay.tokens_per_step if ranked.replay else ranked.prediction.tokens_per_step


def build_report(opts: TuneOptions, placed: CascadeSpec, res: TuneResult, prompts, spec: CascadeSpec, race_table,
                 elapsed: float, t_load: float) -> dict:
    """Everything measured, the ranking and the calibration traces (what `--validate` reads back)."""
    cal, sr = res.calibration, res.result
    return {
        "spec": spec.to_json(),
        "settings": {"target": opts.target, "candidates": list(opts.drafters), "dataset": opts.dataset,
                     "split": "calibration", "prompt_ids": [i for i, _ in prompts], "max_new_tokens": opts.max_new_tokens,
                     "threads": opts.threads, "backend": opts.backend, "reps": opts.reps, "max_quota": opts.max_quota,
                     "device": placed.device, "dtype": placed.dtype, "n_gpu_layers": placed.n_gpu_layers},
        "timing_seconds": {"total": elapsed, "loading": t_load, "calibration": cal.seconds},
        "workload": [list(w) for w in cal.workload],
        "measurements": res.measurements.to_json(),
        "model_check": res.helper_check(),
        "best": ranked_json(sr.best),
        "best_per_chain": [ranked_json(r) for r in sorted(sr.best_per_chain.values(), key=lambda r: -r.score)],
        "top": [ranked_json(r) for r in sr.ranked[:30]],
        "stats": cal.stats,
        "race": race_table,
        "traces": traces_to_json(cal.traces),
    }
