"""The server survives what clients send: generated request bodies through the real app on one connection.

A real uvicorn server runs the app around a tiny cascade: a random-table target (tests/table_lm.py, so
that a request that passes validation costs well under a millisecond per token) with the test tokenizer
of tests/serve_tiny.py and Max-Gram below it. One httpx connection
sends thousands of bodies that hypothesis generates (wrong types, extreme numbers, odd Unicode with lone
surrogates, nested junk, unknown fields, raw bytes) mixed with valid values for every field. Each answer
must be a well-formed 200 or an OpenAI error naming what was wrong (never a 500), arrive on the SAME
connection, and a well-formed request sent every so often must still get the library's exact answer.
"""

from __future__ import annotations

import json
import os

import dataclasses

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import serve_tiny
import tiny
from csdrafting import Cascade, CascadeConfig, MaxGram
from csdrafting.serve import EngineWorker, create_app
from table_lm import TableLM

MODEL = serve_tiny.MODEL
TOK = serve_tiny.CharTokenizer()
K = [[4]]
EXAMPLES = int(os.environ.get("CSDRAFTING_FUZZ_EXAMPLES", 5000))  # per endpoint, in the normal run
SLOW_EXAMPLES = 25_000
PROBE_EVERY = 50
PROBE = {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 3, "temperature": 0}


CONTEXT = 512
BATCH = 10  # bodies per hypothesis example: the per-example overhead is paid once for ten


def parts():
    """A fresh target over the same table, Max-Gram, K."""
    table = np.random.default_rng(0).normal(0, 1.5, size=(tiny.VOCAB,) * 3)
    target = TableLM(table, "table-target", eos=tiny.EOS)
    target.info = dataclasses.replace(target.info, context_length=CONTEXT)
    target.tokenizer = TOK
    return target, [MaxGram()], CascadeConfig.make(K)


@pytest.fixture(scope="module")
def fuzz_server():
    target, drafters, config = parts()
    worker = EngineWorker(target, drafters, config, model_name=MODEL, max_queue=4, default_max_tokens=3)
    ref_target, ref_drafters, _ = parts()
    want = Cascade(ref_target, ref_drafters, config).generate(TOK.encode(PROBE["prompt"]), PROBE["max_tokens"])
    # uvicorn closes a connection idle for timeout_keep_alive (5 s): on a busy machine a pause between two
    # bodies could pass for a connection the server dropped, so the fuzz connection may idle for an hour
    app = create_app(worker, max_body_bytes=64 * 1024)
    with serve_tiny.running_server(app, timeout_keep_alive=3600) as url:
        with httpx.Client(base_url=url.removesuffix("/v1"), timeout=60,
                          limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as client:
            yield Sender(client, TOK.decode(want.tokens, skip_special_tokens=True))


class Sender:
    """Sends on one keep-alive connection and checks every answer; counts what it saw."""

    def __init__(self, client: httpx.Client, probe_text: str) -> None:
        self.client = client
        self.probe_text = probe_text
        self.address = None
        self.last = b""
        self.sent = {"/v1/completions": 0, "/v1/chat/completions": 0}
        self.statuses: dict[int, int] = {}

    def post(self, path: str, content: bytes) -> httpx.Response:
        r = self.client.post(path, content=content, headers={"content-type": "application/json"})
        stream = r.extensions.get("network_stream")
        address = stream.get_extra_info("client_addr") if stream is not None else None
        before, self.address = self.address, address
        if before is not None and address != before:  # the body BEFORE this one is the one that broke it
            raise AssertionError(f"the server closed the connection after {self.last!r} ({path})")
        assert r.headers.get("connection", "").lower() != "close", (r.text[:300], content[:300])
        self.last = content[:300]
        return r

    def send(self, path: str, content: bytes) -> None:
        r = self.post(path, content)
        self.sent[path] += 1
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        check_answer(r, content)
        if self.sent[path] % PROBE_EVERY == 0:
            self.probe()

    def probe(self) -> None:
        r = self.post("/v1/completions", json.dumps(PROBE).encode())
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == self.probe_text


def check_answer(r: httpx.Response, content: bytes) -> None:
    sent = content[:300]
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text[:500], sent)
    if r.status_code != 200:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (err, sent)
        if r.status_code == 400 and err["code"] not in ("invalid_json", "invalid_body"):  # about the body as a whole
            assert err["param"] is not None, ("a 400 must name the field", err, sent)
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
        assert events[-1] == "[DONE]", (r.text[-300:], sent)
        for ev in events[:-1]:
            obj = json.loads(ev)
            assert "error" not in obj, ("an error event from input", obj, sent)
        return
    obj = r.json()
    choice = obj["choices"][0]
    text = choice["text"] if obj["object"] == "text_completion" else choice["message"]["content"]
    assert isinstance(text, str) and choice["finish_reason"] in ("stop", "length"), (obj, sent)
    assert obj["usage"]["completion_tokens"] >= 1 and obj["usage"]["total_tokens"] > obj["usage"]["prompt_tokens"]


