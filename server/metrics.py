"""Prometheus metrics: per-request histograms and counters, service figures read at scrape time.

Each Gateway has its own `CollectorRegistry` (tests run many gateways in one process, and the
global registry would mix them). A finished request updates its series in `observe()`, called
from `Gateway.record`, the one place requests are counted; the queue, cache and Ollama figures
(gauges, and the counters the services keep anyway) are read by a collector only when
`GET /metrics` is scraped, so they cost nothing per request. Scrapes are not chat requests.

Label values that come from clients are bounded: models are the gateway's (at most MAX_MODELS,
the rest "(other)"), endpoints and statuses are the gateway's own names and error codes.

`GATEWAY_METRICS=off` in the environment turns the instrumentation off (no updates,
`/metrics` answers 404); it exists to measure what the instrumentation costs (bench/metrics.py).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from server.errors import GatewayError

if TYPE_CHECKING:
    from server.gateway import Gateway
    from server.services.hosts import Host
    from server.streams import RequestRecord

# Not CHATBOT_…: that prefix is reserved for settings, and this is a switch for measurements.
ENV_SWITCH = "GATEWAY_METRICS"

# Seconds, from a cache hit (about a millisecond) to a long generation (ten minutes).
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

SERIES_LABELS = ("endpoint", "model", "cache")  # cache: hit, miss or coalesced


def enabled(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(ENV_SWITCH, "on")
    return value.strip().lower() not in ("off", "0", "false", "no")


class _Series:
    """One (endpoint, model, cache) combination's histograms and token counts, as plain numbers.

    Buckets hold per-bucket (not cumulative) counts, the last one past the largest bound.
    """

    __slots__ = (
        "generated",
        "prompt",
        "queue",
        "queue_sum",
        "total",
        "total_sum",
        "ttft",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.ttft = [0] * (len(BUCKETS) + 1)
        self.total = [0] * (len(BUCKETS) + 1)
        self.queue = [0] * (len(BUCKETS) + 1)
        self.ttft_sum = self.total_sum = self.queue_sum = 0.0
        self.prompt = self.generated = 0


class Metrics:
    """One gateway's metrics; `observe()` per finished request, `render()` per scrape.

    The per-request figures are kept as plain integers and floats, and turned into
    prometheus_client's metric families only when scraped: prometheus_client's own
    Counter/Histogram take a lock and make a dozen calls per update, which measured as several
    percent of a cache hit (bench/README.md, "Metrics"). Everything runs on the event loop, so
    a scrape sees a consistent state.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (endpoint, model, status)
        self.series: dict[tuple[str, str, str], _Series] = {}  # (endpoint, model, cache)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RequestCollector(self))
        self.registry.register(_ServiceCollector(gateway))

    def observe(self, record: RequestRecord, model: str, cache: str, prompt_tokens: int) -> None:
        """Count a finished request; `model` is already bounded, `cache` is hit/miss/coalesced."""
        endpoint = record.endpoint
        key = (endpoint, model, record.status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if record.status != "ok":
            return
        key = (endpoint, model, cache)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        total = record.total_ms / 1000
        ttft = total if record.ttft_ms is None else record.ttft_ms / 1000
        # bisect_left: the first bound ≥ the value, as Prometheus' `le` (less or equal) means.
        series.ttft[bisect_left(BUCKETS, ttft)] += 1
        series.ttft_sum += ttft
        series.total[bisect_left(BUCKETS, total)] += 1
        series.total_sum += total
        if cache != "hit":  # a hit never queues
            wait = record.queue_ms / 1000
            series.queue[bisect_left(BUCKETS, wait)] += 1
            series.queue_sum += wait
        series.prompt += prompt_tokens
        series.generated += record.tokens

    def render(self) -> bytes:
        return generate_latest(self.registry)


_BOUNDS = [repr(float(b)) for b in BUCKETS] + ["+Inf"]  # "0.001" … "600.0", as Prometheus


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    return list(zip(_BOUNDS, accumulate(counts), strict=True))


class _RequestCollector(Collector):
    """The per-request figures as Prometheus metric families, built at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "chatbot_requests",
            "Chat, generate and embed requests finished, by status (ok or the error code; "
            "cancelled, disconnected).",
            labels=("endpoint", "model", "status"),
        )
        for labels, count in self.metrics.requests.items():
            requests.add_metric(labels, count)
        yield requests
        histograms = (
            (
                "chatbot_time_to_first_token_seconds",
                "Time from the request to the first piece of the answer (successful requests).",
                "ttft",
            ),
            (
                "chatbot_request_duration_seconds",
                "Time from the request to the end of the answer (successful requests).",
                "total",
            ),
            (
                "chatbot_queue_wait_seconds",
                "Time a request waited for a generation slot (misses and coalesced requests).",
                "queue",
            ),
        )
        series = self.metrics.series
        for name, help_text, field in histograms:
            family = HistogramMetricFamily(name, help_text, labels=SERIES_LABELS)
            for labels, s in series.items():
                if field == "queue" and labels[2] == "hit":
                    continue  # never observed
                counts: list[int] = getattr(s, field)
                family.add_metric(labels, _cumulative(counts), sum_value=getattr(s, f"{field}_sum"))
            yield family
        prompt = CounterMetricFamily(
            "chatbot_prompt_tokens",
            "Prompt tokens of answered requests (a hit's are those of the stored answer).",
            labels=SERIES_LABELS,
        )
        generated = CounterMetricFamily(
            "chatbot_generated_tokens",
            'Tokens answered (cache="miss" is what Ollama generated; hits were replayed).',
            labels=SERIES_LABELS,
        )
        for labels, s in series.items():
            prompt.add_metric(labels, s.prompt)
            generated.add_metric(labels, s.generated)
        yield prompt
        yield generated


class _ServiceCollector(Collector):
    """The services' own figures, read at scrape time: nothing runs per request for these.

    The counters restart from zero when the stats are reset (`POST /api/cache-stats`
    `reset_stats`); Prometheus' rate() and increase() treat that as a counter reset.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        g = self.gateway
        cache, queue = g.cache.counters, g.queue.counters
        counters = (
            ("chatbot_cache_hits", "Cache lookups that found a stored answer.", cache.hits),
            ("chatbot_cache_misses", "Cache lookups that found nothing.", cache.misses),
            (
                "chatbot_cache_evictions",
                "Cache entries dropped to make room (least recently used).",
                cache.evictions,
            ),
            (
                "chatbot_cache_expirations",
                "Cache entries dropped because their TTL passed.",
                cache.expirations,
            ),
            (
                "chatbot_coalesced_requests",
                "Requests that joined an identical generation in flight instead of starting one.",
                g.coalescer.coalesced,
            ),
            (
                "chatbot_upstream_errors",
                "Chat and generate calls to Ollama that failed (unreachable, HTTP error, "
                "timeout, broken stream).",
                sum(h.client.counters.errors for h in g.hosts.hosts),
            ),
            (
                "chatbot_queue_rejected",
                "Requests turned away because the queue, or the user's share of it, was full.",
                queue.rejected,
            ),
            (
                "chatbot_queue_cancelled",
                "Generations that left the queue or stopped because nobody listened any more.",
                queue.cancelled,
            ),
        )
        for name, help_text, value in counters:
            yield CounterMetricFamily(name, help_text, value=value)
        reachable = bool(g.hosts.up())
        gauges = (
            ("chatbot_queue_waiting_requests", "Generations waiting for a slot.", g.queue.waiting),
            ("chatbot_queue_running_requests", "Generations holding a slot.", g.queue.active),
            ("chatbot_cache_entries", "Answers in the response cache.", g.cache.entries),
            ("chatbot_cache_size_bytes", "Accounted bytes of cached answers.", g.cache.size_bytes),
            ("chatbot_ollama_up", "1 if an Ollama host is up.", reachable),
            (
                "chatbot_resident_memory_bytes",
                "Resident memory (RSS) of the gateway's process.",
                self._process.memory_info().rss,
            ),
        )
        for name, help_text, value in gauges:
            yield GaugeMetricFamily(name, help_text, value=float(value))
        yield from _tier_families(g.cache_tiers())
        yield from _host_families(g.hosts.hosts)


def _host_families(hosts: Iterable[Host]) -> Iterator[Metric]:
    """Each Ollama host, labelled `host` (its URL): up, and its requests running."""
    up = GaugeMetricFamily(
        "chatbot_ollama_host_up",
        "1 if the Ollama host is up (0: down or not probed yet).",
        labels=["host"],
    )
    running = GaugeMetricFamily(
        "chatbot_ollama_host_running",
        "Generations and embeddings running on the Ollama host.",
        labels=["host"],
    )
    for host in hosts:
        up.add_metric([host.url], float(host.state == "up"))
        running.add_metric([host.url], float(host.running))
    yield from (up, running)


def _tier_families(tiers: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Each cache tier (memory, sqlite, redis), labelled `tier`: up, entries and hits."""
    up = GaugeMetricFamily(
        "chatbot_cache_tier_up", "1 if the cache tier works (0: down, see stats).", labels=["tier"]
    )
    entries = GaugeMetricFamily(
        "chatbot_cache_tier_entries", "Answers held by the cache tier.", labels=["tier"]
    )
    hits = CounterMetricFamily(
        "chatbot_cache_tier_hits",
        "Lookups the tier answered (memory: before any tier behind it was asked).",
        labels=["tier"],
    )
    for name, tier in tiers.items():
        up.add_metric([name], float(tier["state"] == "up"))
        entries.add_metric([name], float(tier["entries"]))
        hits.add_metric([name], float(tier["hits"]))
    yield from (up, entries, hits)


routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format. Not a chat request: it is neither counted nor queued."""
    # Here, not at the top: server.keys imports the Gateway, which imports this module.
    from server.keys import GATEWAY

    found = request.app[GATEWAY].metrics
    if found is None:
        raise GatewayError(
            f"metrics are turned off ({ENV_SWITCH}=off in the environment)",
            code="not_found",
            status=404,
        )
    return web.Response(body=found.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
