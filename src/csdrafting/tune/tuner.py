"""The tuning pipeline on live models: calibrate (acceptance, cost curves), search, and check the model.

Works on any `LanguageModel`s (real llama.cpp models from the CLI, synthetic ones in tests); names are
the references the spec will carry (e.g. "qwen2.5-coder-0.5b:Q4_K_M") and "maxgram".
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..cascade.config import CascadeConfig
from ..cascade.engine import Cascade
from ..drafters.maxgram import MaxGram
from ..protocol import CSDraftingError, LanguageModel
from .acceptance import Trace, agreement, estimate_profiles, maxgram_by_match_length, record_traces
from .costs import DEFAULT_GRID, fit_prefill, measure_cost_curve, measure_maxgram_cost, measure_prefill
from .model import MAXGRAM, CascadeModel, Config, Measurements
from .replay import replay as replay_traces
from .search import SearchResult, SearchSpace, search


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)


@dataclass
class Calibration:
    measurements: Measurements
    traces: list[Trace]
    workload: list[tuple[int, int]]  # (prompt tokens, new tokens) of each calibration generation
    helper: Config  # the cascade that generated the reference text, with its measured speed
    helper_seconds: float
    helper_target_steps: int
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0


def helper_config(neural: Mapping[str, LanguageModel]) -> tuple[Config, list]:
    """A cheap exact cascade to generate the target's greedy text: the smallest neural drafter + Max-Gram."""
    if neural:
        name = min(neural, key=lambda n: neural[n].info.n_params)
        return Config((name, MAXGRAM), ((4, 12), (0, 8))), [neural[name]]
    return Config((MAXGRAM,), ((8,),)), []


