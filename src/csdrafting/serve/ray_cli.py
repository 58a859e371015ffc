"""`csdrafting serve --replicas N`: the flags, and starting the service on a Ray cluster (ray_app.py).

Without --replicas (or the other flags of this group) `csdrafting serve` stays the single-process server
and nothing imports Ray. With them, each replica builds the cascade of the spec in its own process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from ..protocol import CSDraftingError

APP_NAME = "csdrafting"


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replicas on Ray Serve (needs the ray extra: pip install 'csdrafting[ray]')")
    g.add_argument("--replicas", type=int, help="serve with N replicas, each a whole cascade, behind Ray Serve")
    g.add_argument("--min-replicas", type=int, help="autoscale: never fewer replicas than this")
    g.add_argument("--max-replicas", type=int, help="autoscale: never more replicas than this")
    g.add_argument("--ray-address", help="join this Ray cluster (e.g. HEAD:6379, or 'auto'); default: start one on this machine")
    g.add_argument("--replica-cpus", type=float, help="CPUs Ray reserves per replica (default: the spec's threads)")
    g.add_argument("--max-queued", type=int,
                   help="requests that may wait for a replica once every replica's queue is full; more get 503 (default: --max-queue)")
    g.add_argument("--router", choices=["affinity", "default"], default="affinity",
                   help="affinity: a conversation's next turn goes to the replica that served it (default); default: Ray's")
    g.add_argument("--affinity-imbalance", type=int, default=0,
                   help="affinity yields when its replica has more than this many requests more than the least busy one (default 0)")


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for replicas."""
    return any(getattr(args, a, None) is not None for a in ("replicas", "min_replicas", "max_replicas", "ray_address"))


@dataclass(frozen=True)
class SpecWorker:
    """Builds a replica's EngineWorker from the spec, in the replica's process (Ray pickles this object)."""

    spec: dict
    model_name: str
    max_queue: int
    default_max_tokens: int
    reuse_prefix: bool

    def __call__(self):
        from ..spec import CascadeSpec, build
        from .worker import EngineWorker

        target, drafters, config = build(CascadeSpec.from_json(self.spec), progress=False)
        return EngineWorker(target, drafters, config, model_name=self.model_name, max_queue=self.max_queue,
                            default_max_tokens=self.default_max_tokens, reuse_prefix=self.reuse_prefix, describe=self.spec)


def check(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """The options of ray_app.application, validated; CSDraftingError says what to change."""
    replicas = args.replicas if args.replicas is not None else (args.min_replicas or 1)
    lo, hi = args.min_replicas, args.max_replicas
    if replicas < 1 or (lo is not None and lo < 1) or (hi is not None and hi < 1):
        raise CSDraftingError(f"--replicas, --min-replicas and --max-replicas must be >= 1 (got {replicas}, {lo}, {hi})")
    if lo is not None and hi is not None and lo > hi:
        raise CSDraftingError(f"--min-replicas ({lo}) is above --max-replicas ({hi})")
    cpus = threads if args.replica_cpus is None else args.replica_cpus
    if cpus <= 0:
        raise CSDraftingError(f"--replica-cpus must be > 0 (got {cpus})")
    if args.max_queued is not None and args.max_queued < 0:
        raise CSDraftingError(f"--max-queued must be >= 0 (got {args.max_queued})")
    if args.affinity_imbalance < 0:
        raise CSDraftingError(f"--affinity-imbalance must be >= 0 (got {args.affinity_imbalance})")
    return dict(replicas=replicas, min_replicas=lo, max_replicas=hi, max_queue=args.max_queue, max_queued=args.max_queued,
                max_body_bytes=args.max_body_bytes, replica_cpus=cpus, router=args.router,
                affinity_imbalance=args.affinity_imbalance)


def run(args: argparse.Namespace, spec) -> int:
    options = check(args, spec.threads)
    try:
        import ray
        from ray import serve

        from .ray_app import application
    except ImportError as exc:
        raise CSDraftingError(f"`csdrafting serve --replicas` needs the ray extra: pip install 'csdrafting[ray]' ({exc})") from None
    spec.validate()
    model_name = args.served_model_name or spec.target
    make_worker = SpecWorker(spec.to_json(), model_name, args.max_queue, args.default_max_tokens, args.reuse_prefix)
    print(f"# {spec.describe()}", file=sys.stderr)
    local = args.ray_address is None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:  # Ray starts workers at nice 15; a replica is the server itself, not background work
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(**({"address": "local", "include_dashboard": False} if local else {"address": args.ray_address}),
             logging_level=args.log_level.upper())
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        need = max(options["replicas"], options["min_replicas"] or 1) * options["replica_cpus"]
        if need > cpus:  # Ray would wait for them forever
            raise CSDraftingError(f"{need:g} CPUs are needed ({options['replica_cpus']:g} per replica) and the Ray cluster "
                                  f"has {cpus:g}: lower --replicas, --replica-cpus or --threads, or add machines")
        # on a cluster where Serve already runs, its proxies keep the host and port they were started with
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application(make_worker, model_name=model_name, **options), name=APP_NAME, route_prefix="/")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"# serving {model_name!r} on http://{args.host}:{args.port}/v1 with {options['replicas']} replica(s) "
              f"({'a local Ray cluster' if local else 'Ray cluster ' + args.ray_address}); Ctrl-C stops", file=sys.stderr)
        stop.wait()
    finally:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)  # the cluster and its other applications stay
        ray.shutdown()
    return 0
