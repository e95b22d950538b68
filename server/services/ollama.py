"""The Ollama client: NDJSON chat streaming, metadata calls, warm-up, and error translation.

This is the only module that sees aiohttp client errors and asyncio timeouts; it translates them
into `server.errors` so nothing above it has to know which HTTP library talks to Ollama.
aiohttp's ClientSession was chosen over httpx.AsyncClient by measurement (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from server.errors import (
    BadRequest,
    GatewayError,
    ModelNotFound,
    OllamaUnreachable,
    UpstreamError,
    UpstreamTimeout,
)
from server.json_checks import quote

log = logging.getLogger("chatbot.ollama")

# An NDJSON line from Ollama: what it says, and its bytes as they came (without the newline),
# which a native client is sent unchanged.
Line = tuple[dict[str, Any], bytes]

# Metadata calls (version, tags, probe) must answer quickly or Ollama counts as unreachable.
_META_TIMEOUT_S = 5.0


@dataclass
class OllamaCounters:
    requests: int = 0
    errors: int = 0
    tokens_generated: int = 0


class OllamaClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 300,
        connect_timeout_s: float = 5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.counters = OllamaCounters()
        # None until the first probe; then the outcome of the latest contact with Ollama.
        self.reachable: bool | None = None
        self.version: str | None = None
        self.last_error: str | None = None
        self.latency_ms: float | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.open()

    def open(self) -> None:
        """Make the connection pool (needs a running loop; no I/O)."""
        if self._session is None:
            # No pool limit here: the queue decides how many generations run at once.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=self._timeout(),
                # Ollama rejects unknown Host headers; aiohttp sends the one of base_url.
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def configure(self, base_url: str, timeout_s: float, connect_timeout_s: float) -> None:
        """Take new settings; the next request uses them (open streams keep theirs)."""
        if base_url.rstrip("/") != self.base_url:
            self.reachable, self.version = None, None
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    def _timeout(self) -> aiohttp.ClientTimeout:
        # No total limit: a long answer is fine as long as chunks keep coming.
        return aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout_s, sock_read=self.timeout_s
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OllamaClient.start() was not awaited")
        return self._session

    # -- chat -------------------------------------------------------------------------------

    async def chat_stream(
        self, payload: dict[str, Any], path: str = "/api/chat"
    ) -> AsyncIterator[list[Line]]:
        """Yield Ollama's chunks of /api/chat (or /api/generate) as they arrive, one list per
        read from the socket (several lines when the gateway lags behind), the last list
        ending with the `done` chunk; raise GatewayError on failure.

        Closing the generator early (a client went away) closes the upstream connection, which
        is how Ollama learns to stop generating.
        """
        url = f"{self.base_url}{path}"
        model = payload.get("model", "")
        self.counters.requests += 1
        with self._errors(count=True):
            async with self.session.post(
                url, json={**payload, "stream": True}, timeout=self._timeout()
            ) as resp:
                if resp.status >= 400:
                    raise await self._http_error(resp, model)
                self._mark_reachable()
                watch = _ReadWatch(resp, self.timeout_s)
                # aclosing: returning from inside the loop closes the parser now, not through
                # asyncio's finalizer hook (a self-pipe write and a loop pass per stream).
                async with watch, contextlib.aclosing(_ndjson(resp, watch)) as reads:
                    async for lines in reads:
                        for i, (chunk, _) in enumerate(lines):
                            if "error" in chunk:
                                if i:  # what came before the error is part of the answer
                                    yield lines[:i]
                                err = UpstreamError(f"Ollama failed mid-answer: {chunk['error']}")
                                err.upstream_text = str(chunk["error"])
                                raise err
                            if chunk.get("done"):
                                self.counters.tokens_generated += int(chunk.get("eval_count") or 0)
                                yield lines[: i + 1]
                                return
                        yield lines
                raise UpstreamError("Ollama closed the stream before the answer was complete")

    async def chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One non-streamed /api/chat call (used for warm-up and load/unload)."""
        url = f"{self.base_url}/api/chat"
        self.counters.requests += 1
        with self._errors(count=True):
            async with self.session.post(
                url, json={**payload, "stream": False}, timeout=self._timeout()
            ) as resp:
                if resp.status >= 400:
                    raise await self._http_error(resp, payload.get("model", ""))
                self._mark_reachable()
                data: dict[str, Any] = await resp.json(content_type=None)
                return data

    # -- relaying the rest of Ollama's API as it is ----------------------------------------------

    async def send(
        self, method: str, path: str, *, json_body: Any = None
    ) -> tuple[int, str, bytes]:
        """One request relayed whole: (status, Content-Type, body). Unreachable raises."""
        with self._errors(count=False):
            async with self.session.request(
                method, f"{self.base_url}{path}", json=json_body, timeout=self._timeout()
            ) as resp:
                body = await resp.read()
                self._mark_reachable()
                return resp.status, resp.headers.get("Content-Type", ""), body

    async def relay(
        self, method: str, path: str, *, json_body: Any = None, data: Any = None
    ) -> AsyncIterator[tuple[int, str] | bytes]:
        """A request whose answer is relayed as it comes: first (status, Content-Type), then the
        body in pieces as they arrive (a pull's progress lines). `data` may be an async iterator
        of bytes: an upload streamed through, never held whole."""
        with self._errors(count=False):
            async with self.session.request(
                method,
                f"{self.base_url}{path}",
                json=json_body,
                data=data,
                timeout=self._timeout(),
            ) as resp:
                self._mark_reachable()
                yield resp.status, resp.headers.get("Content-Type", "")
                async for piece in resp.content.iter_any():
                    yield piece

    async def warm_up(self, model: str, keep_alive: str) -> bool:
        """Ask Ollama to load the model (an empty chat request); log and report the outcome."""
        started = time.perf_counter()
        try:
            await self.chat(
                {"model": model, "messages": [], "keep_alive": keep_alive_value(keep_alive)}
            )
        except GatewayError as exc:
            log.warning("warm-up of %s failed: %s", model, exc.message)
            return False
        log.info("model %s loaded in %.0f ms", model, (time.perf_counter() - started) * 1000)
        return True

    # -- metadata ---------------------------------------------------------------------------

    async def get_version(self) -> str:
        data = await self._get_json("/api/version")
        return str(data.get("version", ""))

    async def list_models(self) -> list[dict[str, Any]]:
        data = await self._get_json("/api/tags")
        return list(data.get("models") or [])

    async def list_running(self) -> list[dict[str, Any]]:
        """The models loaded in memory now (GET /api/ps)."""
        data = await self._get_json("/api/ps")
        return list(data.get("models") or [])

    async def probe(self) -> bool:
        """Check reachability (GET /api/version); updates `reachable`, `version`, `latency_ms`."""
        started = time.perf_counter()
        try:
            self.version = await self.get_version()
        except GatewayError as exc:
            if self.reachable is not False:
                log.warning("%s", exc.message)
            self.reachable = False
            self.last_error = exc.message
            return False
        self.latency_ms = (time.perf_counter() - started) * 1000
        if self.reachable is False:
            log.info("Ollama at %s is reachable again", self.base_url)
        self._mark_reachable()
        return True

    async def _get_json(self, path: str) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        timeout = aiohttp.ClientTimeout(total=_META_TIMEOUT_S, connect=self.connect_timeout_s)
        with self._errors(count=False):
            async with self.session.get(url, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise await self._http_error(resp, "")
                data = await resp.json(content_type=None)
                if not isinstance(data, dict):
                    raise UpstreamError(
                        f"Ollama at {self.base_url} sent unexpected JSON for {path}"
                    )
                return data

    # -- error translation ------------------------------------------------------------------

    def _mark_reachable(self) -> None:
        self.reachable = True
        self.last_error = None

    async def _http_error(self, resp: aiohttp.ClientResponse, model: str) -> GatewayError:
        text = (await resp.text(errors="replace")).strip()
        try:
            message = str(json.loads(text).get("error") or text)
        except (ValueError, AttributeError):
            message = text or resp.reason or "no details"
        self._mark_reachable()  # it answered, so it is up
        message = message if len(message) <= 300 else message[:299] + "…"
        err = self._http_error_of(resp, model, message)
        err.upstream_text, err.upstream_status = message, resp.status
        return err

    def _http_error_of(
        self, resp: aiohttp.ClientResponse, model: str, message: str
    ) -> GatewayError:
        if resp.status == 404 and model:
            return ModelNotFound(
                f"model {quote(model)} not found in Ollama at {self.base_url} "
                f"(Ollama said: {message}); pull it with `ollama pull {model[:80]}`"
            )
        if resp.status == 400:
            return BadRequest(f"Ollama rejected the request: {message}", code="upstream_rejected")
        if resp.status == 503:
            # Ollama's own "busy" (OLLAMA_MAX_QUEUE reached): the client may retry, as with ours.
            return UpstreamError(
                f"Ollama is busy: {message}",
                code="upstream_busy",
                status=503,
                headers={"Retry-After": resp.headers.get("Retry-After", "5")},
            )
        return UpstreamError(f"Ollama answered HTTP {resp.status}: {message}")

    @contextlib.contextmanager
    def _errors(self, *, count: bool) -> Iterator[None]:
        """Every failure inside leaves as a GatewayError (counted, for chat calls)."""
        try:
            yield
        except GatewayError:
            if count:
                self.counters.errors += 1
            raise
        except Exception as exc:
            if count:
                self.counters.errors += 1
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> GatewayError:
        """Lower-level errors become the gateway's error tree here and nowhere else."""
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL):
            self.reachable = False
            self.last_error = f"Ollama not reachable at {self.base_url}"
            return OllamaUnreachable(f"Ollama not reachable at {self.base_url} ({_reason(exc)})")
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            self.reachable = False
            return OllamaUnreachable(
                f"Ollama not reachable at {self.base_url} "
                f"(no connection within {self.connect_timeout_s:g} s)"
            )
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(
                f"Ollama at {self.base_url} sent nothing for {self.timeout_s:g} s "
                "([ollama].timeout_seconds)"
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return UpstreamError(f"Ollama at {self.base_url} closed the connection mid-answer")
        if isinstance(exc, aiohttp.ClientError | ValueError):
            return UpstreamError(f"talking to Ollama at {self.base_url} failed: {_reason(exc)}")
        return GatewayError(f"unexpected error talking to Ollama: {type(exc).__name__}")


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "os_error", None)
    return (getattr(inner, "strerror", None) or str(exc) or type(exc).__name__).strip()


