"""OpenAI's request and response shapes, and nothing else: no sockets, no threads.

``parse_request(kind, body, defaults, model_ids)`` checks a JSON body of
``/v1/chat/completions`` or ``/v1/completions`` and returns a :class:`Request`: the
messages or prompt, the sampling settings (``mlxgen.settings.TABLE``, checked by
``settings.check``), stop strings, logprobs and streaming options. Every mistake is an
:class:`ApiError` with its HTTP status and OpenAI's error envelope.

The response builders turn the loop's events into OpenAI's JSON: whole bodies,
streaming chunks, ``usage`` (with ``prompt_tokens_details.cached_tokens``) and both
logprobs shapes (chat: ``content[] = {token, logprob, bytes, top_logprobs}``;
legacy completions: ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).

Light on purpose: importing it pulls in no numpy.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mlxgen import settings
from mlxgen.errors import ConfigError, MlxgenError

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "interrupted": "stop"}
MAX_STOP = 16  # stop strings per request, as OpenAI allows 4 (llama-server: any)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class ApiError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error envelope."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


@dataclass(frozen=True)
class Request:
    kind: str  # "chat" or "completion"
    model: str
    messages: list[dict] | None  # chat: [{role, content: str}]
    prompt: str | None  # completion
    sampling: dict[str, Any]  # settings.TABLE names -> values (only those the request set)
    max_tokens: int | None
    stop: tuple[str, ...] | None  # None: the server config's
    logprobs: int | None  # top-K alternatives recorded (0: only the chosen token's); None: off
    stream: bool
    include_usage: bool
    thinking: bool | None  # chat_template_kwargs.enable_thinking
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    constraint: Any = None  # response_format as a checked mlxgen.constraint.Spec; None: the server's (usually none)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


# ------------------------------------------------------------------ parsing

REFUSED = {
    "tools": "tools are not supported yet",
    "tool_choice": "tool_choice is not supported yet (no tools)",
    "functions": "functions are not supported yet",
    "function_call": "function_call is not supported yet",
    "suffix": "suffix (fill-in-the-middle) is not supported",
    "echo": "echo is not supported",
    "best_of": "best_of is not supported",
    "logit_bias": "logit_bias is not supported yet",
}
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options", "model",
           "messages", "prompt", "stream", "stop", "logprobs", "top_logprobs", "n", "max_tokens",
           "max_completion_tokens", "chat_template_kwargs", "frequency_penalty", "presence_penalty"}
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repetition_penalty": "repetition_penalty", "repeat_penalty": "repetition_penalty",
                   "seed": "seed"}


def parse_request(kind: str, body: Any, model_ids: Sequence[str]) -> Request:
    """Check a request body (the server config's settings fill what it leaves out, in the worker)."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {type(body).__name__}")
    for name, why in REFUSED.items():
        if body.get(name) not in (None, False, [], {}) and not (name == "echo" and body.get(name) is False):
            raise bad(why, name, "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: expected a string naming the model (GET /v1/models lists it)", "model")
    if model not in model_ids:
        raise ApiError(404, f"model {model!r} is not served here; this server runs {model_ids[0]!r}", "model",
                       "model_not_found")
    n = body.get("n", 1)
    if n is not None and (not settings.integer(n) or n != 1):
        raise bad(f"n: {n!r} is not supported; only n=1 (one choice per request)", "n", "unsupported_parameter")
    messages = prompt = None
    if kind == "chat":
        messages = parse_messages(body.get("messages"))
    else:
        prompt = parse_prompt(body.get("prompt"))
    sampling = parse_sampling(body)
    max_tokens = first_set(body, "max_completion_tokens", "max_tokens")
    if max_tokens is not None and (not settings.integer(max_tokens) or max_tokens < 1):
        raise bad(f"max_tokens: {max_tokens!r} is not allowed; expected a positive integer", "max_tokens")
    stream = expect(body, "stream", bool, False)
    options = expect(body, "stream_options", dict, None)
    if options is not None and not stream:
        raise bad("stream_options: only allowed when stream is true", "stream_options")
    include_usage = bool(options and expect(options, "include_usage", bool, False, "stream_options.include_usage"))
    kwargs = expect(body, "chat_template_kwargs", dict, {}) or {}
    thinking = expect(kwargs, "enable_thinking", bool, None, "chat_template_kwargs.enable_thinking")
    return Request(kind, model, messages, prompt, sampling, max_tokens, parse_stop(body.get("stop")),
                   parse_logprobs(kind, body), stream, include_usage, thinking,
                   penalty(body, "frequency_penalty"), penalty(body, "presence_penalty"),
                   parse_response_format(body.get("response_format")))


def first_set(body: dict, *names: str) -> Any:
    return next((body[n] for n in names if body.get(n) is not None), None)


def expect(body: dict, name: str, kind: type, default: Any, param: str | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad(f"{param or name}: expected {kind_name(kind)}, got {type(value).__name__}", param or name)
    return value


def kind_name(kind: type) -> str:
    return {bool: "a boolean", dict: "an object", str: "a string", list: "an array"}.get(kind, kind.__name__)


def parse_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages: expected a non-empty array of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where}: expected an object with role and content", where)
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad(f"{where}.role: {role!r} is not supported; expected system, user or assistant", f"{where}.role")
        out.append({"role": "system" if role == "developer" else role, "content": content_text(m.get("content"), where)})
    if out[-1]["role"] == "assistant":
        raise bad("messages: the last message must be the user's (continuing an assistant turn is not supported)",
                  "messages")
    return out


def content_text(content: Any, where: str) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{j}]: only text parts ({{type: text, text: ...}}) are supported",
                          f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{where}.content: expected a string or an array of text parts", f"{where}.content")


