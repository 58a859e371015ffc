"""Long prompts are prefilled in chunks, and a client that leaves during the prefill frees the engine
within about one chunk (the cancellation is checked between chunks); the answer does not depend on the
chunk size."""

from __future__ import annotations

import json
import statistics
import time

import httpx
import pytest

import serve_tiny
from csdrafting import Cascade
from csdrafting.serve import EngineWorker, create_app
from csdrafting.serve.metrics import parse_prometheus

MODEL = serve_tiny.MODEL
TOK = serve_tiny.CharTokenizer()
CHUNK = 32
DELAY = 0.2  # seconds added to every target pass: chunks long enough to time
PROMPT = ("def add(a, b): return a + b  # " * 12)[:CHUNK * 10]  # ten chunks


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with serve_tiny.one_torch_thread():
        yield


def _until(cond, timeout: float = 30.0, step: float = 0.002) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(step)
    return time.monotonic()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_leaving_mid_prefill_frees_the_engine_within_a_chunk(stream):
    target, drafters, config = serve_tiny.cascade_parts(TOK)
    gate = serve_tiny.Gate(target, delay=DELAY)
    worker = EngineWorker(gate, drafters, config, model_name=MODEL, prefill_chunk=CHUNK)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": stream}
    with serve_tiny.running_server(create_app(worker)) as url:
        base = url.removesuffix("/v1")
        client = httpx.Client(timeout=httpx.Timeout(60, read=0.05 if not stream else 60))
        if stream:
            response = client.send(client.build_request("POST", url + "/completions", json=body), stream=True)
            _until(lambda: len(gate.calls) >= 3)  # three chunks of the target's prefill are done or under way
            response.close()
        else:
            with pytest.raises(httpx.ReadTimeout):  # gives up while the third chunk runs
                client.post(url + "/completions", json=body, timeout=httpx.Timeout(60, read=2.5 * DELAY))
        client.close()
        left = time.monotonic()
        calls_then = len(gate.calls)
        free = _until(lambda: worker.n_running == 0)
        chunk = statistics.median(b - a for a, b in zip(gate.calls, gate.calls[1:]))
        assert chunk >= DELAY
        # the engine noticed at the end of the chunk under way: within one chunk, two at the very most
        assert free - left < 2 * chunk, (free - left, chunk)
        assert len(gate.calls) - calls_then <= 1 and len(gate.calls) < 10  # far from the whole prompt
        m = parse_prometheus(httpx.get(base + "/metrics").text)
        assert m[("csdrafting:request_success_total", frozenset({("model_name", MODEL), ("finished_reason", "abort")}))] == 1
        assert m[("csdrafting:generation_tokens_total", frozenset({("model_name", MODEL)}))] == 0


def test_the_answer_does_not_depend_on_the_chunk_size():
    target, drafters, config = serve_tiny.cascade_parts(TOK)
    ids = TOK.encode(PROMPT[:250])
    whole = Cascade(target, drafters, config).generate(ids, 24, prefill_chunk=10_000)
    want = TOK.decode(whole.tokens, skip_special_tokens=True)
    for chunk in (7, 64):
        t, d, c = serve_tiny.cascade_parts(TOK)
        worker = EngineWorker(t, d, c, model_name=MODEL, prefill_chunk=chunk)
        with serve_tiny.running_server(create_app(worker)) as url:
            for stream in (False, True):
                r = httpx.post(url + "/completions", json={"prompt": PROMPT[:250], "max_tokens": 24, "temperature": 0,
                                                            "stream": stream}, timeout=60)
                assert r.status_code == 200
                if stream:
                    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e][:-1]
                    text = "".join(json.loads(e)["choices"][0]["text"] for e in events)
                else:
                    text = r.json()["choices"][0]["text"]
                assert text == want, (chunk, stream)
