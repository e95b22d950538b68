"""The bridge between the gateway and the widgets: state, snapshots, commands, notifications.

It owns the Gateway and the ServerHost (the same lifecycle object the headless CLI uses), reads
a snapshot once a second (no HTTP to itself, no blocking) and reports through Qt signals; the
tray and the dashboard only render what it emits and call its commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from app.chart_history import ChartHistory, chart_values
from server.config import Config
from server.gateway import Gateway
from server.lifecycle import PortInUse, ServerHost
from server.logs import LogBuffer

log = logging.getLogger("chatbot.ui")

# "Ollama unreachable" is told at most this often; "Ollama is back" is told once after each
# "unreachable" that was told (and never otherwise), however soon it comes.
NOTIFY_EVERY_S = 60.0
# At most this many log lines are handed to the widgets per batch (the tail keeps 500).
LOG_BATCH_MAX = 200
# The hit-rate chart shows the rate over this many seconds.
HIT_RATE_WINDOW_S = 60.0
# Requests per second are taken over this many seconds.
_RATE_WINDOW_S = 5.0
# What Ollama has installed and loaded is asked this often, in the background: two HTTP calls
# are too many for the once-a-second snapshot, and a model loads or unloads rarely.
MODELS_EVERY_S = 10.0


TIER_LABELS = {"sqlite": "disk", "redis": "Redis"}


def _tier_told(name: str, tier: dict[str, Any]) -> str:
    """A tier in the flush notice: "disk 40", or "Redis not cleared (down)"."""
    label = TIER_LABELS.get(name, name)
    if tier.get("state") != "up":
        return f"{label} not cleared ({tier.get('state')})"
    return f"{label} {int(tier.get('entries', 0)):,}"


class Controller(QObject):
    snapshot_ready = Signal(dict)
    state_changed = Signal(str, str)  # state, message
    notify = Signal(str, str)  # title, message
    log_line = Signal(str)  # one or more log lines, newline-separated, a few times a second
    quitting = Signal(int)  # answers still streaming while Quit waits for them; 0 when done
    # A restart is over: (True, the API URL it serves on) or (False, why it failed).
    restart_ended = Signal(bool, str)

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        port_override: int | None = None,
        drain_seconds: float = 10.0,
        config_problems: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.config_path = config_path
        # desktop: [cache].backend "auto" keeps answers in a SQLite file across restarts.
        self.gateway = Gateway(config, desktop=True)
        self.host = ServerHost(
            self.gateway, port_override=port_override, drain_seconds=drain_seconds
        )
        self.state, self.message = "starting", "Starting…"
        self.config_problems = config_problems or []
        self._rates: deque[tuple[float, int]] = deque()
        self._lookups: deque[tuple[float, int, int]] = deque()  # (time, hits, misses)
        self._recent_hit_rate: float | None = None
        # What the dashboard's charts plot: 5 min, 1 h and since start, bounded.
        self.history = ChartHistory()
        self._ollama_up: bool | None = None
        self._last_notice: dict[str, float] = {}
        self._told_down = False  # "Ollama unreachable" was told, "Ollama is back" not yet
        # With several hosts: each one's last state, and those told down and not yet back.
        self._host_states: dict[str, Any] = {}
        self._hosts_told_down: set[str] = set()
        self._busy: asyncio.Task[None] | None = None
        # A restart asked for while one runs (with its configuration, if any): done after it.
        self._again: tuple[Config | None] | None = None
        # The latest gateway.models_overview(); None until the first answer.
        self._models: dict[str, Any] | None = None
        self._models_task: asyncio.Task[None] | None = None
        self.logs = LogBuffer().attach()
        # Under load the log runs at thousands of lines a second: widgets get them in batches
        # (one append every 500 ms, at most the last 200 lines), not one Qt call per line.
        self._pending_lines: deque[logging.LogRecord] = deque(maxlen=LOG_BATCH_MAX)
        self.logs.subscribers.append(self._pending_lines.append)
        self._log_timer = QTimer(self)
        self._log_timer.setInterval(500)
        self._log_timer.timeout.connect(self.flush_log)
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self.tick)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._timer.start()
        self._log_timer.start()
        if self.config_problems:
            self._notify("config", "Configuration problem", "; ".join(self.config_problems))
        await self._bring_up(self.host.start(), "start")
        self._models_task = asyncio.ensure_future(self._models_loop())

    async def _bring_up(self, action: Awaitable[None], verb: str) -> None:
        """Start or restart the server, and show how it went."""
        try:
            await action
        except PortInUse as exc:
            self._failed_port(exc)
        except OSError as exc:
            self._set_state("failed", f"The server could not {verb}: {exc.strerror or exc}")
            self._notify("server_error", "Server failed", self.message)
        else:
            self._serving()
        self.tick()

    async def shutdown(self) -> None:
        self._timer.stop()
        self._log_timer.stop()
        if self._models_task is not None:
            self._models_task.cancel()
            await asyncio.gather(self._models_task, return_exceptions=True)
        if self._busy is not None:
            await asyncio.gather(self._busy, return_exceptions=True)
        # Streams in flight get the drain time to finish: say so while they do, and count down.
        progress = QTimer(self)
        progress.setInterval(250)
        progress.timeout.connect(lambda: self.quitting.emit(self.host.streams_in_flight))
        if self.host.streams_in_flight:
            self.quitting.emit(self.host.streams_in_flight)
            progress.start()
        try:
            await self.host.stop()
        finally:
            progress.stop()
            self.quitting.emit(0)
        self.logs.detach()
        self._set_state("stopped", "Stopped")

    def quit_now(self) -> None:
        """Quit now: stop waiting for answers in progress (they end with a shutdown frame)."""
        log.info("quit now: ending %d answer(s) in progress", self.host.streams_in_flight)
        self.host.finish_now()

    # -- commands ---------------------------------------------------------------------------

    def flush_cache(self) -> int:
        size_mb = self.gateway.cache.stats()["size_bytes"] / 2**20
        count = self.gateway.flush_cache()
        self.tick()  # the tiles show it at once, not a second later
        # From the tray or the dashboard, the result is told the same way.
        noun = "response" if count == 1 else "responses"
        told = f"Flushed {count:,} {noun} ({size_mb:,.1f} MB)"
        behind = {n: t for n, t in self.gateway.cache_tiers().items() if n != "memory"}
        if behind:
            # The tiers behind RAM (SQLite, Redis) are I/O: cleared in the background. One
            # notice now, with the entries they held; a second only if clearing then fails.
            told += "; also " + ", ".join(_tier_told(n, t) for n, t in behind.items())
            self._flushing = asyncio.ensure_future(self._flush_tiers(behind))
        self._notify("flush", "Cache flushed", told)
        return count

    async def _flush_tiers(self, behind: dict[str, dict[str, Any]]) -> None:
        done = await self.gateway.flush_tiers()
        failed = [
            f"{TIER_LABELS.get(name, name)} {result}"
            for name, result in done.items()
            if isinstance(result, str) and behind.get(name, {}).get("state") == "up"
        ]
        if failed:
            self._notify("flush", "Cache flush incomplete", "; ".join(failed))
        self.tick()

    def cache_figures(self) -> dict[str, Any]:
        """The cache's entries and size now (for the flush dialog; no I/O)."""
        return dict(self.gateway.cache.stats())

    def cancel_request(self, request_id: str) -> bool:
        """Cancel a waiting or running request, as DELETE /api/chat-queue does (this app is the
        gateway's owner, so any user's); False when it has finished meanwhile."""
        ticket = self.gateway.ticket(request_id)
        if ticket is None or ticket.final is not None:
            log.info("%s finished before it could be cancelled", request_id)
            return False
        self.gateway.cancel(ticket)
        self.tick()  # the row goes at once, not a second later
        return True

    async def refresh_models(self) -> None:
        """Ask Ollama which models it has installed and loaded (for the Models table)."""
        if self.host.running:
            self._models = await self.gateway.models_overview()

    async def _models_loop(self) -> None:
        while True:
            try:
                await self.refresh_models()
            except Exception:  # a bug here must not end the refreshes for good
                log.exception("asking Ollama for its models failed")
            await asyncio.sleep(MODELS_EVERY_S)

    def restart_server(self, config: Config | None = None) -> asyncio.Task[None]:
        """Restart in the background (the menu and the button must not wait for the drain),
        on a new configuration if one is given.

        Asked again while a restart runs (a new port saved while the last restart still lets
        answers finish on the old listener), it restarts once more when that one is over, so
        the address it ends up on is the last one asked for, not the one before it."""
        if self._busy is None or self._busy.done():
            self._busy = asyncio.ensure_future(self._restart(config))
        else:
            self._again = (config,)
        return self._busy

    async def _restart(self, config: Config | None) -> None:
        while True:
            self._again = None
            self._set_state("starting", "Restarting: finishing answers in progress…")
            try:
                await self._bring_up(self.host.restart(config), "restart")
            except Exception as exc:  # a bug must not leave "Restarting…" standing for good
                log.exception("the restart failed")
                self._set_state("failed", f"The server could not restart: {exc}")
            if self._again is None:
                break
            log.info("restarting again: asked for while the last restart was under way")
            (config,) = self._again
        if self.state == "failed":
            self.restart_ended.emit(False, self.message)
        else:
            self.restart_ended.emit(True, self.api_url)

    @property
    def api_url(self) -> str:
        port = self.host.port or self.gateway.config.server.port
        host = self.gateway.config.server.host
        return f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}"

    # -- reporting --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        snap = self.gateway.snapshot()
        now = time.monotonic()
        self._rates.append((now, snap["requests_total"]))
        while len(self._rates) > 2 and now - self._rates[0][0] > _RATE_WINDOW_S:
            self._rates.popleft()
        t0, n0 = self._rates[0]
        snap["requests_per_s"] = (
            round((snap["requests_total"] - n0) / (now - t0), 2) if now > t0 else 0.0
        )
        snap["hit_rate_recent"] = self._hit_rate_recent(now, snap["response_cache"])
        snap["api_url"] = self.api_url
        snap["state"] = self.state
        snap["queue_entries"] = self.gateway.queue_entries()
        # The queue table names users only where there are any: keys, or a trusted user header.
        auth = self.gateway.config.auth
        snap["named_users"] = bool(self.gateway.keys) or bool(auth.user_header)
        snap["ollama_models"] = self._models
        # Average generation time per model, in ms (models that ran none are left out).
        snap["model_generation_ms"] = {
            model: round(total / runs)
            for model, (runs, total) in self.gateway.generation_by_model.items()
            if runs
        }
        # Rows come in the order requests finished, so they show when they finished.
        snap["recent"] = [
            {**dataclasses.asdict(r), "time": r.started + r.total_ms / 1000}
            for r in self.gateway.recent
        ]
        return snap

    def flush_log(self) -> None:
        if self._pending_lines:
            lines = "\n".join(self.logs.format_line(r) for r in self._pending_lines)
            self._pending_lines.clear()
            self.log_line.emit(lines)

    def _hit_rate_recent(self, now: float, cache: dict[str, Any]) -> float:
        """Hit rate over the last minute, for the chart (the tile shows it since start).

        A minute without lookups keeps the last value; before any, it is the overall rate.
        """
        self._lookups.append((now, cache["hits"], cache["misses"]))
        while len(self._lookups) > 2 and now - self._lookups[0][0] > HIT_RATE_WINDOW_S:
            self._lookups.popleft()
        _, h0, m0 = self._lookups[0]
        hits, misses = cache["hits"] - h0, cache["misses"] - m0
        if hits < 0 or misses < 0:  # counters were reset
            self._lookups.clear()
        elif hits + misses:
            self._recent_hit_rate = hits / (hits + misses)
        if self._recent_hit_rate is None:
            return float(cache["hit_rate"])
        return round(self._recent_hit_rate, 4)

    def record_history(self, snap: dict[str, Any], now: float) -> None:
        """Add the snapshot's chart values at `now` (monotonic seconds) to the history, and
        hand the history on with the snapshot (the object, not a copy: the charts read it)."""
        self.history.add(now, chart_values(snap))
        snap["history"] = self.history

    def tick(self) -> None:
        snap = self.snapshot()
        self.record_history(snap, time.monotonic())
        self._watch_ollama(bool(snap["ollama"]["reachable"]))
        self._watch_hosts(snap.get("hosts") or [])
        self.snapshot_ready.emit(snap)

    def _watch_hosts(self, hosts: list[dict[str, Any]]) -> None:
        """With several hosts, one going down is news too (its requests go to the others, a
        model only it has fails): told like Ollama going away, and its coming back after. While
        no host answers, "Ollama unreachable" alone says so."""
        if len(hosts) < 2 or not self.host.running:
            return
        up = sum(h.get("state") == "up" for h in hosts)
        for h in hosts:
            url, state = str(h.get("url")), h.get("state")
            was = self._host_states.get(url)
            self._host_states[url] = state
            if state == was or state == "unknown":
                continue
            if state == "down" and up and self._since(f"host_down {url}") >= NOTIFY_EVERY_S:
                self._hosts_told_down.add(url)
                self._notify(
                    f"host_down {url}",
                    "Ollama host down",
                    f"{url} does not answer ({h.get('last_error') or 'no answer'}); "
                    f"{up} of {len(hosts)} hosts up take its requests.",
                )
            elif state == "up" and url in self._hosts_told_down:
                self._hosts_told_down.discard(url)
                self._notify(
                    f"host_back {url}",
                    "Ollama host back",
                    f"{url} answers again; {up} of {len(hosts)} hosts up.",
                )

    def _watch_ollama(self, up: bool) -> None:
        if not self.host.running or self.gateway.ollama.reachable is None:
            return
        if up != self._ollama_up:
            where = self._ollama_where()
            if self._ollama_up is not None or not up:
                if up:
                    # Told after a told "unreachable", however soon: never left hanging.
                    if self._told_down:
                        self._told_down = False
                        self._notify("ollama_back", "Ollama is back", f"{where} answers again.")
                elif self._since("ollama_down") >= NOTIFY_EVERY_S:
                    self._told_down = True
                    self._notify(
                        "ollama_down",
                        "Ollama unreachable",
                        f"{where} does not answer; chats fail until it is back.",
                    )
            self._ollama_up = up
            self._serving()

    def _serving(self) -> None:
        if not self.host.running:
            return
        if self._ollama_up is False:
            where = self._ollama_where()
            self._set_state("ollama_down", f"Serving on {self.api_url}, but {where} is unreachable")
        else:
            self._set_state("serving", f"Serving on {self.api_url}")

    def _ollama_where(self) -> str:
        """ "Ollama at URL", or with several hosts "Ollama (every one of its N hosts)"."""
        hosts = self.gateway.hosts.hosts
        if len(hosts) == 1:
            return f"Ollama at {hosts[0].url}"
        return f"Ollama (every one of its {len(hosts)} hosts)"

    def _failed_port(self, exc: PortInUse) -> None:
        where = f"in {self.config_path}" if self.config_path else "in the config file"
        self._set_state(
            "failed",
            f"Port {exc.port} is in use by another program. Change [server].port {where} "
            f"(tray menu: Open Config) or set PORT={exc.port + 1}, then Restart Server.",
        )
        self._notify("port", f"Port {exc.port} is in use", self.message)

    def _set_state(self, state: str, message: str) -> None:
        if (state, message) != (self.state, self.message):
            self.state, self.message = state, message
            log.info("state: %s (%s)", state, message)
            self.state_changed.emit(state, message)

    def _since(self, kind: str) -> float:
        """Seconds since a notice of this kind was last told (infinite: never)."""
        told = self._last_notice.get(kind)
        return float("inf") if told is None else time.monotonic() - told

    def _notify(self, kind: str, title: str, message: str) -> None:
        self._last_notice[kind] = time.monotonic()
        self.notify.emit(title, message)
