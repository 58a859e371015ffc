"""`csdrafting serve`: a real uvicorn server on a loopback port, talked to with the real `openai` package.

Tiny random models (tests/serve_tiny.py) for almost everything; the packaged Qwen2.5-Coder once (real).
Every answer is compared with the library's own generation for the same prompt and cascade, run on
separate wrappers of the same weights.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Literal

import httpx
import openai
import pytest

import serve_tiny
import tiny
from csdrafting import Cascade, SamplingConfig
from csdrafting.serve import EngineWorker, StopScanner, create_app
from csdrafting.serve.knobs import override
from csdrafting.serve.loadtest import default_requests, run_load
from csdrafting.serve.metrics import parse_prometheus
from csdrafting.protocol import CSDraftingError
from csdrafting.cascade.config import CascadeConfig, KMatrix

MODEL = serve_tiny.MODEL
TOK = serve_tiny.CharTokenizer()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with serve_tiny.one_torch_thread():
        yield


@pytest.fixture(scope="module")
def server():
    target, drafters, config = serve_tiny.cascade_parts(TOK)
    worker = EngineWorker(target, drafters, config, model_name=MODEL, max_queue=64, describe={"K": serve_tiny.K})
    with serve_tiny.running_server(create_app(worker, max_body_bytes=64 * 1024)) as url:
        yield url, worker


@pytest.fixture(scope="module")
def gated():
    """A server whose target steps only when the test allows it, with room for ONE waiting request."""
    target, drafters, config = serve_tiny.cascade_parts(TOK)
    gate = serve_tiny.Gate(target)
    worker = EngineWorker(gate, drafters, config, model_name=MODEL, max_queue=1)
    with serve_tiny.running_server(create_app(worker)) as url:
        yield url, worker, gate
        gate.allow(float("inf"))


@pytest.fixture(scope="module")
def reference():
    """The library's answer for a request, on its own wrappers of the same weights (memoized)."""
    target, drafters, config = serve_tiny.cascade_parts(TOK)
    memo = {}

    def run(prompt_text: str, max_tokens: int, temperature: float = 0.0, seed=None, chat: bool = False,
            config_override: CascadeConfig | None = None):
        key = (prompt_text, max_tokens, temperature, seed, chat, repr(config_override))
        if key not in memo:
            text = TOK.apply_chat_template([{"role": "user", "content": prompt_text}]) if chat else prompt_text
            sampling = SamplingConfig(do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed)
            r = Cascade(target, drafters, config_override or config).generate(TOK.encode(text), max_tokens, sampling)
            memo[key] = (TOK.decode(r.tokens, skip_special_tokens=True), r)
        return memo[key]

    return run


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=kw.pop("timeout", 60), **kw)


