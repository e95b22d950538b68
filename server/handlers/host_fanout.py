"""Ollama's metadata and model management over several hosts: which hosts a call goes to, and
one answer made of theirs.

The rule (also in README, "Several Ollama hosts"):

- `X-Ollama-Host: <url or index>` names one host: the call goes there only, answered as that
  Ollama answers it. A name that is no host is a 400 listing the hosts.
- Otherwise, with one host, every call is relayed to it as it is. With several:
  - `/api/tags` and `/v1/models` list the union, one entry per name; its details are those of
    the first host in `[[ollama.hosts]]` order that has it, and `hosts` says where it is.
    `/api/ps` lists every host's loaded models, each with its `host`. A host that does not
    answer is left out (its models cannot be served anyway); if none answers, the error is the
    first host's.
  - `/api/show` and `/api/push` go to the first host that has the model; `/` and
    `/api/version` to the first host that is not down.
  - `pull` goes to every host that is not down and whose `models` allow-list admits the name
    (a host that may not serve a model has no use for it), one host after the other. Progress
    lines carry `host`; the last line is one `success` when every host succeeded, else an
    error naming the hosts that failed (and those that succeeded).
  - `delete` goes to every host that is not down: 200 if any had the model; 404 if none did.
  - `copy` goes to every host that is not down and has the source.
  - `create` with `files` or `adapters` (blobs uploaded first) goes to the first host that is not
    down, where blob uploads without the header go too; otherwise, like pull, to every host
    that admits the new name (and has `from`, when some host does).
  Afterwards each host that changed is re-read (`HostPool.refresh`), so routing sees it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

from aiohttp import web

from server.errors import BadRequest, GatewayError, UpstreamError, UpstreamTimeout
from server.gateway import Gateway
from server.services.cache import normalize_model
from server.services.hosts import Host, HostPool

log = logging.getLogger("chatbot.ollama")

Relayed = AsyncGenerator[tuple[int, str] | bytes, None]
HOST_HEADER = "X-Ollama-Host"
NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"
# A host's tags or ps that take longer than this are left out of the union.
META_TIMEOUT_S = 5.0


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# -- which hosts ---------------------------------------------------------------------------------


def named_host(request: web.Request, pool: HostPool) -> Host | None:
    """The host the client named in X-Ollama-Host, or None; a name that is no host is a 400."""
    value = request.headers.get(HOST_HEADER)
    if value is None:
        return None
    host = pool.by_url(value.strip())
    if host is None:
        listed = ", ".join(f"{i} = {h.url}" for i, h in enumerate(pool.hosts))
        raise BadRequest(
            f"{HOST_HEADER}: {value[:200]!r} is none of the gateway's Ollama hosts; "
            f"name one by URL or index ({listed})",
            code="unknown_host",
        )
    return host


def reachable(pool: HostPool) -> list[Host]:
    """Hosts not known to be down, in configured order; all of them when every one is down
    (so the client gets a real error rather than none)."""
    alive = [h for h in pool.hosts if h.state != "down"]
    return alive or list(pool.hosts)


def holding(pool: HostPool, model: str) -> list[Host]:
    """Hosts not down that have the model; the first reachable host when none has it (its
    answer, e.g. Ollama's 404, is the one the client gets)."""
    found = [h for h in reachable(pool) if h.has(model)]
    return found or reachable(pool)[:1]


def management_targets(pool: HostPool, action: str, body: Any) -> list[Host]:
    """Where a management call goes without X-Ollama-Host (the rule in the module docstring)."""
    body = body if isinstance(body, dict) else {}
    name = str(body.get("model") or body.get("name") or "")
    alive = reachable(pool)
    if action == "pull":
        return [h for h in alive if h.allows(name)]
    if action == "delete":
        return alive
    if action == "copy":
        source = str(body.get("source") or "")
        return [h for h in alive if h.has(source)] or alive[:1]
    if action == "create":
        if body.get("files") or body.get("adapters"):
            return alive[:1]
        admitted = [h for h in alive if h.allows(name)]
        source = str(body.get("from") or "")
        with_source = [h for h in admitted if source and h.has(source)]
        return with_source or admitted
    return holding(pool, name)[:1]  # push, and anything else about one model


def no_target(action: str, body: Any) -> GatewayError:
    name = str(body.get("model") or body.get("name") or "") if isinstance(body, dict) else ""
    return BadRequest(
        f"no Ollama host may take {action} of {name[:200]!r}: every host's models allow-list "
        f"([[ollama.hosts]] models) leaves it out; name one with {HOST_HEADER}",
        code="no_host",
    )


# -- metadata: one answer from all hosts ---------------------------------------------------------


async def _json_of(host: Host, path: str) -> dict[str, Any]:
    async with asyncio.timeout(META_TIMEOUT_S):
        status, _, data = await host.client.send("GET", path)
    if status != 200:
        raise UpstreamError(f"Ollama at {host.url} answered {path} with {status}")
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise UpstreamError(f"Ollama at {host.url} sent unexpected JSON for {path}")
    return parsed


async def _from_each(hosts: Sequence[Host], path: str) -> list[tuple[Host, dict[str, Any]]]:
    """Each host's JSON answer, in host order; hosts that fail are logged and left out, and if
    all fail the first one's error is raised."""
    results = await asyncio.gather(*(_json_of(h, path) for h in hosts), return_exceptions=True)
    answers: list[tuple[Host, dict[str, Any]]] = []
    first_error: BaseException | None = None
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, (GatewayError, TimeoutError, ValueError)):
                raise result
            log.info("%s left out of %s: %s", host.url, path, result or "timed out")
            first_error = first_error or result
        else:
            answers.append((host, result))
    if not answers and first_error is not None:
        if isinstance(first_error, GatewayError):
            raise first_error
        if isinstance(first_error, TimeoutError):
            raise UpstreamTimeout(f"no Ollama host answered {path} within {META_TIMEOUT_S:g} s")
        raise UpstreamError(f"no Ollama host sent JSON for {path} ({first_error})")
    return answers


