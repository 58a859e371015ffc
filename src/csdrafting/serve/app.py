"""The OpenAI-compatible HTTP app (Starlette): validation, the queue hand-off, SSE streaming, errors.

`create_app(worker)` wraps any EngineWorker, so tests build it around tiny models and `csdrafting serve`
around the packaged ones. The app never touches a model: it parses a request (schema.py), submits a Job
to the worker and turns the Job's events into a JSON body or server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .schema import APIError, Kind, parse
from .worker import EngineWorker, Job, QueueFull

log = logging.getLogger("csdrafting.serve")

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: far above any prompt that fits the context, far below what hurts


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _read_json(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body has {int(length)} bytes; this server accepts at most {limit}",
                       code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is over {limit} bytes, the most this server accepts",
                           code="request_too_large")
    if not body:
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply to be a request", code="invalid_json") from None


class _Events:
    """The asyncio side of a Job's sink: events from the worker thread, in order."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def sink(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    async def get(self) -> tuple[str, Any]:
        return await self.queue.get()


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(worker: EngineWorker, *, max_body_bytes: int = DEFAULT_MAX_BODY, manage_worker: bool = True) -> Starlette:
    """The ASGI app serving `worker`. With manage_worker, the app's lifespan starts and stops the worker."""
    created = int(time.time())

    def submit(req, events: _Events) -> Job:
        try:
            return worker.submit(req, events.sink)
        except QueueFull as full:
            wait = int(full.args[0]) if full.args else 1
            raise APIError(503, f"the server is busy: {worker.n_waiting} requests are waiting (the queue holds "
                                f"{worker.max_queue}); retry after {wait} s", code="queue_full",
                           headers={"Retry-After": str(wait)}) from None

    async def generate(request: Request, kind: Kind) -> Response:
        body = await _read_json(request, max_body_bytes)
        req = parse(body, kind, worker)
        events = _Events()
        job = submit(req, events)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + job.id
        if req.stream:
            return StreamingResponse(_stream(request, job, events, kind, rid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(request, job, events, kind, rid)

    def envelope(kind: Kind, rid: str, choices: list, **extra) -> dict:
        return {"id": rid, "object": extra.pop("object"), "created": int(time.time()), "model": worker.model_name,
                "system_fingerprint": None, "choices": choices, **extra}

    async def _whole(request: Request, job: Job, events: _Events, kind: Kind, rid: str) -> Response:
        pieces: list[str] = []
        left = asyncio.ensure_future(_wait_disconnect(request))
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({get, left}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    job.cancel()  # nobody will read the answer: free the engine at its next step
                    return Response(status_code=499)
                ev, payload = get.result()
                if ev == "text":
                    pieces.append(payload)
                elif ev == "error":
                    return _error_response(payload)
                else:
                    text = "".join(pieces)
                    if kind == "chat":
                        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": payload["finish_reason"], "logprobs": None}
                        obj = "chat.completion"
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": payload["finish_reason"], "logprobs": None}
                        obj = "text_completion"
                    return JSONResponse(envelope(kind, rid, [choice], object=obj, usage=payload["usage"],
                                                 timings=payload["timings"]))
        finally:
            left.cancel()
            job.cancel()  # no-op when finished; cancels when this handler itself is cancelled

    async def _stream(request: Request, job: Job, events: _Events, kind: Kind, rid: str) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: str | None, finish: str | None, **extra) -> str:
            if kind == "chat":
                d = {} if delta is None else {"content": delta}
                if extra.pop("role", False):
                    d = {"role": "assistant", "content": ""}
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return _sse(envelope(kind, rid, [choice], object=obj, **extra))

        left = asyncio.ensure_future(_wait_disconnect(request))
        left.add_done_callback(lambda _: job.cancel())
        try:
            if kind == "chat":
                yield chunk(None, None, role=True)
            while True:
                ev, payload = await events.get()
                if ev == "text":
                    yield chunk(payload, None)
                elif ev == "error":
                    yield _sse(payload.body())
                    yield "data: [DONE]\n\n"
                    return
                else:
                    yield chunk(None, payload["finish_reason"], timings=payload["timings"])
                    if job.request.include_usage:
                        yield _sse(envelope(kind, rid, [], object=obj, usage=payload["usage"]))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            left.cancel()
            job.cancel()  # the client left mid-stream (or we are done): stop at the next engine step

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": worker.model_name, "object": "model", "created": created, "owned_by": "csdrafting",
            "max_model_len": worker.context_length, "cascade": worker.describe,
        }]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "requests_running": worker.n_running, "requests_waiting": worker.n_waiting,
                             "max_queue": worker.max_queue})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(worker.metrics.render(worker.n_running, worker.n_waiting),
                                 media_type="text/plain; version=0.0.4")

    async def api_error(request: Request, exc: APIError) -> Response:
        return _error_response(exc)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"no route {request.url.path}: see /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return _error_response(APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if manage_worker:
            worker.start()
        try:
            yield
        finally:
            if manage_worker:
                await asyncio.to_thread(worker.stop)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={APIError: api_error, HTTPException: http_error, Exception: internal_error})


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"
