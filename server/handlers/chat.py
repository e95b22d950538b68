"""POST /api/chat-optimized: the chat endpoint, as Server-Sent Events or one JSON answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from server import fast_hits
from server.chat_request import ChatRequest, parse_chat_request
from server.errors import BadRequest, GatewayError
from server.fast_hits import FAST_HITS
from server.gateway import Gateway
from server.handlers.body import parse_json, read_body, read_json
from server.handlers.caller import as_caller, caller
from server.handlers.fast_json import orjson_response
from server.handlers.frames import sse_frame
from server.keys import ACTIVE_STREAMS, CHAT_INFO, GATEWAY
from server.services.cache import CachedAnswer
from server.services.generation import Queued
from server.streams import Content

log = logging.getLogger("chatbot.http")
routes = web.RouteTableDef()

REPLAY_WRITE_BYTES = 8192

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # Tell nginx-style proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}


@routes.post("/api/chat-optimized")
async def chat_optimized(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    gateway = request.app[GATEWAY]
    raw = await read_body(request)
    accept = request.headers.get("Accept")
    cache_control = request.headers.get("Cache-Control")
    hits = request.app[FAST_HITS]
    memo = None
    info: dict[str, Any]
    if cache_control is None:  # no-cache and no-store go the whole way
        memo = HIT_RECIPE.memo_key(caller(request).name, raw, accept)
        reply = hits.reply(request, gateway, HIT_RECIPE, memo, started_ns)
        if reply is not None:
            return reply
    body = parse_json(raw)
    req = parse_chat_request(body, gateway.config, accept=accept, cache_control=cache_control)
    req = as_caller(req, request)
    info = {"request_id": req.request_id, "model": req.model}
    request[CHAT_INFO] = info
    if not req.stream:
        content, done = await gateway.complete(req)
        info.update(done.stats, cached=done.cached)
        if memo is not None and done.cached and not ("request_id" in body or "requestId" in body):
            hits.learn(gateway, memo, req)  # a body naming its own id goes the whole way
        return orjson_response(
            {
                "content": content,
                "done": True,
                "cached": done.cached,
                "request_id": req.request_id,
                "model": done.model,
                "stats": done.stats,
            },
            headers={"X-Cache": "HIT" if done.cached else "MISS"},
        )
    return await _stream(request, gateway, req, info)


def _whole_hit(model: str, entry: CachedAnswer) -> dict[str, Any]:
    """The whole answer of a hit, as chat_optimized writes it, with the request id a hole."""
    return {
        "content": entry.text,
        "done": True,
        "cached": True,
        "request_id": fast_hits.hole(0),
        "model": model,
        "stats": fast_hits.hit_done(model, entry).stats,
    }


# A hit from the memo (server/fast_hits.py; also answered on the wire, server/fast_wire.py).
HIT_RECIPE = fast_hits.Recipe(
    "chat-optimized",
    _whole_hit,
    lambda rid, started_ns: (fast_hits.text(rid),),
    id_header=False,
    keyed_on_accept=True,
)
HIT_RECIPES = {"/api/chat-optimized": HIT_RECIPE}


async def _stream(
    request: web.Request, gateway: Gateway, req: ChatRequest, info: dict[str, Any]
) -> web.StreamResponse:
    rid = req.request_id
    stream = await gateway.open(req)
    resp = web.StreamResponse(
        headers={**SSE_HEADERS, "X-Cache": "HIT" if stream.cached else "MISS"}
    )
    task = asyncio.current_task()
    assert task is not None
    active = request.app[ACTIVE_STREAMS]
    active.add(task)
    try:
        await resp.prepare(request)
        # aclosing: if the client goes away (write fails or the handler is cancelled), the
        # stream is closed at once, and with it the upstream generation.
        # A replayed cache hit is all there already: its frames go out in a few large writes
        # (one send per word was 69 % of a streamed hit's CPU). Each write holds whole frames
        # and stays well below loopback's 64 KiB segments, so the frontend's parser, which
        # splits each read on newlines without buffering, still sees whole lines.
        # A live client behind the generation (`more`) has several frames at once, too.
        batch = bytearray()
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, Content):
                    if event.text:  # this API carries the text, not reasoning or tool calls
                        batch += sse_frame(
                            {"content": event.text, "done": False, "request_id": rid}
                        )
                    held = stream.cached or event.more
                    if batch and not (held and len(batch) < REPLAY_WRITE_BYTES):
                        await resp.write(bytes(batch))
                        batch.clear()
                    continue
                if isinstance(event, Queued):
                    frame = {
                        "queued": True,
                        "position": event.position,
                        "estimated_wait_ms": event.estimated_wait_ms,
                        "done": False,
                        "request_id": rid,
                    }
                else:
                    info.update(event.stats, cached=event.cached)
                    frame = {
                        "content": "",
                        "done": True,
                        "cached": event.cached,
                        "request_id": rid,
                        "model": event.model,
                        "stats": event.stats,
                    }
                batch += sse_frame(frame)
                await resp.write(bytes(batch))
                batch.clear()
    except ConnectionResetError:
        info["error"] = "disconnected"
        return resp
    except asyncio.CancelledError:
        # The client left (then this write fails quietly), or the server is stopping or
        # restarting and its drain time ran out: tell the client why its answer ends here.
        ending = gateway.interruption(info)
        await _final_error(
            resp, {"error": ending.message, "code": ending.code, "done": True, "request_id": rid}
        )
        raise
    except GatewayError as exc:
        info["error"] = exc.code
        await _final_error(
            resp, {"error": exc.message, "code": exc.code, "done": True, "request_id": rid}
        )
        return resp
    except Exception:
        log.exception("chat stream %s failed", rid)
        info["error"] = "internal_error"
        await _final_error(
            resp,
            {
                "error": "internal error; see the server log",
                "code": "internal_error",
                "done": True,
                "request_id": rid,
            },
        )
        return resp
    finally:
        active.discard(task)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def _final_error(resp: web.StreamResponse, frame: dict[str, Any]) -> None:
    """The stream's last frame. The response has started: whatever goes wrong here must not
    reach the error middleware, which would write a second HTTP response into the stream."""
    try:
        await resp.write(sse_frame(frame))
        await resp.write_eof()
    except ConnectionResetError:
        pass
    except Exception:
        log.exception("could not end stream %s with its error frame", frame.get("request_id"))


MAX_BULK_ITEMS = 100


@routes.post("/api/chat-batch")
async def chat_batch(request: web.Request) -> web.Response:
    """Bulk job: `{"requests": [chat body, ...]}` → `{"results": [...]}` in request order."""
    gateway = request.app[GATEWAY]
    body = await read_json(request)
    items = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest(
            "requests: must be a non-empty list of chat bodies", code="invalid_requests"
        )
    if len(items) > MAX_BULK_ITEMS:
        raise BadRequest(
            f"requests: at most {MAX_BULK_ITEMS} items per batch, got {len(items)}",
            code="invalid_requests",
        )
    batch_id = f"b-{uuid.uuid4().hex[:12]}"
    parsed: list[ChatRequest | GatewayError] = []
    for i, item in enumerate(items):
        try:
            # Ids of their own: a bulk item never claims or collides with a chat ticket.
            item = (
                {k: v for k, v in item.items() if k not in ("request_id", "requestId")}
                if isinstance(item, dict)
                else item
            )
            parsed.append(
                as_caller(
                    parse_chat_request(item, gateway.config, request_id=f"{batch_id}-{i}"),
                    request,
                )
            )
        except GatewayError as exc:
            exc.message = f"requests[{i}].{exc.message}"
            parsed.append(exc)
    results = await gateway.bulk(parsed)
    return web.json_response(
        {"results": results}, dumps=lambda o: json.dumps(o, ensure_ascii=False)
    )
