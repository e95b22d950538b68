"""Model transfers with Ollama's progress streams: POST /api/pull, /api/push and /api/create."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from server.simulator.catalog import MEDIA_MODEL, Layer, ModelEntry, catalog_entry, sha256_digest
from server.simulator.generation import _NDJSON_TYPE, _go_json, _json_response
from server.simulator.names import ModelName, parse_name
from server.simulator.state import _STATE, _SimState
from server.simulator.validation import _ApiError, _decode_object, _field, _json_kind

Progress = AsyncIterator[dict[str, Any]]

# Ollama sets this type before streaming progress, so its errors and stream:false answers
# lack the "; charset=utf-8" that gin adds elsewhere.
_PROGRESS_JSON = "application/json"
_BIG_LAYER = 1_000_000  # layers at least this big report progress in several steps
_QUANTIZABLE = ("F16", "BF16", "F32")
_QUANT_TYPES = frozenset(
    {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S"}
    | {"Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "F16", "BF16", "F32"}
)


async def _respond_progress(
    request: web.Request, events: Progress, stream: bool
) -> web.StreamResponse:
    """Ollama's streamResponse / waitForStream: NDJSON lines, or only the last one.

    An error before the first line gets its own status; after it, one {"error"} line ends
    the stream with status 200. Lines are paced like tokens (token_delay_ms).
    """
    delay = request.app[_STATE].settings.token_delay_ms / 1000
    response: web.StreamResponse | None = None
    latest: dict[str, Any] = {"status": ""}
    try:
        async for event in events:
            if delay > 0:
                await asyncio.sleep(delay)
            if not stream:
                latest = event
                continue
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": _NDJSON_TYPE})
                response.enable_chunked_encoding()
                await response.prepare(request)
            await response.write((_go_json(event) + "\n").encode())
    except _ApiError as exc:
        if response is None:
            return _json_response({"error": exc.message}, exc.status, _PROGRESS_JSON)
        await response.write((_go_json({"error": exc.message}) + "\n").encode())
    if response is None:
        return _json_response(latest, 200, _PROGRESS_JSON)
    await response.write_eof()
    return response


def _transfer_lines(verb: str, layer: Layer, cached: bool) -> list[dict[str, Any]]:
    """`pulling 1a2b3c4d5e6f` lines for one layer; a blob already present reports once."""
    fractions = (1.0,) if cached or layer.size < _BIG_LAYER else (0.0, 0.25, 0.5, 0.75, 1.0)
    lines = []
    for fraction in fractions:
        line: dict[str, Any] = {
            "status": f"{verb} {layer.digest[7:19]}",
            "digest": layer.digest,
            "total": layer.size,
        }
        completed = int(layer.size * fraction)
        if completed:  # omitempty
            line["completed"] = completed
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- pull and push


async def _pull_events(state: _SimState, name: ModelName) -> Progress:
    yield {"status": "pulling manifest"}
    if not state.in_registry(name):
        raise _ApiError(500, "pull model manifest: file does not exist")
    entry = catalog_entry(name, time.time_ns())
    for layer in [*entry.layers, entry.config_layer]:
        for line in _transfer_lines("pulling", layer, state.has_layer(layer.digest)):
            yield line
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    entry.modified_ns = time.time_ns()
    state.store(entry)
    yield {"status": "success"}


def _model_and_stream(raw: bytes, struct: str) -> tuple[str, bool]:
    body = _decode_object(raw, struct)
    model = _field(body, "model", "string", struct, "string", "")
    legacy = _field(body, "name", "string", struct, "string", "")
    stream = _field(body, "stream", "bool", struct, "bool", True)
    return model or legacy, stream


async def _handle_pull(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    try:
        text, stream = _model_and_stream(await request.read(), "PullRequest")
        name = parse_name(text)
        if not text.strip() or not name.valid:
            raise _ApiError(400, "invalid model name")
    except _ApiError as exc:
        return _json_response({"error": exc.message}, exc.status)
    return await _respond_progress(request, _pull_events(state, name), stream)


async def _push_events(state: _SimState, text: str) -> Progress:
    yield {"status": "retrieving manifest"}
    name = parse_name(text)
    entry = state.models.get(name.key) if name.valid else None
    if entry is None:
        yield {"status": "couldn't retrieve manifest"}
        raise _ApiError(500, f"open {state.manifest_path(name)}: no such file or directory")
    for layer in [*entry.layers, entry.config_layer]:
        for line in _transfer_lines("pushing", layer, cached=False):
            yield line
    yield {"status": "pushing manifest"}
    yield {"status": "success"}


async def _handle_push(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    try:
        text, stream = _model_and_stream(await request.read(), "PushRequest")
        if not text:
            raise _ApiError(400, "model is required")
    except _ApiError as exc:
        return _json_response({"error": exc.message}, exc.status)
    return await _respond_progress(request, _push_events(state, text), stream)


# --------------------------------------------------------------------------- create


@dataclass
class _CreateRequest:
    name: ModelName
    stream: bool
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    licenses: Any = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[tuple[str, str]] = field(default_factory=list)
    quantize: str = ""


def _string_map(body: dict[str, Any], key: str) -> dict[str, str]:
    where = "CreateRequest"
    mapping = _field(body, key, "object", where, "map[string]string", {})
    for value in mapping.values():
        if not isinstance(value, str):
            raise _ApiError(
                400,
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                f"{where}.{key} of type string",
            )
    return dict(mapping)


def _valid_fs_path(path: str) -> bool:
    """Go's fs.ValidPath: relative, slash-separated, no empty, "." or ".." elements."""
    if path == ".":
        return True
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _parse_create(raw: bytes) -> _CreateRequest:
    where = "CreateRequest"
    body = _decode_object(raw, where)
    model = _field(body, "model", "string", where, "string", "")
    legacy = _field(body, "name", "string", where, "string", "")
    files = _string_map(body, "files")
    for path, digest in files.items():
        if not _valid_fs_path(path):
            raise _ApiError(400, "file path must be relative")
        if not digest:
            raise _ApiError(400, "invalid digest format")
    if any(not digest for digest in _string_map(body, "adapters").values()):
        raise _ApiError(400, "invalid digest format")
    messages = []
    for item in _field(body, "messages", "array", where, "[]api.Message", []):
        if not isinstance(item, dict):
            raise _ApiError(
                400,
                f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                f"{where}.messages of type api.Message",
            )
        role = _field(item, "role", "string", f"{where}.messages", "string", "")
        content = _field(item, "content", "string", f"{where}.messages", "string", "")
        messages.append((role.lower(), content))
    name = parse_name(model or legacy)
    if not name.valid:
        raise _ApiError(400, "invalid model name")
    quantize = _field(body, "quantize", "string", where, "string", "")
    return _CreateRequest(
        name=name,
        stream=_field(body, "stream", "bool", where, "bool", True),
        source=_field(body, "from", "string", where, "string", ""),
        files=files,
        template=_field(body, "template", "string", where, "string", ""),
        system=_field(body, "system", "string", where, "string", ""),
        licenses=body.get("license"),
        parameters=_field(body, "parameters", "object", where, "map[string]interface {}", {}),
        messages=messages,
        quantize=quantize or _field(body, "quantization", "string", where, "string", ""),
    )


