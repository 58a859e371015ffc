"""`csdrafting serve --replicas` on a local Ray cluster: tiny random models, the real `openai` client.

One cluster for the module, two applications on it (two replicas each, half a core per replica):
`fast` for answers, load, metrics and affinity; `slow` (every target forward pass takes 0.1 s more, room for
one waiting request per replica and two in Ray's queue) for back-pressure, disconnects and a killed replica.
Every answer is compared with the library's own generation for the same request (ray_tiny.Library).
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

pytest.importorskip("ray.serve")

import openai  # noqa: E402
import torch  # noqa: E402

import ray_tiny  # noqa: E402
from csdrafting.serve.loadtest import default_requests, run_load  # noqa: E402
from csdrafting.serve.metrics import parse_prometheus  # noqa: E402
from csdrafting.serve.ray_metrics import sum_expositions  # noqa: E402
from csdrafting.serve.ray_router import PrefixIndex, conversation_text  # noqa: E402

pytestmark = pytest.mark.ray

MODEL = ray_tiny.MODEL
PROMPTS = ["def add(a, b):", "import numpy as np", "class Stack:", "while True:"]
# prompts whose greedy answers run to 72 tokens or more (126-192 for the last four) before the end token
LONG = ["def add(a, b):", "while True:", "y = [1, 2]", "second", "def task_52(x):", "def task_11(x):"]
SLOW_QUEUE, SLOW_QUEUED = 1, 2  # per replica: 1 running + 1 waiting; 2 more wait in Ray: 6 in all


class Cluster:
    def __init__(self, port: int, fast: str, slow: str) -> None:
        self.port, self.fast, self.slow = port, fast, slow


@pytest.fixture(scope="module")
def cluster():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 cores shared by 4 replicas, the clients and the references
    with ray_tiny.local_cluster() as port:
        fast = ray_tiny.deploy(functools.partial(ray_tiny.tiny_worker, max_queue=64), port, name="fast",
                               route_prefix="/fast", replicas=2, max_queue=64)
        slow = ray_tiny.deploy(functools.partial(ray_tiny.tiny_worker, max_queue=SLOW_QUEUE, step_delay=0.1), port,
                               name="slow", route_prefix="/slow", replicas=2, max_queue=SLOW_QUEUE, max_queued=SLOW_QUEUED)
        yield Cluster(port, fast, slow)
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def library():
    return ray_tiny.Library()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def base(url: str) -> str:
    return url.removesuffix("/v1")


def finish_of(result) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def per_replica(app: str) -> dict[str, str]:
    """{replica id: its own /metrics}, asked of each replica (not through the front)."""
    from ray import serve

    return dict(serve.get_deployment_handle("CascadeReplica", app_name=app).broadcast("counters").results(timeout_s=30))


def counter(metrics: dict, name: str, **labels) -> float:
    return metrics.get((f"csdrafting:{name}", frozenset({("model_name", MODEL), *labels.items()})), 0)


def _until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ pure parts
def test_metric_sums_keep_names_and_gone_counters():
    a = "# HELP x:c Things.\n# TYPE x:c counter\nx:c{m=\"a\",r=\"s\"} 2\n# TYPE x:g gauge\nx:g{m=\"a\"} 1\n# TYPE x:f counter\nx:f 0.5\n"
    b = "# HELP x:c Things.\n# TYPE x:c counter\nx:c{m=\"a\",r=\"s\"} 3\nx:c{m=\"a\",r=\"t\"} 1\n# TYPE x:g gauge\nx:g{m=\"a\"} 1\n"
    gone = "# TYPE x:c counter\nx:c{m=\"a\",r=\"s\"} 10\n# TYPE x:g gauge\nx:g{m=\"a\"} 7\n"
    got = sum_expositions([a, b], counters_of=[gone])
    assert got.splitlines() == ["# HELP x:c Things.", "# TYPE x:c counter", 'x:c{m="a",r="s"} 15', 'x:c{m="a",r="t"} 1',
                                "# TYPE x:g gauge", 'x:g{m="a"} 2', "# TYPE x:f counter", "x:f 0.5"]


def test_conversation_text_and_prefix_index():
    turn1 = [{"role": "user", "content": "def add(a, b): return the sum, please"}]
    turn2 = turn1 + [{"role": "assistant", "content": "return a + b"}, {"role": "user", "content": "and mul?"}]
    t1 = conversation_text("/v1/chat/completions", _json(turn1))
    t2 = conversation_text("/v1/chat/completions", _json(turn2))
    assert t2.startswith(t1) and len(t1) > 32
    assert conversation_text("/v1/completions", b'{"prompt": "abc"}') == "abc"
    assert conversation_text("/v1/completions", b"{not json") is None and conversation_text("/v1/models", b"") is None
    index = PrefixIndex(block_chars=16)
    assert index.lookup(t2) == (None, 0)
    index.record(t1, "r1")
    assert index.lookup(t2) == ("r1", len(t1)) and index.lookup(t1) == ("r1", len(t1))
    assert index.lookup(t1[:-1]) == (None, 0)  # only a whole earlier request counts
    # a request that shares only a template (or a system prompt) with an earlier one is not its continuation
    other = conversation_text("/v1/chat/completions", _json([{"role": "user", "content": "def add(a, b): return the diff"}]))
    assert other[:25] == t1[:25] and index.lookup(other) == (None, 0)
    index.record(other, "r2")
    index.record(t2, "r2")  # the conversation moved: its next turn follows it
    assert index.lookup(t2 + "more") == ("r2", len(t2)) and index.lookup(t1 + "x") == ("r1", len(t1))
    short = PrefixIndex(block_chars=16)
    short.record("abc", "r3")  # shorter than a block
    assert short.lookup("abcdef") == ("r3", 3) and short.lookup("ab") == (None, 0)
    small = PrefixIndex(block_chars=4, capacity=3)
    small.record("aaaabbbbccccdddd", "r1")  # 4 blocks, only the 3 most recent are kept
    assert small.lookup("aaaabbbbccccdddd") == (None, 0)


def test_a_replica_runs_the_app_in_process_and_a_closed_call_cancels_the_generation(library):
    """ray_asgi.call_asgi alone, on the single-process app around a slow tiny worker (no Ray)."""
    import asyncio
    import json

    from csdrafting.serve import create_app
    from csdrafting.serve.ray_asgi import Forwarded, call_asgi

    worker = ray_tiny.tiny_worker(max_queue=2, step_delay=0.05)
    worker.start()
    app = create_app(worker, manage_worker=False)

    def post(body: dict) -> Forwarded:
        return Forwarded("POST", "/v1/completions", b"", ((b"content-type", b"application/json"),), json.dumps(body).encode())

    async def whole(request: Forwarded) -> list[dict]:
        return [m async for batch in call_asgi(app, request) for m in batch]

    async def leave_after_first_text(request: Forwarded) -> None:
        calls = call_asgi(app, request)
        async for batch in calls:
            if any(m.get("body", b"").startswith(b"data: {") for m in batch):
                break
        await calls.aclose()  # what Ray does when the client leaves

    try:
        messages = asyncio.run(whole(post({"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0})))
        assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
        assert json.loads(b"".join(m.get("body", b"") for m in messages[1:]))["choices"][0]["text"] == library(PROMPTS[0], 12)[0]
        bad = asyncio.run(whole(post({"model": MODEL, "prompt": "a", "max_tokens": 0})))
        assert bad[0]["status"] == 400 and b"'max_tokens' must be >= 1" in bad[1]["body"]
        asyncio.run(leave_after_first_text(post({"model": MODEL, "prompt": LONG[4], "max_tokens": 300, "temperature": 0,
                                                  "stream": True})))
        _until(lambda: worker.n_running == 0)
        assert worker.metrics.success["abort"] == 1 and worker.metrics.generation_tokens < 12 + 40  # of 12 + 192
    finally:
        worker.stop()


def test_command_line_maps_to_ray_serve_options():
    import argparse
    import subprocess
    import sys

    from csdrafting.protocol import CSDraftingError
    from csdrafting.serve import cli, ray_cli
    from csdrafting.serve.ray_app import application

    p = argparse.ArgumentParser()
    cli.add_args(p)
    assert not ray_cli.wanted(p.parse_args([]))  # the single-process server stays the default ...
    code = "import sys, csdrafting.cli, csdrafting.serve.cli, csdrafting.serve.app; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # ... and does not import Ray
    args = p.parse_args(["--min-replicas", "1", "--max-replicas", "3", "--max-queue", "4"])
    assert ray_cli.wanted(args)
    options = ray_cli.check(args, threads=2)
    assert options["replicas"] == 1 and options["replica_cpus"] == 2 and options["max_queued"] is None
    for bad, message in ((["--replicas", "0"], "must be >= 1"), (["--min-replicas", "3", "--max-replicas", "2"], "is above"),
                         (["--replicas", "2", "--replica-cpus", "0"], "--replica-cpus must be > 0")):
        with pytest.raises(CSDraftingError, match=message):
            ray_cli.check(p.parse_args(bad), threads=2)
    # what Ray Serve is given (read back from the bound application)
    app = application(functools.partial(ray_tiny.tiny_worker), model_name=MODEL, **{**options, "max_queued": 7, "replicas": 2})
    front = app._bound_deployment
    cascade = front.init_args[0]._bound_deployment
    assert (cascade.max_ongoing_requests, cascade.max_queued_requests) == (5, 7)  # max_queue + 1 running; Ray's queue
    assert cascade.ray_actor_options["num_cpus"] == 2 and front.ray_actor_options["num_cpus"] == 0
    scaling = cascade._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.initial_replicas) == (1, 3, 2)
    assert cascade._deployment_config.request_router_config.request_router_class.endswith("PrefixAffinityRouter")


def _json(messages) -> bytes:
    import json

    return json.dumps({"model": MODEL, "messages": messages}).encode()


# ------------------------------------------------------------------------------------------------ answers
def test_answers_equal_the_library_streamed_or_not(cluster, library):
    c = client(cluster.fast)
    assert [m.id for m in c.models.list().data] == [MODEL]
    for prompt in PROMPTS[:3]:
        want, r = library(prompt, 24)
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert out.choices[0].text == want and out.choices[0].finish_reason == finish_of(r)
        assert out.usage.completion_tokens == len(r.tokens) == out.model_extra["timings"]["predicted_n"]
        chunks = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True))
        assert "".join(ch.choices[0].text for ch in chunks) == want
        assert chunks[-1].choices[0].finish_reason == finish_of(r) and "timings" in chunks[-1].model_extra
        assert len([ch for ch in chunks if ch.choices[0].text]) > 1  # streamed through both hops, not one piece
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    out = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    assert out.choices[0].message.content == library(msgs, 16)[0]
    seeded = c.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0.9, seed=3)
    assert seeded.choices[0].text == library(PROMPTS[1], 20, 0.9, 3)[0]


def test_errors_are_the_single_process_servers(cluster):
    c = client(cluster.fast)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="a", max_tokens=0)
    assert "'max_tokens' must be >= 1" in e.value.body["message"] and e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="a", max_tokens=4, extra_body={"cascade": {"depth": 3}})
    assert "unknown drafting knob(s) ['depth']" in e.value.body["message"]
    root = base(cluster.fast)
    r = httpx.post(root + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(root + "/v1/completions", json={"prompt": "x" * (1 << 20)})  # over the 1 MiB default
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(root + "/v1/nothing")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------------ load and metrics
def test_load_16_clients_each_answer_equals_the_request_alone(cluster, library):
    before = {rid: parse_prometheus(text) for rid, text in per_replica("fast").items()}
    report = run_load(cluster.fast, default_requests(MODEL, clients=16, per_client=3, max_tokens=16))
    s = report.summary()
    assert s["requests"] == 48 and s["errors"] == 0, [o.error for o in report.outcomes if o.error]
    for o in report.outcomes:
        want, r = library.request(o.request)
        assert o.text == want, (o.client, o.index, o.request)
        assert o.finish_reason == finish_of(r) and o.completion_tokens == len(r.tokens)
    after = {rid: parse_prometheus(text) for rid, text in per_replica("fast").items()}
    served = {rid: sum(counter(m, "request_success_total", finished_reason=f) for f in ("length", "stop"))
              - sum(counter(before.get(rid, {}), "request_success_total", finished_reason=f) for f in ("length", "stop"))
              for rid, m in after.items()}
    assert len(served) == 2 and sum(served.values()) == 48 and min(served.values()) > 0  # both replicas served


def test_one_metrics_scrape_is_the_sum_over_replicas(cluster):
    c = client(cluster.fast)
    root = base(cluster.fast)
    before = parse_prometheus(httpx.get(root + "/metrics").text)
    timings, usage = [], []
    for i, prompt in enumerate(PROMPTS):
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0.7, seed=i)
        timings.append(out.model_extra["timings"])
        usage.append(out.usage)
    text = httpx.get(root + "/metrics").text
    after = parse_prometheus(text)
    assert "# TYPE csdrafting:spec_decode_num_drafts_total counter" in text

    def delta(name, **labels):
        return counter(after, name, **labels) - counter(before, name, **labels)

    assert delta("spec_decode_num_drafts_total") == sum(t["draft_count"] for t in timings) > 0
    assert delta("spec_decode_num_accepted_tokens_total") == sum(t["draft_n_accepted"] for t in timings) > 0
    assert delta("generation_tokens_total") == sum(u.completion_tokens for u in usage)
    assert delta("prompt_tokens_total") == sum(u.prompt_tokens for u in usage)
    for lv in timings[0]["levels"]:
        labels = dict(level=str(lv["level"]), level_model=lv["name"], level_kind=lv["kind"])
        assert delta("cascade_level_accepted_tokens_total", **labels) == sum(t["levels"][lv["level"]]["accepted"] for t in timings)
    # and sample by sample, the scrape is what the replicas' own /metrics add up to
    replicas = [parse_prometheus(t) for t in per_replica("fast").values()]
    assert len(replicas) == 2
    for key, value in after.items():
        if key[0].endswith("_total"):
            assert value == pytest.approx(sum(r.get(key, 0) for r in replicas)), key
    health = httpx.get(root + "/health").json()
    assert health["status"] == "ok" and health["replicas"] == 2 and health["requests_running"] == 0


def test_a_conversations_next_turn_goes_to_the_replica_that_served_it(cluster, library):
    c = client(cluster.fast)
    for conv in range(4):
        msgs = [{"role": "user", "content": f"conversation {conv}: {PROMPTS[conv]}"}]
        replica = None
        for turn in range(3):
            raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
            answer = raw.parse().choices[0].message.content
            assert answer == library(msgs, 12)[0]
            served_by = raw.headers["x-csdrafting-replica"]
            assert replica in (None, served_by), (conv, turn)  # every later turn: the replica of the first
            replica = served_by
            msgs = msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": f"and {turn}?"}]


# ------------------------------------------------------------------------------------------------ back-pressure
def test_a_full_service_answers_503_with_retry_after_and_loses_nothing(cluster, library):
    capacity = 2 * (SLOW_QUEUE + 1) + SLOW_QUEUED
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        prompt = LONG[i] if i < len(LONG) else PROMPTS[2]
        results[i] = httpx.post(cluster.slow + "/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 60,
                                                                       "temperature": 0}, timeout=120)

    def held_by_replicas() -> int:
        h = httpx.get(base(cluster.slow) + "/health").json()
        return h["requests_running"] + h["requests_waiting"] - h["requests_waiting_for_a_replica"]

    threads = []
    for i in range(capacity + 3):
        threads.append(threading.Thread(target=send, args=(i,)))
        threads[-1].start()
        # one at a time: Ray counts a request as queued until a replica is chosen for it, so a burst faster
        # than its routing is refused before the bound is reached (see docs/scaling.md)
        if i < 2 * (SLOW_QUEUE + 1):
            _until(lambda: held_by_replicas() == i + 1)
        else:
            time.sleep(0.2)
    for t in threads:
        t.join()
    refused = [i for i, r in results.items() if r.status_code == 503]
    assert sorted(refused) == list(range(capacity, capacity + 3)), {i: r.status_code for i, r in results.items()}
    for i in refused:
        err = results[i].json()["error"]
        assert err["code"] == "queue_full" and "the service is busy" in err["message"] and set(err) == {"message", "type", "param", "code"}
        assert int(results[i].headers["retry-after"]) >= 1
    for i in range(capacity):  # every admitted request answered once, exactly
        assert results[i].status_code == 200 and results[i].json()["choices"][0]["text"] == library(LONG[i], 60)[0]
    metrics = parse_prometheus(httpx.get(base(cluster.slow) + "/metrics").text)
    assert counter(metrics, "request_rejected_total", reason="queue_full") == 3


# ------------------------------------------------------------------------------------------------ disconnects
def test_a_client_that_leaves_cancels_its_generation_on_the_replica(cluster, library):
    root = base(cluster.slow)
    c = client(cluster.slow)
    before = parse_prometheus(httpx.get(root + "/metrics").text)
    natural = [len(library(p, 300)[1].tokens) for p in LONG[4:6]]  # what they would generate if nobody stopped them
    stream = c.completions.create(model=MODEL, prompt=LONG[4], max_tokens=300, temperature=0, stream=True)
    assert next(iter(stream)).choices[0].text
    stream.close()  # the client leaves mid-stream
    _until(lambda: httpx.get(root + "/health").json()["requests_running"] == 0)
    # a client that gives up waiting for a whole answer, once a replica is generating it (a request that
    # leaves while Ray is still choosing a replica never reaches one: nothing to cancel there)
    url = urlsplit(root)
    body = json.dumps({"model": MODEL, "prompt": LONG[5], "max_tokens": 300, "temperature": 0}).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(b"POST %s/v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (url.path.encode(), url.netloc.encode(), len(body)) + body)
        _until(lambda: httpx.get(root + "/health").json()["requests_running"] == 1)
    _until(lambda: httpx.get(root + "/health").json()["requests_running"] == 0)

    def aborts() -> float:
        now = parse_prometheus(httpx.get(root + "/metrics").text)
        return counter(now, "request_success_total", finished_reason="abort") - counter(
            before, "request_success_total", finished_reason="abort")

    _until(lambda: aborts() >= 2)  # a replica counts the abort when it sees the disconnect
    assert aborts() == 2
    after = parse_prometheus(httpx.get(root + "/metrics").text)
    generated = counter(after, "generation_tokens_total") - counter(before, "generation_tokens_total")
    assert generated < sum(natural) / 2, (generated, natural)
    out = c.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert out.choices[0].text == library(PROMPTS[0], 12)[0]  # the replicas are free and exact


# ------------------------------------------------------------------------------------------------ faults (last: it kills)
def test_a_killed_replica_fails_only_its_requests_and_is_replaced(cluster, library):
    import ray

    outcomes: dict[int, tuple] = {}
    replica_of: dict[int, str] = {}
    ready = threading.Barrier(5)

    def stream(i: int) -> None:
        c = client(cluster.slow)
        raw = c.completions.with_raw_response.create(model=MODEL, prompt=LONG[i], max_tokens=40, temperature=0, stream=True)
        replica_of[i] = raw.headers["x-csdrafting-replica"]
        ready.wait()
        try:
            outcomes[i] = ("ok", "".join(ch.choices[0].text for ch in raw.parse()))
        except openai.APIError as exc:
            outcomes[i] = ("error", str(exc))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]  # 2 per replica: one runs, one waits
    for t in threads:
        t.start()
        time.sleep(0.05)
    ready.wait(30)
    victim = replica_of[0]
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::slow#CascadeReplica#") and a["name"].endswith(victim))
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    for t in threads:
        t.join(60)
    assert sorted(replica_of.values()).count(victim) == 2
    for i, (kind, payload) in outcomes.items():
        if replica_of[i] == victim:
            assert kind == "error" and "the replica serving this request failed" in payload, (i, payload)
        else:
            assert (kind, payload) == ("ok", library(LONG[i], 40)[0]), i
    c = client(cluster.slow)
    for i in range(10):  # later requests are served, by the replica that is left
        out = c.completions.create(model=MODEL, prompt=PROMPTS[i % 4], max_tokens=4, temperature=0)
        assert out.choices[0].text == library(PROMPTS[i % 4], 4)[0]
    metrics = parse_prometheus(httpx.get(base(cluster.slow) + "/metrics").text)
    assert counter(metrics, "request_failure_total", reason="replica_died") == 2
    _until(lambda: httpx.get(base(cluster.slow) + "/health").json()["replicas"] == 2, timeout=90)  # Ray replaced it


def test_autoscaling_adds_a_replica_when_requests_wait(cluster, library):
    """Last: it takes the other applications' cores."""
    from ray import serve

    serve.delete("fast")
    serve.delete("slow")
    url = ray_tiny.deploy(functools.partial(ray_tiny.tiny_worker, max_queue=4, step_delay=0.1), cluster.port, name="auto",
                          route_prefix="/auto", min_replicas=1, max_replicas=2, max_queue=4, max_queued=8,
                          autoscaling={"upscale_delay_s": 1, "look_back_period_s": 11})  # > Ray's 10 s metrics interval
    health = lambda: httpx.get(base(url) + "/health").json()  # noqa: E731
    assert health()["replicas"] == 1
    results: dict[int, str] = {}

    def send(i: int) -> None:
        results[i] = client(url).completions.create(model=MODEL, prompt=LONG[i], max_tokens=60, temperature=0).choices[0].text

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]  # 5 on the replica, 1 in Ray's queue
    for t in threads:
        t.start()
        time.sleep(0.1)
    _until(lambda: health()["replicas"] == 2, timeout=90)
    for t in threads:
        t.join(120)
    assert results == {i: library(LONG[i], 60)[0] for i in range(6)}
