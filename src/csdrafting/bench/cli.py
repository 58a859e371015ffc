"""`csdrafting bench`: CS Drafting against plain decoding, speculative decoding and the peers.

    csdrafting bench quick                       # ~10 min on 2 cores: 1 prompt per dataset, 64 tokens
    csdrafting bench full                        # hours: 10 prompts per dataset, 128 tokens, calibration, peers
    csdrafting bench full --limit 20 --out runs/big
    csdrafting bench full --repeats 3            # each prompt's methods 3 rounds in a row; median timings
    csdrafting bench full --summary-only         # rebuild summary.md and the plots from records.jsonl
    csdrafting bench quick --peers llama-cpp-ngram-map-k,llama-cpp-ngram-mod   # + llama.cpp's own programs
    csdrafting bench noise --model qwen2.5-coder-1.5b:Q4_K_M   # batch-shape noise: the tie threshold
    csdrafting bench grounded                    # code edits and Spec-Bench's six groups beside llama.cpp's
                                                 # ngram-mod / ngram-map-k (their programs build once, ~10 min)

Output in --out (default runs/bench-<suite>/): records.jsonl (one record per prompt and method, written
as it goes, a repetition as its own line; rerun the same command to resume, with a higher --repeats to
add repetitions), prompts.json (the token ids every method was given),
run.json (the settings; a resume with different settings is refused), summary.md and *.png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..flags import add_cascade_args, spec_from_args
from ..protocol import CSDraftingError, run_guarded
from .. import datasets as ds_mod
from .llamacpp_bin import BIN_BASELINE
from .machine import machine, placement, versions
from .methods import DEFAULT_GRIDS, ENGINE, ENGINE_METHODS, HF, LLAMA, LLAMA_BIN, PEERS, build_methods
from .prompts import chat_render, context_needed, prepare_prompts
from .runner import (CALIBRATION, EVAL, ExecutorPool, RecordStore, choose_lengths, collapse_repeats, exclusive,
                     execute, plan)
from .summary import calibration_failures, exactness_failures, write_summary
from .turns import TIMINGS


@dataclass(frozen=True)
class Suite:
    limit: int  # eval prompts per dataset
    calibration_prompts: int  # per dataset; 0 = no calibration, grids collapse to their defaults
    max_new_tokens: int
    peers: tuple[str, ...]
    hf_limit: int  # eval prompts per dataset for the (slow) transformers peers
    datasets: tuple[str, ...] = ("humaneval", "mmlu", "mtbench")


SUITES = {
    # about 8-10 minutes on this 2-core machine with the F32 1.5B target: no calibration (sd k=4,
    # maxgram k=8, oracle k=16, llama prompt lookup 10), llama.cpp's prompt lookup as the only peer
    "quick": Suite(limit=1, calibration_prompts=0, max_new_tokens=64, peers=("llama-pld",), hf_limit=0),
    # several hours: draft lengths calibrated per dataset on 2 calibration prompts, all peers (the
    # transformers ones, ~1.5 tok/s for the 1.5B, on the first 3 eval prompts of each dataset)
    # (llama.cpp's own programs only on request, --peers llama-cpp-...: their first use builds them, ~10 min)
    "full": Suite(limit=10, calibration_prompts=2, max_new_tokens=128, peers=("llama-pld", "hf-assisted", "hf-pld"),
                  hf_limit=3),
    # issue 14's workloads, where drafting can pay (input-grounded work) and Spec-Bench group by group, beside
    # llama.cpp's own n-gram modes (5 eval prompts of each set, draft lengths calibrated on 1 prompt of each):
    # about 340 runs of 128 tokens, about an hour here with the 1.5B Q4_K_M target (README, "Benchmark")
    "grounded": Suite(limit=5, calibration_prompts=1, max_new_tokens=128,
                      peers=("llama-cpp-ngram-mod", "llama-cpp-ngram-map-k"), hf_limit=0,
                      datasets=("codeedit", "codeedit-lib", *(f"specbench-{g}" for g in ds_mod.SPECBENCH_GROUPS))),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"draft lengths must be positive integers, got {text!r}")
    return vals


def _names(choices):
    def parse(text: str) -> tuple[str, ...]:
        if text.strip().lower() in ("", "none"):
            return ()
        vals = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [v for v in vals if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return vals

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csdrafting bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", choices=sorted(SUITES), help="quick (default), full or grounded")
    p.add_argument("--suite", dest="suite_opt", choices=sorted(SUITES), help="the same, as an option")
    p.add_argument("--out", help="output directory (default runs/bench-<suite>)")
    p.add_argument("--datasets", type=_names(tuple(ds_mod.DATASETS)),
                   help=f"comma-separated (default humaneval,mmlu,mtbench): {','.join(ds_mod.DATASETS)}. specbench "
                        "and specbench-<group> run Spec-Bench (its mt_bench questions as two-turn conversations); "
                        "codeedit = EditEval, codeedit-lib = whole library functions to edit; mtbench = first turns")
    p.add_argument("--limit", type=int, help="eval prompts per dataset")
    p.add_argument("--calibration-prompts", type=int, help="calibration prompts per dataset for the draft-length grids (0: no grid)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--repeats", type=int, default=1,
                   help="run each eval prompt's methods this many rounds in a row and report each one's median timing "
                        "(a busy spell of the machine then falls on every method; default 1). Raising it on a finished "
                        "run adds the missing rounds")
    p.add_argument("--method-order", choices=("alternate", "fixed"), default="alternate",
                   help="alternate (default): every other prompt (and round) runs its methods in the swapped order, each "
                        "family's baseline after the methods compared with it, so that running second favours neither; "
                        "fixed: always in list order, baselines first")
    p.add_argument("--methods", type=_names(ENGINE_METHODS), help=f"engine methods (default all): {','.join(ENGINE_METHODS)}")
    p.add_argument("--peers", type=_names(PEERS + (BIN_BASELINE,)),
                   help=f"peers, or 'none': {','.join(PEERS)} (each family's plain decoding comes with it)")
    p.add_argument("--also", action="append", default=[], metavar="CONFIG",
                   help="also run this cascade config (same target) as an engine row named cfg:<file stem>; repeatable")
    p.add_argument("--hf-limit", type=int, help="eval prompts per dataset for the transformers peers")
    p.add_argument("--sd-drafter", action="append", help="neural drafter for a classic speculative decoding row (repeat; default: the cascade's)")
    for kind in ("sd", "maxgram", "oracle", "llama-pld"):
        p.add_argument(f"--grid-{kind.replace('llama-', '')}", type=_ints, dest=f"grid_{kind.replace('-', '_')}",
                       help=f"draft lengths tried for {kind} (default {','.join(map(str, DEFAULT_GRIDS[kind]))})")
    p.add_argument("--timing", choices=list(TIMINGS), default="decode",
                   help="the headline figure (both are recorded for every run): decode (default: the prompt's "
                        "prefill excluded, as llama.cpp's timers print it) or e2e (prefill included); it also "
                        "decides the draft lengths chosen on calibration prompts")
    p.add_argument("--hf-target", help="target for the transformers peers (default: the cascade's target, float32)")
    p.add_argument("--hf-assistant", help="assistant for hf-assisted (default: the first sd drafter)")
    p.add_argument("--summary-only", action="store_true", help="only rebuild summary.md and the plots from records.jsonl")
    p.add_argument("--fresh", action="store_true", help="move earlier results in --out aside (into old-<time>/) and start over")
    p.add_argument("--no-progress", action="store_true")
    add_cascade_args(p)
    return p


NOTES = [
    "Store tiers F32/F16/Q8_0 are rewritten from the published Q4_K_M GGUF: same values, different cost profile; "
    "the transformers peers run the float32 dequantization of the same Q4_K_M values.",
    "vertical = the spec's neural drafters then Max-Gram, each level reviewing only the one right below it (K diagonal "
    "in increments; the configuration column shows it); horizontal = the cascade's K row 0 with every lower row zero "
    "(no drafter reviews another; each drafts autoregressively).",
    "llama-cpp-* run llama.cpp's own programs (built from the pinned llama-cpp-python sdist's vendored source), one "
    "process per prompt, greedy, same prompt text and thread count: llama-cpp-plain is `llama-completion`, the others "
    "`llama-speculative-simple --spec-type ...`. Their tokens/s come from the programs' own printed timings "
    "(`decoded N tokens in S seconds`; llama-completion's llama_perf `eval time` rate, its first token priced at "
    "that rate): decode-only is the decode time, end to end the printed prompt time plus it; the process's model "
    "load is excluded (records keep it as process_seconds and load_and_exit_seconds). Each turn of a conversation "
    "is a new process: its end-to-end time includes prefilling the whole conversation, where engine methods keep "
    "the first turn's KV cache (as the server's --reuse-prefix does). Their printed text is re-tokenized for the comparisons, so a "
    "difference may also be a different tokenization of the same text.",
    "oracle = the target's own greedy output (from `plain` on the same prompt) offered as a free k-token draft: "
    "the ceiling of any drafter at this verification cost.",
    "llama-pld runs llama-cpp-python's own Llama.generate with LlamaPromptLookupDecoding, which forces "
    "logits_all=True (a vocabulary-wide logits row for every prompt token as well); llama-plain is the default Llama.",
    "hf-assisted / hf-pld run transformers' generate with library defaults (assistant: num_assistant_tokens and "
    "schedule as recorded in each record's config), each against hf-plain on the same prompts.",
    "Draft lengths of sd, maxgram, oracle and llama-pld are chosen per dataset on calibration-split prompts "
    "(table below) unless the suite does not calibrate (quick: sd 4, maxgram 8, oracle 16, llama-pld 10).",
]


# ------------------------------------------------------------------------------------------------ helpers


def _check_settings(out: Path, settings: dict) -> None:
    """run.json pins what makes records comparable; a resume with other settings is refused."""
    path = out / "run.json"
    settings = json.loads(json.dumps(settings))  # compare as stored: tuples become lists
    if path.exists():
        old = _normalized(json.loads(path.read_text())["settings"])
        keys = ("spec", "max_new_tokens", "timing", "timings", "hf_target", "hf_assistant")
        diff = [k for k in keys if old.get(k) != settings.get(k)]
        old_m = {m["name"]: m for m in old.get("methods", [])}
        diff += [f"method {m['name']}" for m in settings["methods"] if m["name"] in old_m and old_m[m["name"]] != m]
        if diff:
            raise CSDraftingError(
                f"{out} holds results made with other settings ({', '.join(diff)}); resuming would mix them. "
                "Use another --out, or --fresh to move the old results aside"
            )
        settings = {**old, **settings, "methods": list({**old_m, **{m["name"]: m for m in settings["methods"]}}.values())}
    path.write_text(json.dumps({"settings": settings}, indent=1) + "\n")


def _normalized(settings: dict) -> dict:
    """Settings from an older run.json in today's spelling (renamed fields, per-drafter settings), so that
    a resume compares what ran, not how it was written."""
    from ..spec import CascadeSpec
    from .methods import Method

    out = dict(settings)
    if isinstance(out.get("spec"), dict):
        out["spec"] = CascadeSpec.parse(out["spec"]).to_json()
    out["methods"] = [json.loads(json.dumps(Method.from_json(m).to_json())) for m in out.get("methods", [])]
    return out


def _archive(out: Path) -> None:
    names = ["records.jsonl", "prompts.json", "run.json", "summary.md"] + [p.name for p in out.glob("*.png")]
    present = [n for n in names if (out / n).exists()]
    if present:
        dest = out / f"old-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        dest.mkdir()
        for n in present:
            (out / n).rename(dest / n)
        print(f"moved earlier results to {dest}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if argv_list[:1] == ["noise"]:
        from .noise import main as noise_main

        return noise_main(argv_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.suite and args.suite_opt and args.suite != args.suite_opt:
        parser.error(f"two suites given: {args.suite} and --suite {args.suite_opt}")
    args.suite = args.suite or args.suite_opt or "quick"
    return run_guarded(lambda: run(args, spec_from_args(args), argv), "interrupted: rerun the same command to resume")


@dataclass
class RunPlan:
    """A bench run resolved from its suite and flags: what runs, on what, where the results go."""

    suite: str
    out: Path
    datasets: list[str]
    limit: int
    calibration: int
    max_new: int
    hf_limit: int
    methods: list
    hf_target: str
    hf_assistant: str | None

    @property
    def order(self) -> list[str]:
        return [m.name for m in self.methods]

    def settings(self, spec, timing: str) -> dict:
        """What run.json pins (a resume with other settings is refused)."""
        # timings: what every record holds (runs from before both were recorded are not resumed)
        return {"spec": spec.to_json(), "max_new_tokens": self.max_new, "timing": timing, "timings": list(TIMINGS),
                "hf_target": self.hf_target if any(m.family == HF for m in self.methods) else None,
                "hf_assistant": self.hf_assistant if "hf-assisted" in self.order else None,
                "methods": [m.to_json() for m in self.methods]}


def resolve_plan(args: argparse.Namespace, spec) -> RunPlan:
    suite = SUITES[args.suite]
    limit = suite.limit if args.limit is None else args.limit
    cal = suite.calibration_prompts if args.calibration_prompts is None else args.calibration_prompts
    max_new = args.max_new_tokens or suite.max_new_tokens
    peers = suite.peers if args.peers is None else args.peers
    hf_limit = suite.hf_limit if args.hf_limit is None else args.hf_limit
    if args.hf_limit is None and args.peers is not None and any(p.startswith("hf-") for p in peers) and hf_limit <= 0:
        hf_limit = limit  # asked for by name in a suite that leaves them out: run them on every eval prompt
    if hf_limit <= 0:
        peers = tuple(p for p in peers if not p.startswith("hf-"))
    if min(limit, cal, max_new) < 0 or max_new == 0:
        raise CSDraftingError("--limit and --calibration-prompts must be >= 0 and --max-new-tokens > 0")
    if args.repeats < 1:
        raise CSDraftingError(f"--repeats must be at least 1 (got {args.repeats})")
    grids = {k: v for k, v in {"sd": args.grid_sd, "maxgram": args.grid_maxgram, "oracle": args.grid_oracle,
                                "llama-pld": args.grid_llama_pld}.items() if v}
    from ..spec import CascadeSpec, neural

    also = [(Path(p).stem, CascadeSpec.load(p)) for p in args.also]
    methods = build_methods(spec, args.methods or ENGINE_METHODS, peers, args.sd_drafter, calibrate=cal > 0, grids=grids,
                            also=also)
    models = neural(args.sd_drafter or spec.drafters)
    plan_ = RunPlan(args.suite, Path(args.out or f"runs/bench-{args.suite}"), list(args.datasets or suite.datasets),
                    limit, cal, max_new, hf_limit, methods, args.hf_target or spec.target,
                    args.hf_assistant or (models[0] if models else None))
    if "hf-assisted" in plan_.order and not plan_.hf_assistant:
        raise CSDraftingError("hf-assisted needs an assistant: give --hf-assistant or a neural drafter")
    return plan_


def run(args: argparse.Namespace, spec, argv) -> int:
    p = resolve_plan(args, spec)
    out, methods = p.out, p.methods
    command = "csdrafting bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.summary_only:
        return summarize(out, args.suite, command, p.order)
    with exclusive(out):
        if args.fresh:
            _archive(out)
        _check_settings(out, p.settings(spec, args.timing))
        store = RecordStore(out / "records.jsonl")
        if store.repaired:
            print(f"records.jsonl: dropped {store.repaired} incomplete or duplicate line(s) left by an interrupted run",
                  file=sys.stderr)
        print(f"# bench {args.suite}: {spec.describe()}\n# datasets {','.join(p.datasets)}; {p.limit} eval + "
              f"{p.calibration} calibration prompts each; {p.max_new} new tokens, greedy; timing {args.timing}; out {out}",
              file=sys.stderr)
        pool, eos_box, n_ctx_box = _pool(p, spec)

        def tokenizer_model():
            if any(m.family == ENGINE for m in methods):
                return pool.get(ENGINE).target
            from ..spec import load_model

            return load_model(spec.target, spec.backend, spec.threads, spec.n_ctx, **spec.placement(spec.target))

        prompts, eos = prepare_prompts(out, p.datasets, p.limit, p.calibration, tokenizer_model)
        eos_box.extend(eos)
        n_ctx_box.append(min(spec.n_ctx, -(-context_needed(prompts, p.max_new) // 256) * 256))
        units = plan(methods, prompts, p.hf_limit, args.repeats, alternate=args.method_order == "alternate")
        pending = sum(u.key not in store for u in units)
        print(f"# {len(units)} runs planned, {len(units) - pending} already recorded, {pending} to go", file=sys.stderr)
        t0 = time.perf_counter()
        finished = False
        try:
            execute(units, methods, {(x.phase, x.dataset, x.id): x for x in prompts}, store, pool, p.max_new,
                    args.timing, progress=not args.no_progress, extra={"suite": args.suite},
                    render=chat_render(tokenizer_model))
            finished = True
        finally:
            pool.close()
            if not finished and len(store):  # interrupted or failed: summarize what is there
                summarize(out, args.suite, command, p.order, quiet=True)
        print(f"# done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return summarize(out, args.suite, command, p.order)


def _pool(p: RunPlan, spec) -> tuple[ExecutorPool, list[int], list[int]]:
    """One executor per family, made on first use; the peers learn the EOS ids and the context length from
    the prompts, filled into the two boxes before any executor is made."""
    eos_box: list[int] = []
    n_ctx_box: list[int] = []

    def engine_factory():
        from .executors import EngineExecutor

        return EngineExecutor.from_spec(spec, [m for m in p.methods if m.family == ENGINE])

    def llama_factory():
        from .executors import LlamaExecutor

        return LlamaExecutor(spec.target, spec.threads, n_ctx_box[0], frozenset(eos_box))

    def bin_factory():
        from .executors import LlamaCppBinExecutor

        draft = next((m.drafters[0] for m in p.methods if m.name == "llama-cpp-draft-simple"), None)
        return LlamaCppBinExecutor(spec.target, draft, spec.threads, n_ctx_box[0])

    def hf_factory():
        from .executors import HFExecutor

        return HFExecutor(p.hf_target, p.hf_assistant if "hf-assisted" in p.order else None, spec.threads,
                          frozenset(eos_box))

    pool = ExecutorPool({ENGINE: engine_factory, LLAMA: llama_factory, HF: hf_factory, LLAMA_BIN: bin_factory},
                        log=lambda m: print(m, file=sys.stderr))
    return pool, eos_box, n_ctx_box


def _timing_line(settings: dict) -> str:
    head = {"e2e": "end to end (tokens/s include the prompt's prefill)",
            "decode": "decoding only (the prompt's prefill excluded)"}.get(settings.get("timing"), "?")
    if settings.get("timings"):
        return f"headline {head}; every record holds both (the tables below show both where they say so)"
    return f"{head} (a run from before both timings were recorded: the other one is missing)"


def _order_note(runs: list[dict]) -> str:
    """How the eval runs were ordered around their baselines (runner module docstring, "Order")."""
    compared = [r for r in runs if r.get("phase") == EVAL and r.get("method") != r.get("baseline")]
    first = sum(bool(r.get("ran_before_baseline")) for r in compared)
    if not any("ran_before_baseline" in r for r in compared):
        return "baselines first (a run from before the order alternated)"
    return (f"{first} of {len(compared)} eval runs compared with a baseline ran before it (alternating per prompt), "
            "the rest after it")


def _repeats_note(records: list[dict], runs: int) -> str:
    """How many runs the records fold, where some prompts ran several times (--repeats)."""
    reps = sorted({r["repeats"]["n"] for r in records if "repeats" in r})
    if not reps:
        return ""
    differ = sum(not r["repeats"]["identical_outputs"] for r in records if "repeats" in r)
    return (f" ({runs} runs: eval records with {'/'.join(map(str, reps))} interleaved repetitions show their median "
            f"timings{f'; {differ} of them gave different outputs in different repetitions' if differ else ''})")


def summarize(out: Path, suite: str, command: str, order: list[str], quiet: bool = False) -> int:
    """Write summary.md and the plots from records.jsonl; print it; 1 if an exact method mismatched."""
    path = out / "records.jsonl"
    if not path.exists():
        raise CSDraftingError(f"{path} does not exist: run the benchmark first")
    store = RecordStore(path)
    runs = store.values()
    records = collapse_repeats(runs)
    settings = json.loads((out / "run.json").read_text())["settings"] if (out / "run.json").exists() else {}
    from .methods import Method

    methods = [Method.from_json(m) for m in settings.get("methods", [])]
    choices = choose_lengths(methods, records) if methods else {}
    names = {}
    for r in records:
        for lv in r["metrics"]["levels"]:
            names.setdefault(lv["name"], lv["kind"])
    spec = settings.get("spec", {})
    meta = {
        "suite": suite,
        "command": f"`{command}`",
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{machine()}; {spec.get('threads', '?')} threads per model; {placement(spec)}{versions()}",
        "target": spec.get("target"),
        "models": "; ".join(f"{n} ({k})" for n, k in names.items()),
        "generation": f"greedy, max_new_tokens {settings.get('max_new_tokens', '?')}",
        "timing": _timing_line(settings),
        "records": f"{sum(r['phase'] == EVAL for r in records)} eval + {sum(r['phase'] == CALIBRATION for r in records)} calibration"
                   + _repeats_note(records, len(runs)),
        "method order": _order_note(runs),
        "notes": NOTES,
    }
    md_path, rows = write_summary(records, out, meta, choices, order or [m.name for m in methods])
    fails = exactness_failures(rows)
    cal_fails = calibration_failures(records)
    if not quiet:
        print(md_path.read_text())
        print(f"summary: {md_path}", file=sys.stderr)
    for r in fails:
        print(f"!!! EXACTNESS FAILURE: {r.method} on {r.dataset}: only {r.exact_matches}/{r.exact_compared} outputs "
              f"identical to {r.baseline} !!!", file=sys.stderr)
    for text in cal_fails:
        print(f"!!! EXACTNESS FAILURE: {text} differs from its baseline !!!", file=sys.stderr)
    return 1 if fails or cal_fails else 0
