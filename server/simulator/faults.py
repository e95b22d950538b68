"""Fault injection: a simulator told to fail (every Ollama call a 5xx) or to hang (accept and
never answer), at start or live through POST /simulator/fault, so failover and health checks
can be tested without a real Ollama going wrong."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server.simulator.generation import _json_response
from server.simulator.settings import check_fault


@dataclass
class Fault:
    """The live fault. It covers every Ollama route (generation, embeddings, tags, ps, show,
    version, management, `/`), so a health probe sees the same sick host a client does; the
    /simulator/* control routes always answer."""

    mode: str = "none"
    status: int = 500
    hits: int = 0  # requests the fault answered (error) or swallowed (hang)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "status": self.status, "hits": self.hits}


FAULT: web.AppKey[Fault] = web.AppKey("sim_fault", Fault)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    fault = request.app[FAULT]
    if fault.mode == "none" or request.path.startswith("/simulator/"):
        return await handler(request)
    fault.hits += 1
    if fault.mode == "error":
        # Ollama's error shape: {"error": "..."} with gin's JSON content type.
        return _json_response({"error": f"simulated failure (HTTP {fault.status})"}, fault.status)
    # hang: nothing is ever sent; the handler is cancelled when the client goes away
    # (handler_cancellation) or the simulator stops.
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def handle_fault(request: web.Request) -> web.Response:
    """GET shows the fault; POST {"mode": "none"|"error"|"hang", "status": 500} sets it."""
    fault = request.app[FAULT]
    if request.method == "POST":
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        unknown = sorted(set(body) - {"mode", "status"})
        if unknown:
            return web.json_response(
                {"error": f"unknown field {unknown[0]!r}; fields are mode and status"}, status=400
            )
        mode, status = body.get("mode", "none"), body.get("status", 500)
        problem = check_fault(mode, status) if isinstance(mode, str) else "mode must be a string"
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        fault.mode, fault.status = mode, status
    return web.json_response(fault.as_dict())
