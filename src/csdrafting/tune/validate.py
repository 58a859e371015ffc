"""`csdrafting tune --validate` as a library call: the tuned config, plain decoding, the runner-ups (and
optionally a stated grid) run with the real engine on EVAL prompts, predicted vs measured tok/s, every
output checked against plain decoding's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..cascade.config import CascadeConfig
from ..cascade.engine import Cascade
from ..drafters.registry import is_statistical
from ..protocol import CSDraftingError
from ..spec import CascadeSpec
from .inputs import load_models, load_prompts
from .pipeline import positive
from .race import spec_cascade
from .replay import replay
from .report import config_from, report_path, traces_from_json
from .speed import CascadeModel, Config, Measurements


@dataclass(frozen=True)
class ValidateOptions:
    config: str  # the tuned cascade config
    report: str | None = None  # default <config>.report.json
    prompts: int = 5
    max_new_tokens: int = 64
    top: int = 4  # also measure this many next-best configs
    skip_chains: bool = False  # do not measure the best configuration of every other drafter chain
    grid: bool = False  # also measure `validation_grid` over the tuned candidates
    also: tuple[str, ...] = ()  # further cascade configs (same target)
    progress: bool = True


@dataclass
class ValidateRun:
    rows: list[dict]  # one per configuration, the tuned one first
    ties: int
    mismatches: list[str] = field(default_factory=list)
    prompts: int = 0
    max_new_tokens: int = 0
    dataset: str = ""

    def to_json(self) -> dict:
        return {"prompts": self.prompts, "max_new_tokens": self.max_new_tokens, "rows": self.rows, "ties": self.ties,
                "mismatches": self.mismatches}


def validation_grid(candidates: list[str]) -> list[Config]:
    """The grid that --validate --grid measures exhaustively (neural candidates in the order given):

    - plain decoding;
    - every candidate alone (speculative decoding; a statistical drafter alone): K = [[k]], k in 2, 4, 8, 12;
    - every neural candidate over each statistical one: K = [[k, k + m], [0, m]], k in 4, 8, m in 4, 8;
    - every ordered pair of neural candidates: K = [[k, k + 8], [0, 4]], k in 4, 8; and over each
      statistical one, K = [[k, k + 8, k + 12], [0, 4, 8], [0, 0, 8]], k in 4, 8.
    """
    neural = [c for c in candidates if not is_statistical(c)]
    bottoms = [c for c in candidates if is_statistical(c)]
    out = [Config()]
    for d in candidates:
        out += [Config((d,), ((k,),)) for k in (2, 4, 8, 12)]
    for s in bottoms:
        for d in neural:
            out += [Config((d, s), ((k, k + m), (0, m))) for k in (4, 8) for m in (4, 8)]
    for a in neural:
        for b in neural:
            if a != b:
                out += [Config((a, b), ((k, k + 8), (0, 4))) for k in (4, 8)]
                for s in bottoms:
                    out += [Config((a, b, s), ((k, k + 8, k + 12), (0, 4, 8), (0, 0, 8))) for k in (4, 8)]
    return out


def modelled(spec: CascadeSpec, meas: Measurements) -> bool:
    """Whether the tuner's static model predicts this spec: static K, every statistical level measured."""
    return not spec.dynamic and all(not is_statistical(d) or d in meas.costs for d in spec.drafters)


def as_config(spec: CascadeSpec) -> Config:
    return Config(tuple(spec.drafters), spec.k.cumulative if spec.k else None,
                  spec.bottom_length if spec.drafters and is_statistical(spec.drafters[-1]) else None)


def label(c) -> str:
    """A validated configuration's name: a Config's own description, or a spec's drafters, K and mode."""
    if isinstance(c, Config):
        return c.describe()
    k = "-" if c.k is None else "[" + ",".join("[" + ",".join(map(str, r)) + "]" for r in c.k.cumulative) + "]"
    return f"{' > '.join(c.drafters) or 'plain'} K={k}" + (" cost-aware" if c.dynamic else "")


def run_validate(opts: ValidateOptions) -> ValidateRun:
    """Predicted vs measured tok/s on EVAL prompts for the tuned config, the runner-ups and plain decoding."""
    spec = CascadeSpec.load(opts.config)
    rep_path = Path(opts.report) if opts.report else report_path(opts.config)
    if not rep_path.is_file():
        raise CSDraftingError(f"no tuning report at {rep_path}: pass --report, the .report.json written by `csdrafting tune`")
    report = json.loads(rep_path.read_text())
    meas = Measurements.from_json(report["measurements"])
    positive("--prompts", opts.prompts)
    positive("--max-new-tokens", opts.max_new_tokens)
    extra = [CascadeSpec.load(a) for a in opts.also]
    for e in extra:
        if e.target != spec.target:
            raise CSDraftingError(f"--also {e.target} has another target than {opts.config} ({spec.target})")
    configs = _configs(spec, report, meas, extra, opts)
    refs = sorted({d for c in configs for d in c.drafters if isinstance(c, Config) or not is_statistical(d)})
    target, neural, statistical = load_models(spec.target, refs, spec.backend, spec.threads, spec.n_ctx, spec.placement)
    dataset = report["settings"]["dataset"]
    prompts = load_prompts(target, dataset, opts.prompts, "eval", spec.n_ctx, opts.max_new_tokens)
    engines = [_engine(c, target, neural, statistical) for c in configs]
    work, seconds, steps, ties, mismatches = _measure(engines, configs, target, neural, prompts, opts)
    rows = _rows(configs, meas, traces_from_json(report.get("traces", [])), work, seconds, steps)
    return ValidateRun(rows, ties, mismatches, opts.prompts, opts.max_new_tokens, dataset)


