"""GET /dashboard (the page and its files, no build step) and GET /api/dashboard/feed (SSE).

The feed sends the snapshot the tray dashboard reads, once a second, while the page is open,
with each Ollama host's state, load and models.
With API keys, a non-admin key sees only its own requests (queue and recent rows, per-user
figures), as it may only see and cancel its own tickets through /api/chat-queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server.auth import Identity
from server.gateway import Gateway
from server.handlers.caller import caller
from server.keys import ACTIVE_STREAMS, GATEWAY

routes = web.RouteTableDef()

PAGE_PREFIX = "/dashboard"
FEED_INTERVAL_S = 1.0
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_STATIC = resources.files("server.web") / "static"


def is_page(path: str) -> bool:
    """The page's own files: no data in them, so served without a key (the page asks for one)."""
    return path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/")


def _file(name: str) -> web.Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    resource = _STATIC / name
    if "/" in name or suffix not in _TYPES or not resource.is_file():
        raise web.HTTPNotFound()
    return web.Response(
        body=resource.read_bytes(),
        content_type=_TYPES[suffix],
        charset="utf-8",
        # The files change only with the gateway's version; revalidate so an upgrade shows.
        headers={"Cache-Control": "no-cache"},
    )


@routes.get(PAGE_PREFIX)
async def page(request: web.Request) -> web.Response:
    return _file("index.html")


@routes.get(PAGE_PREFIX + "/{name}")
async def static_file(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


def feed_frame(gateway: Gateway, who: Identity) -> dict[str, Any]:
    """One snapshot as the page shows it: what `who` may see."""
    snap = gateway.snapshot()
    recent = [
        {**dataclasses.asdict(r), "time": r.started + r.total_ms / 1000} for r in gateway.recent
    ]
    queue = gateway.queue_entries()
    if gateway.keys and not who.admin:
        recent = [r for r in recent if r["user"] == who.name]
        queue = [q for q in queue if q["user"] == who.name]
        snap["users"] = {k: v for k, v in snap["users"].items() if k == who.name}
    snap["recent"] = recent[-50:]
    snap["queue_entries"] = queue
    snap["viewer"] = {"name": who.name, "admin": who.admin or not gateway.keys}
    # Each Ollama host: url, state (and last error), running of max_concurrent, models
    # installed and loaded. Shown to every viewer, as the single Ollama's URL always was.
    snap.setdefault("hosts", gateway.hosts.as_list())
    return snap


@routes.get("/api/dashboard/feed")
async def feed(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    who = caller(request)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    task = asyncio.current_task()
    assert task is not None
    # A stop or restart ends the feed after its drain time; the page reconnects.
    active = request.app[ACTIVE_STREAMS]
    active.add(task)
    try:
        await resp.prepare(request)
        while True:
            body = json.dumps(feed_frame(gateway, who), separators=(",", ":"))
            await resp.write(b"data: " + body.encode() + b"\n\n")
            await asyncio.sleep(FEED_INTERVAL_S)
    except ConnectionResetError:
        return resp  # the page closed
    finally:
        active.discard(task)


@web.middleware
async def browser_root(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A browser asking `/` for a page goes to the dashboard; Ollama's clients (which never ask
    for text/html) keep getting Ollama's answer to `GET /` and `HEAD /`."""
    if (
        request.method == "GET"
        and request.path == "/"
        and "text/html" in request.headers.get("Accept", "")
    ):
        raise web.HTTPFound(PAGE_PREFIX)
    return await handler(request)