def finish_of(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


PROMPTS = ["def add(a, b):", "import numpy as np", "class Stack:", "for i in range(3): print(i)"]


# ------------------------------------------------------------------------------------------------ unit: stop strings
def test_stop_scanner_never_passes_a_stop():
    text = "abcXYZdefXYQghi"
    for stops in (["XYZ"], ["XYQ", "XYZ"], ["Z", "XYZdef"], ["YZ", "Z"], ["cXYZdefX", "efXY"], ["e"], ["nothere"], ["i"]):
        # the stop that completes first (then the longest): where token-by-token decoding stops
        cut = min([(text.find(s) + len(s), text.find(s)) for s in stops if s in text], default=(0, len(text)))[1]
        for size in (1, 2, 3, 5):
            sc = StopScanner(stops)
            out, hit = "", False
            for i in range(0, len(text), size):
                piece, hit = sc.push(text[i : i + size])
                out += piece
                assert len(out) <= cut, (stops, size, out)
                if hit:
                    break
            if not hit:
                out += sc.release()
            assert out == text[:cut], (stops, size)
            assert hit == (cut < len(text))


# ------------------------------------------------------------------------------------------------ unit: knob overrides
def test_knob_override_is_built_from_the_config_fields():
    base = CascadeConfig.make([[3, 6], [0, 3]])
    got = override(base, {"k": [[2, 2], [0, 1]], "k_spelling": "increments", "lenience": 2, "maxgram_length": None})
    assert got.k == KMatrix.parse([[2, 2], [0, 1]], "increments") and got.lenience == 2.0 and got.maxgram_length is None
    assert override(base, {"maxgram_length": 4}).maxgram_length == 4
    with pytest.raises(CSDraftingError, match=r"unknown drafting knob\(s\) \['speed'\].*'lenience'"):
        override(base, {"speed": 3})
    with pytest.raises(CSDraftingError, match="lenience must be >= 1"):
        override(base, {"lenience": 0.5})
    with pytest.raises(CSDraftingError, match="'lenience' must be a number"):
        override(base, {"lenience": "high"})
    with pytest.raises(CSDraftingError, match="'maxgram_length' must be an integer"):
        override(base, {"maxgram_length": 2.5})
    with pytest.raises(CSDraftingError, match="give 'k' with it"):
        override(base, {"k_spelling": "increments"})

    # fields the server has never heard of are overridable by their annotated types alone
    got = override(FutureConfig(), {"dynamic": True, "mode": "fast", "depths": [1, 2], "k": [[3]]})
    assert got == FutureConfig(k=KMatrix.parse([[3]]), dynamic=True, mode="fast", depths=(1, 2))
    for knobs, message in (({"dynamic": 1}, "'dynamic' must be true or false"),
                           ({"mode": "slow"}, r"'mode' must be one of \['safe', 'fast'\]"),
                           ({"depths": [1, "x"]}, r"'depths\[1\]' must be an integer"),
                           ({"costs": [[1.0, 2.0]]}, "'costs' cannot be set per request"),
                           ({"depths": [0]}, "depths must be positive")):
        with pytest.raises(CSDraftingError, match=message):
            override(FutureConfig(), knobs)


@dataclass(frozen=True)
class FutureConfig:
    """Stands for fields a later CascadeConfig may have."""

    k: KMatrix | None = None
    dynamic: bool = False
    mode: Literal["safe", "fast"] = "safe"
    depths: tuple[int, ...] = (4,)
    costs: tuple | None = None  # measured objects: not JSON

    def __post_init__(self) -> None:
        if any(d < 1 for d in self.depths):
            raise CSDraftingError("depths must be positive")


# ------------------------------------------------------------------------------------------------ completions and chat
def test_completions_equal_the_library(server, reference):
    url, _ = server
    c = client(url)
    for i, prompt in enumerate(PROMPTS):
        want, r = reference(prompt, 24)
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert out.choices[0].text == want
        assert out.choices[0].finish_reason == finish_of(r)
        assert out.usage.prompt_tokens == len(prompt) and out.usage.completion_tokens == len(r.tokens)
        timings = out.model_extra["timings"]
        assert timings["predicted_n"] == len(r.tokens) and timings["draft_n"] >= timings["draft_n_accepted"]
        assert timings["prompt_ms"] > 0 and timings["predicted_ms"] > 0  # the prefill, then the decoding
        assert [lv["drafted"] for lv in timings["levels"]] == [lv.drafted for lv in r.metrics.levels]
        # streamed: the same text, in pieces, then a final chunk with the finish reason and timings
        chunks = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True))
        assert "".join(ch.choices[0].text for ch in chunks) == want
        assert chunks[-1].choices[0].finish_reason == finish_of(r) and "timings" in chunks[-1].model_extra
        assert len([ch for ch in chunks if ch.choices[0].text]) > 1  # really streamed, not one piece