async def union_tags(gateway: Gateway) -> list[dict[str, Any]]:
    """The models of every host that answers, one entry per name (the first host's details),
    each with the `hosts` that have it."""
    pool = gateway.hosts
    merged: dict[str, dict[str, Any]] = {}
    for host, answer in await _from_each(reachable(pool), "/api/tags"):
        for entry in answer.get("models") or []:
            if not isinstance(entry, dict):
                continue
            name = normalize_model(str(entry.get("name") or entry.get("model") or ""))
            if name not in merged:
                merged[name] = {**entry, "hosts": []}
            merged[name]["hosts"].append(host.url)
    return list(merged.values())


async def union_ps(gateway: Gateway) -> list[dict[str, Any]]:
    """Every host's loaded models, each with its `host`: the same model loaded on two hosts is
    two entries, as it takes memory on both."""
    return [
        {**entry, "host": host.url}
        for host, answer in await _from_each(reachable(gateway.hosts), "/api/ps")
        for entry in answer.get("models") or []
        if isinstance(entry, dict)
    ]


def json_answer(obj: Any) -> web.Response:
    return web.Response(body=_compact(obj), headers={"Content-Type": JSON})


# -- management: one call on several hosts -------------------------------------------------------


def _error_of(data: bytes, status: int) -> str:
    with contextlib.suppress(ValueError):
        parsed = json.loads(data)
        if isinstance(parsed, dict) and parsed.get("error"):
            return str(parsed["error"])
    return f"HTTP {status}"


def _summary(action: str, failed: list[tuple[Host, str]], done: list[Host]) -> str:
    text = f"{action} failed on " + "; ".join(f"{h.url} ({why})" for h, why in failed)
    if done:
        text += "; succeeded on " + ", ".join(h.url for h in done)
    return text


