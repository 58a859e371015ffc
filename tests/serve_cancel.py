"""Measured: how long a client that leaves during a long prefill keeps the engine, in prefill chunks.

The packaged 0.5B Q4_K_M target with the suffix drafter, served in-process (the real app under uvicorn);
a prompt of --tokens tokens of this project's own source code. First the library prefills it twice
(the first pass pages the weights in), timing each chunk of the second; then, --repeats times, a streaming client leaves part-way through the prefill and the
time from its disconnect until the engine is free is reported, in seconds and in chunk times.

    PYTHONPATH=src:tests .venv/bin/python tests/serve_cancel.py                  # chunks of 512 (the default)
    PYTHONPATH=src:tests .venv/bin/python tests/serve_cancel.py --chunk 100000   # one pass: the old behaviour

A measurement command: it asserts nothing, and its figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

import serve_tiny
from csdrafting import Cascade
from csdrafting.serve import EngineWorker, create_app
from csdrafting.spec import CascadeSpec, build
from csdrafting.text import encode

ROOT = Path(__file__).resolve().parents[1]


def source_prompt(target, n: int) -> list[int]:
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "src" / "csdrafting").rglob("*.py")))
    ids = encode(target, text)
    assert len(ids) >= n, len(ids)
    return ids[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4000)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    spec = CascadeSpec(target="qwen2.5-coder-0.5b:Q4_K_M", drafters=["suffix"], k=[[8]], n_ctx=8192)
    target, drafters, config = build(spec, progress=False)
    prompt = source_prompt(target, args.tokens)

    # a first pass pages the weights in (the file is memory-mapped) and would inflate the chunk times
    Cascade(target, drafters, config).generate(prompt, 1, prefill_chunk=args.chunk)
    marks: list[float] = []
    t0 = time.monotonic()
    Cascade(target, drafters, config).generate(prompt, 1, on_prefill=lambda done, total: marks.append(time.monotonic()),
                                               prefill_chunk=args.chunk)
    prefill_s = time.monotonic() - t0
    steps = [b - a for a, b in zip([t0, *marks], marks)]
    chunk_s = statistics.median(steps) if args.chunk < args.tokens else prefill_s
    n_chunks = -(-args.tokens // args.chunk)

    worker = EngineWorker(target, drafters, config, model_name="qwen", prefill_chunk=args.chunk)
    rows = []
    with serve_tiny.running_server(create_app(worker)) as url:
        for r in range(args.repeats):
            # leave at a different point of the first two thirds of the prefill each time
            after = prefill_s * (0.15 + 0.45 * r / max(1, args.repeats - 1)) + 0.37 * chunk_s
            client = httpx.Client(timeout=600)
            response = client.send(client.build_request("POST", url + "/completions", json={
                "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True}), stream=True)
            time.sleep(after)
            running = worker.n_running == 1 and not worker.metrics.success  # still on this request's prefill?
            response.close()
            client.close()
            left = time.monotonic()
            while worker.n_running:
                time.sleep(0.005)
            held = time.monotonic() - left
            aborted = worker.metrics.success.pop("abort", 0)  # this request ended as cancelled
            ended = dict(worker.metrics.success) | {f"failed:{k}": n for k, n in worker.metrics.failures.items()}
            worker.metrics.success.clear()
            worker.metrics.failures.clear()
            rows.append({"left_after_s": round(after, 2), "still_prefilling": running, "aborted": bool(aborted),
                         "otherwise": ended,
                         "engine_free_after_s": round(held, 3), "in_chunk_times": round(held / chunk_s, 2)})
    print(json.dumps({"model": spec.target, "prompt_tokens": args.tokens, "prefill_chunk": args.chunk,
                      "chunks": n_chunks, "prefill_s": round(prefill_s, 2), "chunk_s_median": round(chunk_s, 3),
                      "chunk_s_all": [round(s, 3) for s in steps], "disconnects": rows}, indent=1))


if __name__ == "__main__":
    main()