def test_chat_uses_the_template_and_equals_the_library(server, reference):
    url, _ = server
    c = client(url)
    for prompt in PROMPTS[:2]:
        want, r = reference(prompt, 20, chat=True)
        out = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=20, temperature=0)
        assert out.choices[0].message.content == want and out.choices[0].message.role == "assistant"
        assert out.usage.prompt_tokens == len(TOK.apply_chat_template([{"role": "user", "content": prompt}]))
        stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=20,
                                           temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(r.tokens)
    # a multi-turn conversation renders through the template too
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sum?"}]
    out = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    assert out.usage.prompt_tokens == len(TOK.apply_chat_template(msgs))


def test_stop_strings_cut_the_text_streamed_or_not(server, reference):
    url, _ = server
    c = client(url)
    prompt = PROMPTS[0]
    full, _ = reference(prompt, 40)
    assert len(full) >= 30
    # stops at several places (inside a draft batch and across batches), of 1 to 4 characters
    for start, length in ((3, 2), (10, 3), (17, 4), (25, 1), (28, 3)):
        stop = full[start : start + length]
        cut = full.find(stop)
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stop=[stop, "\x7c\x7c\x7c\x7c"])
        assert out.choices[0].text == full[:cut] and out.choices[0].finish_reason == "stop", stop
        pieces = [ch.choices[0].text for ch in c.completions.create(model=MODEL, prompt=prompt, max_tokens=40,
                                                                    temperature=0, stop=stop, stream=True)]
        assert "".join(pieces) == full[:cut], stop
    # a stop that never occurs changes nothing
    out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, stop=["@@@@"])
    assert out.choices[0].text == full


def test_usage_counts_the_answers_tokens_the_same_way_in_both_endpoints(server, reference):
    """completion_tokens: every token of the answer, the end token included when the model ended, up to the
    token that completed a stop string, whatever batch the cascade produced it in."""
    url, _ = server
    c = client(url)
    prompt = PROMPTS[0]
    full, r = reference(prompt, 200)
    assert r.finish_reason == "eos" and r.tokens[-1] == tiny.EOS
    stop = full[10:13]
    cut = full.find(stop)
    upto = next(n for n in range(1, len(r.tokens)) if stop in TOK.decode(r.tokens[:n], skip_special_tokens=True))
    for stream in (False, True):
        assert _answer(c, "completion", stream, prompt=prompt, max_tokens=200) == (full, "stop", len(r.tokens))
        assert _answer(c, "completion", stream, prompt=prompt, max_tokens=5) == (
            TOK.decode(r.tokens[:5], skip_special_tokens=True), "length", 5)
        assert _answer(c, "completion", stream, prompt=prompt, max_tokens=200, stop=stop) == (full[:cut], "stop", upto)
    chat_full, r = reference(prompt, 200, chat=True)
    assert r.finish_reason == "eos"
    for stream in (False, True):
        out = _answer(c, "chat", stream, messages=[{"role": "user", "content": prompt}], max_tokens=200)
        assert out == (chat_full, "stop", len(r.tokens))  # the end token counts, in chat as in completions


def _answer(c, kind, stream, **kw):
    """(text, finish_reason, usage.completion_tokens) of one request."""
    api = c.chat.completions if kind == "chat" else c.completions
    if not stream:
        out = api.create(model=MODEL, temperature=0, **kw)
        ch = out.choices[0]
        return (ch.message.content if kind == "chat" else ch.text), ch.finish_reason, out.usage.completion_tokens
    chunks = list(api.create(model=MODEL, temperature=0, stream=True, stream_options={"include_usage": True}, **kw))
    pieces = [(ch.choices[0].delta.content or "") if kind == "chat" else ch.choices[0].text for ch in chunks if ch.choices]
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    return "".join(pieces), finish[-1], chunks[-1].usage.completion_tokens


def test_seeds_reproduce_and_match_the_library(server, reference):
    url, _ = server
    c = client(url)
    prompt = PROMPTS[1]
    texts = {}
    for seed in (1, 2, 3):
        a = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0.9, seed=seed).choices[0].text
        b = "".join(ch.choices[0].text for ch in c.completions.create(model=MODEL, prompt=prompt, max_tokens=24,
                                                                      temperature=0.9, seed=seed, stream=True))
        assert a == b == reference(prompt, 24, temperature=0.9, seed=seed)[0]
        texts[seed] = a
    assert len(set(texts.values())) > 1  # the seed matters


