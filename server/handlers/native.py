"""Ollama's own /api/chat and /api/generate, through the gateway's core: cached, queued and
shared like /api/chat-optimized, and on the wire exactly as Ollama answers (NDJSON lines as they
are generated, one JSON object for `stream: false`, errors as `{"error": "..."}`).

A load or unload request (no messages or prompt) is relayed as it is: never cached or shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from server import fast_hits
from server.chat_request import ChatRequest, bad_field, new_request_id, surrogate_path
from server.errors import BadRequest, GatewayError
from server.fast_hits import FAST_HITS
from server.gateway import Gateway
from server.handlers.body import parse_json, read_body
from server.handlers.caller import as_caller, caller
from server.handlers.fast_json import orjson_response
from server.keys import ACTIVE_STREAMS, CHAT_INFO, GATEWAY, note_error
from server.services.cache import CachedAnswer
from server.streams import Content, Done

log = logging.getLogger("chatbot.http")
routes = web.RouteTableDef()

NDJSON = "application/x-ndjson"
REPLAY_WRITE_BYTES = 8192
# Fields that do not change the answer: left out of the cache key.
_NOT_IN_KEY = ("model", "messages", "options", "format", "stream", "keep_alive")
_THINK_LEVELS = ("low", "medium", "high", "max")
_MAX_REQUEST_ID = 128
_EMPTY: tuple[Any, ...] = (None, "", [], {})
_TYPE_NAMES = {
    str: "a string",
    dict: "an object",
    list: "a list",
    bool: "true or false",
    int: "a number",
    float: "a number",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def ollama_error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """Ollama's error shape: `{"error": "..."}` and nothing else."""
    return web.json_response({"error": text}, status=status, headers=headers)


def error_text(exc: GatewayError) -> str:
    # Ollama's own words where it said something (the CLI pulls on "model 'x' not found").
    return exc.upstream_text or exc.message


def native_errors(handler: Handler) -> Handler:
    """Errors before any output in Ollama's shape, with Ollama's status where it gave one."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            note_error(request, exc.code)
            return ollama_error(exc.upstream_status or exc.status, error_text(exc), exc.headers)

    return wrapped


_second = [0, ""]  # the last second stamped, and its text up to the seconds


def created_at() -> str:
    """Ollama's RFC 3339 UTC stamp: `2026-03-14T09:26:53.589790Z`. The date and time are
    formatted once a second (datetime.isoformat per call was 7 % of a native hit's CPU)."""
    second, ns = divmod(time.time_ns(), 1_000_000_000)
    if second != _second[0]:
        _second[:] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{ns // 1000:06d}Z"


def request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id")
    if given is None:
        return new_request_id()
    if not given or len(given) > _MAX_REQUEST_ID or not given.isprintable():
        raise BadRequest(
            f"X-Request-Id: must be 1..{_MAX_REQUEST_ID} printable characters",
            code="invalid_request_id",
        )
    return given


# -- parsing ----------------------------------------------------------------------------------


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "options": (dict,),
    "format": (str, dict),
    "keep_alive": (str, int, float),
    "tools": (list,),
    "images": (list,),
    "context": (list,),
    "prompt": (str,),
    "suffix": (str,),
    "system": (str,),
    "template": (str,),
    "raw": (bool,),
}


def _check_types(body: dict[str, Any], kind: str) -> None:
    """The types Ollama's decoder insists on, as a 400 naming the field."""
    for name, types in _FIELD_TYPES.items():
        value = body.get(name)
        wrong_bool = isinstance(value, bool) and bool not in types
        if value is not None and (not isinstance(value, types) or wrong_bool):
            wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise bad_field(name, f"must be {wanted}, got {type(value).__name__}")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_field("stream", "must be true or false")
    think = body.get("think")
    if think is not None and not (isinstance(think, bool) or think in _THINK_LEVELS):
        raise bad_field("think", f"must be true, false or one of {', '.join(_THINK_LEVELS)}")
    if kind == "chat":
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise bad_field("messages", "must be a list of {role, content}")
        for i, message in enumerate(messages or []):
            if not isinstance(message, dict):
                raise bad_field(f"messages[{i}]", "must be an object with role and content")
            if not isinstance(message.get("role"), str):
                raise bad_field(f"messages[{i}].role", "must be a string")
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise bad_field(f"messages[{i}].content", "must be a string")


def _key_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the cache key sees it: role, content and what else it carries, without the
    empty fields a client may or may not send (`"images": []`)."""
    out = {"role": str(message["role"]).lower(), "content": message.get("content") or ""}
    for name, value in message.items():
        if name not in ("role", "content") and value not in (None, "", [], {}):
            out[name] = value
    return out


def parse_native(
    body: Any, kind: str, rid: str, *, stream: bool | None = None, endpoint: str | None = None
) -> ChatRequest | None:
    """A ChatRequest for the core, or None for a load/unload request (to relay as it is).
    `stream` and `endpoint`, when given, override the body's and the kind (the /v1 API's)."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    where = surrogate_path(body)
    if where is not None:
        raise bad_field(where, "contains a lone UTF-16 surrogate; send valid Unicode text")
    _check_types(body, kind)
    model = body.get("model")
    if not model or not model.strip():
        raise BadRequest("model is required", code="invalid_model")
    if kind == "chat" and not body.get("messages"):
        return None
    if kind == "generate" and not body.get("prompt") and not body.get("images"):
        return None
    messages = tuple(_key_message(m) for m in body.get("messages") or ())
    fmt = body.get("format") or None
    # Empty values are as good as absent (the Python client sends `"tools": []`).
    extra = {k: v for k, v in body.items() if k not in _NOT_IN_KEY and v not in _EMPTY}
    return ChatRequest(
        messages=messages,
        model=model.strip(),
        request_id=rid,
        # Absent or null means streaming, as in Ollama.
        stream=body.get("stream") is not False if stream is None else stream,
        options=body.get("options") or None,
        format=fmt,
        kind=kind,
        native={**body, "stream": True},
        key_extra=extra or None,
        endpoint=endpoint or kind,
    )


