"""Ollama-compatible HTTP simulator: deterministic chat/generate streams for tests and benches."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import random
import re
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

logger = logging.getLogger("chatbot.simulator")

# --------------------------------------------------------------------------- settings and stats


@dataclass
class SimulatorSettings:
    tokens: int = 24  # tokens per answer unless options.num_predict / sim_tokens says otherwise
    token_delay_ms: float = 10.0  # delay between tokens
    first_token_delay_ms: float = 50.0
    models: tuple[str, ...] = ("llama3.2:latest",)
    version: str = "0.33.0"


@dataclass
class SimulatorStats:
    """Live counters served at GET /simulator/stats.

    Every generation that started ends in exactly one of completed, cancelled (client went
    away) or failed (sim_error_after), so generations == completed + cancelled + failed +
    in_progress as long as no reset happened in between.
    """

    requests: int = 0
    generations: int = 0
    completed: int = 0
    in_progress: int = 0
    max_in_progress: int = 0
    cancelled: int = 0
    failed: int = 0
    by_path: dict[str, int] = field(default_factory=dict)

    def count_request(self, path: str) -> None:
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1

    def generation_started(self) -> None:
        self.generations += 1
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)

    def generation_ended(self, outcome: str) -> None:
        self.in_progress -= 1
        if outcome == "completed":
            self.completed += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1

    def reset(self) -> None:
        # in_progress describes live handlers, not history: zeroing it would make it go
        # negative when those handlers finish.
        self.requests = self.generations = self.completed = 0
        self.cancelled = self.failed = 0
        self.max_in_progress = self.in_progress
        self.by_path = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "generations": self.generations,
            "completed": self.completed,
            "in_progress": self.in_progress,
            "max_in_progress": self.max_in_progress,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "by_path": dict(self.by_path),
        }


SIM_STATS: web.AppKey[SimulatorStats] = web.AppKey("sim_stats", SimulatorStats)

# --------------------------------------------------------------------------- wire helpers

_JSON_TYPE = "application/json; charset=utf-8"
_NDJSON_TYPE = "application/x-ndjson"
_DEFAULT_KEEP_ALIVE_S = 300.0
_FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration, used for negative keep_alive
_VALID_ROLES = frozenset({"system", "user", "assistant", "tool"})

# Go's encoding/json escapes these even inside strings; a byte-exact clone must as well.
_GO_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def _go_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=_go_json(obj).encode(), status=status, headers={"Content-Type": _JSON_TYPE}
    )


def _text_response(text: str, status: int, content_type: str) -> web.Response:
    return web.Response(body=text.encode(), status=status, headers={"Content-Type": content_type})


def _rfc3339(ns: int, *, utc: bool = True) -> str:
    """Format like Go's time.RFC3339Nano: trailing fractional zeros dropped, Z for UTC."""
    seconds, frac = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    if not utc:
        moment = moment.astimezone()
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset else 0
    if minutes == 0:
        return text + "Z"
    sign = "+" if minutes > 0 else "-"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _now_stamp() -> str:
    # Same output as _rfc3339(time.time_ns()), but cheap enough to call once per token:
    # zero-delay benchmark streams must not be limited by the simulator's own CPU.
    seconds, frac = divmod(time.time_ns(), 1_000_000_000)
    if frac:
        return f"{_utc_second(seconds)}.{frac:09d}".rstrip("0") + "Z"
    return _utc_second(seconds) + "Z"


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

    @property
    def is_empty(self) -> bool:
        return not self.messages if self.kind == "chat" else not self.prompt

    def seed_material(self, model: str) -> bytes:
        options = {k: v for k, v in self.options.items() if not k.startswith("sim_")}
        if self.kind == "chat":
            content: dict[str, Any] = {"messages": self.messages}
        else:
            content = {"prompt": self.prompt, "system": self.system}
        material = {"model": model, **content, "options": options, "format": self.format}
        return json.dumps(material, sort_keys=True, ensure_ascii=False).encode()

    def prompt_tokens(self) -> int:
        if self.kind == "chat":
            words = sum(len(str(m.get("content") or "").split()) + 4 for m in self.messages)
        else:
            words = len(self.prompt.split()) + len(self.system.split())
        return max(words, 1)


