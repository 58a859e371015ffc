"""SIGTERM with a bound: a real server process (the tiny cascade under the same server `csdrafting serve`
uses) stops accepting, lets in-flight requests finish within --shutdown-timeout, then ends the rest with
a clean error, and exits."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import torch

import serve_tiny
from csdrafting import Cascade

GRACE = 3.0
STEP_DELAY = 0.1  # seconds added to each target forward pass: the long request takes ~8 s


def test_sigterm_finishes_what_fits_in_the_grace_period_then_ends_the_rest_cleanly():
    proc, base = serve_tiny.start_server_process("--shutdown-timeout", str(GRACE), "--step-delay", str(STEP_DELAY))
    try:
        # the tiny target ends these after 13 and 136 tokens
        short = {"prompt": "class Stack:", "max_tokens": 100, "temperature": 0}
        long = {"prompt": "def add(a, b):", "max_tokens": 400, "temperature": 0, "stream": True}
        got: dict = {}

        def send_short() -> None:
            got["short"] = httpx.post(base + "/v1/completions", json=short, timeout=60)

        def send_long() -> None:
            events, times = [], []
            with httpx.stream("POST", base + "/v1/completions", json=long, timeout=60) as r:
                got["long_status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        times.append(time.monotonic())
            got["long"], got["long_times"] = events, times

        a = threading.Thread(target=send_short)
        a.start()
        time.sleep(0.3)  # the short request first, the long one queued behind it
        b = threading.Thread(target=send_long)
        b.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(1.0)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(base + "/health", timeout=2)
        a.join(60)
        b.join(60)
        code = proc.wait(GRACE + 30)
        output = serve_tiny.output(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code in (0, -signal.SIGTERM), output[-2000:]  # uvicorn re-raises the signal it handled

    # the short request finished, exactly
    r = got["short"]
    assert r.status_code == 200, r.text
    torch.set_num_threads(1)
    target, drafters, config = serve_tiny.cascade_parts()
    want = Cascade(target, drafters, config).generate(serve_tiny.CharTokenizer().encode(short["prompt"]), 100)
    assert r.json()["choices"][0]["text"] == serve_tiny.CharTokenizer().decode(want.tokens, skip_special_tokens=True)

    # the long one streamed text, then ended with a clean error at the end of the grace period
    assert got["long_status"] == 200
    events, times = got["long"], got["long_times"]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "shutting_down" and "grace period (3 s)" in err["message"], err
    assert any(json.loads(e)["choices"][0]["text"] for e in events[:-2])
    assert GRACE - 0.5 < times[-2] - sent < GRACE + 3, times[-2] - sent


def test_a_draining_worker_refuses_new_requests_and_serves_again_once_restarted():
    from csdrafting.serve import APIError, EngineWorker
    from csdrafting.serve.schema import parse

    target, drafters, config = serve_tiny.cascade_parts()
    worker = EngineWorker(target, drafters, config, model_name=serve_tiny.MODEL)
    request = parse({"prompt": "abc", "max_tokens": 2}, "completion", worker)
    worker.start()
    worker.drain(0.0)
    with pytest.raises(APIError) as e:
        worker.submit(request, lambda kind, payload: None)
    assert e.value.status == 503 and e.value.code == "shutting_down"
    worker.stop()
    worker.start()
    done = threading.Event()
    worker.submit(request, lambda kind, payload: kind == "done" and done.set())
    assert done.wait(30)
    worker.stop()
