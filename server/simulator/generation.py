"""Deterministic answer text and its byte-exact Go-style JSON/NDJSON rendering."""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.simulator.settings import SimulatorSettings
from server.simulator.structured import tool_call, value_for
from server.simulator.validation import _ApiError, _float_option, _GenRequest, _int_option

# --------------------------------------------------------------------------- wire helpers

_JSON_TYPE = "application/json; charset=utf-8"
_NDJSON_TYPE = "application/x-ndjson"

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


# A Go string holds no lone UTF-16 surrogate (its JSON decoder makes one U+FFFD): a request
# that sent one gets U+FFFD back, never an encoding error.
_GO_ESCAPES.update({code: "\ufffd" for code in range(0xD800, 0xE000)})


def _go_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


def _json_response(obj: Any, status: int = 200, content_type: str = _JSON_TYPE) -> web.Response:
    # gin's c.JSON adds "; charset=utf-8" unless a handler set the type first, as Ollama's
    # progress streams do ("application/json").
    return web.Response(
        body=_go_json(obj).encode(), status=status, headers={"Content-Type": content_type}
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


# --------------------------------------------------------------------------- answer plan

# Thinking tokens per level; true means Ollama's default level, medium.
_THINK_TOKENS = {"low": 4, "medium": 8, "high": 12, "max": 16}


def _think_count(think: bool | str | None) -> int:
    if think is True:
        return _THINK_TOKENS["medium"]
    return _THINK_TOKENS.get(think, 0) if isinstance(think, str) else 0


def _format_answer(fmt: Any, seed: bytes, count: int) -> str | None:
    """The JSON text a format-constrained answer carries, or None for a plain-text answer."""
    if fmt == "json":
        return _go_json({"answer": "".join(_make_tokens(seed, count))})
    if isinstance(fmt, dict):
        return _go_json(value_for(fmt, random.Random(b"format" + seed), _WORDS))
    return None


def _json_pieces(text: str) -> list[str]:
    # Token-sized pieces that join back to the exact text: a word or one other character,
    # each with the whitespace before it.
    return re.findall(r"\s*(?:\w+|[^\w\s])", text) or [text]


def check_format(fmt: Any) -> None:
    """Ollama's runner refuses a format that is neither "json" nor a schema object."""
    if fmt is None or fmt in ("", "json") or isinstance(fmt, dict):
        return
    raw = json.dumps(_go_json(fmt), ensure_ascii=False)
    raise _ApiError(500, f'invalid format: {raw}; expected "json" or a valid JSON Schema object')


@dataclass
class _Plan:
    """Everything a generation will emit, decided before the first token."""

    tokens: list[str]  # content, one piece per chunk
    done_reason: str
    first_delay_ms: float
    token_delay_ms: float
    error_after: int | None
    seed: bytes
    prompt_tokens: int
    started_ns: int
    loaded_ns: int
    thinking: list[str] = field(default_factory=list)  # streamed before the content
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # replaces the content
    tool_tokens: int = 0

    @classmethod
    def build(
        cls, settings: SimulatorSettings, req: _GenRequest, model: str, started_ns: int
    ) -> _Plan:
        """`model` identifies the weights: the model's digest, so a copy answers alike."""
        opts = req.options
        count = _int_option(opts, "sim_tokens")
        count = settings.tokens if count is None else max(count, 0)
        seed = req.seed_material(model)
        thinking = _make_tokens(b"thinking" + seed, _think_count(req.think))
        tool_calls: list[dict[str, Any]] = []
        tool_tokens = 0
        tokens: list[str] = []
        if req.calls_tool:
            tool_calls = [tool_call(req.tools, req.messages, b"tool" + seed, _WORDS)]
            tool_tokens = max(1, len(_go_json(tool_calls[0]["function"])) // 4)
        else:
            answer = _format_answer(req.format, seed, count)
            tokens = _make_tokens(seed, count) if answer is None else _json_pieces(answer)
        # num_predict caps everything generated, thinking first.
        done_reason = "stop"
        budget = _int_option(opts, "num_predict")
        if budget is not None and budget >= 0:
            if len(thinking) > budget:
                thinking, tokens, tool_calls, done_reason = thinking[:budget], [], [], "length"
            budget -= len(thinking)
            if tool_calls and tool_tokens > budget:
                tool_calls, done_reason = [], "length"
            elif len(tokens) > budget:
                tokens, done_reason = tokens[:budget], "length"
        steps = len(thinking) + (1 if tool_calls else len(tokens))
        first = _float_option(opts, "sim_first_token_delay_ms")
        delay = _float_option(opts, "sim_token_delay_ms")
        error_after = _int_option(opts, "sim_error_after")
        if error_after is not None and error_after > steps:
            error_after = None  # the answer ends before the simulated failure would happen
        return cls(
            tokens=tokens,
            done_reason=done_reason,
            first_delay_ms=settings.first_token_delay_ms if first is None else first,
            token_delay_ms=settings.token_delay_ms if delay is None else delay,
            error_after=None if error_after is None else max(error_after, 0),
            seed=seed,
            prompt_tokens=req.prompt_tokens(),
            started_ns=started_ns,
            loaded_ns=time.perf_counter_ns(),
            thinking=thinking,
            tool_calls=tool_calls,
            tool_tokens=tool_tokens if tool_calls else 0,
        )

    @property
    def steps(self) -> int:
        """Chunks before the done chunk: thinking pieces, then content pieces or one tool call."""
        return len(self.thinking) + (1 if self.tool_calls else len(self.tokens))

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.tokens) + self.tool_tokens

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


def _chunk_object(
    req: _GenRequest,
    text: str,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A chunk in Go's field order; thinking and tool_calls only when non-empty (omitempty)."""
    obj: dict[str, Any] = {"model": req.model, "created_at": _now_stamp()}
    if req.kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        obj["message"] = message
    else:
        obj["response"] = text
        if thinking:
            obj["thinking"] = thinking
    obj["done"] = False
    return obj


def _done_object(
    req: _GenRequest,
    text: str,
    done_reason: str,
    metrics: dict[str, int] | None = None,
    context: list[int] | None = None,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    obj = _chunk_object(req, text, thinking, tool_calls)
    obj["done"] = True
    obj["done_reason"] = done_reason
    if context:
        obj["context"] = context
    if metrics:
        obj.update(metrics)
    return obj


def _final_object(
    req: _GenRequest, plan: _Plan, first_ns: int, *, whole: bool = False
) -> dict[str, Any]:
    """The done chunk; `whole` makes it the single non-streamed answer, carrying the text,
    the thinking and the tool calls that the stream spread over its chunks."""
    end_ns = time.perf_counter_ns()
    eval_count = plan.eval_count
    context = None
    if req.kind == "generate" and not req.raw:
        # What the request sent, then this turn: passing it back continues the conversation.
        context = req.context + _context_ids(plan.seed, plan.prompt_tokens + eval_count)
    metrics = plan.metrics(first_ns, end_ns, eval_count)
    if not whole:
        return _done_object(req, "", plan.done_reason, metrics, context)
    return _done_object(
        req,
        "".join(plan.tokens),
        plan.done_reason,
        metrics,
        context,
        thinking="".join(plan.thinking),
        tool_calls=plan.tool_calls,
    )


def _error_text(count: int) -> str:
    return f"simulated failure after {count} tokens"