def _parse_request(kind: str, raw: bytes) -> _GenRequest:
    body = _decode_body(raw)
    struct = "ChatRequest" if kind == "chat" else "GenerateRequest"
    if not isinstance(body, dict):
        raise _ApiError(
            400, f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.{struct}"
        )
    model = _field(body, "model", "string", struct, "string", "")
    stream = _field(body, "stream", "bool", struct, "bool", True)
    options = _field(body, "options", "object", struct, "map[string]interface {}", {})
    keep_alive = _parse_keep_alive(body.get("keep_alive"))
    messages: list[dict[str, Any]] = []
    prompt = system = ""
    raw_mode = False
    if kind == "chat":
        for item in _field(body, "messages", "array", struct, "[]api.Message", []):
            messages.append(_parse_message(item))
    else:
        prompt = _field(body, "prompt", "string", struct, "string", "")
        system = _field(body, "system", "string", struct, "string", "")
        template = _field(body, "template", "string", struct, "string", "")
        context = _field(body, "context", "array", struct, "[]int", [])
        raw_mode = _field(body, "raw", "bool", struct, "bool", False)
        if raw_mode and (template or system or context):
            raise _ApiError(400, "raw mode does not support template, system, or context")
    return _GenRequest(
        kind=kind,
        model=model,
        stream=stream,
        keep_alive=keep_alive,
        options=options,
        messages=messages,
        prompt=prompt,
        system=system,
        raw=raw_mode,
        format=body.get("format"),
    )


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


# --------------------------------------------------------------------------- text generation

_WORD_TEXT = (
    "the a an and or but if then because while when where which who what how why this that "
    "these those it its we you they he she our your their model answer question token stream "
    "line chunk server client gateway request response cache queue batch latency throughput "
    "memory context window prompt system user assistant message reply simple quick small large "
    "local remote fast slow careful clear useful good better best new old first last next "
    "every each some many few more most less least very quite rather just only also still "
    "already again often never always sometimes perhaps maybe likely surely indeed however "
    "therefore meanwhile otherwise instead together apart above below inside outside between "
    "around through across over under before after during since until within without about "
    "water light stone river mountain forest garden window table paper letter number story "
    "music color sound voice picture idea plan step path road bridge city village market "
    "morning evening night summer winter spring autumn weather cloud rain snow wind sun moon "
    "star ocean island valley field flower tree leaf seed root branch bird fish horse dog cat "
    "run walk read write think learn teach build test check measure compare explain describe "
    "return send receive open close start stop wait begin finish keep hold turn move"
)
_WORDS = tuple(_WORD_TEXT.split())
# Non-ASCII and Go-escaped words so UTF-8 handling and \u003c-style escapes get exercised.
_SPICE = ("café", "naïve", "😀", "über", "日本語", "Ωmega", "<b>", "&", "a<b", "x>y")


def _make_tokens(seed_material: bytes, count: int) -> list[str]:
    rng = random.Random(hashlib.sha256(seed_material).digest())
    tokens: list[str] = []
    for index in range(count):
        roll = rng.random()
        word = rng.choice(_SPICE) if roll < 0.06 else rng.choice(_WORDS)
        if rng.random() < 0.1:
            word += "."
        tokens.append(word if index == 0 else " " + word)
    return tokens


def _context_ids(seed_material: bytes, length: int) -> list[int]:
    rng = random.Random(hashlib.sha256(b"context" + seed_material).digest())
    return [rng.randrange(1, 128_000) for _ in range(min(length, 32))]


# --------------------------------------------------------------------------- server state


@dataclass
class _Loaded:
    name: str
    expires_ns: int
    context_length: int


@dataclass
class _SimState:
    settings: SimulatorSettings
    stats: SimulatorStats
    started_ns: int = field(default_factory=time.time_ns)
    loaded: dict[str, _Loaded] = field(default_factory=dict)

    def resolve_model(self, name: str) -> str | None:
        if name in self.settings.models:
            return name
        if ":" not in name and f"{name}:latest" in self.settings.models:
            return f"{name}:latest"
        return None

    def mark_loaded(self, name: str, keep_alive: float | None, options: dict[str, Any]) -> None:
        if keep_alive == 0:
            self.loaded.pop(name, None)
            return
        seconds = _DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
        now = time.time_ns()
        expires = now + _FOREVER_NS if math.isinf(seconds) else now + int(seconds * 1e9)
        previous = self.loaded.get(name)
        context_length = _int_option(options, "num_ctx") or (
            previous.context_length if previous else 4096
        )
        self.loaded[name] = _Loaded(name, expires, context_length)

    def model_info(self, name: str) -> dict[str, Any]:
        digest = hashlib.sha256(name.encode()).hexdigest()
        base, _, tag = name.partition(":")
        family_match = re.match(r"[a-z]+[0-9]*", base.lower())
        family = family_match.group(0) if family_match else "llama"
        size_match = re.search(r"(\d+(?:\.\d+)?)b", tag.lower())
        billions = float(size_match.group(1)) if size_match else 1 + int(digest[:2], 16) / 32
        size = int(billions * 0.6e9) + int(digest[2:8], 16)
        return {
            "digest": digest,
            "size": size,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": family,
                "families": [family],
                "parameter_size": f"{billions:.1f}B",
                "quantization_level": "Q4_K_M",
            },
        }


