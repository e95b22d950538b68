"""HTTP handlers, middlewares and the aiohttp app factory of the Ollama simulator."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from server.simulator.catalog import ModelEntry
from server.simulator.embeddings import _handle_embed, _handle_embeddings
from server.simulator.faults import FAULT, Fault, handle_fault, inject_faults
from server.simulator.generation import (
    _NDJSON_TYPE,
    _chunk_line_parts,
    _chunk_object,
    _done_object,
    _error_text,
    _final_object,
    _go_json,
    _json_response,
    _now_stamp,
    _Plan,
    _text_response,
    check_format,
)
from server.simulator.models_api import (
    _handle_copy,
    _handle_create_blob,
    _handle_delete,
    _handle_head_blob,
    _handle_ps,
    _handle_show,
    _handle_tags,
)
from server.simulator.names import parse_name
from server.simulator.settings import SIM_STATS, SimulatorSettings, SimulatorStats
from server.simulator.state import _STATE, _SimState
from server.simulator.transfers import _handle_create, _handle_pull, _handle_push
from server.simulator.validation import (
    _ApiError,
    _check_options,
    _check_status_hook,
    _GenRequest,
    _go_quote,
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


def _find_model(state: _SimState, req: _GenRequest) -> ModelEntry:
    if not req.model.strip():
        if req.kind == "chat":
            raise _ApiError(400, "model is required")
        raise _ApiError(404, f"model '{req.model}' not found")
    name = parse_name(req.model)
    if not name.valid:
        raise _ApiError(400, "invalid model name")
    entry = state.models.get(name.key)
    if entry is None:
        raise _ApiError(404, f"model '{req.model}' not found")
    return entry


def _check_capabilities(entry: ModelEntry, req: _GenRequest) -> None:
    capabilities = entry.capabilities
    if req.thinks and "thinking" not in capabilities:
        raise _ApiError(400, f"{_go_quote(req.model)} does not support thinking")
    if "completion" not in capabilities:
        verb = "chat" if req.kind == "chat" else "generate"
        raise _ApiError(400, f"{_go_quote(req.model)} does not support {verb}")
    if req.tools and "tools" not in capabilities:
        raise _ApiError(400, f"{entry.name.full} does not support tools")
    if req.suffix and "insert" not in capabilities:
        raise _ApiError(400, f"{entry.name.full} does not support insert")


async def _handle_generation(request: web.Request, kind: str) -> web.StreamResponse:
    state = request.app[_STATE]
    started = time.perf_counter_ns()
    try:
        req = _parse_request(kind, await request.read())
        _check_status_hook(req.options)
        entry = _find_model(state, req)
        if req.is_empty and req.keep_alive == 0:
            state.unload(entry)
            return _json_response(_done_object(req, "", "unload"))
        if req.raw and (req.template or req.system or req.context):
            raise _ApiError(400, "raw mode does not support template, system, or context")
        _check_capabilities(entry, req)
        _check_options(req.options)
        state.mark_loaded(entry, req.keep_alive, req.options)
        if req.is_empty:
            return _json_response(_done_object(req, "", "load"))
        check_format(req.format)
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)

    plan = _Plan.build(state.settings, req, entry.digest, started)
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
        state.mark_loaded(entry, req.keep_alive, req.options)
    return response


def _step_lines(req: _GenRequest, plan: _Plan) -> Iterator[str]:
    """The NDJSON line of every chunk before the done chunk (created_at stamped when asked)."""
    for piece in plan.thinking:
        yield _go_json(_chunk_object(req, "", thinking=piece)) + "\n"
    if plan.tool_calls:
        yield _go_json(_chunk_object(req, "", tool_calls=plan.tool_calls)) + "\n"
        return
    head, middle, tail = _chunk_line_parts(req)
    for token in plan.tokens:
        yield f"{head}{_now_stamp()}{middle}{_go_json(token)}{tail}"


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
        for index, line in enumerate(_step_lines(req, plan)):
            if index:
                if plan.token_delay_ms > 0:
                    await _sleep_ms(plan.token_delay_ms)
                elif index % 16 == 0:
                    # Without delays nothing else would suspend: let other streams (and the
                    # disconnect-driven cancellation) in now and then.
                    await asyncio.sleep(0)
            await response.write(line.encode())
            if index + 1 == plan.error_after:
                # Ollama's mid-stream failure: one error line, then the end, with no done chunk.
                error = _go_json({"error": _error_text(index + 1)}) + "\n"
                await response.write(error.encode())
                await response.write_eof()
                generation.end("failed")
                return response
        final = _final_object(req, plan, first_ns)
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
    produced = plan.steps if plan.error_after is None else plan.error_after
    before_ns = time.perf_counter_ns()
    await _sleep_ms(plan.first_delay_ms + plan.token_delay_ms * max(produced - 1, 0))
    # The whole answer is one sleep; split it back into prompt and eval time for the metrics.
    first_ns = min(before_ns + int(plan.first_delay_ms * 1e6), time.perf_counter_ns())
    if plan.error_after is not None:
        generation.end("failed")
        return _json_response({"error": _error_text(plan.error_after)}, status=500)
    generation.end("completed")
    return _json_response(_final_object(req, plan, first_ns, whole=True))


async def _handle_root(request: web.Request) -> web.Response:
    return _text_response("Ollama is running", 200, "text/plain; charset=utf-8")


async def _handle_version(request: web.Request) -> web.Response:
    return _json_response({"version": request.app[_STATE].settings.version})


async def _handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_STATS].as_dict())


async def _handle_reset(request: web.Request) -> web.Response:
    stats = request.app[SIM_STATS]
    stats.reset()
    return web.json_response(stats.as_dict())


@web.middleware
async def _count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    resource = request.match_info.route.resource
    endpoint = f"{request.method} {resource.canonical if resource else request.path}"
    request.app[SIM_STATS].count_request(request.path, endpoint)
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


async def _models_dir(app: web.Application) -> AsyncIterator[None]:
    """A private OLLAMA_MODELS for uploaded blobs, removed with the app."""
    state = app[_STATE]
    path = await asyncio.to_thread(tempfile.mkdtemp, prefix="ollama-sim-")
    state.models_dir = Path(path)
    yield
    state.models_dir = None
    await asyncio.to_thread(shutil.rmtree, path, True)


def create_app(settings: SimulatorSettings) -> web.Application:
    # Image payloads arrive base64-encoded in the JSON body, far beyond aiohttp's 1 MiB default.
    # (Blob uploads are streamed to disk and never read whole, so the limit does not apply.)
    app = web.Application(
        middlewares=[_count_requests, _gin_style_errors, inject_faults],
        client_max_size=256 * 1024 * 1024,
    )
    stats = SimulatorStats()
    app[SIM_STATS] = stats
    app[FAULT] = Fault(settings.fault, settings.fault_status)
    app[_STATE] = _SimState(settings=settings, stats=stats)
    app.cleanup_ctx.append(_models_dir)
    router = app.router
    router.add_get("/", _handle_root)  # GET routes answer HEAD too, as Ollama's do here
    router.add_get("/api/version", _handle_version)
    router.add_get("/api/tags", _handle_tags)
    router.add_get("/api/ps", _handle_ps, allow_head=False)
    router.add_post("/api/chat", _handle_chat)
    router.add_post("/api/generate", _handle_generate)
    router.add_post("/api/embed", _handle_embed)
    router.add_post("/api/embeddings", _handle_embeddings)
    router.add_post("/api/show", _handle_show)
    router.add_post("/api/pull", _handle_pull)
    router.add_post("/api/push", _handle_push)
    router.add_post("/api/create", _handle_create)
    router.add_post("/api/copy", _handle_copy)
    router.add_delete("/api/delete", _handle_delete)
    router.add_head("/api/blobs/{digest}", _handle_head_blob)
    router.add_post("/api/blobs/{digest}", _handle_create_blob)
    router.add_get("/simulator/stats", _handle_stats, allow_head=False)
    router.add_post("/simulator/reset", _handle_reset)
    router.add_get("/simulator/fault", handle_fault, allow_head=False)
    router.add_post("/simulator/fault", handle_fault)
    return app