# -- answers ----------------------------------------------------------------------------------


def _metrics(final: dict[str, Any]) -> dict[str, Any]:
    # Ollama omits a zero metric rather than writing 0.
    return {k: v for k, v in final.items() if v}


def chunk_of(kind: str, model: str, event: Content) -> dict[str, Any]:
    """A replayed piece as Ollama would have streamed it."""
    if kind == "generate":
        chunk: dict[str, Any] = {"model": model, "created_at": created_at(), "response": event.text}
        if event.thinking:
            chunk["thinking"] = event.thinking
    else:
        message: dict[str, Any] = {"role": "assistant", "content": event.text}
        if event.thinking:
            message["thinking"] = event.thinking
        if event.tool_calls:
            message["tool_calls"] = list(event.tool_calls)
        chunk = {"model": model, "created_at": created_at(), "message": message}
    chunk["done"] = False
    return chunk


def final_of_hit(kind: str, model: str, hit: CachedAnswer, started_ns: int) -> dict[str, Any]:
    """The done chunk of a replay: the stored counts, this reply's own durations."""
    elapsed = max(1, time.perf_counter_ns() - started_ns)
    chunk: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind == "generate":
        chunk["response"] = ""
    else:
        chunk["message"] = {"role": "assistant", "content": ""}
    chunk.update(done=True, done_reason=hit.done_reason)
    chunk.update(
        _metrics(
            {
                "total_duration": elapsed,
                "prompt_eval_count": hit.prompt_eval_count,
                "eval_count": hit.eval_count,
                "eval_duration": elapsed,
            }
        )
    )
    if kind == "generate" and hit.context is not None:
        chunk["context"] = list(hit.context)
    return chunk


