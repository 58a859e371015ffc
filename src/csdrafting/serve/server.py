"""The app under uvicorn, with a bounded graceful shutdown.

On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the open ones to finish; before
that wait, `BoundedServer` drains the engine: no new request is queued, and those queued or running get
`grace` seconds to finish before each ends with a 503 `shutting_down` error (an error event in a
stream). uvicorn's own hard limit comes HARD_MARGIN seconds later, for the step in progress to end and
the errors to be delivered.
"""

from __future__ import annotations

from typing import Protocol

import uvicorn

HARD_MARGIN = 10.0


class Drains(Protocol):
    def drain(self, grace: float) -> None: ...


class BoundedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Drains, grace: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace = grace

    async def shutdown(self, sockets=None) -> None:
        self.engine.drain(self.grace)
        await super().shutdown(sockets=sockets)


def make_server(app, engine: Drains, *, grace: float, host: str = "127.0.0.1", port: int = 8000,
                log_level: str = "info") -> BoundedServer:
    """A server for `app` over `engine`; `.run()` serves until a signal (or `should_exit`)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=int(grace + HARD_MARGIN))
    return BoundedServer(config, engine, grace)
