"""The last handler: no exception reaches the ASGI server.

An exception that reaches uvicorn is logged as "Exception in ASGI application" and the connection is
closed, so the client's next request on it fails too (Starlette's own error middleware answers 500 and
then re-raises, by design). `LastResort` sits inside that middleware, around everything else, and ends
the request itself: a 500 JSON answer if nothing was sent yet, an error event closing the stream if a
stream had begun, and nothing more if the answer was complete. The connection stays usable.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect

from .answers import DONE, dump_json, internal_error, sse

log = logging.getLogger("csdrafting.serve")


class LastResort:
    """ASGI middleware: whatever escapes `app` is answered here, never raised to the server."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "ended": False, "stream": False}

        async def tracked(message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                types = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
                state["stream"] = any(t.startswith(b"text/event-stream") for t in types)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            log.debug("client left during %s", scope.get("path"))  # nobody to answer
        except Exception as exc:
            log.exception("unhandled error on %s", scope.get("path"))
            if state["ended"]:
                return  # answered already (a handler failed after its response was complete)
            err = internal_error(exc)
            try:
                if not state["started"]:
                    body = dump_json(err.body())
                    await send({"type": "http.response.start", "status": 500, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                else:  # mid-answer: close it properly, with the error as the stream's last event
                    tail = (sse(err.body()) + DONE).encode() if state["stream"] else b""
                    await send({"type": "http.response.body", "body": tail})
            except Exception:  # the client is gone: nothing left to answer
                log.debug("could not deliver the error for %s", scope.get("path"))