def calibrate(
    target: LanguageModel,
    target_name: str,
    neural: Mapping[str, LanguageModel],
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    maxgram: MaxGram | None = None,
    reps: int = 3,
    grid: Sequence[int] = DEFAULT_GRID,
    progress: bool = True,
) -> Calibration:
    """Measure everything the model needs on `prompts` (use the CALIBRATION split: never the eval prompts)."""
    t_start = time.perf_counter()
    if not prompts:
        raise CSDraftingError("calibration needs at least one prompt")
    if target_name in neural or target_name == MAXGRAM:
        raise CSDraftingError(f"{target_name!r} is both the target and a candidate drafter; drop it from the drafters")
    maxgram = maxgram if maxgram is not None else MaxGram()
    helper, helper_models = helper_config(neural)
    engine = Cascade(target, helper_models + [maxgram], CascadeConfig.make([list(r) for r in helper.k]))
    helper_time, helper_steps = 0.0, 0

    def generate(prompt: list[int]) -> tuple[list[int], float]:
        nonlocal helper_time, helper_steps
        res = engine.generate(prompt, max_new_tokens)
        helper_time += res.metrics.seconds
        helper_steps += res.metrics.target_steps
        return res.tokens, res.metrics.seconds

    # 0. touch every weight once: the first pass of an mmapped model pages it in (seconds for a 7 GB F32
    # file), which must not be charged to the helper's timing or to the cost curves
    for model in (target, *neural.values()):
        model.rollback(0)
        model.extend(list(prompts[0][:1]), logits_from=0)
        model.rollback(0)

    # 1. reference text and teacher-forced predictions
    with _bar(len(prompts) * (1 + len(neural)), "calibration: target text, drafter predictions", progress) as bar:
        traces, prefill = record_traces(
            target, neural, prompts, max_new_tokens, generate, maxgram, target_name=target_name,
            tick=(lambda _: bar.update(1)) if bar is not None else None,
        )
    workload = [(len(tr.prompt), len(tr.tokens)) for tr in traces]

    # 2. cost curves, measured after a realistic cached context (a calibration prompt and half its text)
    ctx_trace = max(traces, key=lambda tr: len(tr.tokens))
    context = ctx_trace.prompt + ctx_trace.tokens[: len(ctx_trace.tokens) // 2]
    filler = ctx_trace.tokens + ctx_trace.prompt
    models = {target_name: target, **neural}
    costs: dict = {}
    points: dict[str, list[tuple[int, float]]] = {}
    lengths = sorted(len(p) for p in prompts)
    sizes = sorted({max(8, lengths[0]), max(8, lengths[-1])})
    prompt_text = [t for p in sorted(prompts, key=len, reverse=True) for t in p]
    with _bar(len(models) * (len(grid) + len(sizes)) * reps, "cost curves", progress) as bar:
        tick = (lambda: bar.update(1)) if bar is not None else None
        for name, model in models.items():
            points[name] = measure_prefill(model, prompt_text, sizes, reps, tick)
            costs[name] = measure_cost_curve(model, context, filler, grid, reps, fit_prefill(points[name]), tick=tick)
            model.rollback(0)
    costs[MAXGRAM] = measure_maxgram_cost(MaxGram(maxgram.bigram), [tr.prompt + tr.tokens for tr in traces[:2]], grid, reps=2)

    # 3. acceptance profiles for every ordered pair
    names = [target_name, *neural]
    profiles, pstats, restart = estimate_profiles(traces, names, [*neural, MAXGRAM], restart_for=target_name)
    meas = Measurements(target_name, costs, profiles, restart=restart)
    stats = {
        "profiles": pstats,
        "agreement_with_target": {n: agreement(traces, target_name, n) for n in neural},
        "maxgram_by_match_length": maxgram_by_match_length(traces, target_name),
        "prefill_medians": {k: [list(x) for x in v] for k, v in points.items()},
        "prefill_samples_teacher_forced": {k: [list(x) for x in v] for k, v in prefill.items()},
    }
    return Calibration(meas, traces, workload, helper, helper_time, helper_steps, stats, time.perf_counter() - t_start)


@dataclass
class TuneResult:
    calibration: Calibration
    result: SearchResult
    space: SearchSpace

    @property
    def measurements(self) -> Measurements:
        return self.calibration.measurements

    def helper_check(self) -> dict:
        """The model's prediction for the cascade that generated the calibration text vs its measured speed."""
        cal = self.calibration
        pred = CascadeModel(cal.measurements).predict(cal.helper)
        rp = replay_traces(cal.helper, cal.measurements, cal.traces)
        tokens = sum(n for _, n in cal.workload)
        return {
            "config": cal.helper.describe(),
            "predicted_tokens_per_second": rp.tokens_per_second,
            "analytic_tokens_per_second": pred.end_to_end(cal.workload),
            "replay_tokens_per_target_pass": rp.tokens_per_step,
            "measured_tokens_per_second": tokens / cal.helper_seconds if cal.helper_seconds else None,
            "analytic_tokens_per_target_pass": pred.tokens_per_step,
            "measured_tokens_per_target_pass": tokens / cal.helper_target_steps if cal.helper_target_steps else None,
        }


def tune(
    target: LanguageModel,
    target_name: str,
    neural: Mapping[str, LanguageModel],
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    candidates: Sequence[str],
    maxgram: MaxGram | None = None,
    reps: int = 3,
    max_quota: int = 48,
    progress: bool = True,
    replay: bool = True,
) -> TuneResult:
    cal = calibrate(target, target_name, neural, prompts, max_new_tokens, maxgram, reps, progress=progress)
    space = SearchSpace(tuple(candidates), max_quota=max_quota)
    chains = space.chains()
    with _bar(len(chains), "search", progress) as bar:
        def prog(it):
            for x in it:
                yield x
                if bar is not None:
                    bar.update(1)

        res = search(cal.measurements, space, cal.workload, progress=prog, traces=cal.traces if replay else None)
    return TuneResult(cal, res, space)


def to_spec(config: Config, target: str, backend: str = "llamacpp", threads: int = 2, n_ctx: int = 4096, note: str = "",
            device: str = "cpu", dtype: str = "float32", n_gpu_layers: int = 0):
    """The cascade config file for `config` (K in the paper's cumulative spelling, lenience 1), placed as tuned."""
    from ..spec import CascadeSpec

    spec = CascadeSpec(
        target=target,
        drafters=list(config.drafters),
        k=config.k,
        lenience=1.0,
        bottom_length=config.maxgram_length if MAXGRAM in config.drafters else None,
        backend=backend,
        threads=threads,
        n_ctx=n_ctx,
        note=note,
        device=device,
        dtype=dtype,
        n_gpu_layers=n_gpu_layers,
    )
    spec.validate()
    return spec
