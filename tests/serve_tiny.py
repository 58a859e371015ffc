"""A real `csdrafting serve` app around tiny random models, for the server tests and the tiny load figures.

The tiny models have no text tokenizer, so they get CharTokenizer: one printable ASCII character per
token, with a chat template of its own, behind the same transformers-style interface (`encode`,
`decode`, `apply_chat_template`, `get_vocab`) through which the server reaches a real model's tokenizer.

    PYTHONPATH=src:tests python tests/serve_tiny.py     # load figures on tiny models (16 clients x 3)
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Sequence

import tiny
from csdrafting import CascadeConfig, MaxGram
from csdrafting.backends.hf import HFCausalLM
from csdrafting.protocol import CSDraftingError

MODEL = "tiny-cascade"
K = [[3, 6], [0, 3]]  # the 1st drafter fills 3 positions reviewing Max-Gram's, Max-Gram 3 more


class CharTokenizer:
    """ids 3..95 <-> ' '..'|' (ASCII 32..124); 0 pad, 1 BOS, 2 EOS."""

    SPECIAL = {0: "<pad>", 1: "<s>", 2: "</s>"}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
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
    (and can make the next step fail)."""

    def __init__(self, model) -> None:
        self.model = model
        self.info = model.info
        self.tokenizer = getattr(model, "tokenizer", None)
        self._cond = threading.Condition()
        self._permits: float = float("inf")
        self.waiting = False
        self.fail_next = False  # the next extend() raises, as a backend fault would

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
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("injected backend fault")
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
def running_server(app):
    """uvicorn on a free loopback port in a background thread; yields the base URL (…/v1)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
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


def main() -> None:
    import torch

    from csdrafting.serve import EngineWorker, create_app
    from csdrafting.serve.loadtest import default_requests, run_load

    torch.set_num_threads(1)
    target, drafters, config = cascade_parts()
    worker = EngineWorker(target, drafters, config, model_name=MODEL, max_queue=64)
    with running_server(create_app(worker)) as url:
        report = run_load(url, default_requests(MODEL, clients=16, per_client=3, max_tokens=32))
    print(json.dumps(report.summary(), indent=1))


if __name__ == "__main__":
    main()
