"""`csdrafting serve --replicas 2` as a user starts it, on the packaged Qwen2.5-Coder-0.5B (real + ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

import openai  # noqa: E402

import ray_tiny  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.real]


def test_the_command_serves_a_real_cascade_on_two_replicas(qwen05_gguf):
    from csdrafting.spec import CascadeSpec, build
    from csdrafting.cascade.engine import Cascade
    from csdrafting.text import StreamText, encode

    flags = ["--target", "qwen2.5-coder-0.5b:Q4_K_M", "--drafter", "maxgram", "--k", "[[3]]", "--threads", "1"]
    port = ray_tiny.free_port()
    src = Path(sys.modules["csdrafting"].__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "csdrafting.cli", "serve", *flags, "--replicas", "2",
                             "--port", str(port), "--served-model-name", "qwen"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).json().get("replicas") == 2:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
            time.sleep(1)
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        prompts = ["def fibonacci(n):", "class Stack:\n    def __init__(self):", "import os\n\ndef list_files(path):"]
        answers = {}
        for p in prompts:
            raw = c.completions.with_raw_response.create(model="qwen", prompt=p, max_tokens=16, temperature=0)
            answers[p] = (raw.parse().choices[0].text, raw.headers["x-csdrafting-replica"])
        assert len({replica for _, replica in answers.values()}) == 2  # both replicas served
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    # the library's own greedy output, on its own instance of the same spec
    target, drafters, config = build(CascadeSpec(target="qwen2.5-coder-0.5b:Q4_K_M", drafters=["maxgram"], k=[[3]], threads=1),
                                     progress=False)
    cascade = Cascade(target, drafters, config)
    for p, (text, _) in answers.items():
        assert text == StreamText(target).push(cascade.generate(encode(target, p), 16).tokens), p