def _configs(spec: CascadeSpec, report: dict, meas: Measurements, extra: list, opts: ValidateOptions) -> list:
    """The tuned config, plain decoding, the --also configs, the runner-ups (and the grid), each once. A config
    the static model covers becomes a Config (predicted); a cost-aware one or one with a statistical level
    the tuner did not measure (what the race writes) stays a spec (measured only)."""
    chains = [] if opts.skip_chains else report["best_per_chain"]
    listed = [config_from(d) for d in chains + report["top"][: max(0, opts.top)]]
    if opts.grid:
        listed += validation_grid(report["settings"]["candidates"])
    seen: set = set()
    configs: list = []
    for c in [spec, Config()] + extra + listed:
        if not isinstance(c, Config) and modelled(c, meas):
            c = as_config(c)
        key = c.key if isinstance(c, Config) else json.dumps(c.to_json(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append(c)
    return configs


def _engine(c, target, neural: dict, statistical: dict) -> Cascade:
    if not isinstance(c, Config):  # a spec: its own scope (the configs are compared on the same prompts)
        return spec_cascade(c, target, neural, scope=json.dumps(c.to_json(), sort_keys=True))
    if not c.drafters:
        return Cascade(target, [])
    from ..spec import drafter_objects

    ds = drafter_objects(c.drafters, {}, target.info.vocab_size, neural, statistical)
    return Cascade(target, ds, CascadeConfig.make([list(r) for r in c.k], bottom_length=c.bottom_length))


def _measure(engines, configs, target, neural: dict, prompts, opts: ValidateOptions):
    """Every engine on every prompt (order rotated per prompt); outputs examined against plain decoding's."""
    from tqdm import tqdm

    from ..exactness import TIE, examine, noise_threshold

    plain_at = next(i for i, c in enumerate(configs) if isinstance(c, Config) and not c.drafters)
    for m in (target, *neural.values()):  # page the weights in before anything is timed
        m.rollback(0)
        m.extend(prompts[0][1][:1])
        m.rollback(0)
    seconds, steps = [0.0] * len(configs), [0] * len(configs)
    work: list[list[tuple[int, int]]] = [[] for _ in configs]
    mismatches, ties = [], 0
    with tqdm(total=len(prompts) * len(configs), desc="validate on eval prompts", disable=not opts.progress) as bar:
        for n, (pid, ids) in enumerate(prompts):
            outputs: dict[int, list[int]] = {}
            # rotate the order per prompt, so that a slow spell of the machine does not always hit one config
            for i in [(n + j) % len(engines) for j in range(len(engines))]:
                r = engines[i].generate(ids, opts.max_new_tokens)
                seconds[i] += r.metrics.seconds
                steps[i] += r.metrics.target_steps
                work[i].append((len(ids), len(r.tokens)))
                outputs[i] = r.tokens
                bar.update(1)
            for i, toks in outputs.items():  # every output against plain decoding's, differences examined
                if toks != outputs[plain_at]:
                    d = examine(target, ids, outputs[plain_at], toks, noise_threshold(target))
                    if d.verdict == TIE:
                        ties += 1
                    else:
                        mismatches.append(f"{label(configs[i])} on {pid}: {d.describe()}")
    return work, seconds, steps, ties, mismatches


def _rows(configs, meas: Measurements, traces, work, seconds, steps) -> list[dict]:
    model = CascadeModel(meas)
    rows = []
    for i, c in enumerate(configs):
        n_tok = sum(n for _, n in work[i])
        row = {"config": label(c), "drafters": list(c.drafters), "k": None, "bottom_length": None, "predicted": None,
               "analytic": None, "measured": n_tok / seconds[i], "predicted_tokens_per_pass": None,
               "measured_tokens_per_pass": n_tok / steps[i], "tuned": i == 0}
        if not isinstance(c, Config):  # measured only
            row.update(k=c.k.rows() if c.k else None, bottom_length=c.bottom_length)
            rows.append(row)
            continue
        pred = model.predict(c)
        analytic = pred.end_to_end(work[i])
        row.update(k=[list(r) for r in c.k] if c.k else None, bottom_length=c.bottom_length, predicted=analytic,
                   analytic=analytic, predicted_tokens_per_pass=pred.tokens_per_step)
        if traces:
            # the replay's decoding rate on the calibration traces, with this run's prompts' prefill
            rp = replay(c, meas, traces)
            pre = sum(pred.seconds(p, 0) for p, _ in work[i])
            row.update(predicted=n_tok / (pre + n_tok / rp.decode_tokens_per_second),
                       predicted_tokens_per_pass=rp.tokens_per_step)
        rows.append(row)
    return rows
