"""Reading a request's JSON body within its limits: size (413, said up front where the client
announced it), time (408 when it stops arriving), and shape (strict JSON, bounded nesting)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from server.errors import BadRequest, PayloadTooLarge, RequestTimeout
from server.json_checks import MAX_DEPTH, too_deep
from server.keys import GATEWAY


def body_too_large(limit_kb: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit_kb} KiB ([server].max_body_kb)")


def check_announced_size(request: web.Request) -> None:
    """A Content-Length over the limit is refused before a byte of the body is read."""
    limit_kb = request.app[GATEWAY].config.server.max_body_kb
    if request.content_length is not None and request.content_length > limit_kb * 1024:
        raise body_too_large(limit_kb)


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: say no at once to a body that would be refused anyway, rather
    than invite the client to send it (aiohttp's default says "continue" to everything).
    Runs before the middlewares, so it renders its own error. Model uploads (/api/blobs) are
    not limited: they stream through to Ollama."""
    if request.path.startswith("/api/blobs/"):
        await _default_expect_handler(request)
        return None
    try:
        check_announced_size(request)
    except PayloadTooLarge as exc:
        return web.json_response(exc.body(), status=exc.status, headers={"Connection": "close"})
    await _default_expect_handler(request)
    return None


async def read_body(request: web.Request) -> bytes:
    config = request.app[GATEWAY].config.server
    check_announced_size(request)
    limit = config.max_body_kb * 1024
    pause = config.body_timeout_seconds
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (a small JSON request usually does): no
        # waiting, so no timer (one per request showed in profiles of cache hits).
        whole = content.read_nowait()
        if len(whole) > limit:
            raise body_too_large(config.max_body_kb)
        return whole
    body = bytearray()
    while True:
        try:
            # A pause, not a total: a slow link that keeps sending is served.
            async with asyncio.timeout(pause):
                chunk = await content.readany()
        except TimeoutError:
            announced = request.content_length
            expected = f" of the {announced} announced" if announced is not None else ""
            raise RequestTimeout(
                f"request body stopped arriving: nothing for {pause:g} s after "
                f"{len(body)} bytes{expected} ([server].body_timeout_seconds)",
                headers={"Connection": "close"},
            ) from None
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise body_too_large(config.max_body_kb)


async def read_json(request: web.Request) -> Any:
    return parse_json(await read_body(request))


def parse_json(raw: bytes) -> Any:
    """The body as JSON: strict (no NaN), bounded nesting, a 400 saying what is wrong."""
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON object", code="invalid_json")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:  # nested past the interpreter's own limit
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    # Nesting needs an opening bracket per level: a body with few cannot be too deep, and
    # counting bytes is cheaper than walking the value (which showed in profiles of hits).
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and too_deep(value):
        raise _too_deep()
    return value


def _too_deep() -> BadRequest:
    return BadRequest(
        f"request body nests arrays or objects more than {MAX_DEPTH} levels deep",
        code="invalid_json",
    )


def _no_constant(name: str) -> Any:
    # Python's json takes NaN and Infinity; JSON (and Ollama) does not.
    raise ValueError(f"{name} is not a JSON value (use a number or null)")
