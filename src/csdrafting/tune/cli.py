"""`csdrafting tune`: choose the cascade and K from costs and acceptance measured on this machine.

    csdrafting tune [--target REF] [--drafters REF ...] [--out tuned.json] [--prompts N]
                    [--max-new-tokens N] [--threads N] [--dataset humaneval] [--reps 3]
    csdrafting tune --validate tuned.json [--prompts N] [--max-new-tokens N] [--top N]
                    [--skip-chains] [--grid] [--also OTHER.json ...] [--validate-out table.json]

The first form calibrates on the dataset's CALIBRATION split (acceptance along the target's greedy
text, cost curves of every model), searches, prints the predicted speed and the runner-ups, and writes
a cascade config (`generate`, `demo` and `bench` take it via --config) plus `<out>.report.json` with
every measurement and the calibration traces. The second form runs, on the EVAL split and with the real
engine, the tuned config, plain decoding, the best config of every other drafter chain, the next-best
configs, and optionally a stated grid, and prints predicted vs measured tok/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..protocol import CSDraftingError
from ..spec import DEFAULT_TARGET  # the shipped precision: what a user runs
from .acceptance import Trace
from .model import MAXGRAM, CascadeModel, Config, Measurements
from .replay import replay

DEFAULT_DRAFTERS = ["qwen2.5-coder-0.5b:Q4_K_M", "qwen2.5-coder-0.5b:Q4_0", MAXGRAM]


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csdrafting tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"target model reference (default {DEFAULT_TARGET})")
    p.add_argument("--drafters", nargs="+", default=None, metavar="REF",
                   help=f"candidate drafters, 'maxgram' for Max-Gram (default: {' '.join(DEFAULT_DRAFTERS)})")
    p.add_argument("--out", default="tuned.json", help="cascade config to write (default tuned.json)")
    p.add_argument("--report", help="where to write (or, with --validate, read) the measurements (default <out>.report.json)")
    p.add_argument("--prompts", type=int, default=None, help="calibration prompts (default 8; with --validate, eval prompts, default 5)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per generation (default 64)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per model (default 2)")
    p.add_argument("--backend", choices=["llamacpp", "hf"], default="llamacpp")
    p.add_argument("--device", default="cpu", help="--backend hf: cpu (default), cuda, cuda:N, mps or auto; written to the config")
    p.add_argument("--dtype", default="float32", help="--backend hf: float32 (default), bfloat16 or float16; written to the config")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="llama.cpp backend: layers offloaded to the GPU (-1 = all)")
    p.add_argument("--dataset", default="humaneval", choices=["humaneval", "mtbench", "mmlu"])
    p.add_argument("--reps", type=int, default=3, help="timings per cost-curve point (median kept)")
    p.add_argument("--max-quota", type=int, default=48, help="largest cumulative draft length the search considers")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-race", action="store_true",
                   help="skip the final race of the best static config against cost-aware (dynamic) candidates")
    p.add_argument("--race-prompts", type=int, default=4, help="calibration prompts the race runs (default 4)")
    p.add_argument("--validate", metavar="CONFIG", help="measure a tuned config and its runner-ups on EVAL prompts")
    p.add_argument("--top", type=int, default=4, help="with --validate: also measure this many next-best configs")
    p.add_argument("--skip-chains", action="store_true",
                   help="with --validate: do not measure the best configuration of every other drafter chain")
    p.add_argument("--grid", action="store_true",
                   help="with --validate: also measure the stated grid (see validation_grid) over the tuned candidates")
    p.add_argument("--also", action="append", default=[], metavar="CONFIG",
                   help="with --validate: also measure this cascade config (same target; repeatable)")
    p.add_argument("--validate-out", help="with --validate: write the table as JSON here")
    return p


def _positive(name: str, v: int | None) -> None:
    if v is not None and v <= 0:
        raise CSDraftingError(f"{name} must be a positive integer (got {v})")


def _load_prompts(target, dataset: str, n: int, split: str, n_ctx: int, max_new: int) -> list[tuple[str, list[int]]]:
    from ..datasets import load
    from ..text import chat_prompt, encode

    items = load(dataset, lambda u: chat_prompt(target, u), limit=n, split=split)
    if not items:
        raise CSDraftingError(f"the {split} split of {dataset} has no prompts")
    out = []
    for it in items:
        ids = encode(target, it.text)
        if len(ids) + max_new <= n_ctx:
            out.append((it.id, ids))
    if not out:
        raise CSDraftingError(f"every {split} prompt of {dataset} is longer than n_ctx={n_ctx} minus max_new_tokens")
    return out


def _load_models(target_ref: str, refs: list[str], backend: str, threads: int, n_ctx: int, place=lambda ref: {}):
    """Target, neural drafters by reference, and Max-Gram; place(ref) gives load_model's placement keywords."""
    from ..drafters.corpus import load_default_qwen_bigram
    from ..drafters.maxgram import MaxGram
    from ..spec import check_ref, load_model

    for ref in [target_ref, *refs]:  # fail on a bad name before loading gigabytes
        if ref != MAXGRAM:
            check_ref(ref)
    if target_ref == MAXGRAM:
        raise CSDraftingError("the target must be a neural model, not maxgram")
    if len(set(refs)) != len(refs):
        raise CSDraftingError(f"a drafter is listed twice: {refs}")
    if target_ref in refs:
        raise CSDraftingError(f"{target_ref} is both the target and a drafter")
    print(f"loading {target_ref} and {len([r for r in refs if r != MAXGRAM])} drafter(s) ({backend}, {threads} threads)", file=sys.stderr)
    target = load_model(target_ref, backend, threads, n_ctx, **place(target_ref))
    neural = {r: load_model(r, backend, threads, n_ctx, **place(r)) for r in refs if r != MAXGRAM}
    table = load_default_qwen_bigram()
    maxgram = MaxGram(table if table.vocab_size == target.info.vocab_size else None)
    return target, neural, maxgram


