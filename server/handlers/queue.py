"""/api/chat-queue: tickets with position and ETA (camelCase, as the Node route answered)."""

from __future__ import annotations

from aiohttp import web

from server.chat_request import parse_chat_request
from server.errors import BadRequest, NotFound
from server.handlers.body import read_json
from server.handlers.caller import as_caller, caller
from server.json_checks import quote
from server.keys import GATEWAY
from server.services.tickets import Ticket

routes = web.RouteTableDef()


@routes.post("/api/chat-queue")
async def issue(request: web.Request) -> web.Response:
    """Take a place in line now; a chat request with the same request_id claims it."""
    gateway = request.app[GATEWAY]
    req = as_caller(parse_chat_request(await read_json(request), gateway.config), request)
    ticket = gateway.issue_ticket(req)  # 503 with Retry-After when the line is full
    return web.json_response(gateway.ticket_info(ticket))


@routes.get("/api/chat-queue")
async def status(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return web.json_response(gateway.ticket_info(_ticket(request)))


@routes.delete("/api/chat-queue")
async def cancel(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    ticket = _ticket(request)
    gateway.cancel(ticket)
    return web.json_response(gateway.ticket_info(ticket))


def _ticket(request: web.Request) -> Ticket:
    rid = request.query.get("requestId") or request.query.get("request_id")
    if not rid:
        raise BadRequest("requestId: query parameter is required", code="invalid_requestId")
    ticket = request.app[GATEWAY].ticket(rid)
    who = caller(request)
    if ticket is not None and ticket.owner != who.name and not who.admin:
        ticket = None  # another user's: as if it did not exist, so ids reveal nothing
    if ticket is None:
        raise NotFound(f"no request with id {quote(rid)} (unknown, or finished and forgotten)")
    return ticket