def _licenses(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    kind = _json_kind(value)
    raise _ApiError(500, f"json: cannot unmarshal {kind} into Go value of type []string")


async def _read_magic(state: _SimState, digest: str) -> bytes:
    def read() -> bytes:
        with state.blob_path(digest).open("rb") as blob:
            return blob.read(4)

    return await asyncio.to_thread(read)


async def _check_file_types(state: _SimState, files: dict[str, str]) -> None:
    # Ollama decides the type before any output: a file neither named nor shaped like GGUF
    # makes the whole request a 400. (The simulator converts no safetensors.)
    for path, digest in files.items():
        if path.endswith(".gguf"):
            continue
        if digest not in state.blobs or await _read_magic(state, digest) != b"GGUF":
            raise _ApiError(400, "unknown type")


async def _file_layer(state: _SimState, digest: str) -> Layer:
    """The weights layer a GGUF blob becomes: an upload, or a layer of a model in the store."""
    if digest in state.blobs:
        if await _read_magic(state, digest) != b"GGUF":
            raise _ApiError(400, "supplied file was not in GGUF format")
        return Layer(MEDIA_MODEL, digest, state.blobs[digest])
    for entry in state.models.values():
        for layer in entry.layers:
            if layer.digest == digest:
                return Layer(MEDIA_MODEL, digest, layer.size)
    raise _ApiError(500, f"open {state.blob_path(digest)}: no such file or directory")


async def _create_events(state: _SimState, req: _CreateRequest) -> Progress:
    if req.source:
        source = parse_name(req.source)
        if not req.source.strip() or not source.valid:
            raise _ApiError(400, "invalid model name")
        base = state.models.get(source.key)
        if base is None:  # Ollama pulls a missing base model first
            async for event in _pull_events(state, source):
                yield event
            base = state.models[source.key]
        base = replace(base, parent_model=base.display)
    elif req.files:
        await _check_file_types(state, req.files)
        layers = []
        for path in sorted(req.files):
            yield {"status": "parsing GGUF"}
            layers.append(await _file_layer(state, req.files[path]))
        weights = layers[0]  # further files (projectors, splits) are accepted and ignored
        generic = catalog_entry(req.name, time.time_ns())
        base = replace(
            generic,
            weights=weights,
            parameter_count=int(weights.size / 0.6),
            parameters={},
            licenses=(),
            manifest_digest="",
            parent_model="",
        )
    else:
        raise _ApiError(400, "neither 'from' or 'files' was specified")

    inherited = {layer.digest for layer in base.layers}
    created = replace(
        base,
        name=req.name,
        modified_ns=time.time_ns(),
        manifest_digest="",
        template=req.template or base.template,
        system=req.system or base.system,
        parameters={**base.parameters, **req.parameters},
        licenses=(*base.licenses, *_licenses(req.licenses)),
        messages=tuple(req.messages) or base.messages,
    )
    if req.quantize:
        created = _quantized(created, req.quantize)
        yield {
            "status": f"quantizing {base.quantization} model to {created.quantization}",
            "digest": "0000000000000000000",
            "total": base.weights.size,
            "completed": base.weights.size,
        }
    for layer in created.layers:
        known = layer.digest in inherited or state.has_layer(layer.digest)
        yield {"status": f"{'using existing' if known else 'creating new'} layer {layer.digest}"}
    yield {"status": "writing manifest"}
    state.store(created)
    yield {"status": "success"}


def _quantized(entry: ModelEntry, quantize: str) -> ModelEntry:
    wanted = quantize.upper()
    if wanted not in _QUANT_TYPES:
        raise _ApiError(500, f"unsupported quantization type {quantize}")
    if entry.quantization not in _QUANTIZABLE:
        raise _ApiError(500, "quantization is only supported for F16, BF16 and F32 models")
    weights = Layer(
        MEDIA_MODEL,
        sha256_digest(f"{entry.weights.digest}:{wanted}".encode()),
        entry.weights.size * 3 // 10,
    )
    return replace(entry, weights=weights, quantization=wanted)


async def _handle_create(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    try:
        req = _parse_create(await request.read())
    except _ApiError as exc:
        return _json_response({"error": exc.message}, exc.status)
    return await _respond_progress(request, _create_events(state, req), req.stream)
