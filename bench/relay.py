"""Benchmark aiohttp vs httpx as the gateway's upstream client for relaying Ollama NDJSON streams.

Run from the repository root:  .venv/bin/python bench/relay.py  (add --quick for a smoke run)

The Ollama simulator runs in its own process with zero token delays, so both clients are fed
as fast as they can read. Both clients run in this process, one after the other, interleaved
round by round so that machine noise hits both; figures are medians over the rounds.
"""

from __future__ import annotations

import stdlib_first  # noqa: F401  (first: moves this folder behind the standard library)

# isort: split
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from common import (
    CLIENT_CPU,
    RESULTS_DIR,
    ROOT,
    SERVER_CPU,
    add_run_args,
    can_pin,
    free_port,
    machine_info,
    percentile,
    simulator_command,
    terminate,
    wait_until_answers,
    write_json,
)

RESULTS = RESULTS_DIR / "relay.json"
CLIENTS = ("aiohttp", "httpx")

# Targets for the chosen client. A fast local model streams ~200 tokens/s, so 20,000 lines/s
# on one connection leaves 100x headroom; 2 ms p50 keeps a small request's relay overhead
# well below Ollama's own per-request cost.
TARGET_LINES_PER_S = 20_000
TARGET_SMALL_P50_MS = 2.0


# --------------------------------------------------------------------------- the two clients


class Client:
    """One upstream client library, driven the way the gateway would drive it."""

    name: str

    async def stream_lines(self, url: str, payload: bytes) -> tuple[int, int]:
        """POST, iterate the library's own line reader, json-parse each line."""
        raise NotImplementedError

    async def stream_split(self, url: str, payload: bytes) -> tuple[int, int]:
        """POST, read raw chunks and split on b"\\n" ourselves, json-parse each line."""
        raise NotImplementedError

    async def small(self, url: str, payload: bytes) -> dict[str, Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


def _check_final(last: dict[str, Any] | None, lines: int) -> None:
    if not last or last.get("done") is not True:
        raise RuntimeError(f"stream ended without a done chunk after {lines} lines: {last}")


async def _split_lines(chunks: AsyncIterator[bytes]) -> tuple[int, int, dict[str, Any] | None]:
    lines = size = 0
    last = None
    pending = b""
    async for chunk in chunks:
        size += len(chunk)
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        for part in parts:
            if part:
                last = json.loads(part)
                lines += 1
    if pending.strip():
        last = json.loads(pending)
        lines += 1
    return lines, size, last


class AiohttpClient(Client):
    name = "aiohttp"

    def __init__(self, pool: int) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool),
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"Content-Type": "application/json"},
        )

    async def stream_lines(self, url: str, payload: bytes) -> tuple[int, int]:
        lines = size = 0
        last = None
        async with self._session.post(url, data=payload) as resp:
            resp.raise_for_status()
            async for line in resp.content:  # StreamReader.readline, split on b"\n"
                size += len(line)
                if line.strip():
                    last = json.loads(line)
                    lines += 1
        _check_final(last, lines)
        return lines, size

    async def stream_split(self, url: str, payload: bytes) -> tuple[int, int]:
        async with self._session.post(url, data=payload) as resp:
            resp.raise_for_status()
            lines, size, last = await _split_lines(resp.content.iter_any())
        _check_final(last, lines)
        return lines, size

    async def small(self, url: str, payload: bytes) -> dict[str, Any]:
        async with self._session.post(url, data=payload) as resp:
            resp.raise_for_status()
            return json.loads(await resp.read())

    async def aclose(self) -> None:
        await self._session.close()