def _fmt_k(k) -> str:
    return "[" + ",".join("[" + ",".join(str(v) for v in row) + "]" for row in k) + "]" if k else "-"


def _short(name: str) -> str:
    return name.replace("qwen2.5-coder-", "")


def _config_row(rank, r) -> str:
    cfg = r.config
    chain = " > ".join(_short(d) for d in cfg.drafters) or "(plain decoding)"
    mg = str(cfg.maxgram_length) if MAXGRAM in cfg.drafters and cfg.maxgram_length else "-"
    tpp = r.replay.tokens_per_step if r.replay else r.prediction.tokens_per_step
    return (f"{rank:>4} {chain:<36} {_fmt_k(cfg.k):<28} {mg:>3} {r.score:>7.2f} {r.analytic:>8.2f} {tpp:>8.2f}")


HEAD = f"{'rank':>4} {'drafters':<36} {'K (cumulative)':<28} {'mg':>3} {'tok/s':>7} {'analytic':>8} {'tok/pass':>8}"


def _print_costs(meas: Measurements, out) -> None:
    ns = [1, 2, 4, 8, 16, 32]
    print("cost curves, ms per forward pass over n new tokens (measured here):", file=out)
    print(f"  {'model':<30}" + "".join(f"{n:>8}" for n in ns) + f"{'prefill/tok':>12}", file=out)
    for name, c in meas.costs.items():
        if name == MAXGRAM:
            continue
        print(f"  {_short(name):<30}" + "".join(f"{1000 * c(n):>8.1f}" for n in ns) + f"{1000 * c.prefill[1]:>12.2f}", file=out)
    mg = meas.costs.get(MAXGRAM)
    if mg:
        print(f"  {'maxgram (proposal of n)':<30}" + "".join(f"{1000 * mg(n):>8.2f}" for n in ns), file=out)


def _print_acceptance(meas: Measurements, out) -> None:
    print("acceptance per draft position (conditional on the earlier ones), reviewer <- drafter:", file=out)
    for (r, d), p in meas.acceptance.items():
        vals = " ".join(f"{p.at(i):.2f}" for i in range(1, 9))
        print(f"  {_short(r):>14} <- {_short(d):<14} {vals}", file=out)
        if (r, d) in meas.restart:
            for label, q in zip(("after a rejection", "after an acceptance"), meas.restart[(r, d)]):
                print(f"  {'':>14}    {label:<22}" + " ".join(f"{q.at(i):.2f}" for i in range(1, 6)), file=out)