_STATE: web.AppKey[_SimState] = web.AppKey("sim_state", _SimState)


class _Generation:
    """Stats bookkeeping for one generation, so every exit path is counted exactly once."""

    def __init__(self, stats: SimulatorStats) -> None:
        self._stats = stats
        self._ended = False
        stats.generation_started()

    def end(self, outcome: str) -> None:
        if not self._ended:
            self._ended = True
            self._stats.generation_ended(outcome)


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


# --------------------------------------------------------------------------- handlers


async def _handle_chat(request: web.Request) -> web.StreamResponse:
    return await _handle_generation(request, "chat")


async def _handle_generate(request: web.Request) -> web.StreamResponse:
    return await _handle_generation(request, "generate")


async def _handle_generation(request: web.Request, kind: str) -> web.StreamResponse:
    state = request.app[_STATE]
    started = time.perf_counter_ns()
    try:
        req = _parse_request(kind, await request.read())
        status = _int_option(req.options, "sim_status")
        if status is not None:
            if not 200 <= status <= 599:
                raise _ApiError(500, 'option "sim_status" must be an HTTP status (200-599)')
            raise _ApiError(status, f"simulated status {status}")
        if kind == "chat" and not req.model:
            raise _ApiError(400, "model is required")
        model = state.resolve_model(req.model)
        if model is None:
            raise _ApiError(404, f"model '{req.model}' not found")
        if req.is_empty and req.keep_alive == 0:
            state.loaded.pop(model, None)
            return _json_response(_done_object(req, "", "unload"))
        _check_options(req.options)
        state.mark_loaded(model, req.keep_alive, req.options)
        if req.is_empty:
            return _json_response(_done_object(req, "", "load"))
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)

    plan = _Plan.build(state.settings, req, model, started)
    generation = _Generation(state.stats)
    try:
        if req.stream:
            response = await _stream(request, req, plan, generation)
        else:
            response = await _respond_whole(req, plan, generation)
    except asyncio.CancelledError:
        generation.end("cancelled")
        raise
    finally:
        generation.end("failed")  # no-op unless an unexpected exception escaped
        state.mark_loaded(model, req.keep_alive, req.options)
    return response


@dataclass
class _Plan:
    """Everything a generation will emit, decided before the first token."""

    tokens: list[str]
    done_reason: str
    first_delay_ms: float
    token_delay_ms: float
    error_after: int | None
    seed: bytes
    prompt_tokens: int
    started_ns: int
    loaded_ns: int

    @classmethod
    def build(
        cls, settings: SimulatorSettings, req: _GenRequest, model: str, started_ns: int
    ) -> _Plan:
        opts = req.options
        count = _int_option(opts, "sim_tokens")
        count = settings.tokens if count is None else max(count, 0)
        done_reason = "stop"
        num_predict = _int_option(opts, "num_predict")
        if num_predict is not None and 0 <= num_predict < count:
            count, done_reason = num_predict, "length"
        first = _float_option(opts, "sim_first_token_delay_ms")
        delay = _float_option(opts, "sim_token_delay_ms")
        error_after = _int_option(opts, "sim_error_after")
        if error_after is not None and error_after > count:
            error_after = None  # the answer ends before the simulated failure would happen
        seed = req.seed_material(model)
        return cls(
            tokens=_make_tokens(seed, count),
            done_reason=done_reason,
            first_delay_ms=settings.first_token_delay_ms if first is None else first,
            token_delay_ms=settings.token_delay_ms if delay is None else delay,
            error_after=None if error_after is None else max(error_after, 0),
            seed=seed,
            prompt_tokens=req.prompt_tokens(),
            started_ns=started_ns,
            loaded_ns=time.perf_counter_ns(),
        )

    def metrics(self, first_ns: int, end_ns: int, eval_count: int) -> dict[str, int]:
        values = {
            "total_duration": end_ns - self.started_ns,
            "load_duration": self.loaded_ns - self.started_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": first_ns - self.loaded_ns,
            "eval_count": eval_count,
            "eval_duration": end_ns - first_ns if eval_count else 0,
        }
        # Go marshals these with omitempty, so zero values are absent rather than 0.
        return {key: value for key, value in values.items() if value}