class HttpxClient(Client):
    name = "httpx"

    def __init__(self, pool: int) -> None:
        # trust_env=False: a proxy variable in the environment must not reroute loopback.
        self._client = httpx.AsyncClient(
            timeout=None,
            trust_env=False,
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            headers={"Content-Type": "application/json"},
        )

    async def stream_lines(self, url: str, payload: bytes) -> tuple[int, int]:
        lines = 0
        last = None
        async with self._client.stream("POST", url, content=payload) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():  # str.splitlines semantics
                if line.strip():
                    last = json.loads(line)
                    lines += 1
            size = resp.num_bytes_downloaded
        _check_final(last, lines)
        return lines, size

    async def stream_split(self, url: str, payload: bytes) -> tuple[int, int]:
        async with self._client.stream("POST", url, content=payload) as resp:
            resp.raise_for_status()
            lines, size, last = await _split_lines(resp.aiter_bytes())
        _check_final(last, lines)
        return lines, size

    async def small(self, url: str, payload: bytes) -> dict[str, Any]:
        resp = await self._client.post(url, content=payload)
        resp.raise_for_status()
        return resp.json()

    async def aclose(self) -> None:
        await self._client.aclose()


# --------------------------------------------------------------------------- measurements


@dataclass
class StreamRun:
    lines_per_s: float
    mb_per_s: float
    p50_ms: float
    cpu_us_per_line: float
    client_busy: float  # CPU time / wall time here; well below 1 means the server was the limit


async def _timed(call: Callable[[], Awaitable[tuple[int, int]]]) -> tuple[int, int, float]:
    started = time.perf_counter()
    lines, size = await call()
    return lines, size, time.perf_counter() - started