async def whole_on_each(
    hosts: Sequence[Host], action: str, method: str, path: str, body: Any
) -> tuple[web.Response, list[Host]]:
    """One small call (delete, copy) on every host at once; the answer and the hosts it changed.

    200 when it worked somewhere and failed nowhere; a host without the model (404) does not
    count as a failure unless no host had it (then that 404 is the answer)."""
    results = await asyncio.gather(
        *(h.client.send(method, path, json_body=body) for h in hosts), return_exceptions=True
    )
    done: list[Host] = []
    failed: list[tuple[Host, str, int]] = []
    missing: tuple[int, str, bytes] | None = None
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, GatewayError):
            failed.append((host, result.message, result.status))
        elif isinstance(result, BaseException):
            raise result
        elif result[0] == 200:
            done.append(host)
        elif result[0] == 404:
            missing = missing or result
        else:
            failed.append((host, _error_of(result[2], result[0]), result[0]))
    if failed:
        text = _summary(action, [(h, why) for h, why, _ in failed], done)
        return web.Response(
            status=failed[0][2], body=_compact({"error": text}), headers={"Content-Type": JSON}
        ), done
    if done or missing is None:
        response = web.Response(status=200)
        response.headers.pop("Content-Type", None)  # Ollama's bare 200, as for one host
        return response, done
    status, content_type, data = missing
    return web.Response(status=status, body=data, headers={"Content-Type": content_type}), done


class ProgressFanOut:
    """pull or create on several hosts, one after the other, as one answer: each host's
    progress lines with its `host`, then one `success` line when all succeeded, or an error line
    naming the hosts that failed. With `stream: false`, one JSON object at the end."""

    def __init__(self, request: web.Request, action: str, body: Any) -> None:
        self.request = request
        self.action = action
        self.body = body
        self.stream = not (isinstance(body, dict) and body.get("stream") is False)
        self.resp = web.StreamResponse(
            headers={"Content-Type": NDJSON if self.stream else JSON, "X-Accel-Buffering": "no"}
        )
        self.done: list[Host] = []
        self.failed: list[tuple[Host, str]] = []
        self.failed_status = 0  # the first failure's HTTP status, for a `stream: false` answer
        self.gone = False  # the client went away

    async def run(self, hosts: Sequence[Host]) -> None:
        """Relay each host's progress in turn; `finish()` writes the last line."""
        if self.stream:
            await self.resp.prepare(self.request)
        try:
            for host in hosts:
                await self._one(host)
                if self.gone:
                    return
        except asyncio.CancelledError:
            await self._write(
                {"error": "the gateway stopped or restarted before this was complete"}
            )
            raise

    async def finish(self) -> web.StreamResponse:
        if self.gone:
            return self.resp
        if self.failed:
            if not self.stream:
                self.resp.set_status(self.failed_status or 502)
            await self._write({"error": _summary(self.action, self.failed, self.done)})
        else:
            await self._write({"status": "success"})
        with contextlib.suppress(ConnectionResetError):
            await self.resp.write_eof()
        return self.resp

    async def _one(self, host: Host) -> None:
        last: dict[str, Any] = {}
        held = bytearray()
        try:
            path = f"/api/{self.action}"
            relay = cast(Relayed, host.client.relay("POST", path, json_body=self.body))
            async with contextlib.aclosing(relay) as relayed:
                head = await anext(relayed)
                assert isinstance(head, tuple)
                status = head[0]
                async for piece in relayed:
                    assert isinstance(piece, bytes)
                    held += piece
                    *lines, rest = held.split(b"\n")
                    held[:] = rest
                    for line in lines:
                        last = await self._line(bytes(line), host) or last
                        if self.gone:
                            return
                last = await self._line(bytes(held), host) or last
        except GatewayError as exc:
            self._fail(host, exc.message, exc.status)
            return
        if status == 200 and last.get("status") == "success":
            self.done.append(host)
        else:
            self._fail(host, str(last.get("error") or f"HTTP {status}"), status)

    def _fail(self, host: Host, why: str, status: int) -> None:
        self.failed.append((host, why))
        if not self.failed_status:
            # A 200 whose stream ended in an error line is the host's failure: 502.
            self.failed_status = status if status >= 400 else 502

    async def _line(self, line: bytes, host: Host) -> dict[str, Any] | None:
        """Pass a progress line on with its host; hold back `success` and errors for the end."""
        if not line.strip():
            return None
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return None
        if "error" in parsed or parsed.get("status") == "success":
            return parsed
        if self.stream:
            await self._write({**parsed, "host": host.url})
        return parsed

    async def _write(self, obj: dict[str, Any]) -> None:
        if self.gone:
            return
        if not self.resp.prepared:
            await self.resp.prepare(self.request)
        try:
            await self.resp.write(_compact(obj) + (b"\n" if self.stream else b""))
        except ConnectionResetError:
            self.gone = True
