"""The OpenAI-compatible API (/v1): translated to the same core as Ollama's native API, as Ollama's
own OpenAI layer translates to /api/chat, so one cache and one queue serve every protocol.

Requests map as Ollama maps them (max_tokens → num_predict, response_format → format,
reasoning_effort → think, image_url data URLs → images, tool results → tool messages); a field
the gateway cannot honour is a 400 naming it. Answers are the shapes the official SDK parses;
errors are `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from server import fast_hits
from server.chat_request import RANDOM, ChatRequest
from server.errors import BadRequest, GatewayError, NotFound
from server.fast_hits import FAST_HITS
from server.gateway import Gateway
from server.handlers.body import parse_json, read_body, read_json
from server.handlers.caller import as_caller, caller
from server.handlers.embed import embed_inputs, record
from server.handlers.fast_json import orjson_response
from server.handlers.frames import sse_frame
from server.handlers.host_fanout import union_tags
from server.handlers.native import REPLAY_WRITE_BYTES, parse_native, request_id
from server.json_checks import lone_surrogate_path
from server.keys import ACTIVE_STREAMS, CHAT_INFO, GATEWAY, note_error
from server.services.cache import CachedAnswer
from server.services.generation import Queued
from server.streams import Content, Done

routes = web.RouteTableDef()

FINGERPRINT = "fp_ollama"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_EFFORTS = ("low", "medium", "high")
# Accepted and not needed for the answer (no silent change to what the client gets).
_HARMLESS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- errors -----------------------------------------------------------------------------------


class InvalidParam(BadRequest):
    """A request field the gateway cannot take, named as OpenAI names it (`param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}", code="invalid_request_error")
        self.param = param


def openai_error_body(exc: GatewayError) -> dict[str, Any]:
    status = exc.upstream_status or exc.status
    kind = (
        "invalid_request_error"
        if status < 404 or status in (405, 408, 409, 413, 422)
        else "not_found_error"
        if status == 404
        else "rate_limit_error"
        if status == 429
        else "api_error"
    )
    return {
        "error": {
            "message": exc.upstream_text or exc.message,
            "type": kind,
            "param": getattr(exc, "param", None),
            "code": exc.code,
        }
    }


def openai_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            note_error(request, exc.code)
            headers = dict(exc.headers)
            return web.json_response(
                openai_error_body(exc), status=exc.upstream_status or exc.status, headers=headers
            )

    return wrapped


# -- requests ---------------------------------------------------------------------------------


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidParam(name, "must be a number")
            options[name] = value
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidParam("max_tokens", "must be a positive whole number")
        options["num_predict"] = limit
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidParam("stop", "must be a string or a list of strings")
        options["stop"] = stop
    return options


def _unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidParam("n", "only one choice per request is supported (n = 1)")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise InvalidParam("logprobs", "log probabilities are not supported through the gateway")
    if body.get("logit_bias"):
        raise InvalidParam("logit_bias", "is not supported by Ollama")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise InvalidParam("stream_options", "is only allowed with stream: true")


def _format(body: dict[str, Any]) -> Any:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidParam("response_format", "json_schema needs a schema object")
        return schema
    raise InvalidParam("response_format", "type must be text, json_object or json_schema")


def _content(value: Any, where: str) -> tuple[str, list[str]]:
    """A message's content as text and images (data URLs' base64, as Ollama takes them)."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise InvalidParam(where, "must be a string or a list of content parts")
    texts, images = [], []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
                raise InvalidParam(
                    f"{where}[{i}].image_url", "must be a data: URL (base64 image data)"
                )
            images.append(url.split(",", 1)[1])
        else:
            raise InvalidParam(f"{where}[{i}]", "must be a text or image_url part")
    return "\n".join(texts), images


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidParam("messages", "must be a non-empty list of messages")
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise InvalidParam(f"messages[{i}]", "must be an object with a role")
        role = "system" if msg["role"] == "developer" else msg["role"]
        text, images = _content(msg.get("content"), f"messages[{i}].content")
        message: dict[str, Any] = {"role": role, "content": text}
        if images:
            message["images"] = images
        if isinstance(msg.get("reasoning"), str) and msg["reasoning"]:
            message["thinking"] = msg["reasoning"]
        calls = []
        given = msg.get("tool_calls") or []
        if not isinstance(given, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) for c in given
        ):
            raise InvalidParam(f"messages[{i}].tool_calls", "must be a list of function calls")
        for call in given:
            function = call["function"]
            arguments = function.get("arguments") or "{}"
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                raise InvalidParam(
                    f"messages[{i}].tool_calls", "function.arguments must be JSON"
                ) from None
            tool_names[str(call.get("id"))] = str(function.get("name", ""))
            calls.append({"function": {"name": function.get("name"), "arguments": parsed}})
        if calls:
            message["tool_calls"] = calls
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id is not None:
                message["tool_call_id"] = call_id
                if str(call_id) in tool_names:
                    message["tool_name"] = tool_names[str(call_id)]
        out.append(message)
    return out


def _think(body: dict[str, Any]) -> Any:
    effort = body.get("reasoning_effort")
    if isinstance(body.get("reasoning"), dict):
        effort = body["reasoning"].get("effort", effort)
    if effort is None:
        return None
    if effort == "none":
        return False
    if effort not in _EFFORTS:
        raise InvalidParam("reasoning_effort", f"must be none, {', '.join(_EFFORTS)}")
    return effort


def native_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as Ollama's /api/chat body."""
    _unsupported(body)
    native: dict[str, Any] = {
        "model": body.get("model"),
        "messages": _messages(body.get("messages")),
    }
    options = _options(body)
    if options:
        native["options"] = options
    fmt = _format(body)
    if fmt is not None:
        native["format"] = fmt
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none", "required"):
        raise InvalidParam("tool_choice", "must be auto, none or required")
    if tools and choice != "none":
        if not isinstance(tools, list):
            raise InvalidParam("tools", "must be a list of function tools")
        native["tools"] = tools
    think = _think(body)
    if think is not None:
        native["think"] = think
    return native


def native_completion_body(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI (legacy) completion request as Ollama's /api/generate body."""
    _unsupported(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidParam("prompt", "must be a string (one prompt per request)")
    native: dict[str, Any] = {"model": body.get("model"), "prompt": prompt}
    options = _options(body)
    if options:
        native["options"] = options
    if isinstance(body.get("suffix"), str):
        native["suffix"] = body["suffix"]
    return native


def _parse(body: Any, kind: str, rid: str, endpoint: str) -> tuple[ChatRequest, bool, bool]:
    if not isinstance(body, dict):
        raise InvalidParam("body", "must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidParam("model", "is required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidParam("stream", "must be true or false")
    options = body.get("stream_options") or {}
    usage = bool(isinstance(options, dict) and options.get("include_usage"))
    native = native_chat_body(body) if kind == "chat" else native_completion_body(body)
    # stream and endpoint set as it is built: a dataclasses.replace after was ~5 % of a hit.
    req = parse_native(native, kind, rid, stream=stream, endpoint=endpoint)
    if req is None:
        raise InvalidParam("messages" if kind == "chat" else "prompt", "must not be empty")
    return req, stream, usage


# -- answers ----------------------------------------------------------------------------------


def _completion_id(prefix: str) -> str:
    # 80 random bits in hex (base64.b32encode was 8 % of a /v1 hit's CPU).
    return f"{prefix}-{RANDOM.take(10).hex()}"


def _finish_reason(done_reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id") or f"call_{i}",
                "index": function.get("index", i),
                "type": "function",
                "function": {
                    "name": function.get("name"),
                    "arguments": json.dumps(function.get("arguments") or {}),
                },
            }
        )
    return out


def _counts(done: Done) -> tuple[str, int, int]:
    if done.hit is not None:
        return done.hit.done_reason, done.hit.prompt_eval_count, done.hit.eval_count
    final = done.final or {}
    return (
        str(final.get("done_reason") or "stop"),
        int(final.get("prompt_eval_count") or 0),
        int(final.get("eval_count") or 0),
    )


def _whole(done: Done) -> tuple[str, str, tuple[dict[str, Any], ...]]:
    if done.hit is not None:
        return done.hit.text, done.hit.thinking, done.hit.tool_calls
    assert done.answer is not None
    return done.answer.text, done.answer.thinking, done.answer.tool_calls


def chat_completion(model: str, done: Done) -> dict[str, Any]:
    text, thinking, calls = _whole(done)
    done_reason, prompt, completion = _counts(done)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["reasoning"] = thinking
    if calls:
        message["tool_calls"] = openai_tool_calls(calls)
    return {
        "id": _completion_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish_reason(done_reason, bool(calls)),
            }
        ],
        "usage": _usage(prompt, completion),
    }


def text_completion(model: str, done: Done) -> dict[str, Any]:
    text, _, _ = _whole(done)
    done_reason, prompt, completion = _counts(done)
    return {
        "id": _completion_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": None,
                "finish_reason": _finish_reason(done_reason, False),
            }
        ],
        "usage": _usage(prompt, completion),
    }


def _chat_hit(model: str, entry: CachedAnswer) -> dict[str, Any]:
    """chat_completion for a hit, with its id and `created` holes (0 and 1)."""
    answer = chat_completion(model, fast_hits.hit_done(model, entry))
    answer.update(id=fast_hits.hole(0), created=fast_hits.hole(1))
    return answer


def _text_hit(model: str, entry: CachedAnswer) -> dict[str, Any]:
    answer = text_completion(model, fast_hits.hit_done(model, entry))
    answer.update(id=fast_hits.hole(0), created=fast_hits.hole(1))
    return answer


def _hit_values(prefix: str) -> Callable[[str, int], tuple[bytes, ...]]:
    return lambda rid, started_ns: (fast_hits.text(_completion_id(prefix)), fast_hits.now_s())


# Hits from the memo (server/fast_hits.py; also answered on the wire, server/fast_wire.py).
_HIT_RECIPES = {
    "openai-chat": fast_hits.Recipe(
        "openai-chat", _chat_hit, _hit_values("chatcmpl"), id_header=True
    ),
    "openai-completions": fast_hits.Recipe(
        "openai-completions", _text_hit, _hit_values("cmpl"), id_header=True
    ),
}
HIT_RECIPES = {
    "/v1/chat/completions": _HIT_RECIPES["openai-chat"],
    "/v1/completions": _HIT_RECIPES["openai-completions"],
}


# -- handlers ---------------------------------------------------------------------------------


@routes.post("/v1/chat/completions")
@openai_errors
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "chat", "openai-chat")


@routes.post("/v1/completions")
@openai_errors
async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "generate", "openai-completions")


async def _complete(request: web.Request, kind: str, endpoint: str) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    gateway = request.app[GATEWAY]
    raw = await read_body(request)
    hits = request.app[FAST_HITS]
    memo = None
    info: dict[str, Any]
    if "X-Request-Id" not in request.headers:  # an id of its own: the whole way, every time
        recipe = _HIT_RECIPES[endpoint]
        memo = recipe.memo_key(caller(request).name, raw, None)
        reply = hits.reply(request, gateway, recipe, memo, started_ns)
        if reply is not None:
            return reply
    body = parse_json(raw)
    rid = request_id(request)
    req, stream, usage = _parse(body, kind, rid, endpoint)
    req = as_caller(req, request)
    info = {"request_id": rid, "model": req.model}
    request[CHAT_INFO] = info
    if not stream:
        _, done = await gateway.complete(req)
        info.update(done.stats, cached=done.cached)
        if memo is not None and done.cached:
            hits.learn(gateway, memo, req)
        answer = (
            chat_completion(req.model, done) if kind == "chat" else text_completion(req.model, done)
        )
        return orjson_response(
            answer,
            headers={"X-Cache": "HIT" if done.cached else "MISS", "X-Request-Id": rid},
        )
    return await _stream(request, gateway, req, info, usage)


async def _stream(
    request: web.Request,
    gateway: Gateway,
    req: ChatRequest,
    info: dict[str, Any],
    usage: bool,
) -> web.StreamResponse:
    chat = req.kind == "chat"
    stream = await gateway.open(req)
    resp = web.StreamResponse(
        headers={
            **SSE_HEADERS,
            "X-Cache": "HIT" if stream.cached else "MISS",
            "X-Request-Id": req.request_id,
        }
    )
    base = {
        "id": _completion_id("chatcmpl" if chat else "cmpl"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": FINGERPRINT,
    }
    active = request.app[ACTIVE_STREAMS]
    current = asyncio.current_task()
    if current is not None:
        active.add(current)
    first = True
    calls = 0
    # A replayed hit is all there already: whole frames in a few large writes (one send per
    # frame was 70 % of a streamed hit), as /api/chat-optimized does. A live answer goes out
    # frame by frame, as generated, or several at once when the client is behind (`more`).
    batch = bytearray()
    await resp.prepare(request)
    try:
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, Queued):
                    # A comment line: keeps the connection alive, says where it stands; SDKs
                    # skip comments.
                    await resp.write(
                        f": queued position={event.position} "
                        f"eta_ms={event.estimated_wait_ms}\n\n".encode()
                    )
                    continue
                if isinstance(event, Content):
                    choice: dict[str, Any]
                    if chat:
                        delta: dict[str, Any] = {}
                        if first:
                            delta["role"] = "assistant"
                        if event.text or not (event.thinking or event.tool_calls):
                            delta["content"] = event.text
                        if event.thinking:
                            delta["reasoning"] = event.thinking
                        if event.tool_calls:
                            delta["tool_calls"] = openai_tool_calls(event.tool_calls)
                            calls += len(event.tool_calls)
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                    else:
                        choice = {"text": event.text, "index": 0, "finish_reason": None}
                    first = False
                    batch += sse_frame({**base, "choices": [choice]})
                    held = stream.cached or event.more
                    if not (held and len(batch) < REPLAY_WRITE_BYTES):
                        await resp.write(bytes(batch))
                        batch.clear()
                elif isinstance(event, Done):
                    info.update(event.stats, cached=event.cached)
                    done_reason, prompt, completion = _counts(event)
                    reason = _finish_reason(done_reason, calls > 0)
                    last: dict[str, Any] = (
                        {"index": 0, "delta": {}, "finish_reason": reason}
                        if chat
                        else {"text": "", "index": 0, "finish_reason": reason}
                    )
                    frames = sse_frame({**base, "choices": [last]})
                    if usage:
                        frames += sse_frame(
                            {**base, "choices": [], "usage": _usage(prompt, completion)}
                        )
                    await resp.write(bytes(batch) + frames + b"data: [DONE]\n\n")
                    batch.clear()
    except ConnectionResetError:
        info["error"] = "disconnected"
        return resp
    except asyncio.CancelledError:
        ending = gateway.interruption(info)
        with contextlib.suppress(Exception):
            await resp.write(
                sse_frame(
                    {
                        "error": {
                            "message": ending.message,
                            "type": "api_error",
                            "param": None,
                            "code": ending.code,
                        }
                    }
                )
            )
            await resp.write_eof()  # a whole response: the SDK raises the error, not a cut
        raise
    except GatewayError as exc:
        info["error"] = exc.code
        with contextlib.suppress(Exception):
            await resp.write(sse_frame(openai_error_body(exc)))
        return resp
    finally:
        if current is not None:
            active.discard(current)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


@routes.post("/v1/embeddings")
@openai_errors
async def embeddings(request: web.Request) -> web.Response:
    started = time.perf_counter_ns()
    gateway = request.app[GATEWAY]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidParam("body", "must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidParam("model", "is required")
    value = body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) for v in inputs):
        raise InvalidParam("input", "must be a string or a non-empty list of strings")
    if lone_surrogate_path(body) is not None:
        raise InvalidParam("input", "contains a lone UTF-16 surrogate; send valid Unicode text")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidParam("encoding_format", "must be float or base64")
    native: dict[str, Any] = {"model": model}
    if body.get("dimensions") is not None:
        native["dimensions"] = body["dimensions"]
    rid = request_id(request)
    info: dict[str, Any] = {"request_id": rid, "model": model}
    request[CHAT_INFO] = info
    vectors, prompt_tokens, cached = await embed_inputs(
        gateway, rid, model, inputs, native, caller(request).name
    )
    info["cached"] = cached
    record(
        gateway,
        rid,
        model,
        "openai-embed",
        cached=cached,
        started=started,
        user=caller(request).name,
    )
    data = [
        {"object": "embedding", "embedding": _encode(v, encoding), "index": i}
        for i, v in enumerate(vectors)
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
        headers={"X-Cache": "HIT" if cached else "MISS", "X-Request-Id": rid},
    )


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    # What the SDK asks for by default: little-endian float32, base64.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@routes.get("/v1/models")
@openai_errors
async def models(request: web.Request) -> web.Response:
    # Every host's models, once each (host_fanout's rule says whose details win).
    tags = await union_tags(request.app[GATEWAY])
    return web.json_response({"object": "list", "data": [_model(m) for m in tags]})


@routes.get("/v1/models/{model:.+}")
@openai_errors
async def model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    tags = await union_tags(request.app[GATEWAY])
    wanted = {name, f"{name}:latest"}
    for entry in tags:
        if entry.get("name") in wanted or entry.get("model") in wanted:
            return web.json_response(_model(entry, name))
    raise NotFound(f"model '{name}' not found", code="model_not_found")


def _model(entry: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    created = 0
    with contextlib.suppress(ValueError, TypeError):
        stamp = str(entry.get("modified_at", ""))
        created = int(datetime.fromisoformat(stamp[:26] + stamp[-6:]).timestamp())
    model_name = name or entry.get("name") or entry.get("model")
    owner = str(model_name).split("/")[0] if "/" in str(model_name) else "library"
    return {"id": model_name, "object": "model", "created": created, "owned_by": owner}