def whole_answer(kind: str, model: str, done: Done, started_ns: int) -> dict[str, Any]:
    """`stream: false`: one object shaped like the final chunk, with the whole text."""
    if done.hit is not None:
        final = final_of_hit(kind, model, done.hit, started_ns)
        text, thinking, calls = done.hit.text, done.hit.thinking, done.hit.tool_calls
    else:
        final = dict(done.final or {})
        answer = done.answer
        assert answer is not None
        text, thinking, calls = answer.text, answer.thinking, answer.tool_calls
    if kind == "generate":
        final["response"] = text
        if thinking:
            final["thinking"] = thinking
    else:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = list(calls)
        final["message"] = message
    final["model"] = model
    return final


def _whole_hit(kind: str) -> fast_hits.Build:
    """whole_answer for a hit, with its time stamp and durations holes (0, 1 and 2)."""

    def build(model: str, entry: CachedAnswer) -> dict[str, Any]:
        answer = whole_answer(kind, model, fast_hits.hit_done(model, entry), 0)
        answer.update(
            created_at=fast_hits.hole(0),
            total_duration=fast_hits.hole(1),
            eval_duration=fast_hits.hole(2),
        )
        return answer

    return build


def _hit_values(rid: str, started_ns: int) -> tuple[bytes, ...]:
    elapsed = fast_hits.number(max(1, time.perf_counter_ns() - started_ns))
    return fast_hits.text(created_at()), elapsed, elapsed


# Hits from the memo (server/fast_hits.py; also answered on the wire, server/fast_wire.py).
_HIT_RECIPES = {
    kind: fast_hits.Recipe(kind, _whole_hit(kind), _hit_values, id_header=True)
    for kind in ("chat", "generate")
}
HIT_RECIPES = {f"/api/{kind}": recipe for kind, recipe in _HIT_RECIPES.items()}


class TextLines:
    """A replay's text chunks from a template: the model and one `created_at` per answer are
    encoded once, each piece of text on its own (a json.dumps of the whole nested chunk and
    a fresh timestamp per word were most of a streamed hit's cost)."""

    def __init__(self, kind: str, model: str) -> None:
        head = json.dumps(
            {"model": model, "created_at": created_at()}, ensure_ascii=False, separators=(",", ":")
        )[:-1]
        if kind == "generate":
            self._start = (head + ',"response":').encode()
            self._end = b',"done":false}\n'
        else:
            self._start = (head + ',"message":{"role":"assistant","content":').encode()
            self._end = b'},"done":false}\n'

    def line(self, text: str) -> bytes:
        return self._start + json.dumps(text, ensure_ascii=False).encode() + self._end


def _line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line (a done line, a replayed piece with reasoning or tool calls); orjson,
    json.dumps for what orjson refuses (an integer past 64 bits). A live piece is not encoded
    here: Ollama's own line is relayed."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# -- handlers ---------------------------------------------------------------------------------


@routes.post("/api/chat")
@native_errors
async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


@routes.post("/api/generate")
@native_errors
async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "generate")


async def _generate(request: web.Request, kind: str) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    gateway = request.app[GATEWAY]
    raw = await read_body(request)
    hits = request.app[FAST_HITS]
    memo = None
    info: dict[str, Any]
    if "X-Request-Id" not in request.headers:  # an id of its own: the whole way, every time
        recipe = _HIT_RECIPES[kind]
        memo = recipe.memo_key(caller(request).name, raw, None)
        reply = hits.reply(request, gateway, recipe, memo, started_ns)
        if reply is not None:
            return reply
    body = parse_json(raw)
    rid = request_id(request)
    parsed = parse_native(body, kind, rid)
    if parsed is None:
        # Load or unload: relayed, never cached or shared.
        return await relay_json(gateway, f"/api/{kind}", {**body, "stream": False})
    req = as_caller(parsed, request)
    info = {"request_id": rid, "model": req.model}
    request[CHAT_INFO] = info
    if not req.stream:
        _, done = await gateway.complete(req)
        info.update(done.stats, cached=done.cached)
        if memo is not None and done.cached:
            hits.learn(gateway, memo, req)
        return orjson_response(
            whole_answer(kind, req.model, done, started_ns),
            headers={"X-Cache": "HIT" if done.cached else "MISS", "X-Request-Id": rid},
        )
    return await _stream(request, gateway, req, info, started_ns)