def test_drafting_knobs_per_request(server, reference):
    url, _ = server
    c = client(url)
    prompt = PROMPTS[2]
    knobs = {"k": [[1, 1], [0, 1]], "k_spelling": "increments", "lenience": 2}
    override_cfg = override(CascadeConfig.make(serve_tiny.K), knobs)
    want, r = reference(prompt, 24, config_override=override_cfg)
    out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"cascade": knobs})
    assert out.choices[0].text == want == reference(prompt, 24)[0]  # other knobs, same exact text
    t = out.model_extra["timings"]
    assert max(len(lv["reviewed_by_position"]) for lv in t["levels"]) <= 2  # drafts of at most 2 tokens
    assert t["draft_n"] == sum(r.metrics.levels[0].reviewed_by_position)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, extra_body={"cascade": {"depth": 3}})
    assert "unknown drafting knob(s) ['depth']" in e.value.body["message"] and "'k'" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, extra_body={"cascade": {"k": [[4]]}})
    assert "2 drafters" in e.value.body["message"]


# ------------------------------------------------------------------------------------------------ load
def test_load_16_clients_each_answer_equals_the_request_alone(server, reference):
    url, worker = server
    per_client = default_requests(MODEL, clients=16, per_client=3, max_tokens=16)
    report = run_load(url, per_client)
    s = report.summary()
    assert s["requests"] == 48 and s["errors"] == 0, [o.error for o in report.outcomes if o.error]
    for o in report.outcomes:
        req = o.request
        chat = "messages" in req
        prompt = req["messages"][0]["content"] if chat else req["prompt"]
        want, r = reference(prompt, req["max_tokens"], req.get("temperature", 0), req.get("seed"), chat=chat)
        assert o.text == want, (o.client, o.index, req)
        assert o.finish_reason == finish_of(r) and o.completion_tokens == len(r.tokens)
    assert worker.n_waiting == 0


def test_queue_overflow_answers_503_with_retry_after(gated, reference):
    url, worker, gate = gated
    gate.allow(0)
    c = client(url)
    results = {}

    def send(name, prompt):
        results[name] = c.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

    a = threading.Thread(target=send, args=("a", PROMPTS[0]))
    a.start()
    _until(lambda: worker.n_running == 1)
    b = threading.Thread(target=send, args=("b", PROMPTS[1]))
    b.start()
    _until(lambda: worker.n_waiting == 1)
    with pytest.raises(openai.InternalServerError) as e:  # 5xx
        c.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=12, temperature=0)
    assert e.value.status_code == 503 and "the server is busy" in e.value.body["message"]
    assert e.value.body["code"] == "queue_full" and int(e.value.response.headers["retry-after"]) >= 1
    gate.allow(float("inf"))
    a.join(30)
    b.join(30)
    assert results == {"a": reference(PROMPTS[0], 12)[0], "b": reference(PROMPTS[1], 12)[0]}  # nothing lost
    metrics = parse_prometheus(httpx.get(url.removesuffix("/v1") + "/metrics").text)
    assert metrics[("csdrafting:request_rejected_total", frozenset({("model_name", MODEL), ("reason", "queue_full")}))] == 1


