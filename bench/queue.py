"""Queue benchmark: schedule overhead and ETA accuracy of the gateway's queue under a burst.

Run from the repository root:  .venv/bin/python bench/queue.py  (add --quick for a smoke run)

The Ollama simulator runs as its own process at a fixed pace (default 20 tokens, 20 ms before
the first and 10 ms between tokens: ~0.21 s per answer). It runs any number of generations in
parallel, so the gateway's `[queue].max_concurrent` alone shapes the schedule (a real Ollama
would also need OLLAMA_NUM_PARALLEL=N). For every max_concurrent N and every variant, a fresh
gateway process (`chatbot-backend`, LOG_LEVEL=warning, max_queue_size 1000) gets a burst of
100 streamed chat requests, all started at once from one aiohttp session, each with a distinct
question (nothing is cached or coalesced). Each client records the first two `queued` frames
(position, estimated_wait_ms), the times of its first frame, first content frame and done frame,
and the done frame's stats (queue_ms: how long the gateway kept it waiting for a slot).

Variants (what the ETAs in the first queued frames are based on; since #19 the ETA is
(ceil(position / N) - 1) x average + the time left to the running generation the position waits
for, see server/services/queue.py):
  cold     fresh gateway, no history: the average is estimated_time_per_request_ms (30 s)
  warm     fresh gateway after a few lone requests: the measured average
  tuned    fresh gateway started with CHATBOT_QUEUE_ESTIMATED_TIME_PER_REQUEST_MS set to the
           generation time a probe gateway measured, no warm-up
  restart  a gateway with [queue].state_file answers a few lone requests and stops; a fresh one
           on the same file takes the burst at once (the first requests after a restart)
and a reference without the gateway:
  direct the same burst straight to the simulator, at most N at a time (a semaphore here)

Per burst: wall time for all clients; the ideal schedule ceil(clients/N) x T, T = one lone
generation straight from the simulator (median of a few, measured each round before the
bursts; a lone request through a gateway is measured too); the overhead over the ideal and over
the direct reference; the simulator's max_in_progress (must equal N); and ETA accuracy: the
absolute error between the first ETA and the actual wait (stats.queue_ms), median over the
clients, in ms and as % of the actual wait, overall and by first position. Rounds interleave
the configurations (order reversed every other round); the tables show medians over rounds.
"""

from __future__ import annotations

import stdlib_first  # noqa: F401  (first: moves this folder behind the standard library)

# isort: split
import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    Server,
    add_run_args,
    free_port,
    http_json,
    machine_info,
    results_path,
    simulator_command,
    spawn,
    spawn_gateway,
    stop,
    write_json,
)

CHAT = "/api/chat-optimized"
VARIANTS = ("cold", "warm", "tuned", "restart")
# First-position buckets for the ETA error split: (label, lowest, highest).
BUCKETS = (("pos 1-10", 1, 10), ("pos 11-50", 11, 50), ("pos 51+", 51, 10**9))


# --------------------------------------------------------------------------- processes


def start_simulator(args: argparse.Namespace, logdir: Path) -> Server:
    port = free_port()
    command = simulator_command(port, args.tokens, args.token_delay_ms, args.first_token_delay_ms)
    return spawn("simulator", command, "/api/version", port, logdir)


def start_gateway(
    name: str,
    sim: Server,
    logdir: Path,
    max_concurrent: int,
    estimated_ms: int | None,
    state_file: Path | None = None,
) -> Server:
    env = {
        "LOG_LEVEL": "warning",
        "CHATBOT_QUEUE_MAX_QUEUE_SIZE": "1000",
        "CHATBOT_QUEUE_MAX_CONCURRENT": str(max_concurrent),
    }
    if estimated_ms is not None:
        env["CHATBOT_QUEUE_ESTIMATED_TIME_PER_REQUEST_MS"] = str(estimated_ms)
    if state_file is not None:
        env["CHATBOT_QUEUE_STATE_FILE"] = str(state_file)
    return spawn_gateway(name, sim, logdir, env)


