"""GET /health: is the gateway serving, and can it reach Ollama."""

from __future__ import annotations

from aiohttp import web

from server.keys import GATEWAY

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    # 200 while the gateway works; "degraded" says Ollama is the part that is down.
    return web.json_response(await request.app[GATEWAY].health())