def _ranked_json(r) -> dict:
    d = {"score": r.score, "analytic_score": r.analytic, **r.prediction.to_json()}
    if r.replay is not None:
        d["replay"] = {"tokens_per_target_pass": r.replay.tokens_per_step, "tokens_per_second": r.replay.tokens_per_second,
                       "decode_tokens_per_second": r.replay.decode_tokens_per_second, "passes": r.replay.passes}
    return d


def _placement_spec(args: argparse.Namespace):
    """--device/--dtype/--n-gpu-layers checked as a spec checks them, before anything loads."""
    from ..spec import CascadeSpec

    spec = CascadeSpec(target=args.target, backend=args.backend, device=args.device, dtype=args.dtype,
                       n_gpu_layers=args.n_gpu_layers)
    spec.validate_placement()
    return spec


def run_tune(args: argparse.Namespace, out=None) -> int:
    from .tuner import to_spec, tune

    out = out or sys.stdout
    refs = args.drafters if args.drafters is not None else list(DEFAULT_DRAFTERS)
    n_prompts = 8 if args.prompts is None else args.prompts
    max_new = 64 if args.max_new_tokens is None else args.max_new_tokens
    _positive("--prompts", n_prompts)
    _positive("--max-new-tokens", max_new)
    _positive("--threads", args.threads)
    _positive("--reps", args.reps)
    if not refs:
        raise CSDraftingError("give at least one candidate drafter (or 'maxgram')")
    placed = _placement_spec(args)
    t0 = time.perf_counter()
    target, neural, maxgram = _load_models(args.target, refs, args.backend, args.threads, args.n_ctx, placed.placement)
    t_load = time.perf_counter() - t0
    prompts = _load_prompts(target, args.dataset, n_prompts, "calibration", args.n_ctx, max_new)
    res = tune(target, args.target, neural, [p for _, p in prompts], max_new, refs, maxgram,
               reps=args.reps, max_quota=args.max_quota, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    meas, cal, sr = res.measurements, res.calibration, res.result
    best = sr.best
    plain = sr.best_per_chain[()]
    tokens = sum(n for _, n in cal.workload)

    print(f"\ntuned in {elapsed:.0f} s (loading {t_load:.0f} s, calibration {cal.seconds:.0f} s, search {sr.evaluations} "
          f"configurations); {len(prompts)} calibration prompts of {args.dataset}, {tokens} target tokens; "
          f"{args.backend}, {args.threads} threads", file=out)
    _print_costs(meas, out)
    _print_acceptance(meas, out)
    chk = res.helper_check()
    if chk["measured_tokens_per_second"]:
        print(f"model check on the cascade that generated the calibration text ({chk['config']}):\n"
              f"  tok/s: replay {chk['predicted_tokens_per_second']:.2f}, analytic {chk['analytic_tokens_per_second']:.2f}, "
              f"measured {chk['measured_tokens_per_second']:.2f}; tokens per target pass: replay "
              f"{chk['replay_tokens_per_target_pass']:.2f}, analytic {chk['analytic_tokens_per_target_pass']:.2f}, "
              f"measured {chk['measured_tokens_per_target_pass']:.2f}", file=out)
    print("\npredicted tok/s end to end on the calibration workload, prompt prefill included (tok/s: trace replay; "
          "analytic: the EWIF-style model); the best configuration of each drafter chain:", file=out)
    print(HEAD, file=out)
    print("-" * len(HEAD), file=out)
    print(_config_row(1, best), file=out)
    for i, r in enumerate(sr.runners_up(12), start=2):
        print(_config_row(i, r), file=out)
    tpp = best.replay.tokens_per_step if best.replay else best.prediction.tokens_per_step
    print(f"\nbest: {best.config.describe()}\n  predicted {best.score:.2f} tok/s end to end (analytic model "
          f"{best.analytic:.2f}), {tpp:.2f} tokens per target pass, {best.score / plain.score:.2f}x plain decoding "
          f"({plain.score:.2f} tok/s)", file=out)

    cfg = best.config
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = (f"csdrafting tune {stamp}: predicted {best.score:.2f} tok/s end to end (analytic model {best.analytic:.2f}; "
            f"{tpp:.2f} tokens/target pass; plain decoding {plain.score:.2f}) for "
            f"{args.dataset} prompts, {max_new} new tokens, {args.backend}, {args.threads} threads; "
            f"measurements in {report_path(args.out).name}")
    spec = to_spec(cfg, args.target, args.backend, args.threads, args.n_ctx, note,
                   device=placed.device, dtype=placed.dtype, n_gpu_layers=placed.n_gpu_layers)
    race_table = []
    if not args.no_race:
        spec, race_table = _race_dynamic(args, spec, target, neural, maxgram, meas, cal, prompts, max_new, stamp, out)
    spec.save(args.out)
    rep = Path(args.report) if args.report else report_path(args.out)
    report = {
        "spec": spec.to_json(),
        "settings": {"target": args.target, "candidates": refs, "dataset": args.dataset, "split": "calibration",
                     "prompt_ids": [i for i, _ in prompts], "max_new_tokens": max_new, "threads": args.threads,
                     "backend": args.backend, "reps": args.reps, "max_quota": args.max_quota,
                     "device": placed.device, "dtype": placed.dtype, "n_gpu_layers": placed.n_gpu_layers},
        "timing_seconds": {"total": elapsed, "loading": t_load, "calibration": cal.seconds},
        "workload": [list(w) for w in cal.workload],
        "measurements": meas.to_json(),
        "model_check": chk,
        "best": _ranked_json(best),
        "best_per_chain": [_ranked_json(r) for r in sorted(sr.best_per_chain.values(), key=lambda r: -r.score)],
        "top": [_ranked_json(r) for r in sr.ranked[:30]],
        "stats": cal.stats,
        "race": race_table,
        "traces": traces_to_json(cal.traces),
    }
    rep.parent.mkdir(parents=True, exist_ok=True)
    rep.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} (use it with --config) and {rep}", file=out)
    return 0


