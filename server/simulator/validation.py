"""Request decoding and validation with the exact error messages of Ollama's Go server."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

_FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration, used for negative keep_alive
_VALID_ROLES = frozenset({"system", "user", "assistant", "tool"})


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- Go-like decoding

_PY_TO_GO_DECODE = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
}


def _go_quote_char(ch: str) -> str:
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + json.dumps(ch)[1:-1] + "'"


def _go_decode_message(text: str, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(text) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    context = _PY_TO_GO_DECODE.get(exc.msg, "looking for beginning of value")
    return f"invalid character {_go_quote_char(text[exc.pos])} {context}"


def _reject_constant(name: str) -> Any:
    # Python accepts NaN/Infinity literals; Go's decoder does not.
    raise ValueError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_body(raw: bytes) -> Any:
    # Go keeps invalid UTF-8 as U+FFFD rather than failing the request.
    text = raw.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise _ApiError(400, "missing request body")
    try:
        # Go's json.Decoder stops after the first value and ignores trailing bytes.
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise _ApiError(400, _go_decode_message(text, exc)) from None
    except ValueError as exc:  # NaN / Infinity from _reject_constant
        first = str(exc).lstrip("-")[:1] or "N"
        raise _ApiError(
            400, f"invalid character '{first}' looking for beginning of value"
        ) from None
    return value


def _decode_object(raw: bytes, struct: str) -> dict[str, Any]:
    """The request body as a JSON object, or gin's 400 for anything else."""
    body = _decode_body(raw)
    if not isinstance(body, dict):
        raise _ApiError(
            400, f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.{struct}"
        )
    return body


