"""A Job's events as an OpenAI answer: one JSON body, or server-sent events ending in `data: [DONE]`.

The worker thread pushes events ("text" pieces, then "done" or "error") through the Job's sink; `Events`
carries them onto the event loop, and `Answer` shapes them as a completion or a chat completion. Either
way, a client that leaves cancels its Job, so the engine stops at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .schema import APIError, Kind
from .worker import Job

log = logging.getLogger("csdrafting.serve")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def dump_json(obj: Any) -> bytes:
    """JSON as UTF-8, whatever text it holds: a lone surrogate a client sent (and an error message may
    quote) is written as its JSON escape rather than failing to encode."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


class JSONAnswer(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dump_json(content)


def error_response(err: APIError) -> Response:
    return JSONAnswer(err.body(), status_code=err.status, headers=err.headers)


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"  # ASCII: escapes every non-ASCII character


DONE = "data: [DONE]\n\n"


class Events:
    """The asyncio side of a Job's sink: events from the worker thread, in order."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def sink(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    async def get(self) -> tuple[str, Any]:
        return await self.queue.get()


async def wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Answer:
    """The answer to one generation request, built from its Job's events."""

    def __init__(self, kind: Kind, job: Job, events: Events, model_name: str) -> None:
        self.kind = kind
        self.job = job
        self.events = events
        self.model_name = model_name
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + job.id
        self.object = {"chat": "chat.completion", "completion": "text_completion"}[kind]

    def envelope(self, choices: list, obj: str, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": int(time.time()), "model": self.model_name,
                "system_fingerprint": None, "choices": choices, **extra}

    async def whole(self, request: Request) -> Response:
        """The whole answer as one JSON body (or the JSON error the generation ended with)."""
        pieces: list[str] = []
        left = asyncio.ensure_future(wait_disconnect(request))
        try:
            while True:
                get = asyncio.ensure_future(self.events.get())
                done, _ = await asyncio.wait({get, left}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    self.job.cancel()  # nobody will read the answer: free the engine at its next step
                    return Response(status_code=499)
                ev, payload = get.result()
                if ev == "text":
                    pieces.append(payload)
                elif ev == "error":
                    return error_response(payload)
                else:
                    text, finish = "".join(pieces), payload["finish_reason"]
                    if self.kind == "chat":
                        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                                  "logprobs": None}
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                    return JSONAnswer(self.envelope([choice], self.object, usage=payload["usage"],
                                                    timings=payload["timings"]))
        finally:
            left.cancel()
            self.job.cancel()  # no-op when finished; cancels when this handler itself is cancelled

    def _chunk(self, delta: str | None, finish: str | None, role: bool = False, **extra) -> str:
        if self.kind == "chat":
            d = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            return sse(self.envelope([choice], "chat.completion.chunk", **extra))
        choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return sse(self.envelope([choice], self.object, **extra))

    async def stream(self, request: Request) -> AsyncIterator[str]:
        """Server-sent events; whatever goes wrong once the stream has begun ends it with an error event."""
        left = asyncio.ensure_future(wait_disconnect(request))
        left.add_done_callback(lambda _: self.job.cancel())
        try:
            if self.kind == "chat":
                yield self._chunk(None, None, role=True)
            while True:
                ev, payload = await self.events.get()
                if ev == "text":
                    yield self._chunk(payload, None)
                elif ev == "error":
                    yield sse(payload.body())
                    yield DONE
                    return
                else:
                    yield self._chunk(None, payload["finish_reason"], timings=payload["timings"])
                    if self.job.request.include_usage:
                        obj = "chat.completion.chunk" if self.kind == "chat" else self.object
                        yield sse(self.envelope([], obj, usage=payload["usage"]))
                    yield DONE
                    return
        except Exception as exc:  # headers are sent: the error can only travel as an event
            log.exception("stream of job %s failed", self.job.id)
            yield sse(internal_error(exc).body())
            yield DONE
        finally:
            left.cancel()
            self.job.cancel()  # the client left mid-stream (or we are done): stop at the next engine step


def internal_error(exc: BaseException) -> APIError:
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")
