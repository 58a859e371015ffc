"""A bounded load test against any OpenAI-compatible server: N concurrent clients, each sending its
requests one after the other with the `openai` package. Reports latency percentiles, tokens/s and errors.

    python -m csdrafting.serve.loadtest --url http://127.0.0.1:8000/v1 --clients 16 --requests 3

It is a measurement command: the numbers depend on the machine and the models, and nothing asserts them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Single-line prompts without rare characters, so that even a toy tokenizer can encode them.
PROMPTS = [
    "def add(a, b):",
    "def fibonacci(n):",
    "import os",
    "class Stack:",
    "def is_prime(n):",
    "for i in range(10):",
    "def reverse(s):",
    "# sort a list of numbers",
]


@dataclass
class Outcome:
    client: int
    index: int
    request: dict
    text: str | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class LoadReport:
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = [o for o in self.outcomes if o.error is None]
        lat = sorted(o.seconds for o in ok)
        tokens = sum(o.completion_tokens for o in ok)
        return {
            "requests": len(self.outcomes),
            "concurrency": self.clients,
            "errors": len(self.outcomes) - len(ok),
            "latency_p50_s": _percentile(lat, 50),
            "latency_p95_s": _percentile(lat, 95),
            "completion_tokens": tokens,
            "wall_s": self.wall_seconds,
            "tokens_per_s": tokens / self.wall_seconds if self.wall_seconds > 0 else None,
        }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def one_request(client, request: dict) -> tuple[str, str | None, int]:
    """(text, finish_reason, completion tokens) of one completion or chat request, streamed or not."""
    req = dict(request)
    chat = "messages" in req
    api = client.chat.completions if chat else client.completions
    if req.get("stream"):
        req["stream_options"] = {"include_usage": True}
        parts, finish, tokens = [], None, 0
        for chunk in api.create(**req):
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for c in chunk.choices:
                piece = c.delta.content if chat else c.text
                parts.append(piece or "")
                finish = c.finish_reason or finish
        return "".join(parts), finish, tokens
    out = api.create(**req)
    c = out.choices[0]
    return (c.message.content if chat else c.text), c.finish_reason, out.usage.completion_tokens


def run_load(base_url: str, per_client: list[list[dict]], timeout: float = 120.0) -> LoadReport:
    """Each inner list is one client's requests, sent in order; the clients run concurrently."""
    import openai

    report = LoadReport(len(per_client))
    lock = threading.Lock()
    start = threading.Barrier(len(per_client))

    def client_loop(ci: int, requests: list[dict]) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout)
        start.wait()
        for i, req in enumerate(requests):
            o = Outcome(ci, i, req)
            t0 = time.perf_counter()
            try:
                o.text, o.finish_reason, o.completion_tokens = one_request(client, req)
            except Exception as exc:  # counted, reported, never hidden
                o.error = f"{type(exc).__name__}: {exc}"
            o.seconds = time.perf_counter() - t0
            with lock:
                report.outcomes.append(o)
        client.close()

    threads = [threading.Thread(target=client_loop, args=(i, r)) for i, r in enumerate(per_client)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.wall_seconds = time.perf_counter() - t0
    report.outcomes.sort(key=lambda o: (o.client, o.index))
    return report


def default_requests(model: str, clients: int, per_client: int, max_tokens: int) -> list[list[dict]]:
    """Distinct prompts; greedy and seeded sampling; every other request streamed."""
    out = []
    for c in range(clients):
        reqs = []
        for i in range(per_client):
            n = c * per_client + i
            req: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": n % 2 == 1}
            if n % 3 == 2:
                req.update(temperature=0.8, seed=n)
            else:
                req.update(temperature=0)
            prompt = f"{PROMPTS[n % len(PROMPTS)]} # {n}"
            if n % 4 == 3:
                req["messages"] = [{"role": "user", "content": prompt}]
            else:
                req["prompt"] = prompt
            reqs.append(req)
        out.append(reqs)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m csdrafting.serve.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model id (default: the first of GET /v1/models)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=3, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)
    import openai

    model = args.model or openai.OpenAI(base_url=args.url, api_key="unused").models.list().data[0].id
    report = run_load(args.url, default_requests(model, args.clients, args.requests, args.max_tokens))
    print(json.dumps(report.summary(), indent=1))
    for o in report.outcomes:
        if o.error:
            print(f"client {o.client} request {o.index}: {o.error}", file=sys.stderr)
    return 0 if all(o.error is None for o in report.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
