"""GET /health, and GET/POST /api/cache-stats: the gateway's figures, flush and reset."""

from __future__ import annotations

from aiohttp import web

from server.errors import BadRequest
from server.handlers.body import read_json
from server.json_checks import quote
from server.keys import GATEWAY

routes = web.RouteTableDef()

ACTIONS = ("clear", "reset_stats")


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    # 200 while the gateway works; "degraded" says Ollama is the part that is down.
    return web.json_response(await request.app[GATEWAY].health())


@routes.get("/api/cache-stats")
async def cache_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[GATEWAY].snapshot())


@routes.post("/api/cache-stats")
async def cache_action(request: web.Request) -> web.Response:
    body = await read_json(request)
    action = body.get("action") if isinstance(body, dict) else None
    gateway = request.app[GATEWAY]
    if action == "clear":
        # Every tier: `cleared_entries` is RAM's (as before tiers); `tiers` says, per tier, how
        # many went or why it could not be cleared.
        tiers = await gateway.flush_tiers()
        return web.json_response(
            {"success": True, "action": action, "cleared_entries": tiers["memory"], "tiers": tiers}
        )
    if action == "reset_stats":
        gateway.reset_stats()
        return web.json_response({"success": True, "action": action})
    raise BadRequest(
        f"action: must be one of {', '.join(ACTIONS)}, got {quote(action)}", code="invalid_action"
    )
