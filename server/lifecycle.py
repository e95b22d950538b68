"""ServerHost: owns the HTTP server's lifecycle on a loop (start, stop, restart on a new config).

The headless CLI and the desktop app both use it; the Gateway (and so the cache) outlives
restarts of the HTTP side.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from aiohttp import web

from server.app import create_app
from server.auth import check_exposure
from server.config import Config
from server.connections import (
    ACCEPT_BURST,
    ConnectionGuard,
    GuardedRunner,
    open_files_limit,
    raise_open_files_limit,
)
from server.fast_wire import WIRE_HITS, WireHits
from server.gateway import SERVER_RESTART, SHUTDOWN, Gateway
from server.keys import ACTIVE_STREAMS

log = logging.getLogger("chatbot.http")


class PortInUse(OSError):
    """The configured port is taken by another program."""

    def __init__(self, host: str, port: int):
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} on {host} is already in use by another program; choose another with "
            f"[server].port in the config file or PORT={port + 1 if port < 65535 else 8081}",
        )
        self.host, self.port = host, port


class ServerHost:
    def __init__(
        self, gateway: Gateway, *, port_override: int | None = None, drain_seconds: float = 10.0
    ) -> None:
        self.gateway = gateway
        # How long in-flight streams may finish on stop/restart before they are cancelled.
        self.drain_seconds = drain_seconds
        # Tests and benchmarks bind port 0 (any free port); the config itself insists on 1..65535.
        self._port_override = port_override
        self._runner: GuardedRunner | None = None
        # Streams of old servers still given time to finish, and what ends that wait early.
        self._draining: set[asyncio.Task[Any]] = set()
        self._hurry: set[asyncio.Event] = set()
        self._limits_checked = False
        self.port: int | None = None

    @property
    def config(self) -> Config:
        return self.gateway.config

    @property
    def url(self) -> str:
        host = self.config.server.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def connections(self) -> ConnectionGuard | None:
        """The serving listener's connection guard (counts, the cap), while it serves."""
        return self._runner.guard if self._runner is not None else None

    @property
    def wire_hits(self) -> WireHits | None:
        """The serving listener's wire path for known hits (server/fast_wire.py)."""
        return self._runner.app[WIRE_HITS] if self._runner is not None else None

    @property
    def streams_in_flight(self) -> int:
        """Streams still running: on the serving listener, and on old ones being drained."""
        serving = len(self._runner.app[ACTIVE_STREAMS]) if self._runner is not None else 0
        return serving + sum(1 for task in self._draining if not task.done())

    def finish_now(self) -> None:
        """Stop waiting for streams in flight (Quit now): a drain under way ends them at once,
        as if its time had run out."""
        for event in self._hurry:
            event.set()

    async def start(self) -> None:
        """Start the gateway's services (once) and bind the HTTP server."""
        if not self._limits_checked:
            self._limits_checked = True
            raise_open_files_limit(self.config)
        await self.gateway.start()
        await self._bind()

    async def _bind(self) -> None:
        check_exposure(self.config)  # raises Exposed: non-loopback, no keys, not on purpose
        host = self.config.server.host
        port = self.config.server.port if self._port_override is None else self._port_override
        limits = open_files_limit()
        guard = ConnectionGuard(
            lambda: self.gateway.config.server, open_files=limits.soft if limits else None
        )
        # handler_cancellation: a client that disconnects cancels its handler, which closes the
        # upstream generation even while no byte is being written (waiting for a first token).
        app = create_app(self.gateway)
        runner = GuardedRunner(
            app,
            guard,
            wire=app[WIRE_HITS].answer,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.drain_seconds,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=ACCEPT_BURST)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from exc
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        upstream = ", ".join(h.url for h in self.gateway.hosts.hosts)
        log.info("serving on %s (Ollama at %s)", self.url, upstream)

    async def _unbind(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await _stop_listening(runner)
            await self._drain(runner, SHUTDOWN)

    async def _drain(self, runner: GuardedRunner, reason: str) -> None:
        """Let streams in flight finish for `drain_seconds` (or until `finish_now()`), end the
        rest with an error frame (their handlers catch the cancellation) and record them as
        ended by `reason` (server_restart or shutdown, not a client disconnect), then close the
        old server."""
        active = runner.app[ACTIVE_STREAMS]
        streams = set(active)
        if streams:
            log.info(
                "waiting up to %g s for %d stream(s) to finish", self.drain_seconds, len(streams)
            )
            hurry = asyncio.Event()
            self._hurry.add(hurry)
            self._draining |= streams
            try:
                pending = await _wait_until(streams, self.drain_seconds, hurry)
            finally:
                self._hurry.discard(hurry)
                self._draining -= streams
            if pending:
                why = "the server restarts" if reason == SERVER_RESTART else "the server stops"
                log.info("ending %d stream(s) still running: %s", len(pending), why)
                self.gateway.interrupt(pending, reason)
                await asyncio.wait(pending, timeout=1.0)
        await runner.cleanup()

    async def restart(self, config: Config | None = None) -> None:
        """Rebind (e.g. on a new host/port) keeping the gateway, its cache and its queue.

        The old listener closes first, so the port is free for the new one at once; requests
        in flight on the old server get `drain_seconds` to finish while the new one already
        serves, then are stopped (a stream ends with a `server_restarting` error frame).
        Raises PortInUse if the new address is taken (nothing listens then).
        """
        if config is not None:
            self.gateway.apply_config(config)
        old, self._runner = self._runner, None
        if old is not None:
            await _stop_listening(old)
        try:
            await self._bind()
        finally:
            if old is not None:
                await self._drain(old, SERVER_RESTART)

    async def stop(self) -> None:
        await self._unbind()
        await self.gateway.close()


async def _wait_until(
    tasks: set[asyncio.Task[Any]], seconds: float, hurry: asyncio.Event
) -> set[asyncio.Task[Any]]:
    """Wait for the tasks for `seconds` or until `hurry` is set; return those still running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    pending = set(tasks)
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        while pending and not hurry.is_set() and (left := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait(
                {*pending, hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
    finally:
        hurried.cancel()
    return {task for task in tasks if not task.done()}


async def _stop_listening(runner: web.AppRunner) -> None:
    """Close the listening sockets (the port is free at once); open connections carry on."""
    for site in list(runner.sites):
        await site.stop()
