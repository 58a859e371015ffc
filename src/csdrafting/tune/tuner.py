"""The tuning pipeline on live models: calibrate (acceptance, cost curves), search, and check the model.

Works on any `LanguageModel`s (real llama.cpp models from the CLI, synthetic ones in tests); names are
the references the spec will carry (e.g. "qwen2.5-coder-0.5b:Q4_K_M"), and statistical candidates are
registered drafters (drafters/registry.py) by name.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..cascade.config import CascadeConfig
from ..cascade.engine import Cascade
from ..drafters import registry
from ..drafters.base import StatisticalDrafter
from ..protocol import CSDraftingError, LanguageModel
from .acceptance_stats import Trace, agreement, by_match_length, estimate_profiles, record_traces
from .costs import DEFAULT_GRID, fit_prefill, measure_cost_curve, measure_prefill, measure_proposal_cost
from .replay import replay as replay_traces
from .search import SearchResult, SearchSpace, search
from .speed import CascadeModel, Config, Measurements


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


def helper_config(neural: Mapping[str, LanguageModel], statistical: Mapping[str, StatisticalDrafter]) -> tuple[Config, list]:
    """A cheap exact cascade to generate the target's greedy text: the smallest neural drafter over the first
    statistical candidate (either alone when the other is missing; plain decoding with neither)."""
    small = [min(neural, key=lambda n: neural[n].info.n_params)] if neural else []
    bottom = list(statistical)[:1]
    chain = tuple(small + bottom)
    k = {2: ((4, 12), (0, 8)), 1: ((8,),) if bottom else ((4,),), 0: None}[len(chain)]
    return Config(chain, k), [neural[n] for n in small] + [statistical[n] for n in bottom]


def calibrate(
    target: LanguageModel,
    target_name: str,
    neural: Mapping[str, LanguageModel],
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    statistical: Mapping[str, StatisticalDrafter] | None = None,
    reps: int = 3,
    grid: Sequence[int] = DEFAULT_GRID,
    progress: bool = True,
) -> Calibration:
    """Measure everything the model needs on `prompts` (use the CALIBRATION split: never the eval prompts).

    `statistical` maps each statistical candidate's registry name to a drafter built for this target."""
    t_start = time.perf_counter()
    if not prompts:
        raise CSDraftingError("calibration needs at least one prompt")
    statistical = dict(statistical or {})
    if target_name in neural or target_name in statistical:
        raise CSDraftingError(f"{target_name!r} is both the target and a candidate drafter; drop it from the drafters")
    helper, helper_drafters = helper_config(neural, statistical)
    engine = Cascade(target, helper_drafters, CascadeConfig.make([list(r) for r in helper.k]) if helper.k else None)
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
            target, neural, prompts, max_new_tokens, generate, statistical, target_name=target_name,
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
    for name, drafter in statistical.items():
        costs[name] = measure_proposal_cost(drafter, [tr.prompt + tr.tokens for tr in traces[:2]], grid, reps=2)

    # 3. acceptance profiles for every ordered pair
    names = [target_name, *neural]
    profiles, pstats, restart = estimate_profiles(traces, names, [*neural, *statistical], restart_for=target_name)
    meas = Measurements(target_name, costs, profiles, restart=restart)
    stats = {
        "profiles": pstats,
        "agreement_with_target": {n: agreement(traces, target_name, n) for n in neural},
        "by_match_length": {n: by_match_length(traces, target_name, n) for n in statistical},
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
    statistical: Mapping[str, StatisticalDrafter] | None = None,
    reps: int = 3,
    max_quota: int = 48,
    progress: bool = True,
    replay: bool = True,
) -> TuneResult:
    """Calibrate, then search. Statistical candidates not in `statistical` are built from the registry with
    their default settings."""
    vocab = target.info.vocab_size
    statistical = {c: (statistical or {}).get(c) or registry.build(c, None, vocab)
                   for c in candidates if registry.is_statistical(c)}
    cal = calibrate(target, target_name, neural, prompts, max_new_tokens, statistical, reps, progress=progress)
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
    """The cascade config file for `config` (lenience 1), placed as tuned."""
    from ..cascade.config import KMatrix
    from ..spec import CascadeSpec

    spec = CascadeSpec(
        target=target,
        drafters=list(config.drafters),
        k=KMatrix.parse(config.k) if config.k else None,
        lenience=1.0,
        bottom_length=config.bottom_length if config.statistical_bottom else None,
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