def _chunk_line_parts(req: _GenRequest) -> tuple[str, str, str]:
    """Text around created_at and the token in a content chunk, byte-identical to
    _go_json(_chunk_object(...)) + newline; pre-rendered because it runs once per token."""
    head = '{"model":' + _go_json(req.model) + ',"created_at":"'
    if req.kind == "chat":
        return head, '","message":{"role":"assistant","content":', '},"done":false}\n'
    return head, '","response":', ',"done":false}\n'


def _chunk_object(req: _GenRequest, text: str) -> dict[str, Any]:
    if req.kind == "chat":
        return {
            "model": req.model,
            "created_at": _now_stamp(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }
    return {"model": req.model, "created_at": _now_stamp(), "response": text, "done": False}


def _done_object(
    req: _GenRequest,
    text: str,
    done_reason: str,
    metrics: dict[str, int] | None = None,
    context: list[int] | None = None,
) -> dict[str, Any]:
    obj = _chunk_object(req, text)
    obj["done"] = True
    obj["done_reason"] = done_reason
    if context:
        obj["context"] = context
    if metrics:
        obj.update(metrics)
    return obj


def _final_object(req: _GenRequest, plan: _Plan, text: str, first_ns: int) -> dict[str, Any]:
    end_ns = time.perf_counter_ns()
    eval_count = len(plan.tokens)
    context = None
    if req.kind == "generate" and not req.raw:
        context = _context_ids(plan.seed, plan.prompt_tokens + eval_count)
    return _done_object(
        req, text, plan.done_reason, plan.metrics(first_ns, end_ns, eval_count), context
    )


def _error_text(count: int) -> str:
    return f"simulated failure after {count} tokens"


async def _stream(
    request: web.Request, req: _GenRequest, plan: _Plan, generation: _Generation
) -> web.StreamResponse:
    # Like Ollama (gin writes headers on the first chunk), nothing reaches the client before
    # the first token, so an early failure can still carry a real status code.
    await _sleep_ms(plan.first_delay_ms)
    first_ns = time.perf_counter_ns()
    if plan.error_after == 0:
        generation.end("failed")
        return _json_response({"error": _error_text(0)}, status=500)
    response = web.StreamResponse(headers={"Content-Type": _NDJSON_TYPE})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        head, middle, tail = _chunk_line_parts(req)
        for index, token in enumerate(_go_json(token) for token in plan.tokens):
            if index:
                if plan.token_delay_ms > 0:
                    await _sleep_ms(plan.token_delay_ms)
                elif index % 16 == 0:
                    # Without delays nothing else would suspend: let other streams (and the
                    # disconnect-driven cancellation) in now and then.
                    await asyncio.sleep(0)
            await response.write(f"{head}{_now_stamp()}{middle}{token}{tail}".encode())
            if index + 1 == plan.error_after:
                # Ollama's mid-stream failure: one error line, then the end, with no done chunk.
                line = _go_json({"error": _error_text(index + 1)}) + "\n"
                await response.write(line.encode())
                await response.write_eof()
                generation.end("failed")
                return response
        final = _final_object(req, plan, "", first_ns)
        await response.write((_go_json(final) + "\n").encode())
        await response.write_eof()
    except ConnectionResetError:
        # The peer vanished between two writes before aiohttp could cancel us; aiohttp's
        # finish_response tolerates the dead transport, so just stop quietly.
        generation.end("cancelled")
        return response
    generation.end("completed")
    return response


async def _respond_whole(req: _GenRequest, plan: _Plan, generation: _Generation) -> web.Response:
    produced = len(plan.tokens) if plan.error_after is None else plan.error_after
    before_ns = time.perf_counter_ns()
    await _sleep_ms(plan.first_delay_ms + plan.token_delay_ms * max(produced - 1, 0))
    # The whole answer is one sleep; split it back into prompt and eval time for the metrics.
    first_ns = min(before_ns + int(plan.first_delay_ms * 1e6), time.perf_counter_ns())
    if plan.error_after is not None:
        generation.end("failed")
        return _json_response({"error": _error_text(plan.error_after)}, status=500)
    generation.end("completed")
    return _json_response(_final_object(req, plan, "".join(plan.tokens), first_ns))


async def _handle_root(request: web.Request) -> web.Response:
    return _text_response("Ollama is running", 200, "text/plain; charset=utf-8")


async def _handle_version(request: web.Request) -> web.Response:
    return _json_response({"version": request.app[_STATE].settings.version})


async def _handle_tags(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    models = []
    # Configured order is newest first, so /api/tags' "most recently modified first" keeps it.
    for index, name in enumerate(state.settings.models):
        info = state.model_info(name)
        modified_ns = state.started_ns - index * 3_600_000_000_000
        models.append(
            {
                "name": name,
                "model": name,
                "modified_at": _rfc3339(modified_ns, utc=False),
                "size": info["size"],
                "digest": info["digest"],
                "details": info["details"],
            }
        )
    return _json_response({"models": models})


async def _handle_ps(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    now = time.time_ns()
    for name in [n for n, entry in state.loaded.items() if entry.expires_ns <= now]:
        del state.loaded[name]
    entries = sorted(state.loaded.values(), key=lambda entry: entry.expires_ns, reverse=True)
    models = []
    for entry in entries:
        info = state.model_info(entry.name)
        models.append(
            {
                "name": entry.name,
                "model": entry.name,
                "size": info["size"],
                "digest": info["digest"],
                "details": info["details"],
                "expires_at": _rfc3339(entry.expires_ns, utc=False),
                "size_vram": info["size"],
                "context_length": entry.context_length,
            }
        )
    return _json_response({"models": models})


async def _handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_STATS].as_dict())


async def _handle_reset(request: web.Request) -> web.Response:
    stats = request.app[SIM_STATS]
    stats.reset()
    return web.json_response(stats.as_dict())


@web.middleware
async def _count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[SIM_STATS].count_request(request.path)
    return await handler(request)


@web.middleware
async def _gin_style_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    # aiohttp's own "404: Not Found" bodies differ from gin's plain-text ones.
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _text_response("404 page not found", 404, "text/plain")
    except web.HTTPMethodNotAllowed:
        return _text_response("405 method not allowed", 405, "text/plain")


def create_app(settings: SimulatorSettings) -> web.Application:
    # Image payloads arrive base64-encoded in the JSON body, far beyond aiohttp's 1 MiB default.
    app = web.Application(
        middlewares=[_count_requests, _gin_style_errors], client_max_size=256 * 1024 * 1024
    )
    stats = SimulatorStats()
    app[SIM_STATS] = stats
    app[_STATE] = _SimState(settings=settings, stats=stats)
    app.router.add_get("/", _handle_root)
    app.router.add_get("/api/version", _handle_version)
    app.router.add_get("/api/tags", _handle_tags)
    app.router.add_get("/api/ps", _handle_ps, allow_head=False)
    app.router.add_post("/api/chat", _handle_chat)
    app.router.add_post("/api/generate", _handle_generate)
    app.router.add_get("/simulator/stats", _handle_stats, allow_head=False)
    app.router.add_post("/simulator/reset", _handle_reset)
    return app


# --------------------------------------------------------------------------- running


async def start(
    settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve on the running loop; the caller owns the runner and must await runner.cleanup()."""
    # handler_cancellation: a client disconnect must cancel the handler even while it sleeps
    # before the first token, as Ollama cancels the request context. A short shutdown_timeout
    # keeps cleanup from waiting a minute on streams that are still running.
    runner = web.AppRunner(
        create_app(settings), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimulatorSettings()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=11434, help="port to bind (default %(default)s)"
    )
    parser.add_argument(
        "--tokens", type=int, default=defaults.tokens, help="tokens per answer (%(default)s)"
    )
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=defaults.token_delay_ms,
        help="delay between tokens in ms (%(default)s)",
    )
    parser.add_argument(
        "--first-token-delay-ms",
        type=float,
        default=defaults.first_token_delay_ms,
        help="delay before the first token in ms (%(default)s)",
    )
    parser.add_argument(
        "--models",
        default=",".join(defaults.models),
        help="comma-separated model names to offer (%(default)s)",
    )


def _settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    return SimulatorSettings(
        tokens=args.tokens,
        token_delay_ms=args.token_delay_ms,
        first_token_delay_ms=args.first_token_delay_ms,
        models=models or SimulatorSettings().models,
    )


async def _serve_until_signalled(settings: SimulatorSettings, host: str, port: int) -> None:
    runner, bound = await start(settings, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no loop signal handlers
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    shown_host = f"[{host}]" if ":" in host else host
    logger.info("Ollama simulator listening on http://%s:%d", shown_host, bound)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    logger.info("Ollama simulator stopped")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; blocking."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signalled(_settings_from_args(args), args.host, args.port))
    return 0


if __name__ == "__main__":
    import sys

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _parser = argparse.ArgumentParser(description="Ollama-compatible simulator")
    add_cli_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
