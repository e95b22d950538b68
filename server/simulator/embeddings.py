"""Embeddings: POST /api/embed and the legacy /api/embeddings, one fixed vector per text."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import sys
import time
from array import array
from typing import Any

from aiohttp import web

from server.simulator.catalog import ModelEntry
from server.simulator.generation import _json_response
from server.simulator.names import ModelName, parse_name
from server.simulator.state import _STATE, _SimState
from server.simulator.validation import (
    _ApiError,
    _check_options,
    _check_status_hook,
    _decode_object,
    _field,
    _float_option,
    _go_quote,
    _int_option,
    _json_kind,
    _parse_keep_alive,
)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_DEFAULT_NUM_CTX = 4096


def _raw_vector(digest: str, text: str, dims: int) -> list[float]:
    """Components in [-1, 1) from a hash of model and text: same text, same vector."""
    seed = f"{digest}\0{text}".encode("utf-8", "surrogatepass")
    values = array("h", hashlib.shake_256(seed).digest(2 * dims))
    if sys.byteorder == "big":
        values.byteswap()  # the same numbers on every machine
    return [value / 32768 for value in values]


def _normalized(vector: list[float]) -> list[float]:
    # Ollama normalizes in float32; eight decimals keep the JSON about as short as Go's.
    norm = max(math.sqrt(sum(value * value for value in vector)), 1e-12)
    return [round(value / norm, 8) for value in vector]


def _model_name(model: str, empty_status: int, empty_message: str) -> ModelName:
    if not model.strip():
        raise _ApiError(empty_status, empty_message)
    name = parse_name(model)
    if not name.valid:
        raise _ApiError(400, "invalid model name")
    return name


def _lookup(state: _SimState, name: ModelName, model: str) -> ModelEntry:
    entry = state.models.get(name.key)
    if entry is None:
        # Unlike chat and generate, the scheduler's error, in double quotes.
        raise _ApiError(404, f"model {_go_quote(model)} not found, try pulling it first")
    return entry


def _inputs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise _ApiError(400, "invalid input type")


def _dimensions(body: dict[str, Any]) -> int:
    value = body.get("dimensions")
    if value is None:
        return 0
    where = "Go struct field EmbedRequest.dimensions of type int"
    if _json_kind(value) != "number":
        raise _ApiError(400, f"json: cannot unmarshal {_json_kind(value)} into {where}")
    if isinstance(value, float) and not value.is_integer():
        raise _ApiError(400, f"json: cannot unmarshal number {value} into {where}")
    return int(value)


async def _compute_delay(state: _SimState, options: dict[str, Any]) -> None:
    # The embedding's compute time is the first-token delay, so tests can catch one in flight.
    delay = _float_option(options, "sim_first_token_delay_ms")
    delay = state.settings.first_token_delay_ms if delay is None else delay
    if delay > 0:
        await asyncio.sleep(delay / 1000)


async def _handle_embed(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    started = time.perf_counter_ns()
    struct = "EmbedRequest"
    try:
        body = _decode_object(await request.read(), struct)
        model = _field(body, "model", "string", struct, "string", "")
        truncate = _field(body, "truncate", "bool", struct, "bool", True)
        dimensions = _dimensions(body)
        options = _field(body, "options", "object", struct, "map[string]interface {}", {})
        keep_alive = _parse_keep_alive(body.get("keep_alive"))
        _check_status_hook(options)
        name = _model_name(model, 404, f"model '{model}' not found")
        inputs = _inputs(body.get("input"))
        entry = _lookup(state, name, model)
        _check_options(options)
        state.mark_loaded(entry, keep_alive, options)
        if not inputs:  # an empty input only loads the model
            return _json_response({"model": model, "embeddings": []})
        num_ctx = _int_option(options, "num_ctx") or 0
        limit = min(num_ctx if num_ctx > 0 else _DEFAULT_NUM_CTX, entry.context_length)
        texts, prompt_tokens = [], 0
        for text in inputs:
            tokens = _TOKEN.findall(text)
            if len(tokens) > limit:
                if not truncate:
                    raise _ApiError(400, "the input length exceeds the context length")
                tokens = tokens[:limit]
                text = " ".join(tokens)
            texts.append(text)
            prompt_tokens += max(len(tokens), 1)
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)

    state.stats.count_embed(len(inputs))
    loaded_ns = time.perf_counter_ns()
    await _compute_delay(state, options)
    embeddings = []
    for text in texts:
        vector = _raw_vector(entry.digest, text, entry.embedding_length)
        if 0 < dimensions < len(vector):
            vector = vector[:dimensions]
        embeddings.append(_normalized(vector))
    state.mark_loaded(entry, keep_alive, options)
    return _json_response(
        {
            "model": model,
            "embeddings": embeddings,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": max(loaded_ns - started, 1),
            "prompt_eval_count": prompt_tokens,
        }
    )


async def _handle_embeddings(request: web.Request) -> web.Response:
    """The legacy endpoint: one prompt, one vector, not normalized, under "embedding"."""
    state = request.app[_STATE]
    struct = "EmbeddingRequest"
    try:
        body = _decode_object(await request.read(), struct)
        model = _field(body, "model", "string", struct, "string", "")
        prompt = _field(body, "prompt", "string", struct, "string", "")
        options = _field(body, "options", "object", struct, "map[string]interface {}", {})
        keep_alive = _parse_keep_alive(body.get("keep_alive"))
        _check_status_hook(options)
        entry = _lookup(state, _model_name(model, 400, "model is required"), model)
        _check_options(options)
        state.mark_loaded(entry, keep_alive, options)
        if not prompt:
            return _json_response({"embedding": []})
    except _ApiError as exc:
        return _json_response({"error": exc.message}, status=exc.status)

    state.stats.count_embed(1)
    await _compute_delay(state, options)
    state.mark_loaded(entry, keep_alive, options)
    return _json_response({"embedding": _raw_vector(entry.digest, prompt, entry.embedding_length)})