# --------------------------------------------------------------------------- clients


@dataclass
class ClientRecord:
    """One client of a burst. Times are seconds; t_* are from the burst's start."""

    index: int
    status: int = 0
    error: str | None = None
    t_sent: float = 0.0
    t_first_frame: float | None = None
    t_first_content: float | None = None
    t_done: float | None = None
    queued_frames: int = 0
    first_position: int | None = None
    first_eta_ms: int | None = None
    # The next queued frame, sent when the position first moved (after a slot was freed).
    t_second_queued: float | None = None
    second_position: int | None = None
    second_eta_ms: int | None = None
    queue_ms: int | None = None  # from the final frame's stats
    ttft_ms: int | None = None
    total_ms: int | None = None
    eval_count: int | None = None
    content_chars: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.t_done is not None


def chat_body(question: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "stream": True}


async def stream_chat(
    session: aiohttp.ClientSession, url: str, question: str, index: int, t0: float
) -> ClientRecord:
    rec = ClientRecord(index)
    rec.t_sent = time.perf_counter() - t0
    try:
        async with session.post(url, json=chat_body(question)) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return rec
            async for line in resp.content:
                if not line.strip():
                    continue
                now = time.perf_counter() - t0
                if not line.startswith(b"data: "):
                    rec.error = f"not an SSE data line: {line[:80]!r}"
                    return rec
                frame = json.loads(line[6:])
                if rec.t_first_frame is None:
                    rec.t_first_frame = now
                if "error" in frame:
                    rec.error = f"{frame.get('code')}: {frame['error']}"
                    return rec
                if frame.get("queued"):
                    rec.queued_frames += 1
                    if rec.queued_frames == 1:
                        rec.first_position = frame["position"]
                        rec.first_eta_ms = frame["estimated_wait_ms"]
                    elif rec.queued_frames == 2:
                        rec.t_second_queued = now
                        rec.second_position = frame["position"]
                        rec.second_eta_ms = frame["estimated_wait_ms"]
                    continue
                if frame.get("content"):
                    rec.content_chars += len(frame["content"])
                    if rec.t_first_content is None:
                        rec.t_first_content = now
                if frame.get("done"):
                    rec.t_done = now
                    stats = frame.get("stats") or {}
                    rec.queue_ms = stats.get("queue_ms")
                    rec.ttft_ms = stats.get("ttft_ms")
                    rec.total_ms = stats.get("total_ms")
                    rec.eval_count = stats.get("eval_count")
            if rec.t_done is None:
                rec.error = "stream ended without a done frame"
    except (aiohttp.ClientError, TimeoutError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    return rec


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=600),
    )


async def lone_requests(
    session: aiohttp.ClientSession, gateway: Server, count: int, tag: str
) -> list[ClientRecord]:
    """One request at a time, each a distinct question."""
    records = []
    for i in range(count):
        t0 = time.perf_counter()
        rec = await stream_chat(session, gateway.base + CHAT, f"queue bench lone {tag} {i}", i, t0)
        if not rec.ok:
            raise RuntimeError(f"lone request failed: {rec.error}")
        records.append(rec)
    return records


async def simulator_chat(session: aiohttp.ClientSession, sim: Server, question: str) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": question}]}
    async with session.post(sim.base + "/api/chat", json=body) as resp:
        resp.raise_for_status()
        last = b""
        async for line in resp.content:
            if line.strip():
                last = line
    if not json.loads(last).get("done"):
        raise RuntimeError(f"simulator stream ended without done: {last[:200]!r}")


async def lone_simulator(
    session: aiohttp.ClientSession, sim: Server, count: int, tag: str
) -> list[float]:
    """The same lone request straight to the simulator: one generation, no gateway."""
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await simulator_chat(session, sim, f"queue bench sim {tag} {i}")
        samples.append(time.perf_counter() - started)
    return samples


