"""GET /openapi.json: the OpenAPI 3.1 document of the gateway's own endpoints."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

routes = web.RouteTableDef()

# Read once, at import: the document is a file shipped with the package (server/openapi.json),
# and a handler must not do file I/O on the event loop.
DOCUMENT = resources.files("server").joinpath("openapi.json").read_bytes()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENT, content_type="application/json", charset="utf-8")
