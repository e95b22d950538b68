"""HTTP handlers, middlewares and the aiohttp app factory of the Ollama simulator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from server.simulator.generation import (
    _NDJSON_TYPE,
    _chunk_line_parts,
    _done_object,
    _error_text,
    _final_object,
    _go_json,
    _json_response,
    _now_stamp,
    _Plan,
    _rfc3339,
    _text_response,
)
from server.simulator.settings import SIM_STATS, SimulatorSettings, SimulatorStats
from server.simulator.state import _STATE, _SimState
from server.simulator.validation import (
    _ApiError,
    _check_options,
    _GenRequest,
    _int_option,
    _parse_request,
)


class _Generation:
    """Stats bookkeeping for one generation, so every exit path is counted exactly once."""

    def __init__(self, stats: SimulatorStats) -> None:
        self._stats = stats
        self._ended = False
        stats.generation_started()

    def end(self, outcome: str) -> None:
        if not self._ended:
            self._ended = True
            self._stats.generation_ended(outcome)


async def _sleep_ms(ms: float) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


# --------------------------------------------------------------------------- handlers


async def _handle_chat(request: web.Request) -> web.StreamResponse:
    return await _handle_generation(request, "chat")


async def _handle_generate(request: web.Request) -> web.StreamResponse:
    return await _handle_generation(request, "generate")


async def _handle_generation(request: web.Request, kind: str) -> web.StreamResponse:
    state = request.app[_STATE]
    started = time.perf_counter_ns()
    try:
        req = _parse_request(kind, await request.read())
        status = _int_option(req.options, "sim_status")
        if status is not None:
            if not 200 <= status <= 599:
                raise _ApiError(500, 'option "sim_status" must be an HTTP status (200-599)')
            raise _ApiError(status, f"simulated status {status}")
        if kind == "chat" and not req.model:
            raise _ApiError(400, "model is required")
        model = state.resolve_model(req.model)
        if model is None:
            raise _ApiError(404, f"model '{req.model}' not found")
        if req.is_empty and req.keep_alive == 0:
            state.loaded.pop(model, None)
            return _json_response(_done_object(req, "", "unload"))
        _check_options(req.options)
        state.mark_loaded(model, req.keep_alive, req.options)
        if req.is_empty:
            return _json_response(_done_object(req, "", "load"))
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)

    plan = _Plan.build(state.settings, req, model, started)
    generation = _Generation(state.stats)
    try:
        if req.stream:
            response = await _stream(request, req, plan, generation)
        else:
            response = await _respond_whole(req, plan, generation)
    except asyncio.CancelledError:
        generation.end("cancelled")
        raise
    finally:
        generation.end("failed")  # no-op unless an unexpected exception escaped
        state.mark_loaded(model, req.keep_alive, req.options)
    return response


async def _stream(
    request: web.Request, req: _GenRequest, plan: _Plan, generation: _Generation
) -> web.StreamResponse:
    # Like Ollama (gin writes headers on the first chunk), nothing reaches the client before
    # the first token, so an early failure can still carry a real status code.
    await _sleep_ms(plan.first_delay_ms)
    first_ns = time.perf_counter_ns()
    if plan.error_after == 0:
        generation.end("failed")
        return _json_response({"error": _error_text(0)}, status=500)
    response = web.StreamResponse(headers={"Content-Type": _NDJSON_TYPE})
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        head, middle, tail = _chunk_line_parts(req)
        for index, token in enumerate(_go_json(token) for token in plan.tokens):
            if index:
                if plan.token_delay_ms > 0:
                    await _sleep_ms(plan.token_delay_ms)
                elif index % 16 == 0:
                    # Without delays nothing else would suspend: let other streams (and the
                    # disconnect-driven cancellation) in now and then.
                    await asyncio.sleep(0)
            await response.write(f"{head}{_now_stamp()}{middle}{token}{tail}".encode())
            if index + 1 == plan.error_after:
                # Ollama's mid-stream failure: one error line, then the end, with no done chunk.
                line = _go_json({"error": _error_text(index + 1)}) + "\n"
                await response.write(line.encode())
                await response.write_eof()
                generation.end("failed")
                return response
        final = _final_object(req, plan, "", first_ns)
        await response.write((_go_json(final) + "\n").encode())
        await response.write_eof()
    except ConnectionResetError:
        # The peer vanished between two writes before aiohttp could cancel us; aiohttp's
        # finish_response tolerates the dead transport, so just stop quietly.
        generation.end("cancelled")
        return response
    generation.end("completed")
    return response


async def _respond_whole(req: _GenRequest, plan: _Plan, generation: _Generation) -> web.Response:
    produced = len(plan.tokens) if plan.error_after is None else plan.error_after
    before_ns = time.perf_counter_ns()
    await _sleep_ms(plan.first_delay_ms + plan.token_delay_ms * max(produced - 1, 0))
    # The whole answer is one sleep; split it back into prompt and eval time for the metrics.
    first_ns = min(before_ns + int(plan.first_delay_ms * 1e6), time.perf_counter_ns())
    if plan.error_after is not None:
        generation.end("failed")
        return _json_response({"error": _error_text(plan.error_after)}, status=500)
    generation.end("completed")
    return _json_response(_final_object(req, plan, "".join(plan.tokens), first_ns))


async def _handle_root(request: web.Request) -> web.Response:
    return _text_response("Ollama is running", 200, "text/plain; charset=utf-8")


async def _handle_version(request: web.Request) -> web.Response:
    return _json_response({"version": request.app[_STATE].settings.version})


async def _handle_tags(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    models = []
    # Configured order is newest first, so /api/tags' "most recently modified first" keeps it.
    for index, name in enumerate(state.settings.models):
        info = state.model_info(name)
        modified_ns = state.started_ns - index * 3_600_000_000_000
        models.append(
            {
                "name": name,
                "model": name,
                "modified_at": _rfc3339(modified_ns, utc=False),
                "size": info["size"],
                "digest": info["digest"],
                "details": info["details"],
            }
        )
    return _json_response({"models": models})


async def _handle_ps(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    now = time.time_ns()
    for name in [n for n, entry in state.loaded.items() if entry.expires_ns <= now]:
        del state.loaded[name]
    entries = sorted(state.loaded.values(), key=lambda entry: entry.expires_ns, reverse=True)
    models = []
    for entry in entries:
        info = state.model_info(entry.name)
        models.append(
            {
                "name": entry.name,
                "model": entry.name,
                "size": info["size"],
                "digest": info["digest"],
                "details": info["details"],
                "expires_at": _rfc3339(entry.expires_ns, utc=False),
                "size_vram": info["size"],
                "context_length": entry.context_length,
            }
        )
    return _json_response({"models": models})


async def _handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_STATS].as_dict())


async def _handle_reset(request: web.Request) -> web.Response:
    stats = request.app[SIM_STATS]
    stats.reset()
    return web.json_response(stats.as_dict())


@web.middleware
async def _count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[SIM_STATS].count_request(request.path)
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def _gin_style_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    # aiohttp's own "404: Not Found" bodies differ from gin's plain-text ones.
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPNotFound:
        return _text_response("404 page not found", 404, "text/plain")
    except web.HTTPMethodNotAllowed:
        return _text_response("405 method not allowed", 405, "text/plain")


def create_app(settings: SimulatorSettings) -> web.Application:
    # Image payloads arrive base64-encoded in the JSON body, far beyond aiohttp's 1 MiB default.
    app = web.Application(
        middlewares=[_count_requests, _gin_style_errors], client_max_size=256 * 1024 * 1024
    )
    stats = SimulatorStats()
    app[SIM_STATS] = stats
    app[_STATE] = _SimState(settings=settings, stats=stats)
    app.router.add_get("/", _handle_root)
    app.router.add_get("/api/version", _handle_version)
    app.router.add_get("/api/tags", _handle_tags)
    app.router.add_get("/api/ps", _handle_ps, allow_head=False)
    app.router.add_post("/api/chat", _handle_chat)
    app.router.add_post("/api/generate", _handle_generate)
    app.router.add_get("/simulator/stats", _handle_stats, allow_head=False)
    app.router.add_post("/simulator/reset", _handle_reset)
    return app
