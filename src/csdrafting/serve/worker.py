"""The engine side of the server: one thread runs one generation at a time from a bounded FIFO queue.

The HTTP side (app.py) never touches a model. It validates a request, submits a Job and reads the Job's
events (text pieces, then "done" or "error"); the worker thread runs the cascade and pushes those events
through the Job's sink. A Job can be cancelled at any time: still queued, it is skipped; running, the
engine stops after its current target step (StopGeneration from the on_tokens hook), or, while a long
prompt is prefilled, after its current prefill chunk (the on_prefill hook), so the next request finds
the engine free at once. On shutdown (`drain`), queued and running Jobs may finish within a grace
period; then they end with a 503 `shutting_down` error.

Every request runs on a fresh Cascade over the shared models, and every model's cache is rolled back to
empty when a generation begins (unless prefix reuse is asked for, which changes no output), so no
request can see another's state, whatever happened to the one before it. One opt-in exception: a suffix
drafter with its cross-request store (`--suffix-persist`) drafts from earlier outputs; greedy answers
stay the same, but a seeded sample then also depends on the requests before it (drafts decide how the
random stream is consumed), and per-level acceptance in `timings` reflects earlier requests' text.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import text as text_mod
from ..cascade.config import CascadeConfig
from ..cascade.engine import PREFILL_CHUNK, Cascade, Drafter, StopGeneration
from ..protocol import CSDraftingError, LanguageModel
from .metrics import ServerMetrics, timings
from .schema import APIError, GenerationRequest

log = logging.getLogger("csdrafting.serve")

Sink = Callable[[str, Any], None]  # (kind, payload): ("text", str), ("done", dict), ("error", APIError)


class QueueFull(Exception):
    pass


class StopScanner:
    """Text in, text out, never past a stop string (which may span any number of tokens).

    The longest tail of the text that could still begin a stop string is held back until the next piece
    shows whether it does; no stop can begin in text already released, since such a tail is held back.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sent = 0

    def push(self, piece: str) -> tuple[str, bool]:
        """(text now safe to send, whether a stop string was found)."""
        self.text += piece
        if not self.stops:
            return self.release(), False
        # the stop that COMPLETES first wins (then the longest of those): what token-by-token decoding
        # would have stopped at, however the text was split into pieces
        hits = [(i + len(s), i) for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]
        if hits:
            cut = min(hits)[1]
            out, self.sent = self.text[self.sent : cut], cut
            self.text = self.text[:cut]
            return out, True
        hold = 0
        for k in range(min(self.longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                hold = k
                break
        end = len(self.text) - hold
        out, self.sent = self.text[self.sent : end], end
        return out, False

    def release(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


class TextOut:
    """Generated tokens -> the answer's text, fed ONE token at a time, so that a stop string ends the
    answer, and its token count, where token-by-token decoding would have, whatever batches the cascade
    produced. `tokens` is usage.completion_tokens: every token of the answer, the end-of-sequence token
    included when the model ended (as vLLM counts), up to the one that completed a stop string."""

    def __init__(self, model, stops: Sequence[str]) -> None:
        self.decoder = text_mod.StreamText(model)
        self.scanner = StopScanner(stops)
        self.tokens = 0
        self.stopped = False

    def push(self, tokens: Sequence[int]) -> str:
        """The text now safe to send; sets `stopped` when a stop string was found (later tokens are dropped)."""
        out = []
        for t in tokens:
            if self.stopped:
                break
            self.tokens += 1
            piece, self.stopped = self.scanner.push(self.decoder.push([t]))
            out.append(piece)
        return "".join(out)

    def finish(self) -> str:
        """What the decoder still held when the generation ended."""
        piece, self.stopped = self.scanner.push(self.decoder.flush())
        return piece if self.stopped else piece + self.scanner.release()


@dataclass
class Job:
    request: GenerationRequest
    sink: Sink
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    ending: APIError | None = None  # why the server ended it (shutdown); None when its client left

    def cancel(self, error: APIError | None = None) -> None:
        if error is not None and not self.cancelled.is_set():
            self.ending = error
        self.cancelled.set()


class EngineWorker:
    """Owns the models; serves Jobs one at a time in arrival order.

    max_queue bounds the requests WAITING while one runs (0: only the running one); past it, submit()
    raises QueueFull and the HTTP side answers 503.
    """

    def __init__(
        self,
        target: LanguageModel,
        drafters: Sequence[Drafter] = (),
        config: CascadeConfig | None = None,
        *,
        model_name: str | None = None,
        max_queue: int = 16,
        default_max_tokens: int = 256,
        reuse_prefix: bool = False,
        describe: dict | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        if max_queue < 0:
            raise CSDraftingError(f"max_queue must be >= 0 (got {max_queue})")
        if default_max_tokens < 1:
            raise CSDraftingError(f"default_max_tokens must be >= 1 (got {default_max_tokens})")
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise CSDraftingError(f"prefill_chunk must be a positive integer (got {prefill_chunk!r})")
        self.prefill_chunk = prefill_chunk
        self.target = target
        self.drafters = list(drafters)
        self.base_config = config or CascadeConfig()
        Cascade(target, self.drafters, self.base_config)  # validate the cascade once, at start
        self.model_name = model_name or target.info.name
        self._text_model = target  # text in and out through the target's tokenizer, as `csdrafting generate`
        text_mod.tokenizer_of(target)  # fail at start, not on the first request
        self.vocab_size = target.info.vocab_size
        self.context_length = min(m.info.context_length for m in [target, *self.drafters] if isinstance(m, LanguageModel))
        self.default_max_tokens = default_max_tokens
        self.max_queue = max_queue
        self.reuse_prefix = reuse_prefix
        self.describe = describe or {}
        self.metrics = ServerMetrics(self.model_name)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining: threading.Timer | None = None
        self._mean_seconds = 1.0  # running mean of request durations, for Retry-After
        self._cold_next = False  # after a failed generation, the next one starts from empty caches

    # ------------------------------------------------------------------ what validation needs (schema.ModelContext)
    def encode(self, text: str) -> list[int]:
        return text_mod.encode(self._text_model, text)

    def render_chat(self, messages: list[dict]) -> str:
        return text_mod.render_chat(self._text_model, messages)

    def check_config(self, config: CascadeConfig) -> None:
        # building a Cascade only validates (K's shape, cost curves per level, ...); it touches no model
        Cascade(self.target, self.drafters, config)

    # ------------------------------------------------------------------ queue
    @property
    def n_running(self) -> int:
        return int(self._running is not None)

    @property
    def n_waiting(self) -> int:
        """Queued requests whose client is still there (a cancelled one is skipped when its turn comes)."""
        return sum(not j.cancelled.is_set() for j in self._waiting)

    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        job = Job(request, sink)
        with self._cond:
            if self._stopping or self._draining is not None:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if self.n_waiting + self.n_running > self.max_queue:
                self.metrics.rejected("queue_full")
                raise QueueFull(self.retry_after())
            self._waiting.append(job)
            self._cond.notify()
        return job

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the mean request time times the requests ahead."""
        return max(1, min(60, math.ceil(self._mean_seconds * (len(self._waiting) + 1))))

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._draining = None  # a worker stopped after a drain serves again once restarted
            self._thread = threading.Thread(target=self._loop, name="csdrafting-engine", daemon=True)
            self._thread.start()

    def drain(self, grace: float) -> None:
        """Take no more requests; those queued or running may finish within `grace` seconds, then each
        ends with a 503 `shutting_down` error, at its engine's next step."""
        with self._cond:
            if self._draining is not None:
                return
            self._draining = threading.Timer(grace, self._end_all, args=(grace,))
        self._draining.daemon = True
        self._draining.start()

    def _end_all(self, grace: float) -> None:
        err = APIError(503, f"the server is shutting down and this request did not finish within its grace period "
                            f"({grace:g} s)", code="shutting_down")
        with self._cond:
            for job in [*self._waiting, *([self._running] if self._running else [])]:
                job.cancel(err)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is queued and running, and end the thread."""
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.cancel()
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._draining is not None:
            self._draining.cancel()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:  # stopping and nothing left
                    return
                job = self._waiting.popleft()
                self._running = job
            try:
                if job.cancelled.is_set():
                    self.metrics.finished("abort", None, 0)
                    _emit(job, "error", job.ending or APIError(499, "the client went away before its request started",
                                                                 code="cancelled"))
                else:
                    self._run(job)
            except CSDraftingError as exc:
                self._cold_next = True  # a generation that failed part-way leaves its caches as they were
                self.metrics.failed("invalid")
                _emit(job, "error", APIError(400, str(exc)))
            except Exception as exc:  # never take the server down; the next request starts from a clean state
                log.exception("generation %s failed", job.id)
                self._cold_next = True
                self.metrics.failed("internal")
                _emit(job, "error", APIError(500, f"internal error during generation: {type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job: Job) -> None:
        req = job.request
        started = time.perf_counter()
        cascade = Cascade(self.target, self.drafters, req.config)
        out = TextOut(self._text_model, req.stop)

        def on_tokens(tokens: list[int]) -> None:
            text = out.push(tokens)
            if text:
                _emit(job, "text", text)
            if out.stopped:
                raise StopGeneration("stop")
            if job.cancelled.is_set():
                raise StopGeneration("cancelled")

        def on_prefill(done: int, total: int) -> None:
            if job.cancelled.is_set():  # a client that left during a long prompt frees the engine within a chunk
                raise StopGeneration("cancelled")

        keep = self.reuse_prefix and not self._cold_next
        self._cold_next = False
        result = cascade.generate(req.prompt, req.max_tokens, req.sampling, on_tokens, keep_cache=keep,
                                  on_prefill=on_prefill, prefill_chunk=self.prefill_chunk)
        finish = result.finish_reason
        if finish in ("eos", "length"):
            text = out.finish()
            if text:
                _emit(job, "text", text)
            if out.stopped:
                finish = "stop"
        openai_finish = {"eos": "stop", "stop": "stop", "length": "length"}.get(finish, "abort")
        elapsed = time.perf_counter() - started
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed
        t = timings(result.metrics, len(req.prompt), started - job.submitted)
        # counters first, so a client reading /metrics right after its answer sees its own request in them
        self.metrics.finished(openai_finish, result.metrics, len(req.prompt))
        if finish == "cancelled" and job.ending is not None:
            _emit(job, "error", job.ending)
            return
        _emit(job, "done", {
            "finish_reason": openai_finish if finish != "cancelled" else None,
            "engine_finish_reason": finish,
            "usage": {"prompt_tokens": len(req.prompt), "completion_tokens": out.tokens,
                      "total_tokens": len(req.prompt) + out.tokens},
            "timings": t,
        })


def _emit(job: Job, kind: str, payload: Any) -> None:
    try:
        job.sink(kind, payload)
    except Exception:  # the listener is gone (event loop closed); the generation itself is unaffected
        log.debug("dropped %s event of job %s", kind, job.id)
