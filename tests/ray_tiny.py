"""`csdrafting serve --replicas` on a local Ray cluster around the tiny test models (tests/serve_tiny.py).

The replicas build their workers in their own processes: `tiny_worker` is what they call (Ray pickles it by
reference, so tests/ and src/ must be on the cluster's PYTHONPATH: `local_cluster` sees to that).

    PYTHONPATH=src:tests python tests/ray_tiny.py [load|overhead|kill|affinity]   # docs/scaling.md's figures
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
        """The same for an OpenAI request body (as serve.loadtest.default_requests writes them)."""
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
    saved = dict(os.environ)  # the cluster's processes take their environment from here, at ray.init
    try:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(src), str(here), os.environ.get("PYTHONPATH", "")])
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_worker_niceness", "0")  # as `csdrafting serve --replicas` starts its cluster
        port = free_port()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            yield port
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def deploy(make_worker, port: int, name: str = "default", route_prefix: str = "/", **options) -> str:
    """Run the application (replicas of 0.5 CPU: two apps of two fit 2 cores); returns its base URL (…/v1)."""
    from ray import serve

    from csdrafting.serve.ray_app import application

    options.setdefault("replica_cpus", 0.5)
    serve.run(application(make_worker, model_name=MODEL, **options), name=name, route_prefix=route_prefix)
    return f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}/v1"


@contextlib.contextmanager
def plain_server(port: int, **worker_options):
    """The single-process server (`csdrafting serve`'s app under uvicorn) around the same tiny cascade, in a
    process of its own as a replica is; yields its base URL."""
    import subprocess

    import httpx

    code = ("import sys, uvicorn, ray_tiny; from csdrafting.serve import create_app; "
            f"uvicorn.run(create_app(ray_tiny.tiny_worker(**{worker_options!r})), host='127.0.0.1', port={port}, "
            "log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the plain server did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


def sequential(url: str, n: int, max_tokens: int, stream: bool) -> list[float]:
    """Latencies (s) of n requests sent one after the other (distinct prompts, greedy)."""
    import openai

    c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = c.completions.create(model=MODEL, prompt=f"def f{i}(x):", max_tokens=max_tokens, temperature=0, stream=stream)
        if stream:
            list(r)
        out.append(time.perf_counter() - t0)
    return out


def _ms(values: list[float]) -> dict:
    import statistics

    v = sorted(values)
    return {"p50_ms": round(1000 * statistics.median(v), 1), "mean_ms": round(1000 * statistics.fmean(v), 1),
            "p95_ms": round(1000 * v[int(0.95 * (len(v) - 1))], 1)}


def measure_load(port: int, library: "Library") -> dict:
    """16 clients x 3 requests, 32 tokens: the plain server, then 2 Ray replicas; every answer checked."""
    from csdrafting.serve.loadtest import default_requests, run_load

    requests = default_requests(MODEL, clients=16, per_client=3, max_tokens=32)
    out = {}
    for name, server in (("single_process", plain_server(free_port(), max_queue=64)),
                         ("ray_2_replicas", _app(port, "load", replicas=2, max_queue=64))):
        with server as url:
            report = run_load(url, requests)
        s = report.summary()
        s["mismatched"] = sum(o.error is None and o.text != library.request(o.request)[0] for o in report.outcomes)
        s["status_5xx"] = sum(o.error is not None and "Error code: 5" in o.error for o in report.outcomes)
        out[name] = s
    return out


def measure_overhead(port: int, n: int = 40) -> dict:
    """Sequential requests, one replica vs the plain server: what Ray's path adds per request."""
    out = {}
    for name, server in (("single_process", plain_server(free_port(), max_queue=4)),
                         ("ray_1_replica", _app(port, "overhead", replicas=1, max_queue=4))):
        with server as url:
            sequential(url, 5, 4, False)  # warm up
            out[name] = {f"{tokens}_tokens_{'stream' if stream else 'whole'}": _ms(sequential(url, n, tokens, stream))
                         for tokens in (1, 16) for stream in (False, True)}
    out["ray_minus_single_process_p50_ms"] = {k: round(out["ray_1_replica"][k]["p50_ms"] - out["single_process"][k]["p50_ms"], 1)
                                              for k in out["single_process"]}
    return out


def measure_kill(port: int, library: "Library") -> dict:
    """Six streams on 2 slow replicas (3 each), one replica killed mid-stream, then 10 requests."""
    import threading

    import openai
    import ray

    with _app(port, "kill", make=functools.partial(tiny_worker, max_queue=2, step_delay=0.1), replicas=2, max_queue=2) as url:
        prompts = ["def add(a, b):", "while True:", "y = [1, 2]", "second", "def task_52(x):", "def task_11(x):"]
        replica_of, outcome = {}, {}
        started = threading.Barrier(len(prompts) + 1)

        def stream(i):
            raw = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60).completions.with_raw_response.create(
                model=MODEL, prompt=prompts[i], max_tokens=60, temperature=0, stream=True)
            replica_of[i] = raw.headers["x-csdrafting-replica"]
            started.wait()
            try:
                text = "".join(ch.choices[0].text for ch in raw.parse())
                outcome[i] = "exact" if text == library(prompts[i], 60)[0] else "MISMATCH"
            except openai.APIError as exc:
                outcome[i] = f"error event: {exc}"

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
            time.sleep(0.05)
        started.wait(60)
        victim = replica_of[0]
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("#" + victim))
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        for t in threads:
            t.join()
        later = sequential(url, 10, 4, False)
        import httpx

        while httpx.get(url.removesuffix("/v1") + "/health").json()["replicas"] < 2:
            time.sleep(0.5)
        return {"on_killed_replica": [outcome[i] for i in sorted(outcome) if replica_of[i] == victim],
                "on_other_replica": [outcome[i] for i in sorted(outcome) if replica_of[i] != victim],
                "next_10_requests_ok": len(later), "replaced_after_s": round(time.monotonic() - killed_at, 1)}


def measure_affinity(port: int, turns: int = 6) -> dict:
    """Multi-turn chats with --reuse-prefix, Ray's default router vs conversation affinity, in three kinds of
    traffic: as many conversations as replicas, back to back, then pausing between turns (the replicas
    idle in between); four per replica, back to back (turns of different conversations interleave)."""
    from csdrafting.serve.ray_conversations import run

    out = {}
    for router in ("default", "affinity"):
        make = functools.partial(tiny_worker, max_queue=16, reuse_prefix=True)
        with _app(port, "affinity-" + router, make=make, replicas=2, max_queue=16, router=router) as url:
            for conversations, think in ((2, 0.0), (2, 0.5), (8, 0.0)):
                out[f"{router}_{conversations}_conversations_think_{think}s"] = run(
                    url, MODEL, conversations, turns, max_tokens=24, think=think).summary()
    return out


@contextlib.contextmanager
def _app(port: int, name: str, make=None, **options):
    """An application on the running cluster for the duration of a measurement."""
    from ray import serve

    url = deploy(make or functools.partial(tiny_worker, max_queue=options.get("max_queue", 16)), port, name=name,
                 route_prefix="/" + name, **options)
    try:
        yield url
    finally:
        serve.delete(name)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    library = Library()
    which = sys.argv[1:] or ["load", "overhead", "kill", "affinity"]
    with local_cluster() as port:
        for what in which:
            fn = {"load": lambda: measure_load(port, library), "overhead": lambda: measure_overhead(port),
                  "kill": lambda: measure_kill(port, library), "affinity": lambda: measure_affinity(port)}[what]
            print(json.dumps({what: fn()}, indent=1), flush=True)


if __name__ == "__main__":
    main()
