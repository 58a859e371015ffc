"""`csdrafting serve --replicas N`: the single-process server as replicas on Ray Serve.

Two deployments behind Ray's HTTP proxy:

- `CascadeReplica` (N of them, or between --min-replicas and --max-replicas by Ray's autoscaler): one whole
  cascade each, i.e. one EngineWorker and the very app of the single-process server (app.create_app),
  run in-process on each request it is handed (ray_asgi.call_asgi). Routes, validation, streaming,
  errors and knobs are therefore the single-process server's, byte for byte.
- `Front`, the ingress: no models, only async forwarding. It reads the request, hands it to a replica
  through a DeploymentHandle (whose request router may use the prompt: ray_router) and streams the
  replica's ASGI messages back. It answers what Ray itself would answer in plain text: a full service
  (Ray's BackPressureError) becomes 503 + Retry-After in OpenAI's error shape, a replica that dies becomes
  a JSON error, or an error event inside a stream that had started. /metrics and /health add up every
  replica (ray_metrics).

Back-pressure: a replica accepts at most `max_queue + 1` requests from Ray (one running, max_queue waiting
in its FIFO), so its own queue never overflows; past that, requests wait in the front's router, at most
`max_queued` of them, and the next one gets the 503. A client that goes away is cancelled by Ray's proxy;
the cancellation reaches the replica's generator, which tells the app the client left, and the engine
stops at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, RayServeException

from .ray_asgi import Forwarded, call_asgi, error_messages, read_body, sse_error_messages
from .ray_metrics import sum_expositions
from .ray_router import ROUTE_KEY, conversation_text
from .schema import APIError

log = logging.getLogger("csdrafting.serve")

REPLICA_HEADER = b"x-csdrafting-replica"  # which replica answered (for logs, tests and affinity measurements)


class CascadeReplica:
    """One cascade: the single-process server's app around a worker built in this replica's process."""

    def __init__(self, make_worker: Callable[[], Any], max_body_bytes: int, max_queue: int) -> None:
        from .app import create_app

        self.worker = make_worker()
        if self.worker.max_queue != max_queue:  # Ray sends it max_queue + 1 requests: they must fit
            raise ValueError(f"the worker's queue holds {self.worker.max_queue} requests, the deployment's {max_queue}")
        self.worker.start()
        self.app = create_app(self.worker, max_body_bytes=max_body_bytes, manage_worker=False)
        self.id = serve.get_replica_context().replica_id.unique_id

    async def handle(self, request: Forwarded, **_: Any) -> AsyncIterator[tuple[str, Any]]:
        """("replica", id), then ("asgi", batch of messages)...; just before the batch that ends the response,
        ("counters", this replica's /metrics), which already counts this request (the router reads kwargs)."""
        yield "replica", self.id
        async for batch in call_asgi(self.app, request):
            if any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in batch):
                yield "counters", self.render()
            yield "asgi", batch

    async def counters(self) -> tuple[str, str]:
        return self.id, self.render()

    def render(self) -> str:
        return self.worker.metrics.render(self.worker.n_running, self.worker.n_waiting)

    def check_health(self) -> None:
        """Ray replaces a replica whose check fails: here, one whose engine thread has ended."""
        thread = getattr(self.worker, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the engine thread of this replica has ended")

    def __del__(self) -> None:
        self.worker.stop()


@dataclass(frozen=True)
class FrontConfig:
    model_name: str
    max_body_bytes: int
    max_queue: int
    max_queued: int
    refresh_timeout_s: float = 2.0
    # after a request ended without its answer (a client that left, a replica lost), every scrape for this
    # long asks the replicas again: a replica counts the abort only when its engine next checks (a step or a
    # prefill chunk later), possibly after the first refresh
    recheck_s: float = 10.0


class Front:
    """The ingress: forwards to replicas, answers Ray's own failures as the OpenAI API does, sums metrics.

    Metrics without asking the replicas on every scrape: a call to a replica takes one of its
    max_ongoing_requests slots and waits for one while it is full, so a scrape under load would stall
    and skew routing. Each response instead brings its replica's counters along (ray: handle), and the
    front keeps the latest of every replica, gone ones included; the gauges (requests running and
    waiting, Ray's queue included) are the front's own count of what it forwarded. Only when a request
    ended without its counters (the client left, the replica failed) does a scrape ask every replica.
    """

    def __init__(self, replicas, config: FrontConfig) -> None:
        from .metrics import ServerMetrics

        self.replicas = replicas
        self.config = config
        self.own = ServerMetrics(config.model_name)  # what only the front sees: Ray's 503s, replicas lost mid-request
        self.snapshots: dict[str, str] = {}  # replica id -> its latest /metrics text
        self.inflight: dict[str, int] = {}  # replica id -> requests forwarded to it and not finished
        self.unassigned = 0  # requests waiting in this front's router for a replica
        self.stale = False  # some replica counted something no snapshot has shown yet
        self.recheck_until = 0.0  # until then (time.monotonic()), every scrape refreshes the snapshots
        self.mean_seconds = 1.0  # running mean of request durations, for Retry-After

    def __serve_build_asgi_app__(self):
        async def app(scope, receive, send) -> None:  # a plain coroutine function: what uvicorn takes for ASGI 3
            await self.asgi(scope, receive, send)

        return app

    async def asgi(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop: the replicas own the models
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # the application's route prefix: the replicas' app never sees it
            scope = {**scope, "path": path[len(root):] or "/", "root_path": ""}
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            return await _send_whole(send, 200, "text/plain; version=0.0.4", (await self.metrics()).encode())
        if scope["method"] == "GET" and scope["path"] == "/health":
            status, report = await self.health()
            return await _send_whole(send, status, "application/json", json.dumps(report).encode())
        await self.forward(scope, receive, send)

    async def forward(self, scope, receive, send) -> None:
        try:
            body = await read_body(receive, self.config.max_body_bytes + 1)  # the replica's app refuses more
        except ConnectionResetError:
            return
        request = Forwarded(scope["method"], scope["path"], scope.get("query_string", b""),
                            tuple((bytes(k), bytes(v)) for k, v in scope["headers"]), body,
                            tuple(scope["client"]) if scope.get("client") else None)
        started_at = time.perf_counter()
        stream = self.replicas.options(stream=True).handle.remote(
            request, **{ROUTE_KEY: conversation_text(scope["path"], body)})
        replica: str | None = None
        started = event_stream = False
        last: dict | None = None  # the message that ends the response, sent once the replica's call has ended
        self.unassigned += 1
        try:
            async for kind, item in stream:
                if kind == "replica":
                    replica = item
                    self.unassigned -= 1
                    self.inflight[replica] = self.inflight.get(replica, 0) + 1
                elif kind == "counters":
                    self.snapshots[replica] = item
                else:
                    for m in item:
                        if m["type"] == "http.response.start":
                            started = True
                            m = {**m, "headers": [*m.get("headers", []), [REPLICA_HEADER, replica.encode()]]}
                            event_stream = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                               for k, v in m["headers"])
                        if m["type"] == "http.response.body" and not m.get("more_body", False):
                            last = m  # held back: a client's next request must find this replica free again
                        else:
                            await send(m)
        except BackPressureError as exc:
            self.own.rejected("queue_full")
            log.info("rejected: %s", exc)
            await _send_messages(send, error_messages(self._busy()))
        except Exception as exc:  # a replica lost (RayError), none to be had (RayServeException), or a bug here
            if last is None:  # (with the whole answer in hand, only the call's ending failed)
                await _send_messages(send, self._failure(exc, replica, started, event_stream))
        else:
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.perf_counter() - started_at)
        finally:
            if replica is None:
                self.unassigned -= 1
            else:
                self.inflight[replica] -= 1
            if last is None and replica is not None:  # it may count an abort we have not seen, now or soon
                self.stale = True
                self.recheck_until = time.monotonic() + self.config.recheck_s
            if last is None:
                stream.cancel()  # the client left (this task was cancelled) or the replica failed
        if last is not None:
            await send(last)

    def _failure(self, exc: BaseException, replica: str | None, started: bool, event_stream: bool) -> list[dict]:
        """The end of a response whose replica failed, died or never came: only this request's."""
        if isinstance(exc, (RayError, RayServeException)):
            self.own.failed("replica_died")
            log.warning("replica %s lost a request: %s", replica, exc)
            what = "the replica serving this request failed" if replica else "no replica could take this request"
            err = APIError(503, f"{what} ({type(exc).__name__}); the service goes on with the other replicas: retry",
                           code="replica_failed", headers={"Retry-After": "1"})
        else:
            self.own.failed("internal")
            log.exception("the front failed on a request")
            err = APIError(500, f"internal error: {type(exc).__name__}: {exc}")
        if not started:
            return error_messages(err)
        if event_stream:
            return sse_error_messages(err)
        return [{"type": "http.response.body", "body": b"", "more_body": False}]  # cut between head and body

    def _busy(self) -> APIError:
        wait = max(1, min(60, math.ceil(self.mean_seconds)))
        return APIError(503, f"the service is busy: every replica's queue is full and {self.config.max_queued} "
                             f"requests already wait for one (the most it holds); retry after {wait} s",
                        code="queue_full", headers={"Retry-After": str(wait)})

    def gauges(self) -> tuple[int, int]:
        """(requests running, requests waiting): one engine runs one request at a time per replica."""
        running = sum(min(1, n) for n in self.inflight.values())
        return running, sum(self.inflight.values()) - running + self.unassigned

    async def metrics(self) -> str:
        if self.stale or time.monotonic() < self.recheck_until:
            self.stale = False
            try:
                answers = await self.replicas.broadcast("counters").results_async(
                    timeout_s=self.config.refresh_timeout_s, return_exceptions=True)
            except TimeoutError:  # replicas full: they answer when a slot frees; counters catch up then
                answers, self.stale = [], True
            self.snapshots.update(a for a in answers if not isinstance(a, BaseException))
        return sum_expositions([self.own.render(*self.gauges())], counters_of=list(self.snapshots.values()))

    async def health(self) -> tuple[int, dict]:
        app = serve.get_replica_context().app_name
        try:  # serve.status() waits on the controller: not on this event loop, which streams answers
            status = await asyncio.to_thread(serve.status)
            states = status.applications[app].deployments["CascadeReplica"].replica_states
        except (KeyError, RayError):
            states = {}
        running, waiting = self.gauges()
        n = states.get("RUNNING", 0)
        return (200 if n else 503), {
            "status": "ok" if n else "unavailable", "replicas": n, "requests_running": running,
            "requests_waiting": waiting, "requests_waiting_for_a_replica": self.unassigned,
            "max_queue": self.config.max_queue, "max_queued": self.config.max_queued}