def test_disconnect_mid_stream_cancels_and_the_next_request_is_exact(gated, reference):
    url, worker, gate = gated
    c = client(url)
    base = url.removesuffix("/v1")
    before = parse_prometheus(httpx.get(base + "/metrics").text)
    gate.allow(3)  # the first target steps, then the engine waits at the gate
    stream = c.completions.create(model=MODEL, prompt=PROMPTS[3], max_tokens=200, temperature=0, stream=True)
    first = next(iter(stream))
    assert first.choices[0].text
    _until(lambda: gate.waiting and worker.n_running == 1)
    job = worker._running
    stream.close()  # the client leaves
    _until(lambda: job.cancelled.is_set())  # the server noticed while the engine was mid-generation ...
    gate.allow(float("inf"))
    _until(lambda: worker.n_running == 0)  # ... and the engine stopped at its next step
    after = parse_prometheus(httpx.get(base + "/metrics").text)
    key = ("csdrafting:request_success_total", frozenset({("model_name", MODEL), ("finished_reason", "abort")}))
    assert after[key] - before.get(key, 0) == 1
    gen = ("csdrafting:generation_tokens_total", frozenset({("model_name", MODEL)}))
    assert after[gen] - before[gen] < 40  # far from the 200 asked for

    # the same for a client that gives up waiting for a non-streamed answer
    gate.allow(2)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/completions", json={"model": MODEL, "prompt": PROMPTS[2], "max_tokens": 200, "temperature": 0},
                   timeout=httpx.Timeout(30, read=2.0))
    _until(lambda: gate.waiting and worker.n_running == 1)
    job = worker._running
    _until(lambda: job.cancelled.is_set())
    gate.allow(float("inf"))
    _until(lambda: worker.n_running == 0)
    final = parse_prometheus(httpx.get(base + "/metrics").text)
    assert final[key] - before.get(key, 0) == 2 and final[gen] - after[gen] < 40

    for prompt in PROMPTS[:2]:  # the engine is free and every request starts clean
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert out.choices[0].text == reference(prompt, 24)[0]


def test_an_engine_fault_fails_one_request_and_the_server_goes_on(gated, reference):
    url, worker, gate = gated
    c = client(url)
    gate.allow(float("inf"))
    gate.fail_next = True
    with pytest.raises(openai.InternalServerError) as e:
        c.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert e.value.status_code == 500 and "RuntimeError: injected backend fault" in e.value.body["message"]
    gate.fail_next = True
    stream = c.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    with pytest.raises(openai.APIError, match="injected backend fault"):
        list(stream)  # the error arrives as an event of the stream
    for prompt in PROMPTS[:2]:
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert out.choices[0].text == reference(prompt, 24)[0]


def test_prefix_reuse_changes_no_output(reference):
    """--reuse-prefix: the next request re-evaluates only what differs from the previous one."""
    from csdrafting.serve.schema import parse

    target, drafters, config = serve_tiny.cascade_parts(TOK)
    worker = EngineWorker(target, drafters, config, model_name=MODEL, reuse_prefix=True)
    worker.start()
    try:
        evaluated = []
        for prompt in (PROMPTS[0], PROMPTS[0] + " return a"):
            done = threading.Event()
            events = []
            worker.submit(parse({"prompt": prompt, "max_tokens": 16, "temperature": 0}, "completion", worker),
                          lambda kind, payload: (events.append((kind, payload)), kind != "text" and done.set()))
            assert done.wait(30)
            assert "".join(p for k, p in events if k == "text") == reference(prompt, 16)[0]
            evaluated.append(events[-1][1]["timings"]["levels"][0]["tokens_evaluated"])
        cold = reference(PROMPTS[0] + " return a", 16)[1].metrics.levels[0].tokens_evaluated
        assert evaluated[1] < cold  # the shared prefix was not evaluated again
    finally:
        worker.stop()


