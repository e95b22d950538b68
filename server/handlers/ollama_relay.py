"""The rest of Ollama's own API, relayed as Ollama answers it: liveness and metadata at once
(they never wait in the queue), model management streamed through (progress lines as they
come, uploads passed on piece by piece and never held whole). Which of several hosts a call
goes to, and how their answers are merged, is host_fanout's rule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast
from urllib.parse import quote as quote_path

from aiohttp import web

from server.errors import GatewayError, RequestTimeout
from server.gateway import Gateway
from server.handlers.body import read_json
from server.handlers.host_fanout import (
    ProgressFanOut,
    holding,
    json_answer,
    management_targets,
    named_host,
    no_target,
    reachable,
    union_ps,
    union_tags,
    whole_on_each,
)
from server.handlers.native import NDJSON, error_text, native_errors
from server.keys import ACTIVE_STREAMS, GATEWAY
from server.services.hosts import Host
from server.services.ollama import OllamaClient

log = logging.getLogger("chatbot.ollama")
Relayed = AsyncGenerator[tuple[int, str] | bytes, None]
routes = web.RouteTableDef()

MANAGEMENT_OFF = (
    "model management through the gateway is turned off ([ollama].allow_management = false)"
)
# A progress line longer than this is passed on as it is rather than held for its newline.
_MAX_HELD_LINE = 1 << 20
_MAX_NAME_LOGGED = 200


# -- liveness and metadata: straight to Ollama, never through the queue -------------------------


@routes.get("/")
@routes.head("/")
@native_errors
async def root(request: web.Request) -> web.StreamResponse:
    return await _whole(_one_host(request), request.method, "/")


@routes.get("/api/version")
@routes.head("/api/version")
@native_errors
async def version(request: web.Request) -> web.StreamResponse:
    return await _whole(_one_host(request), request.method, "/api/version")


@routes.get("/api/tags")
@routes.head("/api/tags")
@native_errors
async def tags(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    host = named_host(request, gateway.hosts)
    if host is None and len(gateway.hosts.hosts) > 1:
        return json_answer({"models": await union_tags(gateway)})
    return await _whole(host or gateway.hosts.hosts[0], request.method, "/api/tags")


@routes.get("/api/ps")
@native_errors
async def ps(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    host = named_host(request, gateway.hosts)
    if host is None and len(gateway.hosts.hosts) > 1:
        return json_answer({"models": await union_ps(gateway)})
    return await _whole(host or gateway.hosts.hosts[0], "GET", "/api/ps")


@routes.post("/api/show")
@native_errors
async def show(request: web.Request) -> web.StreamResponse:
    # `model`, or the legacy `name` that Continue still sends: Ollama takes both.
    body = await read_json(request)
    host = named_host(request, request.app[GATEWAY].hosts)
    if host is None:
        host = holding(request.app[GATEWAY].hosts, _model_of(body))[0]
    return await _whole(host, "POST", "/api/show", body)


# -- model management -----------------------------------------------------------------------------


@routes.post("/api/pull")
@native_errors
async def pull(request: web.Request) -> web.StreamResponse:
    return await _progress(request, "pull", changes_models=True)


@routes.post("/api/push")
@native_errors
async def push(request: web.Request) -> web.StreamResponse:
    return await _progress(request, "push", changes_models=False)


@routes.post("/api/create")
@native_errors
async def create(request: web.Request) -> web.StreamResponse:
    return await _progress(request, "create", changes_models=True)


@routes.post("/api/copy")
@native_errors
async def copy(request: web.Request) -> web.StreamResponse:
    _check_management(request)
    body = await read_json(request)
    what = f"{_field(body, 'source')} -> {_field(body, 'destination')}"
    return await _on_each(request, "copy", "POST", "/api/copy", body, what)


@routes.delete("/api/delete")
@native_errors
async def delete(request: web.Request) -> web.StreamResponse:
    _check_management(request)
    body = await read_json(request)
    return await _on_each(request, "delete", "DELETE", "/api/delete", body, _model_of(body))


@routes.head("/api/blobs/{digest}")
@native_errors
async def blob_exists(request: web.Request) -> web.StreamResponse:
    _check_management(request)
    return await _whole(_one_host(request), "HEAD", _blob_path(request))


@routes.post("/api/blobs/{digest}")
@native_errors
async def blob_upload(request: web.Request) -> web.StreamResponse:
    """The upload goes through as it arrives: not read whole, not held to [server].max_body_kb
    (a model's weights are gigabytes), but cut off when it stops arriving."""
    _check_management(request)
    gateway = request.app[GATEWAY]
    upload = _Upload(request, gateway.config.server.body_timeout_seconds)
    answer = bytearray()
    try:
        client = _one_host(request).client
        async with _relayed(client, "POST", _blob_path(request), data=upload.pieces()) as relayed:
            head = await anext(relayed)
            async for piece in relayed:
                if isinstance(piece, bytes):
                    answer += piece
    except GatewayError:
        if upload.stalled is not None:
            raise upload.stalled from None
        raise
    assert isinstance(head, tuple)
    return _response(*head, bytes(answer))


# -- relaying ---------------------------------------------------------------------------------


def _one_host(request: web.Request) -> Host:
    """The host named by X-Ollama-Host, else the first one not down: for calls about no model
    (liveness, version, blobs: a create with uploaded files goes to this host too)."""
    pool = request.app[GATEWAY].hosts
    return named_host(request, pool) or reachable(pool)[0]


def _targets(request: web.Request, action: str, body: Any) -> list[Host]:
    """Where a management call goes: the named host; the one host; or host_fanout's rule."""
    pool = request.app[GATEWAY].hosts
    host = named_host(request, pool)
    if host is not None:
        return [host]
    if len(pool.hosts) == 1:
        return list(pool.hosts)
    targets = management_targets(pool, action, body)
    if not targets:
        raise no_target(action, body)
    return targets


async def _whole(host: Host, method: str, path: str, json_body: Any = None) -> web.Response:
    """One small answer, relayed with Ollama's status, Content-Type and body."""
    status, content_type, data = await host.client.send(method, path, json_body=json_body)
    return _response(status, content_type, data)


async def _on_each(
    request: web.Request, action: str, method: str, path: str, body: Any, what: str
) -> web.Response:
    """copy and delete: on the one target as it answers, or on several merged."""
    gateway = request.app[GATEWAY]
    targets = _targets(request, action, body)
    if len(targets) == 1:
        resp = await _whole(targets[0], method, path, body)
        done = targets if resp.status == 200 else []
    else:
        resp, done = await whole_on_each(targets, action, method, path, body)
    await _models_changed(gateway, action, what, done)
    return resp


def _relayed(
    client: OllamaClient, method: str, path: str, **kw: Any
) -> contextlib.aclosing[Relayed]:
    """Ollama's answer as it comes; leaving the block early closes the upstream request (a
    client that went away stops its pull)."""
    return contextlib.aclosing(cast(Relayed, client.relay(method, path, **kw)))


def _response(status: int, content_type: str, data: bytes) -> web.Response:
    # No Content-Type is made up where Ollama sent none (a copy's or delete's empty 200).
    headers = {"Content-Type": content_type} if content_type else {}
    return web.Response(status=status, body=data, headers=headers)


async def _progress(
    request: web.Request, action: str, *, changes_models: bool
) -> web.StreamResponse:
    """pull, push and create: progress lines passed on as each arrives (or, with `stream:
    false`, the one JSON object Ollama answers at the end)."""
    _check_management(request)
    gateway = request.app[GATEWAY]
    body = await read_json(request)
    targets = _targets(request, action, body)
    active = request.app[ACTIVE_STREAMS]
    current = asyncio.current_task()
    if current is not None:
        # A restart lets it finish for the drain time, as with chat streams.
        active.add(current)
    try:
        if len(targets) > 1:
            fan = ProgressFanOut(request, action, body)
            await fan.run(targets)
            if changes_models:
                await _models_changed(gateway, action, _model_of(body), fan.done)
            return await fan.finish()
        relay = _ProgressRelay(request)
        path = f"/api/{action}"
        async with _relayed(targets[0].client, "POST", path, json_body=body) as relayed:
            await relay.run(relayed)
    finally:
        if current is not None:
            active.discard(current)
    if changes_models and relay.succeeded:
        await _models_changed(gateway, action, _model_of(body), targets)
    await relay.finish()
    return relay.resp


class _ProgressRelay:
    """Writes a relayed answer as it comes: whole lines for NDJSON, so no client's line
    parser ever sees half a line; and notes whether the last line said `success`."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp = web.StreamResponse()
        self.status = 0
        self.lines = False
        self.held = bytearray()
        # The last non-empty line of NDJSON, or the start of a JSON answer (`stream: false`).
        self.last = bytearray()
        self.failed = False

    async def run(self, relayed: Relayed) -> None:
        head = await anext(relayed)  # unreachable raises here: 502 {"error"} before any output
        assert isinstance(head, tuple)
        self.status, content_type = head
        self.lines = content_type.split(";")[0].strip() == NDJSON
        self.resp.set_status(self.status)
        if content_type:
            self.resp.headers["Content-Type"] = content_type
        self.resp.headers["X-Accel-Buffering"] = "no"
        try:
            await self.resp.prepare(self.request)
            async for piece in relayed:
                assert isinstance(piece, bytes)
                await self._pass_on(piece)
            await self._write(bytes(self.held))
            self._note(bytes(self.held))
            self.held.clear()
        except ConnectionResetError:
            self.failed = True  # the client went away; closing the relay tells Ollama
        except asyncio.CancelledError:
            self.failed = True
            await self._last_line("the gateway stopped or restarted before this was complete")
            raise
        except GatewayError as exc:
            self.failed = True
            await self._last_line(error_text(exc))

    async def _pass_on(self, piece: bytes) -> None:
        if not self.lines:
            if len(self.last) < _MAX_HELD_LINE:
                self.last += piece
            await self._write(piece)
            return
        self.held += piece
        end = self.held.rfind(b"\n")
        if end < 0 and len(self.held) <= _MAX_HELD_LINE:
            return
        end = len(self.held) - 1 if end < 0 else end
        whole = bytes(self.held[: end + 1])
        del self.held[: end + 1]
        for line in whole.split(b"\n"):
            self._note(line)
        await self._write(whole)

    def _note(self, line: bytes) -> None:
        if line.strip():
            self.last[:] = line

    async def _write(self, data: bytes) -> None:
        if data:
            await self.resp.write(data)

    async def _last_line(self, text: str) -> None:
        """After output started, an error is one last line, as Ollama writes it."""
        if not self.lines or not self.resp.prepared:
            return
        # A line Ollama left unfinished is ended first, so the error is a line of its own.
        unfinished = bytes(self.held) + b"\n" if self.held else b""
        with contextlib.suppress(ConnectionResetError):
            await self.resp.write(
                unfinished + json.dumps({"error": text}, separators=(",", ":")).encode() + b"\n"
            )
            await self.resp.write_eof()

    @property
    def succeeded(self) -> bool:
        if self.failed or self.status != 200:
            return False
        try:
            last = json.loads(self.last)
        except ValueError:
            return False
        return isinstance(last, dict) and last.get("status") == "success"

    async def finish(self) -> None:
        if self.resp.prepared:
            with contextlib.suppress(ConnectionResetError):
                await self.resp.write_eof()


class _Upload:
    """A request body read piece by piece for the relay, with the same pause limit as any
    body ([server].body_timeout_seconds)."""

    def __init__(self, request: web.Request, pause: float) -> None:
        self.request = request
        self.pause = pause
        self.sent = 0
        self.stalled: RequestTimeout | None = None

    async def pieces(self) -> AsyncIterator[bytes]:
        content = self.request.content
        while True:
            try:
                async with asyncio.timeout(self.pause):
                    piece = await content.readany()
            except TimeoutError:
                # The relay turns any failure of its body into an upstream error; this one is
                # the client's, and is answered as such.
                self.stalled = RequestTimeout(
                    f"upload stopped arriving: nothing for {self.pause:g} s after {self.sent} "
                    "bytes ([server].body_timeout_seconds)",
                    headers={"Connection": "close"},
                )
                raise
            if not piece:
                return
            self.sent += len(piece)
            yield piece


# -- helpers ----------------------------------------------------------------------------------


def _check_management(request: web.Request) -> None:
    if not request.app[GATEWAY].config.ollama.allow_management:
        raise GatewayError(MANAGEMENT_OFF, code="management_off", status=403)


def _blob_path(request: web.Request) -> str:
    return "/api/blobs/" + quote_path(request.match_info["digest"], safe=":")


def _field(body: Any, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    return str(value)[:_MAX_NAME_LOGGED] if value is not None else "?"


def _model_of(body: Any) -> str:
    named = isinstance(body, dict) and body.get("model") is None and "name" in body
    return _field(body, "name" if named else "model")


async def _models_changed(gateway: Gateway, action: str, model: str, hosts: list[Host]) -> None:
    """Models changed through us: each host that changed is re-read (its tags and ps) before
    the client hears the end, so the next request is routed by what is there now."""
    if not hosts:
        return
    if len(gateway.hosts.hosts) > 1:
        log.info("models changed: %s %s on %s", action, model, ", ".join(h.url for h in hosts))
    else:
        log.info("models changed: %s %s", action, model)
    await asyncio.gather(*(gateway.hosts.refresh(h) for h in hosts))
