"""`csdrafting serve --replicas` on a local Ray cluster around the tiny test models (tests/serve_tiny.py).

The replicas build their workers in their own processes: `tiny_worker` is what they call (Ray pickles it by
reference, so tests/ and src/ must be on the cluster's PYTHONPATH: `local_cluster` sees to that).

    PYTHONPATH=src:tests python tests/ray_tiny.py     # the figures of docs/scaling.md on tiny models
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import time
from pathlib import Path

import serve_tiny

MODEL = serve_tiny.MODEL


class Slow(serve_tiny.Gate):
    """A model whose every forward pass takes at least `delay` seconds more (a generation long enough to leave)."""

    def __init__(self, model, delay: float) -> None:
        super().__init__(model)
        self.delay = delay

    def extend(self, tokens, logits_from: int = 0):
        time.sleep(self.delay)
        return super().extend(tokens, logits_from)


def tiny_worker(max_queue: int = 16, step_delay: float = 0.0, reuse_prefix: bool = False):
    """An EngineWorker over the tiny cascade, built where it is called (in a replica)."""
    import torch

    from csdrafting.serve import EngineWorker

    torch.set_num_threads(1)
    target, drafters, config = serve_tiny.cascade_parts()
    if step_delay:
        target = Slow(target, step_delay)
    return EngineWorker(target, drafters, config, model_name=MODEL, max_queue=max_queue, reuse_prefix=reuse_prefix)


class Library:
    """The library's own answer for a request, on wrappers of the same tiny weights in this process (memoized)."""

    def __init__(self) -> None:
        self.tok = serve_tiny.CharTokenizer()
        self.parts = serve_tiny.cascade_parts(self.tok)
        self.memo: dict = {}

    def __call__(self, prompt: str | list[dict], max_tokens: int, temperature: float = 0.0, seed: int | None = None):
        """(text, GenerationResult) for a completion prompt, or for chat messages (a list)."""
        from csdrafting import Cascade, SamplingConfig

        key = (json.dumps(prompt), max_tokens, temperature, seed)
        if key not in self.memo:
            text = prompt if isinstance(prompt, str) else self.tok.apply_chat_template(prompt)
            sampling = SamplingConfig(do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed)
            r = Cascade(*self.parts).generate(self.tok.encode(text), max_tokens, sampling)
            self.memo[key] = (self.tok.decode(r.tokens, skip_special_tokens=True), r)
        return self.memo[key]

    def request(self, req: dict):
        """The same for an OpenAI request body (as serve.load.default_requests writes them)."""
        prompt = req["messages"] if "messages" in req else req["prompt"]
        return self(prompt, req["max_tokens"], req.get("temperature", 0.0), req.get("seed"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_cluster(num_cpus: float = 2):
    """A Ray cluster of this machine alone, with Serve's proxy on a free loopback port; yields the port."""
    import ray
    from ray import serve

    here = Path(__file__).resolve().parent
    src = Path(sys.modules["csdrafting"].__file__).resolve().parents[1]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(src), str(here), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(make_worker, port: int, name: str = "default", route_prefix: str = "/", **options) -> str:
    """Run the application (replicas of 0.5 CPU: two apps of two fit 2 cores); returns its base URL (…/v1)."""
    from ray import serve

    from csdrafting.serve.ray_app import application

    options.setdefault("replica_cpus", 0.5)
    serve.run(application(make_worker, model_name=MODEL, **options), name=name, route_prefix=route_prefix)
    return f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}/v1"


def main() -> None:
    from csdrafting.serve.load import default_requests, run_load

    with local_cluster() as port:
        url = deploy(functools.partial(tiny_worker, max_queue=64), port, replicas=2, max_queue=64)
        report = run_load(url, default_requests(MODEL, clients=16, per_client=3, max_tokens=32))
        print(json.dumps(report.summary(), indent=1))


if __name__ == "__main__":
    main()