# ------------------------------------------------------------------------------------------------ bad input
def test_every_bad_input_gets_an_openai_error(server, reference):
    url, _ = server
    base = url.removesuffix("/v1")
    c = client(url)

    def raw(path, content, status, needle, headers=None):
        r = httpx.post(base + path, content=content, headers=headers or {"content-type": "application/json"}, timeout=30)
        assert r.status_code == status, (content[:80], r.status_code, r.text)
        err = r.json()["error"]
        assert needle in err["message"], (needle, err)
        assert set(err) == {"message", "type", "param", "code"}
        return err

    raw("/v1/completions", b"{not json", 400, "not valid JSON")
    raw("/v1/chat/completions", b"", 400, "empty")
    raw("/v1/completions", b"[" * 50_000, 400, "nests too deeply")
    raw("/v1/completions", b"[1, 2]", 400, "must be a JSON object")
    raw("/v1/completions", json.dumps({"prompt": "x" * 70_000}).encode(), 413, "at most 65536")
    # (the openai client refuses to send these itself)
    assert raw("/v1/completions", b'{"model": "%s"}' % MODEL.encode(), 400, "'prompt' is required")["param"] == "prompt"
    assert raw("/v1/chat/completions", b'{"max_tokens": 3}', 400, "'messages' is required")["param"] == "messages"
    r = httpx.get(base + "/v1/nothing")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = httpx.get(base + "/v1/completions")
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]["message"]

    cases = [
        (openai.NotFoundError, dict(model="gpt-4", prompt="a"), "the model 'gpt-4' does not exist", "model"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", max_tokens=0), "'max_tokens' must be >= 1", "max_tokens"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", max_tokens=-3), "'max_tokens' must be >= 1", "max_tokens"),
        (openai.BadRequestError, dict(model=MODEL, prompt="abc", max_tokens=510), "lower max_tokens to 509", "max_tokens"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", n=2), "'n' = 2 is not supported", "n"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", logprobs=2), "'logprobs' = 2 is not supported", "logprobs"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", extra_body={"mirostat": 2}), "unsupported field(s) ['mirostat']", "mirostat"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", temperature=-1), "'temperature' must be in [0, 2]", "temperature"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", temperature=3), "'temperature' must be in [0, 2]", "temperature"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", top_p=0), "'top_p' must be in (0, 1]", "top_p"),
        (openai.BadRequestError, dict(model=MODEL, prompt="a", stop=[""]), "must not be empty", "stop"),
        (openai.BadRequestError, dict(model=MODEL, prompt=""), "'prompt' is empty", "prompt"),
        (openai.BadRequestError, dict(model=MODEL, prompt=["a", "b"]), "one prompt per request", "prompt"),
        (openai.BadRequestError, dict(model=MODEL, prompt=[1, 999]), "outside the vocabulary", "prompt"),
        (openai.BadRequestError, dict(model=MODEL, prompt="caf\u00e9"), "outside the test tokenizer's alphabet", "prompt"),
    ]
    for exc, kwargs, needle, param in cases:
        with pytest.raises(exc) as e:
            c.completions.create(**kwargs)
        assert needle in e.value.body["message"] and e.value.body["param"] == param, (kwargs, e.value.body)
    chat_cases = [
        (dict(model=MODEL, messages=[]), "non-empty list"),
        (dict(model=MODEL, messages=[{"role": "robot", "content": "x"}]), "messages[0].role must be"),
        (dict(model=MODEL, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
         "only text content"),
        (dict(model=MODEL, messages=[{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {"name": "f"}}]),
         "tool calls are not implemented"),
        (dict(model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"prompt": "y"}),
         "belongs to /v1/completions"),
    ]
    for kwargs, needle in chat_cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(**kwargs)
        assert needle in e.value.body["message"], (kwargs, e.value.body)
    # nothing was queued, nothing broke: the server still answers, exactly
    assert httpx.get(base + "/health").json()["status"] == "ok"
    out = c.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=0)
    assert out.choices[0].text == reference(PROMPTS[0], 16)[0]


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_counters_equal_sums_of_timings(server):
    url, _ = server
    base = url.removesuffix("/v1")
    c = client(url)
    before = parse_prometheus(httpx.get(base + "/metrics").text)
    timings, usage = [], []
    for i, prompt in enumerate(PROMPTS):
        if i % 2:
            chunks = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0, stream=True,
                                               stream_options={"include_usage": True}))
            timings.append(chunks[-2].model_extra["timings"])
            usage.append(chunks[-1].usage)
        else:
            out = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=20,
                                            temperature=0.7, seed=i)
            timings.append(out.model_extra["timings"])
            usage.append(out.usage)
    text = httpx.get(base + "/metrics").text
    assert "# TYPE csdrafting:spec_decode_num_drafts_total counter" in text
    after = parse_prometheus(text)

    def delta(name, **labels):
        key = (f"csdrafting:{name}", frozenset({("model_name", MODEL), *labels.items()}))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("spec_decode_num_drafts_total") == sum(t["draft_count"] for t in timings) > 0
    assert delta("spec_decode_num_draft_tokens_total") == sum(t["draft_n"] for t in timings) > 0
    assert delta("spec_decode_num_accepted_tokens_total") == sum(t["draft_n_accepted"] for t in timings) > 0
    for pos in range(6):
        assert delta("spec_decode_num_accepted_tokens_per_pos_total", position=str(pos)) == sum(
            t["draft_accepted_by_position"][pos] if pos < len(t["draft_accepted_by_position"]) else 0 for t in timings)
    assert delta("prompt_tokens_total") == sum(u.prompt_tokens for u in usage) == sum(t["prompt_n"] for t in timings)
    assert delta("generation_tokens_total") == sum(u.completion_tokens for u in usage) == sum(t["predicted_n"] for t in timings)
    for lv in timings[0]["levels"]:
        labels = dict(level=str(lv["level"]), level_model=lv["name"], level_kind=lv["kind"])
        for field in ("drafted", "accepted"):
            got = delta(f"cascade_level_{field}_tokens_total", **labels)
            assert got == sum(t["levels"][lv["level"]][field] for t in timings), (lv["name"], field)
    # every level took part: the drafter's tokens were accepted, Max-Gram's were reviewed
    assert sum(t["levels"][1]["accepted"] for t in timings) > 0 and sum(t["levels"][2]["drafted"] for t in timings) > 0
    assert delta("request_success_total", finished_reason="length") + delta("request_success_total", finished_reason="stop") == 4


