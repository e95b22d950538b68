"""The local model store's endpoints: tags, ps, show, copy, delete and blob uploads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from typing import IO, Any

from aiohttp import web

from server.simulator.generation import _json_response, _rfc3339
from server.simulator.names import parse_name
from server.simulator.state import _STATE
from server.simulator.validation import _ApiError, _decode_object, _field, _go_quote

_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_UPLOAD_CHUNK = 1 << 16


def _empty(status: int = 200) -> web.Response:
    # gin's bare status for copy, delete and blobs: no body and no Content-Type.
    response = web.Response(status=status)
    response.headers.pop("Content-Type", None)
    return response


async def _handle_tags(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    entries = sorted(state.models.values(), key=lambda entry: entry.modified_ns, reverse=True)
    models = []
    for entry in entries:
        details = entry.details()
        details["context_length"] = entry.context_length
        details["embedding_length"] = entry.embedding_length
        models.append(
            {
                "name": entry.display,
                "model": entry.display,
                "modified_at": _rfc3339(entry.modified_ns, utc=False),
                "size": entry.size,
                "digest": entry.digest,
                "details": details,
                "capabilities": list(entry.capabilities),
            }
        )
    return _json_response({"models": models})


async def _handle_ps(request: web.Request) -> web.Response:
    models = []
    for item in request.app[_STATE].live_loaded():
        entry = item.entry
        models.append(
            {
                "name": entry.display,
                "model": entry.display,
                "size": entry.size,
                "digest": entry.digest,
                "details": entry.details(parent=False),
                "expires_at": _rfc3339(item.expires_ns, utc=False),
                "size_vram": entry.size,
                "context_length": item.context_length,
            }
        )
    return _json_response({"models": models})


async def _handle_show(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    where = "ShowRequest"
    try:
        body = _decode_object(await request.read(), where)
        model = _field(body, "model", "string", where, "string", "")
        legacy = _field(body, "name", "string", where, "string", "")
        system = _field(body, "system", "string", where, "string", "")
        verbose = _field(body, "verbose", "bool", where, "bool", False)
        options = _field(body, "options", "object", where, "map[string]interface {}", {})
        text = model or legacy
        if not text.strip():
            raise _ApiError(400, "model is required")
        name = parse_name(text)
        if not name.valid:
            raise _ApiError(400, "invalid model name")
        entry = state.models.get(name.key)
        if entry is None:
            raise _ApiError(404, f"model '{name.display}' not found")
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)

    system = system or entry.system
    show: dict[str, Any] = {}
    if entry.licenses:
        show["license"] = "\n".join(entry.licenses)
    show["modelfile"] = entry.modelfile(str(state.models_path), system, options)
    if entry.parameters:
        show["parameters"] = entry.parameters_text()
    show["template"] = entry.template
    if system:
        show["system"] = system
    show["details"] = entry.details()
    if entry.messages:
        show["messages"] = [{"role": role, "content": text} for role, text in entry.messages]
    show["model_info"] = entry.model_info(verbose)
    show["tensors"] = entry.tensors()
    show["capabilities"] = list(entry.capabilities)
    show["modified_at"] = _rfc3339(entry.modified_ns, utc=False)
    return _json_response(show)


async def _handle_copy(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    where = "CopyRequest"
    try:
        body = _decode_object(await request.read(), where)
        source_text = _field(body, "source", "string", where, "string", "")
        target_text = _field(body, "destination", "string", where, "string", "")
        source = parse_name(source_text)
        if not source.valid:
            raise _ApiError(400, f"source {_go_quote(source_text)} is invalid")
        target = parse_name(target_text)
        if not target.valid:
            raise _ApiError(400, f"destination {_go_quote(target_text)} is invalid")
        entry = state.models.get(source.key)
        if entry is None:
            raise _ApiError(404, f"model {_go_quote(source_text)} not found")
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)
    state.store(entry.renamed(target, time.time_ns()))
    return _empty()


async def _handle_delete(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    where = "DeleteRequest"
    try:
        body = _decode_object(await request.read(), where)
        model = _field(body, "model", "string", where, "string", "")
        legacy = _field(body, "name", "string", where, "string", "")
        text = model or legacy
        if not text.strip():
            raise _ApiError(400, "model is required")
        name = parse_name(text)
        if not name.valid:
            raise _ApiError(400, f"name {_go_quote(text)} is invalid")
        entry = state.models.get(name.key)
        if entry is None:
            raise _ApiError(404, f"model '{text}' not found")
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)
    state.remove(entry)
    return _empty()


def _blob_digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not _DIGEST.fullmatch(digest):
        raise _ApiError(400, "invalid digest format")
    return digest


def _stored_as(digest: str) -> str:
    # Ollama stores "sha256:x" and "sha256-x" as the same file.
    return "sha256:" + digest[7:]


async def _handle_head_blob(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    try:
        digest = _blob_digest(request)
        if not state.has_layer(_stored_as(digest)):
            raise _ApiError(404, f"blob {_go_quote(digest)} not found")
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)
    return _empty()


async def _handle_create_blob(request: web.Request) -> web.Response:
    """Stream the upload to disk while hashing it; keep it only if the digest matches."""
    state = request.app[_STATE]
    try:
        digest = _blob_digest(request)
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)
    if state.has_layer(_stored_as(digest)):
        return _empty()

    final_path = state.blob_path(_stored_as(digest))
    partial = final_path.with_name(f"{final_path.name}-partial-{id(request):x}")
    hasher = hashlib.sha256()
    size = 0

    def open_partial() -> IO[bytes]:
        partial.parent.mkdir(parents=True, exist_ok=True)
        return partial.open("wb")

    sink = await asyncio.to_thread(open_partial)
    try:
        try:
            async for chunk in request.content.iter_chunked(_UPLOAD_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(sink.write, chunk)
        finally:
            await asyncio.to_thread(sink.close)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            message = f"digest mismatch, expected {_go_quote(digest)}, got {_go_quote(actual)}"
            return _json_response({"error": message}, status=400)
        await asyncio.to_thread(os.replace, partial, state.blob_path(actual))
        state.blobs[actual] = size
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    return _empty(201)