async def _send_whole(send, status: int, media: str, body: bytes) -> None:
    await _send_messages(send, [
        {"type": "http.response.start", "status": status,
         "headers": [[b"content-type", media.encode()], [b"content-length", str(len(body)).encode()]]},
        {"type": "http.response.body", "body": body, "more_body": False}])


async def _send_messages(send, messages: list[dict]) -> None:
    for m in messages:
        await send(m)


def application(make_worker: Callable[[], Any], *, model_name: str, replicas: int = 1, min_replicas: int | None = None,
                max_replicas: int | None = None, max_queue: int = 16, max_queued: int | None = None,
                max_body_bytes: int = 1 << 20, replica_cpus: float = 1.0, router: str = "affinity",
                affinity_imbalance: int = 0, autoscaling: dict | None = None):
    """The Ray Serve application: `replicas` CascadeReplicas (autoscaled within min..max if given) behind a Front.

    make_worker builds a replica's EngineWorker in the replica's process (it is pickled there, so it must
    be importable there); its max_queue must equal `max_queue`. replica_cpus is what Ray reserves per
    replica: the threads its models use. max_queued (default max_queue) bounds the requests waiting for a
    replica in the front. router: "affinity" (ray_router.PrefixAffinityRouter, yielding to load past
    `affinity_imbalance` requests) or "default" (Ray's power of two choices). autoscaling: fields of Ray's
    AutoscalingConfig, over ours.
    """
    from ray.serve.config import AutoscalingConfig, RequestRouterConfig

    max_queued = max_queue if max_queued is None else max_queued
    if min_replicas is not None or max_replicas is not None:
        lo, hi = min_replicas or 1, max_replicas or max(replicas, min_replicas or 1)
        # one engine serves one request at a time: scale up once requests start to wait
        fields = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": min(max(replicas, lo), hi),
                  "target_ongoing_requests": 2, "upscale_delay_s": 10, "downscale_delay_s": 120, **(autoscaling or {})}
        scale: dict[str, Any] = {"autoscaling_config": AutoscalingConfig(**fields)}
    else:
        scale = {"num_replicas": replicas}
    if router not in ("affinity", "default"):
        raise ValueError(f"router must be 'affinity' or 'default' (got {router!r})")
    routing = {"request_router_config": RequestRouterConfig(
        request_router_class="csdrafting.serve.ray_router.PrefixAffinityRouter",
        request_router_kwargs={"max_imbalance": affinity_imbalance})} if router == "affinity" else {}
    cascade = serve.deployment(
        CascadeReplica, name="CascadeReplica", ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=max_queue + 1,  # = what its engine queue holds: Ray never overfills it
        max_queued_requests=max_queued, **scale, **routing,
        # a replica that is stopped (scaled down, redeployed) first finishes what it holds, for up to 30 s
        health_check_period_s=10, graceful_shutdown_timeout_s=30)
    front = serve.deployment(
        serve.ingress()(Front), name="Front", num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        # every request in the service passes here; the bound that matters is max_queued, in its router
        max_ongoing_requests=100_000)
    config = FrontConfig(model_name=model_name, max_body_bytes=max_body_bytes, max_queue=max_queue, max_queued=max_queued)
    return front.bind(cascade.bind(make_worker, max_body_bytes, max_queue), config)