def keep_alive_value(value: str) -> str | float:
    """Ollama takes a number of seconds or a Go duration string; "10" alone would be a 400."""
    try:
        return float(value)
    except ValueError:
        return value


class _ReadWatch:
    """A streamed body's read timeout (`[ollama].timeout_seconds`), checked once per timeout
    rather than re-armed on every read: aiohttp's sock_read makes and cancels a timer per read
    (a tenth of a relayed token's CPU). sock_read still covers the wait for the headers.

    When nothing was read for `timeout_s`, the body's reader fails with TimeoutError, as
    aiohttp's own read timeout would, which the caller translates to UpstreamTimeout."""

    def __init__(self, resp: aiohttp.ClientResponse, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = resp.content
        self._timeout_s = timeout_s
        self.last = self._loop.time()  # of the latest read; the reader sets it
        if resp.connection is not None and resp.connection.protocol is not None:
            resp.connection.protocol.read_timeout = None  # from here on, this watch's job
        self._handle = self._loop.call_later(timeout_s, self._check)

    def _check(self) -> None:
        idle = self._loop.time() - self.last
        if idle < self._timeout_s:
            self._handle = self._loop.call_later(self._timeout_s - idle, self._check)
        else:
            self._content.set_exception(TimeoutError(f"nothing read for {idle:.1f} s"))

    async def __aenter__(self) -> _ReadWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._handle.cancel()


async def _ndjson(
    resp: aiohttp.ClientResponse, watch: _ReadWatch
) -> AsyncGenerator[list[Line], None]:
    """Parse an NDJSON body: the complete lines of each read, buffering a line that arrives
    split across reads. A line ends at a newline byte only: U+2028 or NEL in a string is text."""
    pending = b""
    loop = asyncio.get_running_loop()
    async for data in resp.content.iter_any():
        watch.last = loop.time()
        if b"\n" not in data:
            pending += data
            continue
        *lines, pending = (pending + data).split(b"\n") if pending else data.split(b"\n")
        parsed = [_loads(line) for line in lines if line and not line.isspace()]
        if parsed:
            yield parsed
    if pending and not pending.isspace():
        yield [_loads(pending)]


def _loads(line: bytes) -> Line:
    """A line and what it says. orjson: every relayed token's line is parsed here (json.loads
    was a fifth of the gateway's CPU per token). orjson turns an integer past 64 bits into a
    float, so a tool call's line (arguments are arbitrary JSON) goes through json, as does
    what orjson refuses but json reads (a lone surrogate's escape)."""
    try:
        obj = json.loads(line) if b'"tool_calls"' in line else orjson.loads(line)
    except ValueError:
        try:
            obj = json.loads(line)
        except ValueError:
            raise UpstreamError(f"Ollama sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"Ollama sent a line that is not a JSON object: {line[:80]!r}")
    return obj, line