def parse_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt: expected a non-empty string (one prompt per request)", "prompt")
    return prompt


def parse_sampling(body: dict) -> dict[str, Any]:
    """The request's sampling fields as settings.TABLE names, checked by the table's rules."""
    out: dict[str, Any] = {}
    for field_name, name in SAMPLING_FIELDS.items():
        if field_name not in body or (body[field_name] is None and name != "seed"):
            continue
        value = body[field_name]
        setting = settings.BY_NAME[name]
        if setting.type is float and settings.integer(value):
            value = float(value)
        try:
            settings.check({name: value})
        except ConfigError as e:
            raise bad(f"{field_name}: {str(e).split(': ', 1)[1]}", field_name) from None
        out[name] = value
    return out


def penalty(body: dict, name: str) -> float:
    value = body.get(name)
    if value is None:
        return 0.0
    if not settings.number(value) or not -2.0 <= value <= 2.0:
        raise bad(f"{name}: {value!r} is not allowed; expected a number in [-2, 2]", name)
    return float(value)


def parse_stop(stop: Any) -> tuple[str, ...] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop: expected a non-empty string or an array of them", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"stop: at most {MAX_STOP} stop strings", "stop")
    return tuple(stops)


def parse_response_format(fmt: Any) -> Any:
    """``response_format`` as a checked constraint spec (``mlxgen.constraint``), or None for text.

    ``{"type": "text"}``; ``{"type": "json_object"}`` (any JSON object); ``{"type": "json_schema",
    "json_schema": {"name", "schema", "strict", "description"}}`` (OpenAI's shape); and llama-server's
    ``{"type": "json_object", "schema": {...}}``. The schema must be given inline, as an object:
    a string is never read as a file on the server. A bad schema is a 400 naming ``response_format``.
    """
    param = "response_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad(f"response_format: expected an object like {{\"type\": \"json_object\"}}, "
                  f"got {type(fmt).__name__}", param)
    kind = fmt.get("type")
    if kind == "text":
        return None

    def typed(obj: dict, name: str, kind: type, where: str) -> Any:  # a wrong type names response_format
        try:
            return expect(obj, name, kind, None, where)
        except ApiError as e:
            raise bad(e.message, param) from None

    if kind == "json_object":
        schema = typed(fmt, "schema", dict, "response_format.schema")
        where = "response_format.schema"
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise bad("response_format.json_schema: expected an object {name, schema, strict}", param)
        typed(spec, "name", str, "response_format.json_schema.name")
        typed(spec, "strict", bool, "response_format.json_schema.strict")
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise bad("response_format.json_schema.schema: expected the JSON schema as an object", param)
        where = "response_format.json_schema.schema"
    else:
        raise bad(f"response_format.type: {kind!r} is not supported; expected text, json_object or json_schema",
                  param)
    from mlxgen import constraint  # llguidance, only when a request asks for structured output

    try:
        if schema is None:
            return constraint.make_spec("json_object", True)
        return constraint.make_spec("json_schema", schema, where)
    except ConfigError as e:  # a schema llguidance rejects
        raise bad(str(e), param, "invalid_schema") from None
    except MlxgenError as e:  # llguidance is not installed
        raise ApiError(400, str(e), param, "unsupported_parameter") from None


def parse_logprobs(kind: str, body: dict) -> int | None:
    if kind == "chat":
        if not expect(body, "logprobs", bool, False):
            if body.get("top_logprobs") is not None:
                raise bad("top_logprobs: needs logprobs: true", "top_logprobs")
            return None
        k = body.get("top_logprobs", 0)
        param = "top_logprobs"
    else:
        k, param = body.get("logprobs"), "logprobs"
        if k is None:
            return None
    if not settings.integer(k) or not 0 <= k <= MAX_TOP_LOGPROBS:
        raise bad(f"{param}: {k!r} is not allowed; expected an integer in [0, {MAX_TOP_LOGPROBS}]", param)
    return k


def params_for(req: Request, defaults: Any) -> Any:
    """The request's SamplingParams: the server config's, with the request's fields over them."""
    from mlxgen.sampling import SamplingParams

    values = settings.values(defaults)
    values.update(req.sampling)
    return SamplingParams(**values)


def with_thinking(spec, req: Request):
    return spec if req.thinking is None else dataclasses.replace(spec, thinking=req.thinking)


# ------------------------------------------------------------------ responses


def usage(prompt_tokens: int, cached: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -inf


def chat_logprobs(entries: Sequence[dict]) -> dict:
    def one(e: dict) -> dict:
        return {"token": e["text"], "logprob": finite(e["logprob"]), "bytes": e.get("bytes", list(e["text"].encode()))}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e["top"]]} for e in entries]}


