"""`csdrafting serve`: an OpenAI-compatible HTTP server over one cascade.

Layers: schema.py validates OpenAI request bodies; worker.py runs the engine on its own thread from a
bounded FIFO queue; metrics.py derives per-response `timings` and Prometheus counters from the engine's
GenerationMetrics; app.py is the Starlette app (routes over any `app.Engine`, such as EngineWorker),
answers.py shapes a Job's events as JSON or server-sent events, guard.py is the last handler that keeps
exceptions from the ASGI server; server.py runs the app under uvicorn with a bounded shutdown, and
cli.py starts it. loadtest.py is a load-test client for any OpenAI-compatible server.
Needs the `serve` extra (starlette, uvicorn).
"""

from .schema import APIError, GenerationRequest
from .worker import EngineWorker, StopScanner

__all__ = ["APIError", "EngineWorker", "GenerationRequest", "StopScanner", "create_app"]


def create_app(*args, **kwargs):
    """See app.create_app (imported lazily: starlette is an optional dependency)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
