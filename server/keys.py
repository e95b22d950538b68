"""Typed application and request state keys, declared in one place."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from server.auth import Identity
from server.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
# Handler tasks of the streams in progress, so a stop or restart can end them with a frame.
ACTIVE_STREAMS = web.AppKey("active_streams", set[asyncio.Task[Any]])
# What the chat handler learned about a request (id, model, timings, error), for the access log.
CHAT_INFO = web.RequestKey("chat_info", dict[str, Any])
# Who the request comes from, as the auth middleware found out.
IDENTITY = web.RequestKey("identity", Identity)


def note_error(request: web.Request, code: str) -> None:
    """Give a chat request's access-log line the error it ended with (other requests have no
    CHAT_INFO: their line comes from their status alone)."""
    info = request.get(CHAT_INFO)
    if info is not None:
        info["error"] = code