async def measure_stream(
    client: Client, url: str, payload: bytes, requests: int, concurrency: int, split: bool
) -> StreamRun:
    call = client.stream_split if split else client.stream_lines
    gate = asyncio.Semaphore(concurrency)

    async def one() -> tuple[int, int, float]:
        async with gate:
            return await _timed(lambda: call(url, payload))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if concurrency == 1:
        results = [await one() for _ in range(requests)]
    else:
        results = await asyncio.gather(*(one() for _ in range(requests)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    lines = sum(r[0] for r in results)
    size = sum(r[1] for r in results)
    return StreamRun(
        lines_per_s=lines / wall,
        mb_per_s=size / wall / 1e6,
        p50_ms=statistics.median(r[2] for r in results) * 1000,
        cpu_us_per_line=cpu / lines * 1e6,
        client_busy=cpu / wall,
    )


async def measure_small(client: Client, url: str, payload: bytes, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        answer = await client.small(url, payload)
        samples.append(time.perf_counter() - started)
        if answer.get("done") is not True:
            raise RuntimeError(f"unexpected small answer: {answer}")
    return samples


# --------------------------------------------------------------------------- simulator process


def start_simulator(port: int, tokens: int) -> subprocess.Popen[bytes]:
    command = simulator_command(port, tokens)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_answers(
        proc,
        f"http://127.0.0.1:{port}/api/version",
        name="simulator",
        timeout=15,
        output=lambda: proc.stderr.read().decode(),  # type: ignore[union-attr]
    )
    return proc


def pin_cpus(simulator_pid: int) -> str:
    """Keep the simulator and the clients on different cores so they do not trade places."""
    if not can_pin():
        return "not pinned"
    os.sched_setaffinity(simulator_pid, {SERVER_CPU})
    os.sched_setaffinity(0, {CLIENT_CPU})
    return f"simulator on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}"


# --------------------------------------------------------------------------- driver


SCENARIOS = {
    # name: (concurrency, split)
    "stream_seq_lines": (1, False),
    "stream_conc_lines": (8, False),
    "stream_seq_split": (1, True),
}
SCENARIO_LABELS = {
    "stream_seq_lines": "stream, 1 at a time, library line reader",
    "stream_conc_lines": "stream, {concurrency} at once, library line reader",
    "stream_seq_split": "stream, 1 at a time, raw chunks + own split",
}


async def run_benchmark(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    chat_url = f"{base_url}/api/chat"
    stream_payload = json.dumps(
        {"model": "llama3.2", "messages": [{"role": "user", "content": "Relay benchmark"}]}
    ).encode()
    small_payload = json.dumps(
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "ping"}],
            "stream": False,
            "options": {"sim_tokens": 8},
        }
    ).encode()
    scenarios = dict(SCENARIOS)
    scenarios["stream_conc_lines"] = (args.concurrency, False)
    pool = max(args.concurrency, 8)
    clients: dict[str, Client] = {"aiohttp": AiohttpClient(pool), "httpx": HttpxClient(pool)}
    stream_rounds: dict[str, dict[str, list[StreamRun]]] = {
        name: {c: [] for c in CLIENTS} for name in scenarios
    }
    small_samples: dict[str, list[float]] = {c: [] for c in CLIENTS}
    small_cpu: dict[str, float] = dict.fromkeys(CLIENTS, 0.0)
    try:
        for client in clients.values():  # warm-up: connections, imports, caches
            for _ in range(3):
                await client.stream_lines(chat_url, stream_payload)
                await client.small(chat_url, small_payload)

        for round_index in range(args.rounds):
            # Alternate which client goes first so drift in machine load hits both alike.
            order = CLIENTS if round_index % 2 == 0 else CLIENTS[::-1]
            for name, (concurrency, split) in scenarios.items():
                for client_name in order:
                    run = await measure_stream(
                        clients[client_name],
                        chat_url,
                        stream_payload,
                        args.requests,
                        concurrency,
                        split,
                    )
                    stream_rounds[name][client_name].append(run)
                    print(
                        f"  round {round_index + 1}/{args.rounds} {name:18} {client_name:8}"
                        f" {run.lines_per_s:9,.0f} lines/s  {run.cpu_us_per_line:5.1f} µs CPU/line",
                        file=sys.stderr,
                    )
            per_round = args.small // args.rounds
            for client_name in order:
                cpu0 = time.process_time()
                small_samples[client_name] += await measure_small(
                    clients[client_name], chat_url, small_payload, per_round
                )
                small_cpu[client_name] += time.process_time() - cpu0
    finally:
        for client in clients.values():
            await client.aclose()

    results: dict[str, Any] = {"streams": {}, "small": {}}
    for name, by_client in stream_rounds.items():
        results["streams"][name] = {}
        for client_name, runs in by_client.items():
            results["streams"][name][client_name] = {
                "median": {
                    field: statistics.median(getattr(run, field) for run in runs)
                    for field in (
                        "lines_per_s",
                        "mb_per_s",
                        "p50_ms",
                        "cpu_us_per_line",
                        "client_busy",
                    )
                },
                "rounds": [run.__dict__ for run in runs],
            }
    for client_name, samples in small_samples.items():
        results["small"][client_name] = {
            "requests": len(samples),
            "p50_ms": statistics.median(samples) * 1000,
            "p99_ms": percentile(samples, 99) * 1000,
            "req_per_s": len(samples) / sum(samples),
            "cpu_us_per_request": small_cpu[client_name] / len(samples) * 1e6,
        }
    return results


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios aiohttp/httpx, expressed so that > 1 always means aiohttp is better."""
    ratios: dict[str, float] = {}
    for name, by_client in results["streams"].items():
        a, h = by_client["aiohttp"]["median"], by_client["httpx"]["median"]
        ratios[f"{name}.lines_per_s"] = a["lines_per_s"] / h["lines_per_s"]
        ratios[f"{name}.cpu_per_line"] = h["cpu_us_per_line"] / a["cpu_us_per_line"]
    a, h = results["small"]["aiohttp"], results["small"]["httpx"]
    ratios["small.p50"] = h["p50_ms"] / a["p50_ms"]
    ratios["small.p99"] = h["p99_ms"] / a["p99_ms"]
    ratios["small.cpu_per_request"] = h["cpu_us_per_request"] / a["cpu_us_per_request"]
    aiohttp_wins = sum(r > 1 for r in ratios.values())
    winner = "aiohttp" if aiohttp_wins > len(ratios) / 2 else "httpx"
    return {"ratios": ratios, "winner": winner, "metrics_won_by_aiohttp": aiohttp_wins}


def print_report(
    args: argparse.Namespace, results: dict[str, Any], verdict: dict[str, Any]
) -> None:
    print()
    print(
        f"Relay benchmark: {args.requests} streams x {args.tokens} tokens per scenario and client,"
        f" {args.rounds} rounds, medians"
    )
    header = (
        f"{'scenario':50} {'client':8} {'lines/s':>9} {'MB/s':>6} {'p50 ms':>7}"
        f" {'µs CPU/line':>11} {'busy':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, by_client in results["streams"].items():
        label = SCENARIO_LABELS[name].format(concurrency=args.concurrency)
        for client_name in CLIENTS:
            m = by_client[client_name]["median"]
            print(
                f"{label:50} {client_name:8} {m['lines_per_s']:9,.0f} {m['mb_per_s']:6.1f}"
                f" {m['p50_ms']:7.1f} {m['cpu_us_per_line']:11.1f} {m['client_busy']:5.0%}"
            )
    print()
    header = (
        f"{'small non-streamed /api/chat':50} {'client':8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'req/s':>7} {'µs CPU/req':>10}"
    )
    print(header)
    print("-" * len(header))
    for client_name in CLIENTS:
        s = results["small"][client_name]
        label = f"{s['requests']} requests, 1 at a time"
        print(
            f"{label:50} {client_name:8} {s['p50_ms']:7.2f} {s['p99_ms']:7.2f}"
            f" {s['req_per_s']:7.0f} {s['cpu_us_per_request']:10.0f}"
        )
    print()
    print("aiohttp / httpx (> 1 means aiohttp is better):")
    for key, ratio in verdict["ratios"].items():
        print(f"  {key:32} {ratio:5.2f}x")
    winner = verdict["winner"]
    won = verdict["metrics_won_by_aiohttp"]
    if winner == "httpx":
        won = len(verdict["ratios"]) - won
    seq = verdict["ratios"]["stream_seq_lines.lines_per_s"]
    lead = seq if winner == "aiohttp" else 1 / seq
    print(
        f"\nFaster: {winner}, on {won} of {len(verdict['ratios'])} metrics;"
        f" single-stream relay throughput {lead:.2f}x the other's."
    )
    best = results["streams"]["stream_seq_lines"][winner]["median"]["lines_per_s"]
    small_p50 = results["small"][winner]["p50_ms"]
    print(
        f"Target: >= {TARGET_LINES_PER_S:,} lines/s on one stream -> {best:,.0f}"
        f" ({'met' if best >= TARGET_LINES_PER_S else 'MISSED'}); small request p50 <="
        f" {TARGET_SMALL_P50_MS} ms -> {small_p50:.2f} ms"
        f" ({'met' if small_p50 <= TARGET_SMALL_P50_MS else 'MISSED'})"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="streams per scenario and round")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens (lines) per stream")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="streams at once (concurrent variant)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument("--small", type=int, default=1000, help="small requests per client")
    add_run_args(parser)
    args = parser.parse_args()
    # A --quick run writes the same file as a real one here.
    args.output = args.output or RESULTS
    if args.quick:
        args.requests, args.tokens, args.rounds, args.small = 10, 200, 2, 100
    return args


def main() -> int:
    args = parse_args()
    port = free_port()
    proc = start_simulator(port, args.tokens)
    try:
        pinning = "not pinned (--no-pin)" if args.no_pin else pin_cpus(proc.pid)
        started = datetime.now(UTC)
        results = asyncio.run(run_benchmark(args, f"http://127.0.0.1:{port}"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/simulator/stats", timeout=5) as r:
            sim_stats = json.load(r)
    finally:
        terminate(proc, 5)
    verdict = compare(results)
    print_report(args, results, verdict)
    report = {
        "benchmark": "relay",
        "date": started.isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(("aiohttp", "httpx", "httpcore", "h11", "anyio")),
        "pinning": pinning,
        "params": {
            "requests": args.requests,
            "tokens": args.tokens,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "small_requests": args.small,
        },
        "targets": {"lines_per_s": TARGET_LINES_PER_S, "small_p50_ms": TARGET_SMALL_P50_MS},
        "results": results,
        "comparison": verdict,
        "simulator_stats": sim_stats,
    }
    write_json(args.output, report)
    print(f"\nJSON written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