def _go_quote(text: str) -> str:
    """Go's %q for the printable text clients send."""
    return json.dumps(text, ensure_ascii=False)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _field(
    obj: dict[str, Any], key: str, kind: str, where: str, go_type: str, default: Any = None
) -> Any:
    """Return obj[key] if it has the JSON kind Go would accept; null means the zero value."""
    value = obj.get(key)
    if value is None:
        return default
    actual = _json_kind(value)
    if actual != kind:
        raise _ApiError(
            400,
            f"json: cannot unmarshal {actual} into Go struct field {where}.{key} of type {go_type}",
        )
    return value


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _parse_go_duration(text: str) -> int:
    """time.ParseDuration, returning nanoseconds and raising its exact error messages."""
    quoted = json.dumps(text, ensure_ascii=False)
    invalid = _ApiError(400, f"time: invalid duration {quoted}")
    rest, sign = text, 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if rest[0] not in "0123456789.":
            raise invalid
        match = _DURATION_PART.match(rest)
        assert match is not None  # the pattern can match the empty string
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise invalid
        if not unit:
            raise _ApiError(400, f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            unit_q = json.dumps(unit, ensure_ascii=False)
            raise _ApiError(400, f"time: unknown unit {unit_q} in duration {quoted}")
        scale = _DURATION_UNITS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(int(frac) * scale / 10 ** len(frac))
        if total > _FOREVER_NS:
            raise invalid
        rest = rest[match.end() :]
    return sign * total


def _parse_keep_alive(value: Any) -> float | None:
    """api.Duration.UnmarshalJSON: seconds (None = absent); negative means forever (inf)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _ApiError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    if isinstance(value, str):
        ns = _parse_go_duration(value)
        return math.inf if ns < 0 else ns / 1e9
    go_type = "[]interface {}" if isinstance(value, list) else "map[string]interface {}"
    raise _ApiError(400, f"Unsupported type: '{go_type}'")


# Types of Ollama's own options (api.Options), checked the way Options.FromMap does.
_INT_OPTIONS = frozenset(
    {
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "mirostat",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        # simulator hooks follow the same rules
        "sim_tokens",
        "sim_error_after",
        "sim_status",
    }
)
_FLOAT_OPTIONS = frozenset(
    {
        "top_p",
        "min_p",
        "typical_p",
        "temperature",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_tau",
        "mirostat_eta",
        "sim_token_delay_ms",
        "sim_first_token_delay_ms",
    }
)
_BOOL_OPTIONS = frozenset(
    {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock"}
)


def _check_options(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if value is None:
            continue
        if key in _INT_OPTIONS and _json_kind(value) != "number":
            raise _ApiError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and _json_kind(value) != "number":
            raise _ApiError(500, f'option "{key}" must be of type float32')
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise _ApiError(500, f'option "{key}" must be of type boolean')
        if key == "stop":
            if not isinstance(value, list):
                raise _ApiError(500, 'option "stop" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise _ApiError(500, 'option "stop" must be of an array of strings')


def _check_status_hook(options: dict[str, Any]) -> None:
    """The sim_status test hook: answer with that status instead."""
    status = _int_option(options, "sim_status")
    if status is not None:
        if not 200 <= status <= 599:
            raise _ApiError(500, 'option "sim_status" must be an HTTP status (200-599)')
        raise _ApiError(status, f"simulated status {status}")


def _int_option(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None or _json_kind(value) != "number":
        return None
    return int(value)  # Go truncates floats for int options


def _float_option(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None or _json_kind(value) != "number":
        return None
    return float(value)


# --------------------------------------------------------------------------- requests

_THINK_LEVELS = ("high", "medium", "low", "max")


def _parse_think(value: Any) -> bool | str | None:
    """api.ThinkValue: a boolean or a level; None when absent (the model's default)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _THINK_LEVELS:
            return value
        raise _ApiError(
            400,
            f"invalid think value: {_go_quote(value)} "
            '(must be "high", "medium", "low", "max", true, or false)',
        )
    raise _ApiError(
        400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def _int_list(body: dict[str, Any], key: str, where: str) -> list[int]:
    items = _field(body, key, "array", where, "[]int", [])
    for item in items:
        if _json_kind(item) != "number":
            raise _ApiError(
                400,
                f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                f"{where}.{key} of type int",
            )
        if isinstance(item, float) and not item.is_integer():
            raise _ApiError(
                400,
                f"json: cannot unmarshal number {item} into Go struct field "
                f"{where}.{key} of type int",
            )
    return [int(item) for item in items]


def _string_list(body: dict[str, Any], key: str, where: str, go_type: str) -> list[str]:
    items = _field(body, key, "array", where, f"[]{go_type}", [])
    for item in items:
        if not isinstance(item, str):
            raise _ApiError(
                400,
                f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                f"{where}.{key} of type {go_type}",
            )
    return list(items)


def _object_list(body: dict[str, Any], key: str, where: str, go_type: str) -> list[dict[str, Any]]:
    items = _field(body, key, "array", where, f"[]{go_type}", [])
    for item in items:
        if not isinstance(item, dict):
            raise _ApiError(
                400,
                f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                f"{where}.{key} of type {go_type}",
            )
    return list(items)


@dataclass
class _GenRequest:
    kind: str  # "chat" or "generate"
    model: str
    stream: bool
    keep_alive: float | None  # seconds; None = server default; inf = forever
    options: dict[str, Any]
    messages: list[dict[str, Any]]
    prompt: str
    system: str
    raw: bool
    format: Any
    think: bool | str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    suffix: str = ""
    template: str = ""
    context: list[int] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.messages if self.kind == "chat" else not self.prompt

    @property
    def thinks(self) -> bool:
        return self.think is not None and self.think is not False

    @property
    def calls_tool(self) -> bool:
        """Chat with tools answers with a tool call, unless the last message is a tool's
        result: then it answers in words, so an agent loop ends as it would with a model."""
        if self.kind != "chat" or not self.tools:
            return False
        return not self.messages or self.messages[-1].get("role") != "tool"

    def seed_material(self, model: str) -> bytes:
        options = {k: v for k, v in self.options.items() if not k.startswith("sim_")}
        if self.kind == "chat":
            content: dict[str, Any] = {"messages": self.messages}
        else:
            content = {"prompt": self.prompt, "system": self.system}
            extras = {
                "suffix": self.suffix,
                "template": self.template,
                "context": self.context,
                "images": self.images,
            }
            content.update({key: value for key, value in extras.items() if value})
        material = {"model": model, **content, "options": options, "format": self.format}
        return json.dumps(material, sort_keys=True, ensure_ascii=False).encode()

    def prompt_tokens(self) -> int:
        if self.kind == "chat":
            words = sum(len(str(m.get("content") or "").split()) + 4 for m in self.messages)
        else:
            texts = (self.prompt, self.system, self.suffix)
            words = sum(len(text.split()) for text in texts) + len(self.context)
        return max(words, 1)


def _parse_request(kind: str, raw: bytes) -> _GenRequest:
    struct = "ChatRequest" if kind == "chat" else "GenerateRequest"
    body = _decode_object(raw, struct)
    top_logprobs = _field(body, "top_logprobs", "number", struct, "int", 0)
    if not 0 <= top_logprobs <= 20:
        raise _ApiError(400, "top_logprobs must be between 0 and 20")
    model = _field(body, "model", "string", struct, "string", "")
    stream = _field(body, "stream", "bool", struct, "bool", True)
    options = _field(body, "options", "object", struct, "map[string]interface {}", {})
    keep_alive = _parse_keep_alive(body.get("keep_alive"))
    think = _parse_think(body.get("think"))
    req = _GenRequest(
        kind=kind,
        model=model,
        stream=stream,
        keep_alive=keep_alive,
        options=options,
        messages=[],
        prompt="",
        system="",
        raw=False,
        format=body.get("format"),
        think=think,
    )
    if kind == "chat":
        for item in _field(body, "messages", "array", struct, "[]api.Message", []):
            req.messages.append(_parse_message(item))
        req.tools = _object_list(body, "tools", struct, "api.Tool")
    else:
        req.prompt = _field(body, "prompt", "string", struct, "string", "")
        req.system = _field(body, "system", "string", struct, "string", "")
        req.suffix = _field(body, "suffix", "string", struct, "string", "")
        req.template = _field(body, "template", "string", struct, "string", "")
        req.context = _int_list(body, "context", struct)
        req.images = _string_list(body, "images", struct, "api.ImageData")
        req.raw = _field(body, "raw", "bool", struct, "bool", False)
    return req


def _parse_message(item: Any) -> dict[str, Any]:
    where = "ChatRequest.messages"
    if not isinstance(item, dict):
        raise _ApiError(
            400,
            f"json: cannot unmarshal {_json_kind(item)} into Go struct field {where} "
            "of type api.Message",
        )
    role = _field(item, "role", "string", where, "string", "").lower()
    _field(item, "content", "string", where, "string", "")
    if role not in _VALID_ROLES:
        raise _ApiError(400, f"invalid role {json.dumps(role, ensure_ascii=False)}")
    return {**item, "role": role}