def completion_logprobs(entries: Sequence[dict], offset: int = 0) -> dict:
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["text"])
    return {"tokens": [e["text"] for e in entries], "token_logprobs": [finite(e["logprob"]) for e in entries],
            "top_logprobs": [{t["text"]: finite(t["logprob"]) for t in e["top"]} for e in entries],
            "text_offset": offsets}


def whole(req: Request, text: str, reason: str, use: dict, logprobs: list[dict] | None) -> dict:
    """A non-streaming response body."""
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
                  "finish_reason": FINISH[reason]}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": completion_logprobs(logprobs) if logprobs is not None else None,
                  "finish_reason": FINISH[reason]}
        obj = "text_completion"
    return {"id": response_id(req), "object": obj, "created": req.created, "model": req.model,
            "system_fingerprint": "mlxgen", "choices": [choice], "usage": use}


def response_id(req: Request) -> str:
    return ("chatcmpl-" if req.kind == "chat" else "cmpl-") + req.id


def chunk(req: Request, text: str | None, reason: str | None, logprobs: list[dict] | None = None,
          role: bool = False, offset: int = 0) -> dict:
    """One streaming chunk: a text delta and/or the finish reason."""
    if req.kind == "chat":
        delta: dict = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta,
                  "logprobs": chat_logprobs(logprobs) if logprobs else None,
                  "finish_reason": FINISH[reason] if reason else None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "",
                  "logprobs": completion_logprobs(logprobs, offset) if logprobs else None,
                  "finish_reason": FINISH[reason] if reason else None}
        obj = "text_completion"
    out = {"id": response_id(req), "object": obj, "created": req.created, "model": req.model,
           "system_fingerprint": "mlxgen", "choices": [choice]}
    if req.include_usage:
        out["usage"] = None
    return out


def usage_chunk(req: Request, use: dict) -> dict:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    return {"id": response_id(req), "object": obj, "created": req.created, "model": req.model,
            "system_fingerprint": "mlxgen", "choices": [], "usage": use}
