"""POST /api/embed and the legacy POST /api/embeddings, cached per input.

Each input text is its own cache entry (keyed by model, text, truncate, dimensions and options):
a list with some inputs cached sends only the missing ones to Ollama, in one call that waits its
turn in the queue like a generation, and the answer keeps the original order. Re-indexing
unchanged documents costs Ollama nothing. An empty input (Ollama's "load the model") is relayed.
With several Ollama hosts the call goes to one that has the model, and is tried once more on
another if that host fails (refused, a timeout, a 5xx).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from server.errors import BadRequest, GatewayError, ModelNotFound, UpstreamError
from server.gateway import Gateway
from server.handlers.body import read_json
from server.handlers.caller import caller
from server.handlers.native import native_errors, relay_json, request_id
from server.json_checks import lone_surrogate_path, quote
from server.keys import CHAT_INFO, GATEWAY
from server.services.cache import cache_key
from server.services.hosts import host_failed
from server.services.queue import Priority
from server.streams import RequestRecord

routes = web.RouteTableDef()


def _key(kind: str, model: str, text: str, body: dict[str, Any], scope: str | None) -> str:
    extra = {"input": text}
    if scope is not None:
        extra["scope"] = scope
    for name in ("truncate", "dimensions"):
        if body.get(name) is not None:
            extra[name] = body[name]
    return cache_key(model, (), body.get("options"), None, kind=kind, extra=extra)


def _check(body: Any, text_field: str) -> tuple[str, list[str] | str | None]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    where = lone_surrogate_path(body)
    if where is not None:
        raise BadRequest(
            f"{where}: contains a lone UTF-16 surrogate; send valid Unicode text",
            code="invalid_input",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model is required", code="invalid_model")
    if body.get("options") is not None and not isinstance(body["options"], dict):
        raise BadRequest("options: must be an object", code="invalid_options")
    value = body.get(text_field)
    ok = value is None or isinstance(value, str)
    ok = ok or (text_field == "input" and isinstance(value, list))
    if not ok or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
        # Ollama's own words for it.
        raise BadRequest("invalid input type", code=f"invalid_{text_field}")
    return model.strip(), value


@routes.post("/api/embed")
@native_errors
async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter_ns()
    gateway = request.app[GATEWAY]
    body = await read_json(request)
    model, value = _check(body, "input")
    if value is None or value == "" or value == []:
        return await relay_json(gateway, "/api/embed", body)
    inputs = [value] if isinstance(value, str) else list(value)
    rid = request_id(request)
    info: dict[str, Any] = {"request_id": rid, "model": model}
    request[CHAT_INFO] = info
    user = caller(request).name
    vectors, prompt_tokens, cached = await embed_inputs(gateway, rid, model, inputs, body, user)
    info.update(cached=cached, eval_count=0)
    record(gateway, rid, model, "embed", cached=cached, started=started, user=user)
    out: dict[str, Any] = {
        "model": model,
        "embeddings": vectors,
        "total_duration": max(1, time.perf_counter_ns() - started),
    }
    if prompt_tokens:
        out["prompt_eval_count"] = prompt_tokens
    return _json(out, cached=cached, rid=rid)


async def embed_inputs(
    gateway: Gateway,
    rid: str,
    model: str,
    inputs: list[str],
    body: dict[str, Any],
    user: str = "anonymous",
) -> tuple[list[list[float]], int, bool]:
    """The vectors of `inputs` in order, from the cache where it has them and from one
    /api/embed call for the rest; also Ollama's prompt token count and whether all were
    cached. `body` gives the fields that shape a vector (truncate, dimensions, options)."""
    scope = user if gateway.config.cache.scope == "per_key" else None
    keys = [_key("embed", model, text, body, scope) for text in inputs]
    vectors: list[list[float] | None] = [_cached(gateway, k) for k in keys]
    missing = list(dict.fromkeys(t for t, v in zip(inputs, vectors, strict=True) if v is None))
    prompt_tokens = 0
    if missing:
        answer = await _upstream(gateway, rid, user, "/api/embed", {**body, "input": missing})
        fresh = answer.get("embeddings")
        if not isinstance(fresh, list) or len(fresh) != len(missing):
            raise UpstreamError("Ollama answered /api/embed without one embedding per input")
        prompt_tokens = int(answer.get("prompt_eval_count") or 0)
        got = dict(zip(missing, fresh, strict=True))
        for i, text in enumerate(inputs):
            if vectors[i] is None:
                vectors[i] = got[text]
                _store(gateway, keys[i], model, got[text])
    return [v or [] for v in vectors], prompt_tokens, not missing


@routes.post("/api/embeddings")
@native_errors
async def embeddings(request: web.Request) -> web.Response:
    """The legacy endpoint: one `prompt`, `{"embedding": [...]}` (not normalised, as Ollama)."""
    started = time.perf_counter_ns()
    gateway = request.app[GATEWAY]
    body = await read_json(request)
    model, prompt = _check(body, "prompt")
    if not prompt:
        return await relay_json(gateway, "/api/embeddings", body)
    assert isinstance(prompt, str)
    user = caller(request).name
    key = _key(
        "embeddings", model, prompt, body, user if gateway.config.cache.scope == "per_key" else None
    )
    vector = _cached(gateway, key)
    rid = request_id(request)
    request[CHAT_INFO] = {"request_id": rid, "model": model, "cached": vector is not None}
    if vector is None:
        answer = await _upstream(gateway, rid, user, "/api/embeddings", body)
        vector = answer.get("embedding")
        if not isinstance(vector, list):
            raise UpstreamError("Ollama answered /api/embeddings without an embedding")
        _store(gateway, key, model, vector)
        record(gateway, rid, model, "embed", cached=False, started=started, user=user)
        return _json({"embedding": vector}, cached=False, rid=rid)
    record(gateway, rid, model, "embed", cached=True, started=started, user=user)
    return _json({"embedding": vector}, cached=True, rid=rid)


def _cached(gateway: Gateway, key: str) -> list[float] | None:
    hit = gateway.cache.get(key)
    return json.loads(hit.text) if hit is not None else None


def _store(gateway: Gateway, key: str, model: str, vector: list[float]) -> None:
    # Compact JSON: a 768-float vector is ~15 KB as text, counted as such by the cache.
    gateway.cache.put(key, json.dumps(vector, separators=(",", ":")), model, 0)


async def _upstream(
    gateway: Gateway, rid: str, user: str, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """One embedding call to Ollama, in its turn (the user's) like a generation."""
    model = str(body.get("model", ""))
    entry = gateway.queue.enqueue(
        Priority.INTERACTIVE,
        label=rid,
        owner=user,
        max_waiting=gateway.config.auth.max_waiting_per_user,
        model=model,
    )
    outcome = "failed"
    try:
        while True:
            await gateway.queue.wait_turn(entry)
            host = entry.host
            if host is None:
                raise ModelNotFound(
                    f"model {quote(model)} is not served by any Ollama host (the `models` "
                    "lists of [[ollama.hosts]] leave it out)"
                )
            try:
                status, _, data = await host.client.send("POST", path, json_body=body)
                if status >= 400:
                    err = UpstreamError(f"Ollama answered HTTP {status} to {path}", status=502)
                    err.upstream_status = status
                    try:
                        err.upstream_text = str(json.loads(data).get("error") or data.decode())
                    except (ValueError, AttributeError):
                        err.upstream_text = data.decode(errors="replace")
                    raise err
            except GatewayError as exc:
                gateway.hosts.note_failure(host, exc)
                # Once, on another host that has the model: nothing has reached the client.
                if entry.exclude or not host_failed(exc):
                    raise
                if not gateway.queue.reroute(entry, host):
                    raise
                continue
            gateway.hosts.note_success(host, model)
            outcome = "completed"
            answer: dict[str, Any] = json.loads(data)
            return answer
    finally:
        # No generation time: a quick embedding would make the queue's ETAs too hopeful.
        gateway.queue.release(entry, outcome)


def record(
    gateway: Gateway,
    rid: str,
    model: str,
    endpoint: str,
    *,
    cached: bool,
    started: int,
    user: str = "anonymous",
) -> None:
    ms = round((time.perf_counter_ns() - started) / 1e6)
    gateway.record(
        RequestRecord(rid, model, endpoint, cached=cached, ttft_ms=ms, total_ms=ms, user=user)
    )


def _json(obj: dict[str, Any], *, cached: bool, rid: str) -> web.Response:
    return web.json_response(
        obj, headers={"X-Cache": "HIT" if cached else "MISS", "X-Request-Id": rid}
    )