def test_models_and_health(server):
    url, worker = server
    base = url.removesuffix("/v1")
    models = client(url).models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].model_extra["max_model_len"] == worker.context_length
    h = httpx.get(base + "/health").json()
    assert h == {"status": "ok", "requests_running": 0, "requests_waiting": 0, "max_queue": 64}


# ------------------------------------------------------------------------------------------------ real models
@pytest.mark.real
def test_real_models_serve_exactly(qwen05_gguf):
    """The packaged 0.5B with Max-Gram below it, served: equal to the library's greedy output."""
    from csdrafting.spec import CascadeSpec, build
    from csdrafting.text import StreamText, encode, render_chat

    spec = CascadeSpec(target="qwen2.5-coder-0.5b:Q4_K_M", drafters=["maxgram"], k=[[3]], n_ctx=1024)
    target, drafters, config = build(spec, progress=False)
    worker = EngineWorker(target, drafters, config, model_name="qwen")
    # repetitive code, so that Max-Gram's copies get accepted
    prompt = "def f(a, b):\n    return a + b\n\n\ndef g(a, b):\n    return a + b\n\n\ndef h(a, b):\n"
    msgs = [{"role": "user", "content": "Write a Python one-liner that reverses a string."}]
    with serve_tiny.running_server(create_app(worker)) as url:
        c = client(url, timeout=600)
        plain = c.completions.create(model="qwen", prompt=prompt, max_tokens=16, temperature=0)
        chunks = list(c.chat.completions.create(model="qwen", messages=msgs, max_tokens=16, temperature=0, stream=True))
    cascade = Cascade(target, drafters, config)

    def library(text):
        return StreamText(target).push(cascade.generate(encode(target, text), 16).tokens)

    want = library(prompt)
    assert plain.choices[0].text == want and len(want) > 10
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == library(render_chat(target, msgs))
    levels = plain.model_extra["timings"]["levels"]
    assert [lv["kind"] for lv in levels] == ["target", "statistical"] and levels[1]["accepted"] > 0


def _until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