# ------------------------------------------------------------------------------------------------ what is sent
# A body is a valid request (a random subset of valid fields) with up to two fields replaced by anything:
# wrong types, extreme numbers, text with every code point (lone surrogates too), nested junk, unknown
# names. So most bodies probe one bad field at a time, and a good share get through to the engine.
ODD_TEXT = st.text(st.characters(exclude_categories=()), max_size=10)
SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
EXTREME = st.sampled_from([0, 1, -1, 2, 3, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30,
                           10**300, 0.0, -0.0, 1e-300, 5e-324, 1e-6, 0.5, 1.5, 2.0, 2.0000001, 1e9, 1e308, -1e308,
                           float("inf"), float("-inf")])  # json.dumps writes inf as Infinity: the server must refuse it
NUMBERS = st.one_of(st.integers(), st.floats(allow_nan=False), EXTREME)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT)
JUNK = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
                    max_leaves=6)
ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=124), min_size=1, max_size=20)
TEXT = st.one_of(ASCII, ASCII.map(lambda s: s * 30), st.builds(lambda a, s: a + s + a, ASCII, SURROGATES), ODD_TEXT)
KNOBS = st.fixed_dictionaries({}, optional={
    "k": st.one_of(st.just([[4]]), st.lists(st.lists(EXTREME, max_size=2), max_size=2),
                   st.sampled_from([[[10**9]], [[1e9]], [[513]], [[512]], [[0]], [[-1]], [[2, 3]], [[1], [2]]])),
    "k_spelling": st.sampled_from(["cumulative", "increments", "other"]),
    "lenience": st.one_of(st.floats(1, 4), EXTREME),
    "maxgram_length": st.one_of(st.none(), st.integers(1, 8), EXTREME),
    "dynamic": st.booleans(),
    "costs": st.none(),
})
VALID = {
    "model": st.just(MODEL),
    "max_tokens": st.integers(1, 4),
    "temperature": st.one_of(st.just(0), st.floats(0, 2)),
    "top_p": st.floats(1e-3, 1),
    "top_k": st.integers(-1, 100),
    "seed": st.integers(-(2**63), 2**64 - 1),
    "stop": st.one_of(ASCII, st.lists(ASCII, max_size=3)),
    "stream": st.booleans(),
    "user": ASCII,
    "cascade": KNOBS,
    "n": st.just(1),
    "logprobs": st.sampled_from([None, False]),
    "presence_penalty": st.just(0),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
}
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "developer"]),
     "content": st.one_of(TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2))},
    optional={"name": ASCII})
ONLY = {
    "/v1/completions": {"prompt": st.one_of(TEXT, st.lists(st.integers(0, 95), min_size=1, max_size=6))},
    "/v1/chat/completions": {"messages": st.lists(MESSAGE, min_size=1, max_size=3), "max_completion_tokens": st.integers(1, 4)},
}
NEEDED = {"/v1/completions": "prompt", "/v1/chat/completions": "messages"}
BAD = st.one_of(NUMBERS, ODD_TEXT, JUNK, st.builds(lambda a, s: a + s, ASCII, SURROGATES),
                st.lists(st.one_of(ODD_TEXT, MESSAGE), max_size=3), KNOBS.map(lambda k: {**k, "k": [[10**9]]}))


def payloads(path: str) -> st.SearchStrategy:
    fields = {**VALID, **ONLY[path]}
    names = sorted(fields) + ["stream_options", "echo", "best_of", "mirostat", "", "prompt", "messages"]
    need = NEEDED[path]
    valid = st.fixed_dictionaries({need: fields[need]}, optional={k: v for k, v in fields.items() if k != need})
    bad = st.dictionaries(st.one_of(st.sampled_from(names), ODD_TEXT), BAD, max_size=2)
    body = st.builds(lambda v, b: {**v, **b}, valid, st.one_of(st.just({}), bad, bad))
    return st.one_of(body.map(wire), body.map(wire), body.map(wire), JUNK.map(wire), st.binary(max_size=30))