def _race_dynamic(args, static_spec, target, neural, maxgram, meas, cal, prompts, max_new, stamp, out):
    """Race the best static config against cost-aware candidates built from the measurements (race.py).

    Returns the winner's spec (with its cost curves and, for the suffix drafter, the calibration written
    beside the config) and the race table.
    """
    from dataclasses import replace

    from ..spec import SUFFIX, statistical_drafter
    from .race import Entry, race

    # calibrated as the race runs it (bigram fallback, store), else its sources would go unmeasured
    measured_as = statistical_drafter(replace(static_spec, suffix_calibration=None), SUFFIX, target.info.vocab_size)
    suffix_cal = measured_as.calibrate([(tr.prompt, tr.tokens) for tr in cal.traces],
                                       meta={"target": args.target, "source": "csdrafting tune calibration traces",
                                             "store": static_spec.suffix_persist})
    cal_path = Path(args.out).with_name(Path(args.out).stem + ".suffix.json")
    suffix_cal.save(cal_path)
    models = {args.target: target, **neural}
    costs = {ref: meas.costs[ref].to_json() for ref in models if ref in meas.costs}
    base = replace(static_spec, dynamic=True, costs=costs, suffix_calibration=cal_path.name, lenience=1.0,
                   maxgram_length=None, note="")
    candidates = [replace(base, drafters=[SUFFIX], k=[[16]])]
    for ref in neural:
        candidates.append(replace(base, drafters=[ref, SUFFIX], k=[[12, 28], [0, 0]]))  # D, then suffix (horizontal)
        candidates.append(replace(base, drafters=[ref, SUFFIX], k=[[12, 12], [0, 8]]))  # D reviewing suffix (vertical)

    def engine(spec):
        return lambda: _spec_engine(replace(spec, suffix_calibration=str(cal_path)), target, neural, maxgram)

    entries = [Entry(f"static best: {static_spec.describe()}", engine(static_spec), static_spec)]
    entries += [Entry(c.describe(), engine(c), c) for c in candidates]
    race_prompts = [p for _, p in prompts[: max(1, min(len(prompts), args.race_prompts))]]
    print(f"\nrace on {len(race_prompts)} calibration prompts x {max_new} tokens (measured, end to end; median of "
          "per-prompt ratios to plain decoding run in the same loop):", file=out)
    plain_entry = race(target, entries, race_prompts, max_new, progress=not args.no_progress)
    table = []
    for e in entries:
        sp = e.median_speedup(plain_entry)
        same = sum(o == p for o, p in zip(e.outputs, plain_entry.outputs))
        table.append({"config": e.label, "median_speedup": sp, "tokens_per_second": sum(e.tokens) / sum(e.seconds),
                      "identical_to_plain": f"{same}/{len(race_prompts)}", "spec": e.spec.to_json()})
        print(f"  {sp:5.2f}x  {sum(e.tokens) / sum(e.seconds):6.2f} tok/s  identical {same}/{len(race_prompts)}  {e.label}", file=out)
    best = max(entries, key=lambda e: e.median_speedup(plain_entry))
    spec = best.spec
    spec.note = (f"csdrafting tune {stamp}: raced best, measured {best.median_speedup(plain_entry):.2f}x plain decoding "
                 f"(median over {len(race_prompts)} {args.dataset} calibration prompts, {max_new} tokens, "
                 f"{args.backend}, {args.threads} threads); measurements in {report_path(args.out).name}")
    print(f"raced best: {spec.describe()}", file=out)
    return spec, table


