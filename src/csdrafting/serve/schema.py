"""OpenAI request bodies -> one validated GenerationRequest, or an APIError saying what to change.

Validation happens here, before a request waits in the queue, so that bad input is answered at once and
never reaches the engine. Fields that the OpenAI API defines but this server does not implement are
accepted only at their neutral values (e.g. `presence_penalty: 0`, `n: 1`); anything else is refused
by name, never silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

from ..cascade.config import CascadeConfig, SamplingConfig
from ..protocol import CSDraftingError
from . import knobs as knobs_mod

Kind = Literal["completion", "chat"]

# The extension field that overrides the cascade's drafting knobs for one request.
KNOBS_FIELD = "cascade"
MAX_STOPS = 16
MAX_STOP_CHARS = 1024  # the stop scanner re-reads up to this many characters at every token
MAX_TEMPERATURE = 2.0  # OpenAI's range is [0, 2]
# Below this a temperature means greedy, as in vLLM: dividing logits by less overflows float64 (and the
# distribution it tends to is the argmax anyway).
GREEDY_BELOW = 1e-5
# Seeds: any 64-bit integer, signed or unsigned, as OpenAI and vLLM accept; a negative one is read as its
# two's complement (numpy's generators take non-negative seeds only), so distinct seeds stay distinct.
SEED_MIN, SEED_END = -(1 << 63), 1 << 64
_SURROGATE = re.compile("[\ud800-\udfff]")

# Defined by the OpenAI API, implemented only at these values (a request may send them explicitly).
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v is None or v == 1,
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "logit_bias": lambda v: v is None or v == {},
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None or v == 0,
    "echo": lambda v: v is None or v is False,
    "best_of": lambda v: v is None or v == 1,
    "suffix": lambda v: v is None or v == "",
    "tools": lambda v: v is None or v == [],
    "tool_choice": lambda v: v is None or v == "none",
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
    "response_format": lambda v: v is None or v == {"type": "text"},
}
_WHY_NEUTRAL = {
    "n": "one choice per request: send n requests instead",
    "tools": "tool calls are not implemented",
    "tool_choice": "tool calls are not implemented",
    "logprobs": "log-probabilities are not returned",
    "top_logprobs": "log-probabilities are not returned",
    "best_of": "one choice per request",
    "echo": "the prompt is not echoed",
    "response_format": "only plain text output",
}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", "user", KNOBS_FIELD}
_ONLY = {"completion": {"prompt"}, "chat": {"messages", "max_completion_tokens"}}


class APIError(Exception):
    """An error answered as OpenAI does: HTTP status + {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ModelContext(Protocol):
    """What validation needs to know about the served cascade (EngineWorker provides it)."""

    model_name: str
    base_config: CascadeConfig
    vocab_size: int
    context_length: int
    default_max_tokens: int

    def encode(self, text: str) -> list[int]: ...

    def render_chat(self, messages: list[dict]) -> str: ...

    def check_config(self, config: CascadeConfig) -> None:
        """Raise CSDraftingError if `config` cannot drive the served models."""


@dataclass
class GenerationRequest:
    kind: Kind
    prompt: list[int]
    max_tokens: int
    sampling: SamplingConfig
    config: CascadeConfig
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    overrides: dict = field(default_factory=dict)


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def _int(body: dict, name: str, minimum: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{name}' must be an integer (got {_show(v)})", name)
    if minimum is not None and v < minimum:
        raise _bad(f"'{name}' must be >= {minimum} (got {_show(v)})", name)
    return v


def _number(body: dict, name: str, low: float, high: float, open_low: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"'{name}' must be a number (got {_show(v)})", name)
    # compared as given: an integer too large for a float is still compared exactly (and refused)
    if not (low < v if open_low else low <= v) or not v <= high:
        raise _bad(f"'{name}' must be in {'(' if open_low else '['}{low:g}, {high:g}] (got {_show(v)})", name)
    return float(v)


def _show(v: Any, limit: int = 60) -> str:
    """A value for an error message: short, and printable whatever the client sent."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**limit else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(v: str, param: str) -> str:
    """`v` if it is text a tokenizer can take: a lone surrogate (JSON allows "\\ud800") has no UTF-8 form."""
    bad = _SURROGATE.search(v)
    if bad:
        raise _bad(f"'{param}' holds a lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}: "
                   "it is not a character and has no UTF-8 form; send valid Unicode text", param, "invalid_text")
    return v


def _stops(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad(f"'stop' must be a string or a list of strings (got {v!r})", "stop")
    if any(s == "" for s in stops):
        raise _bad("'stop' strings must not be empty", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad(f"'stop' strings must be at most {MAX_STOP_CHARS} characters long", "stop")
    if len(stops) > MAX_STOPS:
        raise _bad(f"at most {MAX_STOPS} stop strings (got {len(stops)})", "stop")
    return tuple(dict.fromkeys(_text(s, "stop") for s in stops))  # decoded text never holds a lone surrogate


def _message_text(i: int, m: Any) -> dict:
    if not isinstance(m, dict):
        raise _bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
    role, content = m.get("role"), m.get("content")
    if role not in ("system", "user", "assistant", "developer"):
        raise _bad(f"messages[{i}].role must be 'system', 'user', 'assistant' or 'developer' (got {role!r})",
                   f"messages[{i}].role")
    extra = sorted(set(m) - {"role", "content", "name"})
    if extra:
        raise _bad(f"messages[{i}] has unsupported field(s) {extra}: only text messages are supported", f"messages[{i}]")
    if "name" in m and not isinstance(m["name"], str):
        raise _bad(f"messages[{i}].name must be a string", f"messages[{i}].name")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content[{j}] is not a text part: only text content is supported",
                           f"messages[{i}].content")
            texts.append(_text(part["text"], f"messages[{i}].content[{j}].text"))
        content = "".join(texts)
    if not isinstance(content, str):
        raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")
    return {"role": "system" if role == "developer" else role, "content": _text(content, f"messages[{i}].content")}


def _prompt_ids(body: dict, ctx: ModelContext) -> list[int]:
    if "prompt" not in body or body["prompt"] is None:
        raise _bad("'prompt' is required: the text (or token ids) to continue", "prompt", "missing_required_parameter")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        if not p:
            raise _bad("'prompt' is empty: give some text to continue", "prompt")
        return _encode(ctx, _text(p, "prompt"), "prompt")
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        bad = [t for t in p if not 0 <= t < ctx.vocab_size]
        if bad:
            raise _bad(f"prompt token ids {_show(bad[:5])} are outside the vocabulary [0, {ctx.vocab_size})", "prompt")
        return list(p)
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, (str, list)) for x in p):
        raise _bad(f"'prompt' holds {len(p)} prompts: this server answers one prompt per request", "prompt")
    raise _bad("'prompt' must be a non-empty string or a non-empty list of token ids", "prompt")


def _encode(ctx: ModelContext, text: str, param: str) -> list[int]:
    try:
        ids = ctx.encode(text)
    except Exception as exc:  # the tokenizer's only input is this text: whatever it refuses, the text is at fault
        raise _bad(f"the tokenizer refused '{param}': {type(exc).__name__}: {exc}", param, "invalid_text") from None
    if not ids:
        raise _bad(f"'{param}' tokenizes to nothing: give some text", param)
    return ids


def _chat_ids(body: dict, ctx: ModelContext) -> list[int]:
    msgs = body.get("messages")
    if msgs is None:
        raise _bad("'messages' is required: a list of {role, content} objects", "messages", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' must be a non-empty list of {role, content} objects", "messages")
    messages = [_message_text(i, m) for i, m in enumerate(msgs)]
    try:
        text = ctx.render_chat(messages)
    except CSDraftingError as exc:
        raise _bad(f"cannot apply the chat template: {exc}", "messages") from None
    except Exception as exc:  # a template's raise_exception (e.g. roles out of order)
        raise _bad(f"the model's chat template rejected these messages: {exc}", "messages") from None
    return _encode(ctx, text, "messages")


def _sampling(body: dict, ctx: ModelContext) -> SamplingConfig:
    temperature = _number(body, "temperature", 0.0, MAX_TEMPERATURE)
    temperature = 1.0 if temperature is None else temperature  # the OpenAI default
    top_p = _number(body, "top_p", 0.0, 1.0, open_low=True)
    top_p = 1.0 if top_p is None else top_p
    top_k = _int(body, "top_k", -1) or 0
    # -1 (vLLM) and 0 both mean off, and so does any k that keeps the whole vocabulary
    top_k = 0 if top_k < 0 or top_k >= ctx.vocab_size else top_k
    seed = _int(body, "seed")
    if seed is not None and not SEED_MIN <= seed < SEED_END:
        raise _bad(f"'seed' must be a 64-bit integer, signed or unsigned (got {_show(seed)})", "seed")
    greedy = temperature < GREEDY_BELOW
    return SamplingConfig(do_sample=not greedy, temperature=1.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                          seed=None if seed is None else seed % SEED_END)


def _knobs(knobs: Any, ctx: ModelContext) -> tuple[CascadeConfig, dict]:
    """The served config with the request's drafting knobs, checked against the served models."""
    if knobs is None or knobs == {}:
        return ctx.base_config, {}  # the base config was checked when the worker started
    try:
        config = knobs_mod.override(ctx.base_config, knobs)
        ctx.check_config(config)
    except CSDraftingError as exc:
        raise _bad(f"'{KNOBS_FIELD}': {exc}", KNOBS_FIELD) from None
    # a draft never outgrows the context: refused rather than clamped, so that a request says what it gets
    longest = max((max(row) for row in config.k.cumulative), default=0) if config.k is not None else 0
    if longest > ctx.context_length:
        raise _bad(f"'{KNOBS_FIELD}': K asks for drafts of {_show(longest)} tokens but the context holds "
                   f"{ctx.context_length}", KNOBS_FIELD)
    if config.bottom_length is not None and config.bottom_length > ctx.context_length:
        raise _bad(f"'{KNOBS_FIELD}': bottom_length {_show(config.bottom_length)} is over the context length "
                   f"{ctx.context_length}", KNOBS_FIELD)
    return config, dict(knobs)


def parse(body: Any, kind: Kind, ctx: ModelContext) -> GenerationRequest:
    """Validate an OpenAI completions/chat body against the served cascade."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", code="invalid_body")
    unknown = sorted(set(body) - _COMMON - _ONLY[kind] - set(_NEUTRAL))
    if unknown:
        other = "chat" if kind == "completion" else "completion"
        hint = f" (that field belongs to /v1/{'chat/' if other == 'chat' else ''}completions)" if set(unknown) & _ONLY[other] else ""
        raise _bad(f"unsupported field(s) {unknown}{hint}", unknown[0], "unsupported_parameter")
    for name, ok in _NEUTRAL.items():
        if name in body and not ok(body[name]):
            why = _WHY_NEUTRAL.get(name, "not implemented by this server; leave it out")
            raise _bad(f"'{name}' = {_show(body[name])} is not supported: {why}", name, "unsupported_parameter")

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"'model' must be a string (got {_show(model)})", "model")
    if model is not None and model != ctx.model_name:
        raise APIError(404, f"the model {_show(model)} does not exist: this server serves '{ctx.model_name}' (GET /v1/models)",
                       "model", "model_not_found")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false (got {_show(stream)})", "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed with stream: true", "stream_options")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"} or not isinstance(opts.get("include_usage", False), bool):
            raise _bad("'stream_options' supports only {\"include_usage\": true|false}", "stream_options")
        include_usage = opts.get("include_usage", False)

    max_tokens = _int(body, "max_tokens", 1)
    if kind == "chat":
        mct = _int(body, "max_completion_tokens", 1)
        if mct is not None and max_tokens is not None and mct != max_tokens:
            raise _bad("'max_tokens' and 'max_completion_tokens' disagree; send one", "max_completion_tokens")
        max_tokens = max_tokens or mct
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("'user' must be a string", "user")
    sampling = _sampling(body, ctx)
    stop = _stops(body.get("stop"))
    config, overrides = _knobs(body.get(KNOBS_FIELD), ctx)

    prompt = _prompt_ids(body, ctx) if kind == "completion" else _chat_ids(body, ctx)
    room = ctx.context_length - len(prompt)
    if room <= 0:
        raise _bad(f"the prompt has {len(prompt)} tokens but the context holds {ctx.context_length}: shorten it",
                   "messages" if kind == "chat" else "prompt", "context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(16 if kind == "completion" else ctx.default_max_tokens, room)  # 16: the OpenAI default
    elif len(prompt) + max_tokens > ctx.context_length:
        raise _bad(f"the prompt has {len(prompt)} tokens and max_tokens is {_show(max_tokens)}, more than the context holds "
                   f"({ctx.context_length}) in all: lower max_tokens to {room} or shorten the prompt",
                   "max_tokens", "context_length_exceeded")
    return GenerationRequest(kind, prompt, max_tokens, sampling, config, stop, stream, include_usage, dict(overrides))