def wire(obj) -> bytes:
    # json.dumps escapes every non-ASCII character, so a lone surrogate travels as "\ud800", as from a client
    return json.dumps(obj).encode()


def fuzz(sender: Sender, path: str, n: int) -> None:
    @settings(max_examples=n // BATCH, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(payloads(path), min_size=BATCH, max_size=BATCH))
    def some(contents: list[bytes]) -> None:
        for content in contents:
            sender.send(path, content)

    before = sender.sent[path]
    some()
    sender.probe()
    assert sender.sent[path] - before >= n, sender.sent  # hypothesis really sent them all
    assert sender.statuses.get(200, 0) >= n // 20, sender.statuses  # and a good share reached the engine


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_fuzzed_bodies_never_break_the_server(fuzz_server, path):
    fuzz(fuzz_server, path, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_fuzzed_bodies_never_break_the_server_long(fuzz_server, path):
    fuzz(fuzz_server, path, SLOW_EXAMPLES)


# ------------------------------------------------------------------------------------------------ what issue 17 found
def test_the_reported_inputs_get_clear_answers(fuzz_server):
    s = fuzz_server

    def post(body, path="/v1/completions", raw: bytes | None = None) -> httpx.Response:
        r = s.post(path, raw if raw is not None else json.dumps(body).encode())
        check_answer(r, raw or b"")
        return r

    def refused(body, param, needle, path="/v1/completions", raw=None) -> None:
        r = post(body, path, raw)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == param and needle in err["message"], (body, raw, err)

    base = {"prompt": "abc", "max_tokens": 4}
    # a negative seed is a 64-bit seed like any other: read as its two's complement, streamed or not
    for temperature in (0, 0.9):
        a = post({**base, "seed": -1, "temperature": temperature}).json()["choices"][0]["text"]
        b = post({**base, "seed": 2**64 - 1, "temperature": temperature}).json()["choices"][0]["text"]
        assert a == b
    stream = post({**base, "seed": -1, "temperature": 0.9, "stream": True})
    assert stream.status_code == 200 and '"error"' not in stream.text
    refused({**base, "seed": 2**64}, "seed", "64-bit integer")
    refused({**base, "seed": -(2**63) - 1}, "seed", "64-bit integer")
    # lone surrogates name the field they are in
    refused({"prompt": "abc \ud800 def"}, "prompt", "lone surrogate U+D800")
    chat = "/v1/chat/completions"
    refused({"messages": [{"role": "user", "content": "abc \udfff"}]}, "messages[0].content", "lone surrogate", chat)
    refused({"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]},
            "messages[0].content[0].text", "lone surrogate", chat)
    # OpenAI's temperature range; a temperature too small to divide logits by is greedy
    refused({**base, "temperature": 3}, "temperature", "[0, 2]")
    refused({**base, "temperature": 2.0000001}, "temperature", "[0, 2]")
    greedy = post({**base, "temperature": 0}).json()["choices"][0]["text"]
    assert post({**base, "temperature": 1e-300, "seed": 5}).json()["choices"][0]["text"] == greedy
    assert post({**base, "temperature": 2}).status_code == 200
    # K beyond the context (or not integers) is refused, not clamped
    refused({**base, "cascade": {"k": [[10**9]]}}, "cascade", "context holds 512")
    refused({**base, "cascade": {"k": [[1e9]]}}, "cascade", "non-negative integers")
    refused({**base, "cascade": {"maxgram_length": 10**6}}, "cascade", "context length")
    refused(None, "cascade", "finite number", raw=b'{"prompt": "abc", "cascade": {"lenience": 1e400}}')
    refused(None, "temperature", "[0, 2]", raw=b'{"prompt": "abc", "temperature": 1e400}')
    r = post(None, raw=b'{"prompt": "abc", "temperature": NaN}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    refused({**base, "cascade": []}, "cascade", "JSON object")
    refused({**base, "model": 5}, "model", "must be a string")
    refused({**base, "stop": "x" * 2000}, "stop", "at most 1024 characters")
    refused({**base, "stop": ["ok", "\udc00"]}, "stop", "lone surrogate")
    # bodies refused before (or while) they are read leave the connection usable too
    assert post(None, raw=json.dumps({"prompt": "x" * 100_000}).encode()).status_code == 413
    assert post(None, raw=b"[" * 60_000).json()["error"]["code"] == "invalid_json"
    # a top_k beyond the vocabulary keeps every token: top-k off
    assert post({**base, "top_k": 10**12, "temperature": 0.5, "seed": 1}).json()["choices"][0]["text"] == \
        post({**base, "top_k": 0, "temperature": 0.5, "seed": 1}).json()["choices"][0]["text"]
    s.probe()


class Breaking(EngineWorker):
    """A worker whose answers for prompts starting with BREAK lack their fields, and whose metrics fail:
    errors of the server itself, which the last handler must turn into 500s without losing the connection."""

    def submit(self, request, sink):
        if TOK.decode(request.prompt[:5]) == "BREAK":
            return super().submit(request, lambda kind, payload: sink(kind, {} if kind == "done" else payload))
        return super().submit(request, sink)

    @property
    def metrics(self):
        return self._metrics if not getattr(self, "broken_metrics", False) else None

    @metrics.setter
    def metrics(self, value):
        self._metrics = value


def test_an_error_of_the_server_is_a_500_and_the_connection_stays():
    target, drafters, config = parts()
    worker = Breaking(target, drafters, config, model_name=MODEL)
    with serve_tiny.running_server(create_app(worker)) as url, httpx.Client(
            base_url=url.removesuffix("/v1"), timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        s = Sender(client, "")
        r = s.post("/v1/completions", b'{"prompt": "BREAK it", "max_tokens": 2}')
        assert r.status_code == 500 and "KeyError" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "server_error"
        r = s.post("/v1/completions", b'{"prompt": "BREAK it", "max_tokens": 2, "stream": true}')
        events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
        assert r.status_code == 200 and events[-1] == "[DONE]" and "KeyError" in json.loads(events[-2])["error"]["message"]
        worker.broken_metrics = True
        r = s.client.get("/metrics")
        assert r.status_code == 500 and "AttributeError" in r.json()["error"]["message"]
        worker.broken_metrics = False
        r = s.post("/v1/completions", b'{"prompt": "fine", "max_tokens": 2}')
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1  # same connection (post checks)


@pytest.mark.real
def test_the_real_tokenizer_and_chat_template_refuse_by_field(qwen05_gguf):
    """Text with every code point through the packaged model's llama.cpp tokenizer and chat template:
    each request either validates or is a 400 naming the field (never another exception)."""
    from csdrafting.serve.schema import APIError, parse
    from csdrafting.spec import CascadeSpec, build

    target, drafters, config = build(CascadeSpec(target="qwen2.5-coder-0.5b:Q4_K_M", drafters=["maxgram"], k=[[4]],
                                                 n_ctx=2048), progress=False)
    worker = EngineWorker(target, drafters, config, model_name="qwen")
    seen = {"ok": 0, "refused": 0}
    plain = st.text(st.characters(exclude_categories=()), min_size=1, max_size=40)
    text = st.one_of(plain, st.builds(lambda a, s, b: a + s + b, plain, SURROGATES, plain))

    @settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(text, st.sampled_from(["completion", "chat"]))
    def one(t: str, kind: str) -> None:
        body = {"prompt": t} if kind == "completion" else {"messages": [{"role": "user", "content": t}]}
        try:
            req = parse(body, kind, worker)
            assert req.prompt
            seen["ok"] += 1
        except APIError as err:
            assert err.status == 400 and err.param in ("prompt", "messages", "messages[0].content"), (ascii(t), err.message)
            seen["refused"] += 1

    one()
    assert seen["ok"] > 100 and seen["refused"] > 10, seen


def test_the_last_handler_ends_whatever_was_begun():
    """guard.LastResort alone: an exception before, during and after an answer never escapes, and what
    was begun is ended properly."""
    import asyncio

    from csdrafting.serve.guard import LastResort

    async def run(app) -> list[dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await LastResort(app)({"type": "http", "path": "/v1/x"}, receive, send)
        return sent

    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}

    async def before(scope, receive, send):
        raise RuntimeError("boom \ud800")  # even an unencodable message

    async def during(scope, receive, send):
        await send(start)
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        raise RuntimeError("boom")

    async def after(scope, receive, send):
        await send(start)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        raise RuntimeError("boom")

    sent = asyncio.run(run(before))
    assert sent[0]["status"] == 500 and len(sent) == 2
    assert json.loads(sent[1]["body"])["error"]["message"] == "internal error: RuntimeError: boom \ud800"
    sent = asyncio.run(run(during))
    assert len(sent) == 3 and not sent[-1].get("more_body", False)
    events = sent[-1]["body"].decode().split("\n\n")
    assert "RuntimeError: boom" in json.loads(events[0].removeprefix("data: "))["error"]["message"] and events[1] == "data: [DONE]"
    assert len(asyncio.run(run(after))) == 2  # complete already: nothing more is sent