async def burst(
    session: aiohttp.ClientSession, gateway: Server, clients: int, tag: str
) -> tuple[list[ClientRecord], float]:
    """All clients at once; returns their records and the gateway's CPU seconds meanwhile."""
    url = gateway.base + CHAT
    cpu0 = gateway.cpu_seconds()
    t0 = time.perf_counter()
    records = await asyncio.gather(
        *(
            stream_chat(session, url, f"queue bench {tag} question {i}", i, t0)
            for i in range(clients)
        )
    )
    return list(records), gateway.cpu_seconds() - cpu0


async def direct_burst(
    session: aiohttp.ClientSession, sim: Server, clients: int, n: int, tag: str
) -> float:
    """The reference schedule: the same burst straight to the simulator, at most n at a time
    (an asyncio.Semaphore in this process instead of the gateway). Returns the wall time."""
    gate = asyncio.Semaphore(n)

    async def one(i: int) -> None:
        async with gate:
            await simulator_chat(session, sim, f"queue bench direct {tag} question {i}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- analysis


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Told:
    """One client's ETA next to what happened."""

    position: int
    eta_ms: float
    actual_ms: float


def error_summary(group: list[Told]) -> dict[str, Any]:
    return {
        "clients": len(group),
        "median_abs_error_ms": median_or_none([abs(t.eta_ms - t.actual_ms) for t in group]),
        "median_abs_error_pct": median_or_none(
            [abs(t.eta_ms - t.actual_ms) / t.actual_ms * 100 for t in group if t.actual_ms > 0]
        ),
        "median_signed_error_ms": median_or_none([t.eta_ms - t.actual_ms for t in group]),
        "median_actual_wait_ms": median_or_none([t.actual_ms for t in group]),
        "median_eta_ms": median_or_none([t.eta_ms for t in group]),
    }


def eta_errors(records: list[ClientRecord], n: int, gen_ms: float) -> dict[str, Any]:
    """First ETA vs the actual wait for a slot (stats.queue_ms), for clients that were told one;
    split by first position. Also: the second ETA (sent when the position first moved) vs the
    wait that was left then, and what a schedule-aware ETA would have said."""
    first = [
        Told(r.first_position, r.first_eta_ms, r.queue_ms)
        for r in records
        if r.ok
        and r.first_position is not None
        and r.first_eta_ms is not None
        and r.queue_ms is not None
    ]
    out: dict[str, Any] = {"all": error_summary(first)}
    for label, low, high in BUCKETS:
        out[label] = error_summary([t for t in first if low <= t.position <= high])
    # The ETA the gateway would give if it took "positions 1..N start together after the
    # running generations" into account: ceil(position / N) x generation time.
    out["schedule_aware"] = error_summary(
        [Told(t.position, math.ceil(t.position / n) * gen_ms, t.actual_ms) for t in first]
    )
    # Second frame: remaining wait = queue_ms - time between the first and second frame
    # (both measured at the client, so the delivery delay cancels out).
    second = [
        Told(
            r.second_position,
            r.second_eta_ms,
            r.queue_ms - (r.t_second_queued - r.t_first_frame) * 1000,
        )
        for r in records
        if r.ok
        and r.second_position is not None
        and r.second_eta_ms is not None
        and r.t_second_queued is not None
        and r.t_first_frame is not None
        and r.queue_ms is not None
    ]
    out["second_frame"] = error_summary(second)
    # The per-request time the first ETAs imply: eta x N / position (the estimate or history).
    out["implied_request_ms"] = median_or_none([t.eta_ms * n / t.position for t in first])
    return out


def analyse(
    records: list[ClientRecord],
    n: int,
    ref: dict[str, float],
    sim_stats: dict[str, Any],
    gateway_stats: dict[str, Any],
    gateway_cpu_s: float,
) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    clients = len(records)
    wall = max(r.t_done for r in ok if r.t_done is not None) if ok else math.nan
    waves = math.ceil(clients / n)
    # A perfect gateway runs the waves back to back, each as long as Ollama takes for one answer.
    ideal = waves * ref["simulator_s"]
    ideal_gw = waves * ref["lone_s"]  # the same with a lone request through a gateway as unit
    queue_ms = [r.queue_ms for r in ok if r.queue_ms is not None]
    # Time each request held a slot as the gateway saw it: from the grant to its done frame.
    held_ms = [
        r.total_ms - r.queue_ms for r in ok if r.total_ms is not None and r.queue_ms is not None
    ]
    grant_to_first = [
        (r.t_first_content - r.t_first_frame) * 1000 - r.queue_ms
        for r in ok
        if r.t_first_content is not None and r.t_first_frame is not None and r.queue_ms is not None
    ]
    return {
        "clients": clients,
        "failed": len(failed),
        "errors": sorted({r.error or "no done frame" for r in failed})[:5],
        "wall_s": wall,
        "waves": waves,
        "ideal_s": ideal,
        "overhead_s": wall - ideal,
        "overhead_pct": (wall - ideal) / ideal * 100,
        "overhead_per_wave_ms": (wall - ideal) / waves * 1000,
        "ideal_lone_gateway_s": ideal_gw,
        "overhead_vs_lone_gateway_s": wall - ideal_gw,
        "overhead_vs_lone_gateway_pct": (wall - ideal_gw) / ideal_gw * 100,
        "queued_clients": sum(1 for r in records if r.first_eta_ms is not None),
        "last_first_frame_s": max((r.t_first_frame or 0.0) for r in records),
        "median_first_content_s": median_or_none(
            [r.t_first_content - r.t_sent for r in ok if r.t_first_content is not None]
        ),
        "median_queue_ms": median_or_none(queue_ms),
        "median_slot_held_ms": median_or_none(held_ms),
        "slot_utilisation": sum(held_ms) / (n * wall * 1000) if held_ms else None,
        # stats.queue_ms checked from the client: first content - first frame - queue_ms should
        # be the first-token delay plus the relay, for every client alike.
        "median_grant_to_first_content_ms": median_or_none(grant_to_first),
        "queued_frames_total": sum(r.queued_frames for r in records),
        "eta": eta_errors(ok, n, ref["gateway_generation_ms"]),
        "all_answers_complete": all(r.content_chars > 0 and r.eval_count for r in ok),
        "max_in_progress": sim_stats.get("max_in_progress"),
        "sim_generations": sim_stats.get("generations"),
        "sim_completed": sim_stats.get("completed"),
        "gateway_queue": gateway_stats.get("queue"),
        "gateway_cpu_s": gateway_cpu_s,
    }


# --------------------------------------------------------------------------- driver


def reference_times(lone: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over all lone requests so far."""
    return {
        "lone_s": statistics.median(x for row in lone for x in row["end_to_end_s"]),
        "lone_ttft_s": statistics.median(x for row in lone for x in row["ttft_s"]),
        "simulator_s": statistics.median(x for row in lone for x in row["simulator_direct_s"]),
        "gateway_generation_ms": statistics.median(
            row["gateway_avg_generation_ms"] for row in lone
        ),
    }


async def measure_lone(
    session: aiohttp.ClientSession, probe: Server, sim: Server, count: int, tag: str
) -> dict[str, Any]:
    recs = await lone_requests(session, probe, count, tag)
    sim_s = await lone_simulator(session, sim, count, tag)
    queue_stats = http_json(probe.base + "/api/cache-stats")["queue"]
    return {
        "end_to_end_s": [r.t_done - r.t_sent for r in recs if r.t_done is not None],
        "ttft_s": [r.t_first_content - r.t_sent for r in recs if r.t_first_content is not None],
        "gateway_total_ms": [r.total_ms for r in recs],
        "simulator_direct_s": sim_s,
        # The probe's history holds its last 20 generations (grant to Ollama's done chunk).
        "gateway_avg_generation_ms": queue_stats["avg_generation_ms"],
    }


async def run_gateway_burst(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    sim: Server,
    logdir: Path,
    n: int,
    variant: str,
    tag: str,
    ref: dict[str, float],
) -> dict[str, Any]:
    estimated = round(ref["gateway_generation_ms"]) if variant == "tuned" else None
    state = None
    if variant == "restart":
        state = logdir / f"state-{n}-{tag.replace(' ', '-')}.json"
        before_restart = start_gateway(f"gw-{n}-pre", sim, logdir, n, None, state)
        try:
            await lone_requests(session, before_restart, args.warmup, f"pre {tag}")
        finally:
            stop(before_restart)  # SIGTERM: a graceful stop writes the state file
        if not state.exists():
            raise RuntimeError(f"the gateway wrote no {state}")
    gateway = start_gateway(f"gw-{n}-{variant}", sim, logdir, n, estimated, state)
    try:
        if variant == "warm":
            await lone_requests(session, gateway, args.warmup, f"warm {tag}")
        before = http_json(gateway.base + "/api/cache-stats")["queue"]
        http_json(sim.base + "/simulator/reset", {})
        records, cpu_s = await burst(session, gateway, args.clients, tag)
        sim_stats = http_json(sim.base + "/simulator/stats")
        gw_stats = http_json(gateway.base + "/api/cache-stats")
    finally:
        stop(gateway)
    result = analyse(records, n, ref, sim_stats, gw_stats, cpu_s)
    result.update(
        max_concurrent=n,
        variant=variant,
        estimate_before_ms=before["estimated_time_per_request_ms"],
        env_estimated_ms=estimated,
        clients_detail=[asdict(r) for r in records],
    )
    return result


async def run_benchmark(args: argparse.Namespace, sim: Server, logdir: Path) -> dict[str, Any]:
    bursts: list[dict[str, Any]] = []
    lone: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []
    async with new_session() as session:
        probe = start_gateway("probe", sim, logdir, 1, None)
        try:
            await lone_requests(session, probe, 2, "connect")  # connections, imports
            for round_index in range(args.rounds):
                row = await measure_lone(session, probe, sim, args.lone, f"r{round_index}")
                lone.append({"round": round_index, **row})
                ref = reference_times(lone)
                print(
                    f"round {round_index + 1}/{args.rounds}: lone request"
                    f" {ref['lone_s'] * 1000:.1f} ms through a gateway, simulator alone"
                    f" {ref['simulator_s'] * 1000:.1f} ms, gateway-measured generation"
                    f" {ref['gateway_generation_ms']:.1f} ms",
                    file=sys.stderr,
                )
                configs = [(n, v) for v in ("direct", *args.variants) for n in args.concurrency]
                if round_index % 2:
                    configs.reverse()
                for n, variant in configs:
                    tag = f"r{round_index} n{n} {variant}"
                    if variant == "direct":
                        http_json(sim.base + "/simulator/reset", {})
                        wall = await direct_burst(session, sim, args.clients, n, tag)
                        stats = http_json(sim.base + "/simulator/stats")
                        ideal = math.ceil(args.clients / n) * ref["simulator_s"]
                        direct.append(
                            {
                                "round": round_index,
                                "max_concurrent": n,
                                "wall_s": wall,
                                "ideal_s": ideal,
                                "overhead_s": wall - ideal,
                                "overhead_pct": (wall - ideal) / ideal * 100,
                                "max_in_progress": stats["max_in_progress"],
                            }
                        )
                        print(
                            f"  N={n} direct wall {wall:6.2f} s (ideal {ideal:6.2f})"
                            f" max_in_progress {stats['max_in_progress']}",
                            file=sys.stderr,
                        )
                        continue
                    result = await run_gateway_burst(
                        args, session, sim, logdir, n, variant, tag, ref
                    )
                    result["round"] = round_index
                    bursts.append(result)
                    eta = result["eta"]["all"]
                    print(
                        f"  N={n} {variant:6} wall {result['wall_s']:6.2f} s (ideal"
                        f" {result['ideal_s']:6.2f}) overhead {result['overhead_pct']:5.1f} %"
                        f"  ETA |err| {fmt(eta['median_abs_error_ms'], '.0f')} ms"
                        f" ({fmt(eta['median_abs_error_pct'], '.0f')} %)"
                        f"  max_in_progress {result['max_in_progress']}"
                        f"  failed {result['failed']}",
                        file=sys.stderr,
                    )
        finally:
            stop(probe)
    return {"lone": lone, "direct": direct, "bursts": bursts}


def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}"


def _med(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else None


ETA_KEYS = (
    "median_abs_error_ms",
    "median_abs_error_pct",
    "median_signed_error_ms",
    "median_actual_wait_ms",
    "median_eta_ms",
)
ETA_GROUPS = ("all", *(label for label, _, _ in BUCKETS), "schedule_aware", "second_frame")


def summarise(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    ref = reference_times(data["lone"])
    summary: dict[str, Any] = {
        "lone_end_to_end_ms": ref["lone_s"] * 1000,
        "lone_ttft_ms": ref["lone_ttft_s"] * 1000,
        "simulator_direct_ms": ref["simulator_s"] * 1000,
        "gateway_generation_ms": ref["gateway_generation_ms"],
        "direct": [],
        "configs": [],
    }
    for n in args.concurrency:
        rows = [d for d in data["direct"] if d["max_concurrent"] == n]
        entry: dict[str, Any] = {
            "max_concurrent": n,
            "max_in_progress": sorted({d["max_in_progress"] for d in rows}),
        }
        for key in ("wall_s", "ideal_s", "overhead_s", "overhead_pct"):
            entry[key] = _med(rows, key)
        summary["direct"].append(entry)
    for n in args.concurrency:
        direct_wall = next(d["wall_s"] for d in summary["direct"] if d["max_concurrent"] == n)
        for variant in args.variants:
            rows = [
                b for b in data["bursts"] if b["max_concurrent"] == n and b["variant"] == variant
            ]
            entry = {
                "max_concurrent": n,
                "variant": variant,
                "rounds": len(rows),
                "failed_total": sum(b["failed"] for b in rows),
                "max_in_progress": sorted({b["max_in_progress"] for b in rows}),
                "estimate_before_ms": sorted({b["estimate_before_ms"] for b in rows}),
            }
            for key in (
                "wall_s",
                "ideal_s",
                "overhead_s",
                "overhead_pct",
                "overhead_per_wave_ms",
                "ideal_lone_gateway_s",
                "overhead_vs_lone_gateway_s",
                "overhead_vs_lone_gateway_pct",
                "queued_clients",
                "last_first_frame_s",
                "median_first_content_s",
                "median_queue_ms",
                "median_slot_held_ms",
                "slot_utilisation",
                "median_grant_to_first_content_ms",
                "queued_frames_total",
                "gateway_cpu_s",
            ):
                entry[key] = _med(rows, key)
            entry["wall_vs_direct_s"] = (
                entry["wall_s"] - direct_wall if entry["wall_s"] is not None else None
            )
            entry["eta"] = {
                group: {key: _med(rows, "eta", group, key) for key in ETA_KEYS}
                for group in ETA_GROUPS
            }
            entry["eta"]["implied_request_ms"] = _med(rows, "eta", "implied_request_ms")
            summary["configs"].append(entry)
    return summary


def print_report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    print()
    print(
        f"Queue benchmark: {args.clients} streamed clients at once, {args.tokens} tokens,"
        f" first token {args.first_token_delay_ms:g} ms, {args.token_delay_ms:g} ms/token;"
        f" medians of {args.rounds} round(s)"
    )
    print(
        f"One lone generation straight from the simulator: {summary['simulator_direct_ms']:.1f}"
        f" ms (the ideal's unit); a lone request through a gateway:"
        f" {summary['lone_end_to_end_ms']:.1f} ms end to end (TTFT"
        f" {summary['lone_ttft_ms']:.1f} ms); gateway-measured generation:"
        f" {summary['gateway_generation_ms']:.1f} ms (the tuned estimate)"
    )
    print()
    header = (
        f"{'N':>2} {'variant':7} {'wall s':>7} {'ideal s':>7} {'over ms':>7} {'over %':>6}"
        f" {'ms/wave':>7} {'-direct ms':>10} {'slot ms':>7} {'util %':>6} {'gw CPU s':>8}"
        f" {'max_inp':>7}"
    )
    print(header)
    print("-" * len(header))
    for n in args.concurrency:
        d = next(d for d in summary["direct"] if d["max_concurrent"] == n)
        waves = math.ceil(args.clients / n)
        print(
            f"{n:>2} {'direct':7} {d['wall_s']:7.2f} {d['ideal_s']:7.2f}"
            f" {d['overhead_s'] * 1000:7.0f} {d['overhead_pct']:6.1f}"
            f" {d['overhead_s'] * 1000 / waves:7.1f} {'':>10} {'':>7} {'':>6} {'':>8}"
            f" {','.join(str(x) for x in d['max_in_progress']):>7}"
        )
        for c in summary["configs"]:
            if c["max_concurrent"] != n:
                continue
            util = c["slot_utilisation"]
            print(
                f"{n:>2} {c['variant']:7} {fmt(c['wall_s'], '.2f'):>7}"
                f" {fmt(c['ideal_s'], '.2f'):>7} {fmt(c['overhead_s'] * 1000, '.0f'):>7}"
                f" {fmt(c['overhead_pct'], '.1f'):>6} {fmt(c['overhead_per_wave_ms'], '.1f'):>7}"
                f" {fmt(c['wall_vs_direct_s'] * 1000, '+.0f'):>10}"
                f" {fmt(c['median_slot_held_ms'], '.0f'):>7}"
                f" {fmt(util * 100 if util is not None else None, '.1f'):>6}"
                f" {fmt(c['gateway_cpu_s'], '.2f'):>8}"
                f" {','.join(str(x) for x in c['max_in_progress']):>7}"
            )
    print(
        "ideal = ceil(clients/N) x one lone generation straight from the simulator; over = wall"
        " - ideal; ms/wave = over / waves; direct = the same burst straight to the simulator"
        " with an asyncio.Semaphore(N) in the client; -direct = wall - direct wall; slot ms ="
        " median time a request held its slot (stats.total_ms - queue_ms); util = sum of those"
        " / (N x wall); max_inp = simulator max_in_progress"
    )
    print()
    header = (
        f"{'N':>2} {'variant':7} {'queued':>6} {'T used':>7} {'|err| ms':>9} {'|err| %':>8}"
        f" {'1-10 %':>8} {'11-50 %':>8} {'51+ %':>8} {'bias ms':>9} {'2nd ms':>7}"
        f" {'2nd %':>6} {'ceil ms':>7} {'ceil %':>6}"
    )
    print(header)
    print("-" * len(header))
    for c in summary["configs"]:
        eta = c["eta"]
        print(
            f"{c['max_concurrent']:>2} {c['variant']:7} {fmt(c['queued_clients'], '.0f'):>6}"
            f" {fmt(eta['implied_request_ms'], '.0f'):>7}"
            f" {fmt(eta['all']['median_abs_error_ms'], ',.0f'):>9}"
            f" {fmt(eta['all']['median_abs_error_pct'], ',.0f'):>8}"
            f" {fmt(eta['pos 1-10']['median_abs_error_pct'], ',.0f'):>8}"
            f" {fmt(eta['pos 11-50']['median_abs_error_pct'], ',.0f'):>8}"
            f" {fmt(eta['pos 51+']['median_abs_error_pct'], ',.0f'):>8}"
            f" {fmt(eta['all']['median_signed_error_ms'], '+,.0f'):>9}"
            f" {fmt(eta['second_frame']['median_abs_error_ms'], ',.0f'):>7}"
            f" {fmt(eta['second_frame']['median_abs_error_pct'], ',.0f'):>6}"
            f" {fmt(eta['schedule_aware']['median_abs_error_ms'], ',.0f'):>7}"
            f" {fmt(eta['schedule_aware']['median_abs_error_pct'], ',.1f'):>6}"
        )
    print(
        "queued = clients told an ETA; T used = per-request time the first ETAs imply (ETA x N /"
        " position); |err| = median |first estimated_wait_ms - stats.queue_ms|, in ms and % of"
        " the wait; 1-10/11-50/51+ = |err| % by first position; bias = median (ETA - actual);"
        " 2nd = the ETA sent when the position first moved vs the wait left then; ceil = what"
        " ceil(position/N) x gateway generation time would have missed by"
    )
    print(
        "aim (#19): median |err| <= 25 % of the wait at every N, including the first requests"
        " after a start (restart); cold shows the 30 s default no kept times leave"
    )
    for c in summary["configs"]:
        pct = c["eta"]["all"]["median_abs_error_pct"]
        if pct is not None and c["variant"] != "cold":
            verdict = "met" if pct <= 25 else "MISSED"
            print(f"  N={c['max_concurrent']} {c['variant']:7} |err| {pct:5.1f} % -> {verdict}")
    problems = []
    for c in [*summary["direct"], *summary["configs"]]:
        name = f"N={c['max_concurrent']} {c.get('variant', 'direct')}"
        if c["max_in_progress"] != [c["max_concurrent"]]:
            problems.append(f"{name}: max_in_progress {c['max_in_progress']}")
        if c.get("failed_total"):
            problems.append(f"{name}: {c['failed_total']} failed clients")
    print()
    print(
        "Checks: "
        + (
            "; ".join(problems)
            if problems
            else "max_in_progress == N everywhere, every client got a complete answer"
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="clients per burst")
    parser.add_argument(
        "--concurrency", default="1,2,4", help="max_concurrent values, comma-separated"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="cold, warm, tuned, restart (comma-separated)",
    )
    parser.add_argument("--tokens", type=int, default=20, help="tokens per answer")
    parser.add_argument("--token-delay-ms", type=float, default=10, help="delay between tokens")
    parser.add_argument(
        "--first-token-delay-ms", type=float, default=20, help="delay before the first token"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--lone", type=int, default=5, help="lone requests per round for T")
    parser.add_argument("--warmup", type=int, default=5, help="lone requests before a warm burst")
    add_run_args(parser, pin=False)
    args = parser.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    if args.quick:
        args.clients, args.concurrency, args.rounds = 12, [1, 2], 1
        args.tokens, args.lone, args.warmup = 5, 2, 2
    args.output = args.output or results_path("queue", args.quick)
    return args


def main() -> int:
    args = parse_args()
    started = datetime.now(UTC)
    wall0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        sim = start_simulator(args, Path(tmp))
        try:
            data = asyncio.run(run_benchmark(args, sim, Path(tmp)))
        finally:
            stop(sim)
    summary = summarise(args, data)
    print_report(args, summary)
    report = {
        "benchmark": "queue",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - wall0, 1),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(("aiohttp", "psutil")),
        "params": {
            "clients": args.clients,
            "concurrency": args.concurrency,
            "variants": args.variants,
            "tokens": args.tokens,
            "token_delay_ms": args.token_delay_ms,
            "first_token_delay_ms": args.first_token_delay_ms,
            "rounds": args.rounds,
            "lone": args.lone,
            "warmup": args.warmup,
        },
        "summary": summary,
        "lone": data["lone"],
        "direct": data["direct"],
        "bursts": data["bursts"],
    }
    write_json(args.output, report)
    print(f"\nJSON written to {args.output} (run took {report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
