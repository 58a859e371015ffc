"""A real `csdrafting serve` app around tiny random models, for the server tests and the tiny load figures.

The tiny models have no text tokenizer, so they get CharTokenizer: one printable ASCII character per
token, with a chat template of its own, behind the same transformers-style interface (`encode`,
`decode`, `apply_chat_template`, `get_vocab`) through which the server reaches a real model's tokenizer.

    PYTHONPATH=src:tests python tests/serve_tiny.py     # load figures on tiny models (16 clients x 3)
    PYTHONPATH=src:tests python tests/serve_tiny.py serve --port 8000   # a tiny server, as `csdrafting serve` runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import tiny
from csdrafting import CascadeConfig, MaxGram
from csdrafting.backends.hf import HFCausalLM
from csdrafting.protocol import CSDraftingError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-cascade"
K = [[3, 6], [0, 3]]  # the 1st drafter fills 3 positions reviewing Max-Gram's, Max-Gram 3 more


class CharTokenizer:
    """ids 3..95 <-> ' '..'|' (ASCII 32..124); 0 pad, 1 BOS, 2 EOS."""

    SPECIAL = {0: "<pad>", 1: "<s>", 2: "</s>"}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        text.encode("utf-8")  # as real tokenizers do first: a lone surrogate raises UnicodeEncodeError
        ids = []
        for ch in text:
            i = ord(ch) - 32 + 3
            if not 3 <= i < tiny.VOCAB:
                raise CSDraftingError(f"character {ch!r} is outside the test tokenizer's alphabet (ASCII 32..124)")
            ids.append(i)
        return ids

    def decode(self, tokens: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(
            ("" if skip_special_tokens else self.SPECIAL[t]) if t in self.SPECIAL else chr(t - 3 + 32) for t in tokens
        )

    def get_vocab(self) -> dict[str, int]:
        return {self.decode([i]): i for i in range(tiny.VOCAB)}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        text = "".join(f"[{m['role']}]{m['content']}|" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")


class Gate:
    """Wraps a model so that each extend() waits for a permit: a test decides when the engine may step
    (and can make the next step fail). With `delay`, each extend() also takes that many seconds more: a
    model slow enough to watch a request in flight."""

    def __init__(self, model, delay: float = 0.0) -> None:
        self.model = model
        self.info = model.info
        self.tokenizer = getattr(model, "tokenizer", None)
        self._cond = threading.Condition()
        self._permits: float = float("inf")
        self.waiting = False
        self.fail_next = False  # the next extend() raises, as a backend fault would
        self.delay = delay
        self.calls: list[float] = []  # when each extend() began (after its permit)

    def allow(self, n: float) -> None:
        with self._cond:
            self._permits = n
            self._cond.notify_all()

    @property
    def cached_tokens(self):
        return self.model.cached_tokens

    def begin(self, prompt):
        return self.model.begin(prompt)

    def extend(self, tokens, logits_from: int = 0):
        with self._cond:
            self.waiting = True
            if not self._cond.wait_for(lambda: self._permits > 0, timeout=60):
                raise RuntimeError("test gate never opened")
            self.waiting = False
            self._permits -= 1
            self.calls.append(time.monotonic())
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("injected backend fault")
        if self.delay:
            time.sleep(self.delay)
        return self.model.extend(tokens, logits_from)

    def rollback(self, n: int) -> None:
        self.model.rollback(n)


_TORCH = {}


def torch_models():
    """The tiny target and its drafter (torch modules, shared: the wrappers keep the caches)."""
    if not _TORCH:
        t = tiny.causal(0)
        _TORCH.update(target=t, drafter=tiny.perturbed(t, 0.02, seed=1))
    return _TORCH["target"], _TORCH["drafter"]


def cascade_parts(tokenizer: CharTokenizer | None = None):
    """Fresh wrappers (own KV caches) over the shared tiny modules: (target, drafters, config)."""
    t, d = torch_models()
    tok = tokenizer or CharTokenizer()
    target = HFCausalLM(t, name="tiny-target", tokenizer=tok)
    drafter = HFCausalLM(d, name="tiny-drafter", tokenizer=tok)
    return target, [drafter, MaxGram()], CascadeConfig.make(K)


@contextlib.contextmanager
def one_torch_thread():
    """2 cores are shared by the server's engine thread, the clients and the references: torch's own
    threads would only contend with them."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def running_server(app, **config):
    """uvicorn on a free loopback port in a background thread; yields the base URL (…/v1). `config`: more
    uvicorn.Config settings."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(*args: str) -> tuple[subprocess.Popen, str]:
    """This file's `serve` command in its own process; returns it and its base URL once it answers."""
    port = free_port()
    return launch([sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(port), *args], port)


def launch(cmd: list[str], port: int, timeout: float = 120, cwd: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server command (with this checkout's sources first on the path) and wait until /health answers."""
    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and block the server
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the server did not start: {output(proc)[-2000:]}")
        time.sleep(0.2)


def output(proc: subprocess.Popen) -> str:
    """What a process from `launch` has written so far."""
    proc.log.seek(0)
    return proc.log.read()


def load_figures() -> None:
    from csdrafting.serve import EngineWorker, create_app
    from csdrafting.serve.loadtest import default_requests, run_load

    target, drafters, config = cascade_parts()
    worker = EngineWorker(target, drafters, config, model_name=MODEL, max_queue=64)
    with running_server(create_app(worker)) as url:
        report = run_load(url, default_requests(MODEL, clients=16, per_client=3, max_tokens=32))
    print(json.dumps(report.summary(), indent=1))


def serve(args: argparse.Namespace) -> None:
    """The tiny cascade served as `csdrafting serve` serves the packaged one (same app, same server)."""
    from csdrafting import CascadeConfig
    from csdrafting.serve import EngineWorker, create_app
    from csdrafting.serve.server import make_server

    target, drafters, config = cascade_parts()
    if args.maxgram_only:  # one drafter: K is 1x1, as in the README's examples
        drafters, config = drafters[-1:], CascadeConfig.make([[6]])
    worker = EngineWorker(Gate(target, args.step_delay), drafters, config, model_name=args.served_model_name,
                          max_queue=args.max_queue)
    server = make_server(create_app(worker), worker, grace=args.shutdown_timeout, port=args.port, log_level="warning")
    server.run()


def main(argv: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", default=MODEL)
    s.add_argument("--shutdown-timeout", type=float, default=30.0)
    s.add_argument("--max-queue", type=int, default=16)
    s.add_argument("--step-delay", type=float, default=0.0, help="seconds added to every target forward pass")
    s.add_argument("--maxgram-only", action="store_true", help="Max-Gram as the only drafter (K [[6]])")
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args)
    else:
        load_figures()


if __name__ == "__main__":
    main()