# ------------------------------------------------------------------------------------------------ validate


def traces_to_json(traces) -> list[dict]:
    return [{"prompt": tr.prompt, "tokens": tr.tokens, "greedy": {k: v.tolist() for k, v in tr.greedy.items()},
             "maxgram": tr.maxgram, "match_length": tr.match_length} for tr in traces]


def traces_from_json(data: list[dict]) -> list[Trace]:
    import numpy as np

    return [Trace(d["prompt"], d["tokens"], {k: np.array(v, dtype=np.int64) for k, v in d["greedy"].items()},
                  d["maxgram"], d["match_length"]) for d in data]


def _config_from(d: dict) -> Config:
    return Config(tuple(d["drafters"]), tuple(tuple(r) for r in d["k"]) if d["k"] else None,
                  d.get("maxgram_length"))


def validation_grid(candidates: list[str]) -> list[Config]:
    """The grid that --validate --grid measures exhaustively (neural candidates in the order given):

    - plain decoding;
    - every candidate alone (speculative decoding; Max-Gram alone): K = [[k]], k in 2, 4, 8, 12;
    - every neural candidate over Max-Gram: K = [[k, k + m], [0, m]], k in 4, 8, m in 4, 8;
    - every ordered pair of neural candidates: K = [[k, k + 8], [0, 4]], k in 4, 8; and over Max-Gram,
      K = [[k, k + 8, k + 12], [0, 4, 8], [0, 0, 8]], k in 4, 8.
    """
    neural = [c for c in candidates if c != MAXGRAM]
    mg = MAXGRAM in candidates
    out = [Config()]
    for d in candidates:
        out += [Config((d,), ((k,),)) for k in (2, 4, 8, 12)]
    if mg:
        for d in neural:
            out += [Config((d, MAXGRAM), ((k, k + m), (0, m))) for k in (4, 8) for m in (4, 8)]
    for a in neural:
        for b in neural:
            if a != b:
                out += [Config((a, b), ((k, k + 8), (0, 4))) for k in (4, 8)]
                if mg:
                    out += [Config((a, b, MAXGRAM), ((k, k + 8, k + 12), (0, 4, 8), (0, 0, 8))) for k in (4, 8)]
    return out


def _spec_config(spec) -> Config:
    k = spec.cascade_config().k
    return Config(tuple(spec.drafters), k.cumulative if k else None,
                  spec.maxgram_length if MAXGRAM in spec.drafters else None)


def _spec_engine(spec, target, neural: dict, maxgram):
    """The cascade a spec describes, over models already loaded (statistical drafters built as the spec
    configures them; cost curves from the spec, else measured now)."""
    from ..cascade.engine import Cascade
    from ..spec import STATISTICAL, cost_curves, statistical_drafter

    drafters = []
    for ref in spec.drafters:
        if ref == MAXGRAM:
            drafters.append(maxgram)
        elif ref in STATISTICAL:
            drafters.append(statistical_drafter(spec, ref, target.info.vocab_size))
        else:
            drafters.append(neural[ref])
    return Cascade(target, drafters, spec.cascade_config(cost_curves(spec, [target, *drafters], progress=False)))


