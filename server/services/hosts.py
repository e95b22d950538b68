"""The Ollama hosts behind the gateway: their health, their models, and which one serves a request.

Each host is probed on its own schedule: while up, every `[ollama].probe_interval_seconds`
(GET /api/version, /api/tags and /api/ps: reachable, installed, loaded); once a probe or a
request fails (connection refused, a timeout, a 5xx), it is taken out of rotation and probed
again after 1 s, then 2, 4, … up to 30 s between tries, until it answers.

Routing (`pick`) for a model:
1. the hosts that may serve it (`models` allow-list) and are known to have it, among those up;
   a host not probed yet counts as a candidate too (it answers for itself);
2. none up has it, but a host that is down does: that host (the request fails fast with
   "not reachable" rather than with a misleading "model not found");
3. nobody has it: an up host, whose answer (Ollama's own 404) is relayed;
4. nothing up at all: every host, so the client gets the connection error of one.
Among the candidates with a free slot: one that has the model loaded (a swap costs seconds),
then the least busy (running ÷ max_concurrent), then the larger weight, then config order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from server.config import Config, HostSpec
from server.errors import GatewayError, OllamaUnreachable, UpstreamError, UpstreamTimeout
from server.services.cache import normalize_model
from server.services.ollama import OllamaClient

log = logging.getLogger("chatbot.ollama")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0


def host_failed(exc: GatewayError) -> bool:
    """Whether the error says the host itself is in trouble (so another host should be tried):
    unreachable, a timeout, a 5xx or a broken stream; not the request's own fault (4xx)."""
    if isinstance(exc, OllamaUnreachable | UpstreamTimeout):
        return True
    if isinstance(exc, UpstreamError):
        return exc.upstream_status is None or exc.upstream_status >= 500
    return False


def takes_host_down(exc: GatewayError) -> bool:
    """A failure after which the host leaves rotation until a probe says it is back. Ollama's
    own 503 (busy) and an error it wrote into a stream mean it is alive: retried, not down."""
    if not host_failed(exc) or exc.code == "upstream_busy":
        return False
    return not (exc.upstream_text is not None and exc.upstream_status is None)


class Host:
    """One Ollama server: its client, limits, health and models."""

    def __init__(self, spec: HostSpec, client: OllamaClient, max_concurrent: int) -> None:
        self.client = client
        self.max_concurrent = max_concurrent
        self.weight = spec.weight
        self.allow: frozenset[str] | None = (
            None if spec.models is None else frozenset(normalize_model(m) for m in spec.models)
        )
        self.state = "unknown"  # "up" | "down" | "unknown" (not probed yet)
        self.models: set[str] = set()  # installed (/api/tags), as Ollama names them
        self.loaded: set[str] = set()  # in memory now (/api/ps)
        self.running = 0  # queue slots held on this host
        self.last_error = ""
        self.warmed = False
        self.failures = 0  # probes failed in a row while down
        self.backoff_s = 0.0
        self.next_probe_at = 0.0  # time.monotonic() of the next probe; 0: now

    @property
    def url(self) -> str:
        """The host's name in the UI, headers and metrics: its base URL."""
        return self.client.base_url

    def allows(self, model: str) -> bool:
        return self.allow is None or normalize_model(model) in self.allow

    def has(self, model: str) -> bool:
        return normalize_model(model) in self.models

    def has_loaded(self, model: str) -> bool:
        return normalize_model(model) in self.loaded

    @property
    def free(self) -> bool:
        return self.running < self.max_concurrent

    def as_dict(self) -> dict[str, Any]:
        wait = max(0.0, self.next_probe_at - time.monotonic())
        return {
            "url": self.url,
            "state": self.state,
            "running": self.running,
            "max_concurrent": self.max_concurrent,
            "weight": self.weight,
            "models": sorted(self.models),
            "loaded": sorted(self.loaded),
            "last_error": self.last_error,
            "next_probe_in_s": round(wait, 1),
        }


def _names(entries: Iterable[dict[str, Any]]) -> set[str]:
    names = set()
    for entry in entries:
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str) and name:
            names.add(normalize_model(name))
    return names


