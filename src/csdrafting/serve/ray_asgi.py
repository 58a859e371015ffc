"""HTTP requests carried between Ray Serve deployments as plain data, and run in-process through an ASGI app.

A replica of `csdrafting serve --replicas` runs the single-process server's own Starlette app (app.py):
the front deployment hands it a `Forwarded` request, `call_asgi` runs the app on it in the replica's
event loop, and the app's ASGI messages travel back in batches. Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .schema import APIError

log = logging.getLogger("csdrafting.serve")

Message = dict[str, Any]


@dataclass(frozen=True)
class Forwarded:
    """What the replica's app needs from an HTTP request: its line, headers and (already read) body."""

    method: str
    path: str
    query_string: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    client: tuple[str, int] | None = None

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            # below 2.4, so that Starlette's StreamingResponse watches receive() for the client leaving
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": self.query_string,
            "root_path": "",
            "headers": [list(h) for h in self.headers],
            "client": self.client,
            "server": None,
        }


async def call_asgi(app, request: Forwarded) -> AsyncIterator[list[Message]]:
    """Run `app` on `request`; yield its ASGI messages in batches (what is ready at once travels together).

    Closing or cancelling this generator before the response is complete tells the app that the client
    went away (an `http.disconnect` from receive()) and cancels it, so the app cancels its generation.
    """
    out: asyncio.Queue = asyncio.Queue()
    body_sent = False
    gone = asyncio.Event()
    started = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        out.put_nowait(message)

    task = asyncio.ensure_future(app(request.scope(), receive, send))
    task.add_done_callback(lambda _: out.put_nowait(None))
    try:
        while True:
            batch = [await out.get()]
            while not out.empty():
                batch.append(out.get_nowait())
            end = batch[-1] is None
            messages = [m for m in batch if m is not None]
            started = started or any(m["type"] == "http.response.start" for m in messages)
            if messages:
                yield messages
            if end:
                break
        if not task.cancelled() and task.exception() is not None and not started:
            # the app answers every error itself; this is the last net under it
            err = task.exception()
            yield error_messages(APIError(500, f"internal error: {type(err).__name__}: {err}"))
    finally:
        if not task.done():
            gone.set()
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            log.error("the app failed on %s %s", request.method, request.path, exc_info=task.exception())


def error_messages(err: APIError) -> list[Message]:
    """A whole JSON error response (OpenAI's shape) as ASGI messages."""
    body = json.dumps(err.body(), separators=(",", ":")).encode()
    headers = [[b"content-type", b"application/json"], [b"content-length", str(len(body)).encode()]]
    headers += [[k.lower().encode(), v.encode()] for k, v in err.headers.items()]
    return [{"type": "http.response.start", "status": err.status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False}]


def sse_error_messages(err: APIError) -> list[Message]:
    """The end of an already started event stream: an error event, then [DONE] (as app.py ends one)."""
    event = f"data: {json.dumps(err.body(), separators=(',', ':'))}\n\ndata: [DONE]\n\n"
    return [{"type": "http.response.body", "body": event.encode(), "more_body": False}]


async def read_body(receive, limit: int) -> bytes:
    """At most `limit` bytes of the request body (the rest is never read: the app refuses the request)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the client went away while sending its request")
        body += message.get("body", b"")
        if len(body) >= limit or not message.get("more_body", False):
            return bytes(body[:limit])