def _modelled(spec) -> bool:
    """Whether the tuner's static model can predict this spec (static K over neural drafters and Max-Gram)."""
    from ..spec import STATISTICAL

    return not spec.dynamic and all(d == MAXGRAM or d not in STATISTICAL for d in spec.drafters)


def _engine(target, neural, maxgram, c: Config):
    from ..cascade.config import CascadeConfig
    from ..cascade.engine import Cascade

    if not c.drafters:
        return Cascade(target, [])
    ds = [maxgram if d == MAXGRAM else neural[d] for d in c.drafters]
    mg = c.maxgram_length if MAXGRAM in c.drafters else None
    return Cascade(target, ds, CascadeConfig.make([list(r) for r in c.k], maxgram_length=mg))


def run_validate(args: argparse.Namespace, out=None) -> int:
    """Predicted vs measured tok/s on EVAL prompts for the tuned config, the runner-ups and plain decoding."""
    out = out or sys.stdout
    from ..spec import CascadeSpec

    spec = CascadeSpec.load(args.validate)
    rep_path = Path(args.report) if args.report else report_path(args.validate)
    if not rep_path.is_file():
        raise CSDraftingError(f"no tuning report at {rep_path}: pass --report, the .report.json written by `csdrafting tune`")
    report = json.loads(rep_path.read_text())
    meas = Measurements.from_json(report["measurements"])
    n_prompts = 5 if args.prompts is None else args.prompts
    max_new = 64 if args.max_new_tokens is None else args.max_new_tokens
    _positive("--prompts", n_prompts)
    _positive("--max-new-tokens", max_new)

    extra = [CascadeSpec.load(a) for a in args.also]
    for e in extra:
        if e.target != spec.target:
            raise CSDraftingError(f"--also {e.target} has another target than {args.validate} ({spec.target})")
    from ..exactness import TIE, examine, noise_threshold
    from ..spec import STATISTICAL

    # a static config over neural drafters and Max-Gram is predicted by the tuner's model; a cost-aware one
    # or one with the suffix drafter (what the race writes) is measured only, built from its spec
    configs: list[Config | object] = []
    chains = [] if args.skip_chains else report["best_per_chain"]
    listed = [_config_from(d) for d in chains + report["top"][: max(0, args.top)]]
    if args.grid:
        listed += validation_grid(report["settings"]["candidates"])
    seen: set = set()
    for c in [spec, Config()] + extra + listed:
        if not isinstance(c, Config) and _modelled(c):
            c = _spec_config(c)
        key = c.key if isinstance(c, Config) else json.dumps(c.to_json(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append(c)
    refs = sorted({d for c in configs for d in c.drafters if d == MAXGRAM or d not in STATISTICAL})
    target, neural, maxgram = _load_models(spec.target, refs, spec.backend, spec.threads, spec.n_ctx, spec.placement)
    prompts = _load_prompts(target, report["settings"]["dataset"], n_prompts, "eval", spec.n_ctx, max_new)
    engines = [_engine(target, neural, maxgram, c) if isinstance(c, Config) else _spec_engine(c, target, neural, maxgram)
               for c in configs]
    plain_at = next(i for i, c in enumerate(configs) if isinstance(c, Config) and not c.drafters)
    for m in (target, *neural.values()):  # page the weights in before anything is timed
        m.rollback(0)
        m.extend(prompts[0][1][:1])
        m.rollback(0)
    seconds = [0.0] * len(configs)
    steps = [0] * len(configs)
    work: list[list[tuple[int, int]]] = [[] for _ in configs]
    mismatches, ties = [], 0
    from tqdm import tqdm

    with tqdm(total=len(prompts) * len(configs), desc="validate on eval prompts", disable=args.no_progress) as bar:
        for n, (pid, ids) in enumerate(prompts):
            outputs: dict[int, list[int]] = {}
            # rotate the order per prompt, so that a slow spell of the machine does not always hit one config
            for i in [(n + j) % len(engines) for j in range(len(engines))]:
                r = engines[i].generate(ids, max_new)
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
                        mismatches.append(f"{_label(configs[i])} on {pid}: {d.describe()}")
    model = CascadeModel(meas)
    traces = traces_from_json(report.get("traces", []))
    rows = []
    for i, c in enumerate(configs):
        n_tok = sum(n for _, n in work[i])
        if not isinstance(c, Config):  # measured only
            rows.append({"config": _label(c), "drafters": list(c.drafters), "k": c.cascade_config().k.cumulative
                         if c.cascade_config().k else None, "maxgram_length": c.maxgram_length, "predicted": None,
                         "analytic": None, "measured": n_tok / seconds[i], "predicted_tokens_per_pass": None,
                         "measured_tokens_per_pass": n_tok / steps[i], "tuned": i == 0})
            continue
        pred = model.predict(c)
        analytic = pred.end_to_end(work[i])
        row = {"config": c.describe(), "drafters": list(c.drafters), "k": [list(r) for r in c.k] if c.k else None,
               "maxgram_length": c.maxgram_length, "predicted": analytic, "analytic": analytic,
               "measured": n_tok / seconds[i], "predicted_tokens_per_pass": pred.tokens_per_step,
               "measured_tokens_per_pass": n_tok / steps[i], "tuned": i == 0}
        if traces:
            # the replay's decoding rate on the calibration traces, with this run's prompts' prefill
            rp = replay(c, meas, traces)
            pre = sum(pred.seconds(p, 0) for p, _ in work[i])
            row.update(predicted=n_tok / (pre + n_tok / rp.decode_tokens_per_second),
                       predicted_tokens_per_pass=rp.tokens_per_step)
        rows.append(row)
    best_measured = max(r["measured"] for r in rows)
    print(f"\n{len(prompts)} eval prompts of {report['settings']['dataset']}, {max_new} new tokens; tok/s include the "
          "prompt's prefill; predicted = trace replay of the calibration text + this run's prefill, analytic = the "
          "EWIF-style model", file=out)
    head = (f"{'config':<64} {'predicted':>9} {'analytic':>8} {'measured':>9} {'meas/pred':>9} {'vs best':>8} "
            f"{'tok/pass pred':>13} {'meas':>6}")
    print(head, file=out)
    print("-" * len(head), file=out)

    def f(x, spec):
        return format(x, spec) if x is not None else "–"

    for r in sorted(rows, key=lambda r: -r["measured"]):
        mark = " *" if r["tuned"] else ""
        ratio = r["measured"] / r["predicted"] if r["predicted"] else None
        print(f"{(r['config'] + mark)[:64]:<64} {f(r['predicted'], '>9.2f'):>9} {f(r['analytic'], '>8.2f'):>8} "
              f"{r['measured']:>9.2f} {f(ratio, '>9.2f'):>9} {r['measured'] / best_measured:>8.0%} "
              f"{f(r['predicted_tokens_per_pass'], '>13.2f'):>13} {r['measured_tokens_per_pass']:>6.2f}", file=out)
    t = rows[0]
    err = (f"prediction error {100 * (t['predicted'] - t['measured']) / t['measured']:+.1f}%" if t["predicted"]
           else "the tuner's static model does not cover it (cost-aware, or the suffix drafter): measured only")
    print(f"\ntuned config (*): measured {t['measured']:.2f} tok/s = {t['measured'] / best_measured:.0%} of the best "
          f"measured; {err}", file=out)
    print(f"exactness against plain decoding: {ties} numerical ties, {len(mismatches)} mismatches", file=out)
    for m in mismatches:
        print(f"ERROR: mismatch: {m}", file=out)
    if args.validate_out:
        Path(args.validate_out).write_text(json.dumps({"prompts": n_prompts, "max_new_tokens": max_new, "rows": rows,
                                                       "ties": ties, "mismatches": mismatches}, indent=1))
    return 1 if mismatches else 0


def _label(c) -> str:
    """A validated configuration's name: a Config's own description, or a spec's drafters, K and mode."""
    if isinstance(c, Config):
        return c.describe()
    k = c.cascade_config().k
    return (f"{' > '.join(c.drafters) or 'plain'} K={_fmt_k(k.cumulative if k else None)}"
            + (" cost-aware" if c.dynamic else ""))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run_validate(args) if args.validate else run_tune(args)
    except CSDraftingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
