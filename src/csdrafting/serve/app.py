"""The OpenAI-compatible HTTP app (Starlette): routes, validation, the queue hand-off, errors.

`create_app(engine)` wraps anything with the `Engine` interface below (EngineWorker is the one this
package ships), so tests build it around tiny models, `csdrafting serve` around the packaged ones, and a
replica in another server around its own worker. The app never touches a model: it parses a request
(schema.py), submits a Job to the engine and answers with the Job's events (answers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Callable, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .answers import SSE_HEADERS, Answer, Events, JSONAnswer, error_response
from .guard import LastResort
from .metrics import ServerMetrics
from .schema import APIError, GenerationRequest, Kind, ModelContext, parse
from .worker import Job, QueueFull

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: far above any prompt that fits the context, far below what hurts


class Engine(ModelContext, Protocol):
    """What the app needs of the engine side (EngineWorker): what validation needs (schema.ModelContext),
    a bounded queue of Jobs, counters, and start/stop for the app's lifespan."""

    max_queue: int
    describe: dict
    metrics: ServerMetrics

    @property
    def n_running(self) -> int: ...

    @property
    def n_waiting(self) -> int: ...

    def submit(self, request: GenerationRequest, sink: Callable[[str, Any], None]) -> Job:
        """Queue a request; raise QueueFull (-> 503) or APIError. The Job's events go to `sink`."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def read_json(request: Request, limit: int) -> Any:
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
        return json.loads(body, parse_constant=_refuse_constant)  # Python's json would take NaN and Infinity
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply to be a request", code="invalid_json") from None


class _Routes:
    """The endpoints, over one engine."""

    def __init__(self, engine: Engine, max_body_bytes: int) -> None:
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self.created = int(time.time())

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: Request, kind: Kind) -> Response:
        req = parse(await read_json(request, self.max_body_bytes), kind, self.engine)
        events = Events()
        answer = Answer(kind, self._submit(req, events), events, self.engine.model_name)
        if req.stream:
            return StreamingResponse(answer.stream(request), media_type="text/event-stream", headers=SSE_HEADERS)
        return await answer.whole(request)

    def _submit(self, req: GenerationRequest, events: Events) -> Job:
        try:
            return self.engine.submit(req, events.sink)
        except QueueFull as full:
            wait = int(full.args[0]) if full.args else 1
            raise APIError(503, f"the server is busy: {self.engine.n_waiting} requests are waiting (the queue holds "
                                f"{self.engine.max_queue}); retry after {wait} s", code="queue_full",
                           headers={"Retry-After": str(wait)}) from None

    async def models(self, request: Request) -> Response:
        e = self.engine
        return JSONAnswer({"object": "list", "data": [{
            "id": e.model_name, "object": "model", "created": self.created, "owned_by": "csdrafting",
            "max_model_len": e.context_length, "cascade": e.describe,
        }]})

    async def health(self, request: Request) -> Response:
        e = self.engine
        return JSONAnswer({"status": "ok", "requests_running": e.n_running, "requests_waiting": e.n_waiting,
                           "max_queue": e.max_queue})

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.engine.metrics.render(self.engine.n_running, self.engine.n_waiting),
                                 media_type="text/plain; version=0.0.4")


async def _api_error(request: Request, exc: APIError) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no route {request.url.path}: see /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error_response(APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))


def create_app(engine: Engine, *, max_body_bytes: int = DEFAULT_MAX_BODY, manage_worker: bool = True) -> Starlette:
    """The ASGI app serving `engine`. With manage_worker, the app's lifespan starts and stops it."""
    r = _Routes(engine, max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if manage_worker:
            engine.start()
        try:
            yield
        finally:
            if manage_worker:
                await asyncio.to_thread(engine.stop)

    routes = [
        Route("/v1/completions", r.completions, methods=["POST"]),
        Route("/v1/chat/completions", r.chat, methods=["POST"]),
        Route("/v1/models", r.models, methods=["GET"]),
        Route("/health", r.health, methods=["GET"]),
        Route("/metrics", r.metrics, methods=["GET"]),
    ]
    # LastResort runs inside Starlette's error middleware (which re-raises to the server) and around
    # everything else, so no exception gets past it
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(LastResort)],
                     exception_handlers={APIError: _api_error, HTTPException: _http_error})