async def relay_json(gateway: Gateway, path: str, body: dict[str, Any]) -> web.Response:
    """A request Ollama answers with one JSON object (load, unload, an empty embedding),
    relayed as it answered: never cached or shared.

    With several hosts, a load (or an empty embedding) goes where routing would send the
    model's requests, so they find it loaded; an unload (`keep_alive` 0) goes to every host
    that has the model loaded, and the answer is the first one's."""
    hosts = gateway.hosts
    model = str(body.get("model") or "")
    targets = [h for h in hosts.up() if h.has_loaded(model)] if _unloads(body) else []
    if not targets:
        chosen = hosts.pick(model) or next(iter(hosts.candidates(model)), None)
        targets = [chosen] if chosen is not None else hosts.hosts[:1]
    answers = [await h.client.send("POST", path, json_body=body) for h in targets]
    status, content_type, data = answers[0]
    return web.Response(
        status=status,
        body=data,
        content_type=content_type.split(";")[0] or "application/json",
        charset="utf-8",
        headers={"X-Cache": "MISS"},
    )


def _unloads(body: dict[str, Any]) -> bool:
    """Whether a load/unload call asks Ollama to unload (`keep_alive` 0, as a number or text)."""
    value = body.get("keep_alive")
    return value is not None and str(value).strip() in ("0", "0s", "0m", "0h", "0.0")


async def _stream(
    request: web.Request,
    gateway: Gateway,
    req: ChatRequest,
    info: dict[str, Any],
    started_ns: int,
) -> web.StreamResponse:
    stream = await gateway.open(req)
    resp = web.StreamResponse(
        headers={
            "Content-Type": NDJSON,
            "X-Cache": "HIT" if stream.cached else "MISS",
            "X-Request-Id": req.request_id,
            "X-Accel-Buffering": "no",
        }
    )
    # Registered so a restart lets it finish (or ends it with a last line), as chat streams.
    active = request.app[ACTIVE_STREAMS]
    current = asyncio.current_task()
    if current is not None:
        active.add(current)
    batch = bytearray()
    replay = TextLines(req.kind, req.model)
    try:
        # Nothing is written while the request waits in line: a native stream has no queue
        # lines (clients json.loads every line as a chunk). Headers go with the first line.
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, Content):
                    if event.line is not None:
                        batch += event.line  # Ollama's line as it came
                        batch += b"\n"
                    elif event.thinking or event.tool_calls:
                        batch += _line(chunk_of(req.kind, req.model, event))
                    else:
                        batch += replay.line(event.text)
                    # A replay, or a live client behind the generation, has more at once:
                    # whole lines in a few large writes rather than one send per line.
                    held = stream.cached or event.more
                    if held and len(batch) < REPLAY_WRITE_BYTES:
                        continue
                elif isinstance(event, Done):
                    info.update(event.stats, cached=event.cached)
                    if event.hit is not None:
                        final = final_of_hit(req.kind, req.model, event.hit, started_ns)
                    else:
                        final = event.final or {"model": req.model, "done": True}
                    batch += _line(final)
                else:
                    continue  # Queued: silence
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(bytes(batch))
                batch.clear()
    except ConnectionResetError:
        info["error"] = "disconnected"
        return resp
    except asyncio.CancelledError:
        ending = gateway.interruption(info)
        if resp.prepared:
            await _last_line(resp, {"error": ending.message})
        raise
    except GatewayError as exc:
        info["error"] = exc.code
        if not resp.prepared:
            raise  # before any output: Ollama's status and {"error"}
        await _last_line(resp, {"error": error_text(exc)})
        return resp
    finally:
        if current is not None:
            active.discard(current)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def _last_line(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    """After output started, an error is one last line, as Ollama writes it."""
    try:
        await resp.write(_line(obj))
        await resp.write_eof()
    except ConnectionResetError:
        pass
    except Exception:  # the stream is already answered: never a second response
        log.exception("could not end a native stream")
