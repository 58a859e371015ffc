"""`csdrafting tune` and `csdrafting calibrate` on the command line: flags in, tables out.

    csdrafting tune [--target REF] [--drafters REF ...] [--out tuned.json] [--prompts N]
                    [--max-new-tokens N] [--threads N] [--dataset humaneval] [--reps 3]
    csdrafting tune --validate tuned.json [--prompts N] [--max-new-tokens N] [--top N]
                    [--skip-chains] [--grid] [--also OTHER.json ...] [--validate-out table.json]

The first form calibrates on the dataset's CALIBRATION split (acceptance along the target's greedy
text, cost curves of every model), searches, prints the predicted speed and the runner-ups, and writes
a cascade config (`generate`, `demo` and `bench` take it via --config) plus `<out>.report.json` with
every measurement and the calibration traces. The second form runs, on the EVAL split and with the real
engine, the tuned config, plain decoding, the best config of every other drafter chain, the next-best
configs, and optionally a stated grid, and prints predicted vs measured tok/s. The work is done by
pipeline.py and validate.py (callable from Python); this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..datasets import DATASETS
from ..drafters.registry import is_statistical
from ..flags import PLACEMENT, add_placement_args
from ..protocol import run_guarded
from ..spec import DEFAULT_TARGET
from .pipeline import DEFAULT_DRAFTERS, TuneOptions, TuneRun, run_tune, tokens_per_pass
from .race import neural_rationale
from .speed import Measurements
from .validate import ValidateOptions, ValidateRun, run_validate

PLACED = {"backend": "llamacpp", "threads": 2, "n_ctx": 4096, "device": "cpu", "dtype": "float32", "n_gpu_layers": 0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csdrafting tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"target model reference (default {DEFAULT_TARGET})")
    p.add_argument("--drafters", nargs="+", default=None, metavar="REF",
                   help=f"candidate drafters, models or registered statistical drafters (default: {' '.join(DEFAULT_DRAFTERS)})")
    p.add_argument("--out", default="tuned.json", help="cascade config to write (default tuned.json)")
    p.add_argument("--report", help="where to write (or, with --validate, read) the measurements (default <out>.report.json)")
    p.add_argument("--prompts", type=int, default=None, help="calibration prompts (default 8; with --validate, eval prompts, default 5)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per generation (default 64)")
    add_placement_args(p, PLACED)
    p.add_argument("--dataset", default="humaneval",
                   help="calibration prompts from this dataset, or several comma-separated (taken in turn), e.g. "
                        "humaneval,codeedit,specbench: " + ", ".join(DATASETS))
    p.add_argument("--reps", type=int, default=3, help="timings per cost-curve point (median kept)")
    p.add_argument("--max-quota", type=int, default=48, help="largest cumulative draft length the search considers")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_guarded(lambda: _validate(args) if args.validate else _tune(args))


def _tune(args: argparse.Namespace) -> int:
    given = {k: v for k, v in (("prompts", args.prompts), ("max_new_tokens", args.max_new_tokens)) if v is not None}
    opts = TuneOptions(target=args.target, drafters=tuple(args.drafters) if args.drafters is not None else DEFAULT_DRAFTERS,
                       out=args.out, report=args.report, dataset=args.dataset, reps=args.reps, max_quota=args.max_quota,
                       race=not args.no_race, race_prompts=args.race_prompts, progress=not args.no_progress,
                       **{k: getattr(args, k) for k in PLACEMENT}, **given)
    print_tune(run_tune(opts), sys.stdout)
    return 0


def _validate(args: argparse.Namespace) -> int:
    given = {k: v for k, v in (("prompts", args.prompts), ("max_new_tokens", args.max_new_tokens)) if v is not None}
    run = run_validate(ValidateOptions(args.validate, args.report, top=args.top, skip_chains=args.skip_chains,
                                       grid=args.grid, also=tuple(args.also), progress=not args.no_progress, **given))
    print_validation(run, sys.stdout)
    if args.validate_out:
        Path(args.validate_out).write_text(json.dumps(run.to_json(), indent=1))
    return 1 if run.mismatches else 0


# ------------------------------------------------------------------------------------------------ printing


def _fmt_k(k) -> str:
    return "[" + ",".join("[" + ",".join(str(v) for v in row) + "]" for row in k) + "]" if k else "-"


def _short(name: str) -> str:
    return name.replace("qwen2.5-coder-", "")


HEAD = f"{'rank':>4} {'drafters':<36} {'K (cumulative)':<28} {'len':>3} {'tok/s':>7} {'analytic':>8} {'tok/pass':>8}"


def _config_row(rank, r) -> str:
    cfg = r.config
    chain = " > ".join(_short(d) for d in cfg.drafters) or "(plain decoding)"
    length = str(cfg.bottom_length) if cfg.statistical_bottom and cfg.bottom_length else "-"
    return (f"{rank:>4} {chain:<36} {_fmt_k(cfg.k):<28} {length:>3} {r.score:>7.2f} {r.analytic:>8.2f} "
            f"{tokens_per_pass(r):>8.2f}")


def print_costs(meas: Measurements, out) -> None:
    ns = [1, 2, 4, 8, 16, 32]
    print("cost curves, ms per forward pass over n new tokens (measured here):", file=out)
    print(f"  {'model':<30}" + "".join(f"{n:>8}" for n in ns) + f"{'prefill/tok':>12}", file=out)
    for name, c in meas.costs.items():
        if not is_statistical(name):
            print(f"  {_short(name):<30}" + "".join(f"{1000 * c(n):>8.1f}" for n in ns) + f"{1000 * c.prefill[1]:>12.2f}", file=out)
    for name, c in meas.costs.items():
        if is_statistical(name):
            print(f"  {name + ' (proposal of n)':<30}" + "".join(f"{1000 * c(n):>8.2f}" for n in ns), file=out)


def print_acceptance(meas: Measurements, out) -> None:
    print("acceptance per draft position (conditional on the earlier ones), reviewer <- drafter:", file=out)
    for (r, d), p in meas.acceptance.items():
        vals = " ".join(f"{p.at(i):.2f}" for i in range(1, 9))
        print(f"  {_short(r):>14} <- {_short(d):<14} {vals}", file=out)
        if (r, d) in meas.restart:
            for label, q in zip(("after a rejection", "after an acceptance"), meas.restart[(r, d)]):
                print(f"  {'':>14}    {label:<22}" + " ".join(f"{q.at(i):.2f}" for i in range(1, 6)), file=out)


def print_tune(run: TuneRun, out) -> None:
    opts, res = run.options, run.result
    cal, sr = res.calibration, res.result
    best, plain = sr.best, sr.best_per_chain[()]
    print(f"\ntuned in {run.seconds:.0f} s (loading {run.load_seconds:.0f} s, calibration {cal.seconds:.0f} s, search "
          f"{sr.evaluations} configurations); {len(run.prompts)} calibration prompts of {opts.dataset}, "
          f"{sum(n for _, n in cal.workload)} target tokens; {opts.backend}, {opts.threads} threads", file=out)
    print_costs(res.measurements, out)
    print_acceptance(res.measurements, out)
    chk = run.report["model_check"]
    if chk["measured_tokens_per_second"]:
        print(f"model check on the cascade that generated the calibration text ({chk['config']}):\n"
              f"  tok/s: replay {chk['predicted_tokens_per_second']:.2f}, analytic {chk['analytic_tokens_per_second']:.2f}, "
              f"measured {chk['measured_tokens_per_second']:.2f}; tokens per target pass: replay "
              f"{chk['replay_tokens_per_target_pass']:.2f}, analytic {chk['analytic_tokens_per_target_pass']:.2f}, "
              f"measured {chk['measured_tokens_per_target_pass']:.2f}", file=out)
    print("\npredicted tok/s end to end on the calibration workload, prompt prefill included (tok/s: trace replay; "
          "analytic: the EWIF-style model); the best configuration of each drafter chain:", file=out)
    print(HEAD + "\n" + "-" * len(HEAD), file=out)
    for i, r in enumerate([best, *sr.runners_up(12)], start=1):
        print(_config_row(i, r), file=out)
    print(f"\nbest: {best.config.describe()}\n  predicted {best.score:.2f} tok/s end to end (analytic model "
          f"{best.analytic:.2f}), {tokens_per_pass(best):.2f} tokens per target pass, {best.score / plain.score:.2f}x "
          f"plain decoding ({plain.score:.2f} tok/s)", file=out)
    if run.race:
        n = len(run.prompts[: max(1, opts.race_prompts)])
        print(f"\nrace on {n} calibration prompts x {opts.max_new_tokens} tokens (measured, end to end; median of "
              "per-prompt ratios to plain decoding run in the same loop):", file=out)
        for row in run.race:
            print(f"  {row['median_speedup']:5.2f}x  {row['tokens_per_second']:6.2f} tok/s  identical "
                  f"{row['identical_to_plain']}  {row['config']}", file=out)
        print(f"raced best: {run.spec.describe()}", file=out)
        print(neural_rationale(run.race), file=out)
    print(f"wrote {opts.out} (use it with --config) and {opts.report_file}", file=out)


def print_validation(run: ValidateRun, out) -> None:
    rows = run.rows
    best_measured = max(r["measured"] for r in rows)
    print(f"\n{run.prompts} eval prompts of {run.dataset}, {run.max_new_tokens} new tokens; tok/s include the "
          "prompt's prefill; predicted = trace replay of the calibration text + this run's prefill, analytic = the "
          "EWIF-style model", file=out)
    head = (f"{'config':<64} {'predicted':>9} {'analytic':>8} {'measured':>9} {'meas/pred':>9} {'vs best':>8} "
            f"{'tok/pass pred':>13} {'meas':>6}")
    print(head + "\n" + "-" * len(head), file=out)

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
           else "the tuner's static model does not cover it (cost-aware, or a statistical level it did not measure): "
                "measured only")
    print(f"\ntuned config (*): measured {t['measured']:.2f} tok/s = {t['measured'] / best_measured:.0%} of the best "
          f"measured; {err}", file=out)
    print(f"exactness against plain decoding: {run.ties} numerical ties, {len(run.mismatches)} mismatches", file=out)
    for m in run.mismatches:
        print(f"ERROR: mismatch: {m}", file=out)


# ------------------------------------------------------------------------------------------------ calibrate


def calibrate_main(argv: list[str] | None = None) -> int:
    """`csdrafting calibrate`: measure the suffix drafter's confidence table (see calibrate.py)."""
    from ..drafters.suffix import default_calibration_path
    from .calibrate import DRAFTER, calibrate_drafter, default_store

    ap = argparse.ArgumentParser(prog="csdrafting calibrate", description=sys.modules[__package__ + ".calibrate"].__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=DEFAULT_TARGET, help="target model ref (default: the built-in default's)")
    ap.add_argument("--datasets", default="humaneval,mmlu,mtbench")
    ap.add_argument("--prompts", type=int, default=8, help="calibration-split prompts per dataset")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    add_placement_args(ap, PLACED)
    ap.add_argument("--out", default=str(default_calibration_path()))
    ap.add_argument("--texts", default="runs/calibration-texts.jsonl",
                    help="JSONL cache of the target's outputs (resume; reuse across runs)")
    ap.add_argument("--store", action=argparse.BooleanOptionalAction, default=default_store(),
                    help=f"calibrate with the {DRAFTER} drafter's cross-request store, each dataset's texts walked in "
                         "order as a server meets them (the packaged calibration was made with it, so that "
                         f"--{DRAFTER}-persist finds its buckets measured; default: as the built-in default runs)")
    args = ap.parse_args(argv)

    def run() -> int:
        cal = calibrate_drafter(args.target, [d for d in args.datasets.split(",") if d], args.prompts,
                                args.max_new_tokens, args.store, Path(args.texts), args.out,
                                **{k: getattr(args, k) for k in PLACEMENT})
        print_calibration(cal, sys.stdout)
        print(f"tree headroom (two-way tree at the first position): {cal.meta['tree_headroom']}")
        print(f"wrote {args.out}", file=sys.stderr)
        return 0

    return run_guarded(run)


def print_calibration(cal, out) -> None:
    """Acceptance per source and dataset, then per bucket."""
    def by_source(counts: dict) -> dict[str, tuple[int, int]]:
        agg: dict[str, list[int]] = {}
        for k, (a, t) in counts.items():
            s = agg.setdefault(k.split(":", 1)[0], [0, 0])
            s[0] += a
            s[1] += t
        return {k: (a, t) for k, (a, t) in agg.items()}

    for ds, counts in cal.meta.get("per_dataset", {"all": cal.counts}).items():
        parts = [f"{src} {a}/{t} = {a / t:.0%}" for src, (a, t) in sorted(by_source(counts).items()) if t]
        print(f"{ds:>10}: " + "; ".join(parts), file=out)
    print(f"{'bucket':<18} {'accepted':>8} {'proposed':>8} {'rate':>6}", file=out)
    for k, a, t, r in cal.table():
        print(f"{k:<18} {a:>8} {t:>8} {r:>6.2f}", file=out)