class HostPool:
    """The hosts, their probe loop, and the routing of a model to one of them."""

    def __init__(
        self,
        specs: Sequence[HostSpec],
        *,
        default_concurrent: int = 1,
        timeout_s: float = 300,
        connect_timeout_s: float = 5,
        probe_interval_s: float = 15,
    ) -> None:
        self.probe_interval_s = probe_interval_s
        self._timeouts = (timeout_s, connect_timeout_s)
        self.hosts: list[Host] = [
            self._new_host(spec, default_concurrent) for spec in specs or _default_specs()
        ]
        self._retired: list[OllamaClient] = []  # removed by a reconfiguration; closed at the end
        # Called when a host comes up, goes down, or learns its models: the queue may now be
        # able to start a waiting request.
        self.on_change: Callable[[], None] | None = None
        # Called once per host after its first successful probe (the start-up warm-up).
        self.on_first_up: Callable[[Host], Awaitable[None]] | None = None
        self._wake = asyncio.Event()
        self._started = False

    def _new_host(self, spec: HostSpec, default_concurrent: int) -> Host:
        timeout_s, connect_s = self._timeouts
        client = OllamaClient(spec.url, timeout_s=timeout_s, connect_timeout_s=connect_s)
        return Host(spec, client, spec.max_concurrent or default_concurrent)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        for host in self.hosts:
            await host.client.start()

    async def close(self) -> None:
        for client in [h.client for h in self.hosts] + self._retired:
            await client.close()
        self._retired.clear()

    def configure(
        self,
        specs: Sequence[HostSpec],
        *,
        default_concurrent: int,
        timeout_s: float,
        connect_timeout_s: float,
        probe_interval_s: float,
    ) -> None:
        """Take a new host list at run time. A host that stays (same URL) keeps its state and
        running requests; a removed host gets no new requests and finishes what it runs."""
        self._timeouts = (timeout_s, connect_timeout_s)
        self.probe_interval_s = probe_interval_s
        old = {h.url: h for h in self.hosts}
        specs = list(specs) or _default_specs()
        single = len(self.hosts) == 1 and len(specs) == 1
        hosts = []
        for spec in specs:
            host = old.pop(spec.url.rstrip("/"), None)
            if host is None and single and old:
                # The single api_url changed: the same host (and client), pointed elsewhere,
                # known nothing about until probed.
                host = old.pop(self.hosts[0].url)
                host.state, host.models, host.loaded = "unknown", set(), set()
                host.next_probe_at, host.warmed = 0.0, False
            if host is None:
                host = self._new_host(spec, default_concurrent)
                if self._started:
                    host.client.open()
            fresh = Host(spec, host.client, spec.max_concurrent or default_concurrent)
            host.max_concurrent, host.weight, host.allow = (
                fresh.max_concurrent,
                fresh.weight,
                fresh.allow,
            )
            host.client.configure(spec.url, timeout_s, connect_timeout_s)
            hosts.append(host)
        self._retired += [h.client for h in old.values()]
        self.hosts = hosts
        self._wake.set()
        self._changed()

    # -- the interface the dashboards and handlers use ------------------------------------------

    def by_url(self, url: str) -> Host | None:
        """The host with this base URL, or at this index ("0", "1", …) in the list."""
        wanted = url.strip().rstrip("/")
        for host in self.hosts:
            if host.url == wanted:
                return host
        if wanted.isdigit() and int(wanted) < len(self.hosts):
            return self.hosts[int(wanted)]
        return None

    def up(self) -> list[Host]:
        return [h for h in self.hosts if h.state == "up"]

    def serving(self, model: str) -> list[Host]:
        """The up hosts that have the model and may serve it."""
        return [h for h in self.hosts if h.state == "up" and h.allows(model) and h.has(model)]

    def as_list(self) -> list[dict[str, Any]]:
        return [h.as_dict() for h in self.hosts]

    async def refresh(self, host: Host | None = None) -> None:
        """Read the models of one host (or all) now: after a pull or a delete."""
        targets = [host] if host is not None else list(self.hosts)
        await asyncio.gather(*(self.probe(h) for h in targets))

    # -- routing ------------------------------------------------------------------------------

    def candidates(self, model: str, exclude: Iterable[Host] = ()) -> list[Host]:
        """The hosts a request for `model` may go to, busy or not (the rules in the module
        docstring); empty when no host may serve it at all."""
        skip = set(map(id, exclude))
        if not model:  # a place in line reserved before its request (and model) is known
            hosts = [h for h in self.hosts if id(h) not in skip]
            return [h for h in hosts if h.state != "down"] or hosts
        allowed = [h for h in self.hosts if h.allows(model) and id(h) not in skip]
        live = [h for h in allowed if h.state != "down"]
        having = [h for h in live if h.state == "unknown" or h.has(model)]
        if having:
            return having
        down_having = [h for h in allowed if h.has(model)]
        if down_having:
            return down_having
        return [h for h in live if h.state == "up"] or allowed

    def alternatives(self, model: str, exclude: Iterable[Host] = ()) -> list[Host]:
        """The hosts a failed request may be retried on: not down, allowed, and having the
        model (or not probed yet). Never a host without it, whose 404 would hide the failure."""
        skip = set(map(id, exclude))
        return [
            h
            for h in self.hosts
            if id(h) not in skip
            and h.state != "down"
            and h.allows(model)
            and (h.state == "unknown" or h.has(model) or not model)
        ]

    def pick(self, model: str, exclude: Iterable[Host] = ()) -> Host | None:
        """The best candidate with a free slot, or None while all of them are busy."""
        free = [h for h in self.candidates(model, exclude) if h.free]
        if not free:
            return None
        order = {id(h): i for i, h in enumerate(self.hosts)}
        return min(
            free,
            key=lambda h: (
                not h.has_loaded(model),
                h.running / h.max_concurrent,
                -h.weight,
                order.get(id(h), 0),
            ),
        )

    def capacity(self, model: str | None = None) -> int:
        """Slots that can serve `model` (or any model): the up hosts' max_concurrent, or every
        host's while none is up (the ETA then assumes they come back)."""
        hosts = self.candidates(model) if model else (self.up() or self.hosts)
        return max(1, sum(h.max_concurrent for h in hosts))

    def note_success(self, host: Host, model: str) -> None:
        """A request just ran on the host: it has the model, and it is in memory now."""
        name = normalize_model(model)
        if name not in host.models or name not in host.loaded:
            host.models.add(name)
            host.loaded.add(name)
        if host.state != "up":
            self._mark_up(host)

    def note_failure(self, host: Host, exc: GatewayError) -> None:
        """A request failed on the host; take it out of rotation if the host is at fault."""
        if takes_host_down(exc):
            self._mark_down(host, exc.message)

    # -- probing ------------------------------------------------------------------------------

    async def probe(self, host: Host) -> bool:
        """Check one host now: reachable, its version, installed and loaded models."""
        started = time.perf_counter()
        client = host.client
        try:
            client.version = await client.get_version()
            tags, ps = await asyncio.gather(client.list_models(), client.list_running())
        except GatewayError as exc:
            client.reachable, client.last_error = False, exc.message
            self._mark_down(host, exc.message, probed=True)
            return False
        client.latency_ms = (time.perf_counter() - started) * 1000
        client.reachable, client.last_error = True, None
        host.models, host.loaded = _names(tags), _names(ps)
        self._mark_up(host)
        if not host.warmed and self.on_first_up is not None:
            host.warmed = True
            await self.on_first_up(host)
        return True

    async def run(self) -> None:
        """Probe each host when it is due, for as long as the gateway runs. Each probe is a
        task of its own: a host that hangs holds up only its own probe."""
        probing: dict[Host, asyncio.Task[bool]] = {}
        try:
            while True:
                now = time.monotonic()
                for host in self.hosts:
                    if host.next_probe_at <= now and host not in probing:
                        task = asyncio.create_task(self.probe(host), name=f"probe {host.url}")
                        probing[host] = task
                        task.add_done_callback(functools.partial(self._probed, probing, host))
                self._wake.clear()
                waiting = [h.next_probe_at for h in self.hosts if h not in probing]
                wait = min(waiting, default=now + 1) - now
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
                # cancellation that stops this loop when the wait ends at the same moment.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, wait)):
                        await self._wake.wait()
        finally:
            for task in probing.values():
                task.cancel()

    def _probed(
        self, probing: dict[Host, asyncio.Task[bool]], host: Host, _: asyncio.Task[bool]
    ) -> None:
        probing.pop(host, None)
        self._wake.set()  # its next probe time is set: the loop sleeps until the earliest

    def _mark_up(self, host: Host) -> None:
        was = host.state
        host.state, host.last_error = "up", ""
        host.failures, host.backoff_s = 0, 0.0
        host.next_probe_at = time.monotonic() + self.probe_interval_s
        if was == "down":
            log.info("Ollama at %s is reachable again", host.url)
        self._changed()

    def _mark_down(self, host: Host, error: str, *, probed: bool = False) -> None:
        host.last_error = error
        if host.state == "down" and not probed:
            return  # a second request failing on it changes nothing: the backoff runs
        if host.state != "down":
            log.warning("%s; taken out of rotation, probing it with backoff", error)
            host.state = "down"
            host.failures = 0
        host.failures += 1 if probed else 0
        host.backoff_s = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** max(0, host.failures - 1))
        host.next_probe_at = time.monotonic() + host.backoff_s
        self._wake.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def host_specs(config: Config) -> list[HostSpec]:
    """The hosts a configuration names: `[[ollama.hosts]]`, or `api_url` alone; each with its
    max_concurrent (by default `[queue].max_concurrent`)."""
    default = config.queue.max_concurrent
    if not config.ollama.hosts:
        return [HostSpec(config.ollama.api_url, default)]
    return [
        HostSpec(h.url, h.max_concurrent or default, h.weight, h.models)
        for h in config.ollama.hosts
    ]


def _default_specs() -> list[HostSpec]:
    return [HostSpec("http://localhost:11434")]
