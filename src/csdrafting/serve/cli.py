"""`csdrafting serve`: load a cascade, then serve it over HTTP with uvicorn."""

from __future__ import annotations

import argparse
import sys

from ..cascade.engine import PREFILL_CHUNK
from ..protocol import CSDraftingError
from . import ray_cli


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--served-model-name", help="the model id clients send (default: the target's reference)")
    g.add_argument("--max-queue", type=int, default=16, help="requests that may wait while one runs; more get 503")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    g.add_argument("--default-max-tokens", type=int, default=256,
                   help="tokens generated when a chat request gives no max_tokens (completions: 16, as OpenAI)")
    g.add_argument("--reuse-prefix", action="store_true",
                   help="keep each model's KV cache between requests and reuse the common prefix (same output, less prefill)")
    g.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK,
                   help="prompts are prefilled in passes of this many tokens; a client that leaves mid-prefill "
                        f"frees the engine at the end of the pass under way (default {PREFILL_CHUNK})")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, seconds that queued and running requests may take to finish; "
                        "then they end with a 503 shutting_down error (default 30)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    ray_cli.add_args(p)


def run(args: argparse.Namespace, spec) -> int:
    if ray_cli.wanted(args):
        return ray_cli.run(args, spec)
    try:
        from .app import create_app
        from .server import make_server
    except ImportError as exc:
        raise CSDraftingError(f"`csdrafting serve` needs the serve extra: pip install 'csdrafting[serve]' ({exc})") from None
    from ..spec import build
    from .worker import EngineWorker

    if not 0 < args.port < 65536:
        raise CSDraftingError(f"--port must be in 1..65535 (got {args.port})")
    if args.max_queue < 0 or args.default_max_tokens < 1:
        raise CSDraftingError(f"--max-queue must be >= 0 and --default-max-tokens >= 1 (got {args.max_queue}, {args.default_max_tokens})")
    if args.prefill_chunk < 1:
        raise CSDraftingError(f"--prefill-chunk must be >= 1 (got {args.prefill_chunk})")
    if not args.shutdown_timeout >= 0:
        raise CSDraftingError(f"--shutdown-timeout must be >= 0 seconds (got {args.shutdown_timeout})")
    if args.max_body_bytes < 1024:
        raise CSDraftingError(f"--max-body-bytes must be at least 1024 (got {args.max_body_bytes})")
    print(f"# {spec.describe()}", file=sys.stderr)
    target, drafters, config = build(spec)
    worker = EngineWorker(
        target, drafters, config,
        model_name=args.served_model_name or spec.target,
        max_queue=args.max_queue,
        default_max_tokens=args.default_max_tokens,
        reuse_prefix=args.reuse_prefix,
        describe=spec.to_json(),
        prefill_chunk=args.prefill_chunk,
    )
    app = create_app(worker, max_body_bytes=args.max_body_bytes)
    print(f"# serving {worker.model_name!r} on http://{args.host}:{args.port}/v1 (queue {args.max_queue})", file=sys.stderr)
    make_server(app, worker, grace=args.shutdown_timeout, host=args.host, port=args.port, log_level=args.log_level).run()
    return 0
