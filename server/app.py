"""The aiohttp application factory and its middlewares: access log, errors, Host guard, CORS."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server import metrics
from server.auth import as_user, host_allowed, presented_key, unkeyed_caller
from server.errors import GatewayError
from server.fast_hits import FAST_HITS, FastHits
from server.fast_wire import WIRE_HITS, WireHits
from server.gateway import SERVER_RESTART, SHUTDOWN, Gateway
from server.handlers import chat, embed, native, ollama_relay, openai, openapi, queue, stats
from server.handlers.body import expect_handler
from server.keys import ACTIVE_STREAMS, CHAT_INFO, GATEWAY, IDENTITY, note_error
from server.logs import log_chat
from server.web import dashboard

log = logging.getLogger("chatbot.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Content-Type, Accept, Cache-Control, Authorization, X-API-Key"
CORS_EXPOSE = "X-Cache, Retry-After"


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        client_max_size=gateway.config.server.max_body_kb * 1024,
        middlewares=[
            access_log,
            json_errors,
            guards,
            dashboard.browser_root,
        ],
    )
    app[GATEWAY] = gateway
    app[FAST_HITS] = FastHits()
    # Hits for bodies the memo knows, answered before aiohttp parses them (GuardedRunner).
    recipes = {**chat.HIT_RECIPES, **native.HIT_RECIPES, **openai.HIT_RECIPES}
    app[WIRE_HITS] = WireHits(gateway, app[FAST_HITS], recipes)
    app[ACTIVE_STREAMS] = set()
    app.on_response_prepare.append(_add_cors_headers)
    for table in (
        chat.routes,
        metrics.routes,
        stats.routes,
        queue.routes,
        native.routes,
        embed.routes,
        ollama_relay.routes,
        openai.routes,
        openapi.routes,
        dashboard.routes,
    ):
        for route in table:
            assert isinstance(route, web.RouteDef)
            # Every route answers `Expect: 100-continue` with a 413 up front when the announced
            # body is over the limit, rather than inviting the client to send it.
            app.router.add_route(
                route.method, route.path, route.handler, expect_handler=expect_handler
            )
    return app


def json_error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status, headers=headers)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        resp = await handler(request)
    except asyncio.CancelledError:
        # The client went away and aiohttp cancelled the handler, or a restart or stop ended
        # the stream (its handler said so in `error`): still one line for it.
        info = request.get(CHAT_INFO)
        if info is not None:
            by_server = info.get("error") in (SERVER_RESTART, SHUTDOWN)
            if not by_server:
                info["error"] = "disconnected"
            ms = (time.perf_counter() - started) * 1000
            log_chat(request.method, request.path, 503 if by_server else 499, info, ms)
        else:
            log.debug("%s %s client disconnected", request.method, request.path_qs)
        raise
    ms = (time.perf_counter() - started) * 1000
    chat_info = request.get(CHAT_INFO)
    if chat_info is not None:
        log_chat(request.method, request.path, resp.status, chat_info, ms)
    else:
        level = logging.INFO if resp.status >= 400 else logging.DEBUG
        log.log(level, "%s %s %d %.1fms", request.method, request.path_qs, resp.status, ms)
    return resp


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is `{"error", "code"}` JSON; no stack trace leaves the server."""
    try:
        return await handler(request)
    except GatewayError as exc:
        note_error(request, exc.code)
        return json_error(exc.status, exc.message, exc.code, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception(request, exc)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal error; see the server log", "internal_error")


def _http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    if exc.status == 404:
        return json_error(404, f"no such endpoint: {request.method} {request.path}", "not_found")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return json_error(
            405,
            f"method {request.method} is not allowed on {request.path}; allowed: {allowed}",
            "method_not_allowed",
            headers,
        )
    if exc.status == 413:
        limit = request.app[GATEWAY].config.server.max_body_kb
        return json_error(
            413, f"request body is larger than {limit} KiB ([server].max_body_kb)", "body_too_large"
        )
    return json_error(exc.status, exc.reason, f"http_{exc.status}", headers)


# -- Host guard: DNS-rebinding protection while bound to loopback (as Ollama's CVE-2024-28224 fix)


@web.middleware
async def guards(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The Host guard, then CORS, then API keys: the first to answer ends the request. One
    middleware, with each guard a plain function: every layer of aiohttp's middleware chain
    costs a coroutine per request (bench/README.md, "Hit throughput against the floor")."""
    refusal = _host_guard(request)
    if refusal is None:
        refusal = _cors_guard(request)
        if refusal is None:
            refusal = _auth_guard(request)
            if refusal is None:
                return await handler(request)
    return refusal


def _host_guard(request: web.Request) -> web.Response | None:
    host = request.headers.get("Host", "")
    if not host_allowed(request.app[GATEWAY].config.server.host, host):
        return json_error(
            403,
            f"Host header {host!r} is not allowed: the gateway listens on loopback and only "
            "answers requests addressed to localhost or a loopback IP",
            "forbidden_host",
        )
    return None


# -- API keys

# Answered without a key: liveness and the API's description.
_OPEN = {("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/"), ("HEAD", "/")}
# The gateway's own API, whose errors are {"error", "code"}; /v1 is OpenAI's; the rest Ollama's.
_OWN = (
    "/api/chat-optimized",
    "/api/chat-batch",
    "/api/chat-queue",
    "/api/cache-stats",
    "/api/dashboard",
    "/health",
)
_MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")


def api_error(
    request: web.Request, status: int, message: str, code: str, headers: dict[str, str]
) -> web.Response:
    """An error in the shape of the API the path belongs to."""
    path = request.path
    if path.startswith("/v1/"):
        kind = {401: "authentication_error", 403: "permission_error"}.get(status, "api_error")
        body: dict[str, Any] = {
            "error": {"message": message, "type": kind, "param": None, "code": code}
        }
        return web.json_response(body, status=status, headers=headers)
    if path.startswith(_OWN) or path in ("/metrics", "/openapi.json"):
        return json_error(status, message, code, headers)
    return web.json_response({"error": message}, status=status, headers=headers)


def _admin_only(request: web.Request) -> bool:
    path = request.path
    if path == "/api/cache-stats":
        return request.method == "POST"  # clear, reset_stats
    return path in _MANAGEMENT or path.startswith("/api/blobs/")


def _auth_guard(request: web.Request) -> web.Response | None:
    """Who calls: a key's identity when keys are set (401 without a valid one), else anonymous.
    A configured user header names the user behind a key (or alone), for fair turns."""
    gateway = request.app[GATEWAY]
    header = gateway.config.auth.user_header
    user = request.headers.get(header, "").strip()[:64] if header else ""
    if not gateway.keys:
        request[IDENTITY] = unkeyed_caller(user)
        return None
    if request.method == "OPTIONS" or (request.method, request.path) in _OPEN:
        return None
    if request.method == "GET" and dashboard.is_page(request.path):
        return None  # the page's files; it asks for a key to read the feed
    key = presented_key(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
    who = gateway.keys.identify(key) if key else None
    if who is None:
        # Never the key itself in a message or the log.
        message = (
            "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
            if key is None
            else "the API key is not valid"
        )
        return api_error(request, 401, message, "unauthorized", {"WWW-Authenticate": "Bearer"})
    if _admin_only(request) and not who.admin:
        return api_error(
            request, 403, f"{request.method} {request.path} needs an admin key", "forbidden", {}
        )
    request[IDENTITY] = as_user(who, user)
    return None


# -- CORS


def _origin_allowed(request: web.Request, origin: str) -> bool:
    allowed = request.app[GATEWAY].config.cors.allowed_origins
    return "*" in allowed or origin in allowed


def _cors_guard(request: web.Request) -> web.Response | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not a browser's cross-origin call (curl, scripts)
    if origin == f"{request.scheme}://{request.host}":
        # The web dashboard's own calls: browsers send Origin on same-origin POSTs too. The
        # Host guard has already checked the host.
        return None
    if not _origin_allowed(request, origin):
        # Refused outright, not just left without CORS headers: a page from another origin must
        # not be able to start generations it cannot read ("simple" POSTs skip preflight).
        return json_error(
            403,
            f"origin {origin!r} is not allowed; add it to [cors].allowed_origins",
            "cors_origin_refused",
        )
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", CORS_HEADERS
                ),
                "Access-Control-Max-Age": "600",
            },
        )
    return None


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is None or not _origin_allowed(request, origin):
        return
    wildcard = "*" in request.app[GATEWAY].config.cors.allowed_origins
    response.headers["Access-Control-Allow-Origin"] = "*" if wildcard else origin
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
    if not wildcard:
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Credentials"] = "true"
