"""Cache-hit benchmark: latency, throughput and memory of answers served from the response cache.

Run from the repository root:  .venv/bin/python bench/cache_hit.py  (add --quick for a smoke run)

Every server is its own process, started here: the Ollama simulator (zero token delays), two
gateways in front of it (`chatbot-backend`, one at LOG_LEVEL=warning and one at the default info
level, where every hit writes log lines by design), and a bare aiohttp server whose handler returns
a small fixed JSON body: the floor a cache hit is compared with. Servers run on CPU 1 and the load
generators (this script, wrk) on CPU 0 (`--no-pin` turns that off).

1. Latency: one keep-alive connection per target, requests one at a time, sent and read with a
   raw blocking socket (aiohttp's client adds ~0.1-0.2 ms per request, about as much as the floor
   itself; it is measured on the side to show that). Rounds are interleaved; p50/p99 are medians
   over the rounds.
2. Throughput: wrk, 32 connections, 1 thread (a Lua script sends the POST bodies); if wrk is not
   on PATH, an aiohttp client with 32 connections, which may then be the bottleneck.
3. Memory: a fresh gateway with CACHE_MAX_SIZE_MB=32 is filled with distinct ~10 KB answers until
   it evicts, then through one more cache-full of turnover; its RSS (psutil, by pid) is checked
   against max_size_mb + 60 MB.

`--profile` also samples the warning-level gateway with py-spy (`.venv/bin/pip install py-spy`)
under the wrk load and prints the functions that take its time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    RESULTS_DIR,
    ROOT,
    Server,
    add_run_args,
    free_port,
    http_json,
    http_json_response,
    machine_info,
    percentile,
    pin_this_script,
    results_path,
    run_params,
    simulator_command,
    spawn,
    spawn_gateway,
    stop,
    write_json,
)

PYTHON = str(ROOT / ".venv" / "bin" / "python")

# Targets (the mission's) and anchors (published or measured elsewhere; not measured here).
TARGET_P50_MS = 1.0
TARGET_P99_MS = 3.0
TARGET_HITS_PER_S = 3000
TARGET_RSS_EXTRA_MB = 60
AIM_RATIO = 2.0  # a cache hit within 2x the bare aiohttp floor
ANCHORS = [
    "Rust backend this replaces: a hit in 5 ms",
    "Node (Next.js API routes): a hit in 50 ms",
    "LiteLLM: 7.9 ms at 115 req/s",
    "bare aiohttp handler: 0.16 ms at 18k req/s (with wrk)",
]

CHAT_BODY = {"messages": [{"role": "user", "content": "bench"}], "stream": False}
STREAM_BODY = {"messages": [{"role": "user", "content": "bench"}], "stream": True}
OLLAMA_BODY = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "bench"}],
    "stream": False,
}

# The bare floor: an aiohttp server, configured like the gateway's (no access log, handler
# cancellation), whose one handler returns a small fixed JSON body.
FLOOR_CODE = """
import asyncio, signal, sys
from aiohttp import web
BODY = b'{"status":"ok","floor":true}'
async def handler(request):
    return web.Response(body=BODY, content_type="application/json")
async def main(port):
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
asyncio.run(main(int(sys.argv[1])))
"""


# --------------------------------------------------------------------------- processes


def warm_entry(gateway: Server) -> None:
    """One miss stores the entry; the next request must be a hit."""
    url = gateway.base + "/api/chat-optimized"
    _, first = http_json_response(url, CHAT_BODY)
    answer, second = http_json_response(url, CHAT_BODY)
    if second.get("X-Cache") != "HIT" or answer.get("cached") is not True:
        raise RuntimeError(
            f"{gateway.name}: expected X-Cache: HIT after warming, got {second.get('X-Cache')}"
            f" (first was {first.get('X-Cache')})"
        )


def cache_stats(gateway: Server) -> dict[str, Any]:
    return http_json(gateway.base + "/api/cache-stats")


# --------------------------------------------------------------------------- raw HTTP client


def http_request(
    method: str, port: int, path: str, body: dict[str, Any] | None, accept: str | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    if accept:
        lines.append(f"Accept: {accept}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class RawConnection:
    """One keep-alive HTTP/1.1 connection over a blocking socket, with next to no client cost.

    The timed part only receives until the response is complete (Content-Length reached, or the
    chunked terminator seen); decoding and checking the body happen after the clock stops.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def roundtrip(self, request: bytes) -> tuple[float, bytes]:
        sock = self.sock
        started = time.perf_counter()
        sock.sendall(request)
        buf = b""
        head_end = -1
        need = -1  # total bytes for a Content-Length response; -1 while unknown, 0 = chunked
        while True:
            chunk = sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                match = _CONTENT_LENGTH.search(buf, 0, head_end + 2)
                need = head_end + 4 + int(match.group(1)) if match else 0
            if need > 0:
                if len(buf) >= need:
                    break
            # Chunked: the last chunk. SSE frames of JSON hold no raw CR, so this cannot be
            # a false end; the body is decoded (and so checked) after the clock stops.
            elif buf.endswith(b"\r\n0\r\n\r\n") or buf.endswith(b"\r\n\r\n0\r\n\r\n"):
                break
        return time.perf_counter() - started, buf

    def close(self) -> None:
        self.sock.close()


def split_response(raw: bytes) -> tuple[int, str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    head_text = head.decode("latin-1")
    if "transfer-encoding: chunked" in head_text.lower():
        out, pos = [], 0
        while True:
            eol = body.index(b"\r\n", pos)
            size = int(body[pos:eol].split(b";")[0], 16)
            if size == 0:
                break
            out.append(body[eol + 2 : eol + 2 + size])
            pos = eol + 2 + size + 2
        body = b"".join(out)
    return status, head_text, body


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    key: str
    label: str
    server: str  # key into the servers dict
    method: str
    path: str
    body: dict[str, Any] | None
    accept: str | None = None
    check: Callable[[int, str, bytes], str | None] = field(default=lambda *_: None)

    def request_bytes(self, port: int) -> bytes:
        return http_request(self.method, port, self.path, self.body, self.accept)


def _check_hit(status: int, head: str, body: bytes) -> str | None:
    if status != 200 or "X-Cache: HIT" not in head:
        return f"status {status}, headers {head!r}"
    if json.loads(body).get("cached") is not True:
        return f"body not a cached answer: {body[:200]!r}"
    return None


def _check_stream_hit(status: int, head: str, body: bytes) -> str | None:
    if status != 200 or "X-Cache: HIT" not in head:
        return f"status {status}, headers {head!r}"
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    if not last.startswith(b"data: ") or b'"done":true,"cached":true' not in last:
        return f"stream did not end with a cached done frame: {last[:200]!r}"
    return None


def _check_ollama(status: int, head: str, body: bytes) -> str | None:
    if status != 200 or b'"done":true' not in body:
        return f"status {status}, body {body[:200]!r}"
    return None


def _check_floor(status: int, head: str, body: bytes) -> str | None:
    return None if status == 200 and b'"floor":true' in body else f"status {status}, {body!r}"


TARGETS = {
    t.key: t
    for t in (
        Target(
            "hit",
            "non-streaming hit",
            "gw",
            "POST",
            "/api/chat-optimized",
            CHAT_BODY,
            check=_check_hit,
        ),
        Target(
            "stream_hit",
            "streaming hit (whole SSE body)",
            "gw",
            "POST",
            "/api/chat-optimized",
            STREAM_BODY,
            "text/event-stream",
            _check_stream_hit,
        ),
        Target(
            "hit_info",
            "non-streaming hit, LOG_LEVEL=info",
            "gw_info",
            "POST",
            "/api/chat-optimized",
            CHAT_BODY,
            check=_check_hit,
        ),
        Target(
            "stream_hit_info",
            "streaming hit, LOG_LEVEL=info",
            "gw_info",
            "POST",
            "/api/chat-optimized",
            STREAM_BODY,
            "text/event-stream",
            _check_stream_hit,
        ),
        Target(
            "ollama_direct",
            "simulator /api/chat directly (no cache)",
            "sim",
            "POST",
            "/api/chat",
            OLLAMA_BODY,
            check=_check_ollama,
        ),
        Target("floor", "bare aiohttp floor (GET)", "floor", "GET", "/", None, check=_check_floor),
    )
}
LATENCY_KEYS = list(TARGETS)
AIOHTTP_LATENCY_KEYS = ["hit", "floor"]  # the client-overhead comparison
THROUGHPUT_KEYS = list(TARGETS)


# --------------------------------------------------------------------------- latency


def raw_latency(conn: RawConnection, target: Target, request: bytes, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        elapsed, raw = conn.roundtrip(request)
        samples.append(elapsed)
        problem = target.check(*split_response(raw))
        if problem:
            raise RuntimeError(f"{target.key}: unexpected response: {problem}")
    return samples


async def aiohttp_latency(
    session: aiohttp.ClientSession, target: Target, base: str, count: int
) -> list[float]:
    url = base + target.path
    data = None if target.body is None else json.dumps(target.body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.request(target.method, url, data=data, headers=headers) as resp:
            await resp.read()
        samples.append(time.perf_counter() - started)
        if resp.status != 200:
            raise RuntimeError(f"{target.key}: status {resp.status}")
    return samples


def measure_latency(args: argparse.Namespace, servers: dict[str, Server]) -> dict[str, Any]:
    conns = {k: RawConnection(servers[TARGETS[k].server].port) for k in LATENCY_KEYS}
    requests = {k: TARGETS[k].request_bytes(servers[TARGETS[k].server].port) for k in conns}
    per_round: dict[str, list[dict[str, float]]] = {k: [] for k in LATENCY_KEYS}
    pooled: dict[str, list[float]] = {k: [] for k in LATENCY_KEYS}
    aio_round: dict[str, list[dict[str, float]]] = {k: [] for k in AIOHTTP_LATENCY_KEYS}

    def summary(samples: list[float]) -> dict[str, float]:
        return {
            "p50_ms": statistics.median(samples) * 1000,
            "p99_ms": percentile(samples, 99) * 1000,
            "mean_ms": statistics.fmean(samples) * 1000,
            "max_ms": max(samples) * 1000,
        }

    async def aio_pass(count: int, record: bool) -> None:
        for key in AIOHTTP_LATENCY_KEYS:
            target = TARGETS[key]
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                await aiohttp_latency(session, target, servers[target.server].base, args.warmup)
                samples = await aiohttp_latency(session, target, servers[target.server].base, count)
            if record:
                aio_round[key].append(summary(samples))

    try:
        for key in LATENCY_KEYS:  # warm-up: connections, code paths, the cache entry
            raw_latency(conns[key], TARGETS[key], requests[key], args.warmup)
        for round_index in range(args.rounds):
            shift = round_index % len(LATENCY_KEYS)
            order = LATENCY_KEYS[shift:] + LATENCY_KEYS[:shift]
            for key in order:
                samples = raw_latency(conns[key], TARGETS[key], requests[key], args.requests)
                pooled[key] += samples
                per_round[key].append(summary(samples))
            asyncio.run(aio_pass(args.requests, record=True))
            line = "  ".join(f"{k} {per_round[k][-1]['p50_ms']:.3f}" for k in LATENCY_KEYS)
            print(
                f"  latency round {round_index + 1}/{args.rounds}, p50 ms: {line}", file=sys.stderr
            )
    finally:
        for conn in conns.values():
            conn.close()

    results: dict[str, Any] = {}
    for key in LATENCY_KEYS:
        rounds = per_round[key]
        results[key] = {
            "label": TARGETS[key].label,
            "requests_per_round": args.requests,
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "pooled": summary(pooled[key]) | {"requests": len(pooled[key])},
            "rounds": rounds,
        }
    results["aiohttp_client"] = {
        key: {
            "p50_ms": statistics.median(r["p50_ms"] for r in aio_round[key]),
            "p99_ms": statistics.median(r["p99_ms"] for r in aio_round[key]),
            "rounds": aio_round[key],
        }
        for key in AIOHTTP_LATENCY_KEYS
    }
    return results


# --------------------------------------------------------------------------- throughput

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def wrk_script(target: Target, workdir: Path) -> Path | None:
    if target.body is None:
        return None
    headers = {"Content-Type": "application/json"}
    if target.accept:
        headers["Accept"] = target.accept
    lines = [f'wrk.method = "{target.method}"', f"wrk.body = [==[{json.dumps(target.body)}]==]"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path = workdir / f"{target.key}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(
    url: str, script: Path | None, seconds: int, connections: int
) -> tuple[dict[str, Any], float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    command += ["-s", str(script)] if script else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    run: dict[str, Any] = {"req_per_s": float(rps.group(1)), "requests": int(total.group(1))}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.MULTILINE)
        if match:
            run[f"p{pct}_ms"] = _wrk_ms(match.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    run["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    run["socket_errors"] = errors.group(1).strip() if errors else ""
    return run, client_cpu


async def aiohttp_throughput(
    target: Target, base: str, seconds: float, connections: int
) -> dict[str, Any]:
    url = base + target.path
    data = None if target.body is None else json.dumps(target.body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    count = bad = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal count, bad
            while time.perf_counter() < deadline:
                async with session.request(target.method, url, data=data, headers=headers) as r:
                    await r.read()
                count += 1
                bad += r.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - started
    return {"req_per_s": count / wall, "requests": count, "non_2xx": bad, "socket_errors": ""}


def measure_throughput(
    args: argparse.Namespace, servers: dict[str, Server], workdir: Path
) -> dict[str, Any]:
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    scripts = {k: wrk_script(TARGETS[k], workdir) for k in THROUGHPUT_KEYS}
    per_round: dict[str, list[dict[str, Any]]] = {k: [] for k in THROUGHPUT_KEYS}

    def one(key: str, seconds: float) -> dict[str, Any]:
        target = TARGETS[key]
        server = servers[target.server]
        stats_before = cache_stats(server) if server.name.startswith("gw") else None
        cpu0, wall0, rss0 = server.cpu_seconds(), time.perf_counter(), server.rss_mb()
        if use_wrk:
            run, client_cpu = run_wrk(
                server.base + target.path, scripts[key], seconds, args.connections
            )
        else:
            cpu_self = time.process_time()
            run = asyncio.run(aiohttp_throughput(target, server.base, seconds, args.connections))
            client_cpu = time.process_time() - cpu_self
        wall = time.perf_counter() - wall0
        run["server_busy"] = (server.cpu_seconds() - cpu0) / wall
        run["client_busy"] = client_cpu / wall
        run["server_rss_mb"] = max(rss0, server.rss_mb())
        if stats_before is not None:
            hits = (
                cache_stats(server)["response_cache"]["hits"]
                - stats_before["response_cache"]["hits"]
            )
            run["cache_hits"] = hits
            # wrk counts completed responses; a few more may have been started when it stopped.
            if hits < run["requests"]:
                raise RuntimeError(f"{key}: {run['requests']} answers but only {hits} cache hits")
        if run["non_2xx"] or run["socket_errors"]:
            raise RuntimeError(f"{key}: errors under load: {run}")
        return run

    for key in THROUGHPUT_KEYS:  # warm-up: let each server see 32 connections once
        one(key, args.warm_seconds)
    for round_index in range(args.tp_rounds):
        shift = round_index % len(THROUGHPUT_KEYS)
        for key in THROUGHPUT_KEYS[shift:] + THROUGHPUT_KEYS[:shift]:
            run = one(key, args.seconds)
            per_round[key].append(run)
            print(
                f"  throughput round {round_index + 1}/{args.tp_rounds} {key:16}"
                f" {run['req_per_s']:9,.0f} req/s  server busy {run['server_busy']:4.0%}"
                f"  client busy {run['client_busy']:4.0%}",
                file=sys.stderr,
            )

    results: dict[str, Any] = {
        "client": "wrk -t1" if use_wrk else "aiohttp (client may be the bottleneck)",
        "connections": args.connections,
        "seconds": args.seconds,
    }
    for key, runs in per_round.items():
        entry: dict[str, Any] = {"label": TARGETS[key].label, "rounds": runs}
        for name in ("req_per_s", "p50_ms", "p99_ms", "server_busy", "client_busy"):
            values = [r[name] for r in runs if name in r]
            if values:
                entry[name] = statistics.median(values)
        results[key] = entry
    return results


# --------------------------------------------------------------------------- memory


async def fill_cache(gateway: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Send distinct ~10 KB answers until the cache evicts, then one cache-full of turnover."""
    url = gateway.base + "/api/chat-optimized"
    stats_url = gateway.base + "/api/cache-stats"
    counter = 0
    answer_chars: list[int] = []
    samples: list[dict[str, Any]] = []
    full_at: int | None = None
    turnover_target: int | None = None

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:

        async def one() -> None:
            nonlocal counter
            counter += 1
            body = {
                "messages": [{"role": "user", "content": f"fill {counter}"}],
                "stream": False,
                "options": {"sim_tokens": args.fill_tokens},
            }
            async with session.post(url, json=body) as resp:
                answer = await resp.json()
                if resp.status != 200 or answer.get("cached") is not False:
                    raise RuntimeError(f"fill request failed: {resp.status} {answer}")
            answer_chars.append(len(answer["content"]))

        async def sample() -> dict[str, Any]:
            async with session.get(stats_url) as resp:
                stats = await resp.json()
            cache = stats["response_cache"]
            point = {
                "requests": counter,
                "entries": cache["entries"],
                "size_bytes": cache["size_bytes"],
                "evictions": cache["evictions"],
                "rss_mb": gateway.rss_mb(),
                "reported_rss_mb": stats["memory"]["rss_mb"],
            }
            samples.append(point)
            return point

        while True:
            await asyncio.gather(*(one() for _ in range(args.fill_batch)))
            point = await sample()
            if full_at is None and point["evictions"] > 0:
                full_at = len(samples) - 1
                turnover_target = counter + point["entries"]  # replace every entry once more
            if turnover_target is not None and counter >= turnover_target:
                break
            if counter > 200_000:
                raise RuntimeError("the cache never evicted; is [cache].max_size_mb honoured?")

    assert full_at is not None
    full = samples[full_at]
    end = samples[-1]
    while_full = samples[full_at:]
    peak = max(while_full, key=lambda p: p["rss_mb"])
    return {
        "requests": counter,
        "answer_chars_mean": statistics.fmean(answer_chars),
        "at_first_eviction": full,
        "after_turnover": end,
        "peak_while_full": peak,
        "samples": samples,
    }


def measure_memory(
    args: argparse.Namespace,
    sim: Server,
    logdir: Path,
    server_cpu: int | None,
    name: str = "gw_fill",
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    env = {"LOG_LEVEL": "warning", "CACHE_MAX_SIZE_MB": str(args.fill_mb), **(extra_env or {})}
    gateway = spawn_gateway(name, sim, logdir, env, cpu=server_cpu)
    try:
        warm_entry(gateway)
        time.sleep(0.5)
        idle = gateway.rss_mb()
        started = time.perf_counter()
        fill = asyncio.run(fill_cache(gateway, args))
        fill["seconds"] = time.perf_counter() - started
        time.sleep(0.5)
        fill["rss_settled_mb"] = gateway.rss_mb()
        stats = cache_stats(gateway)["response_cache"]
    finally:
        stop(gateway)
    bound = args.fill_mb + TARGET_RSS_EXTRA_MB
    checked = max(fill["peak_while_full"]["rss_mb"], fill["rss_settled_mb"])
    return {
        "env": env,
        "max_size_mb": args.fill_mb,
        "idle_rss_mb": idle,
        "final_stats": stats,
        "rss_checked_mb": checked,
        "bound_mb": bound,
        "passed": checked <= bound,
        **fill,
    }


def code_version() -> dict[str, Any]:
    """Which gateway code was measured: HEAD, uncommitted changes under server/, a content hash.

    Read-only git calls (--no-optional-locks: not even the index's stat cache is refreshed).
    """
    digest = hashlib.sha256()
    for path in sorted((ROOT / "server").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    info: dict[str, Any] = {"server_sha256": digest.hexdigest()[:16]}
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        run = lambda *a: subprocess.run(  # noqa: E731
            [*git, *a], capture_output=True, text=True, check=True
        ).stdout.strip()
        info["head"] = run("rev-parse", "--short", "HEAD")
        info["uncommitted_server_files"] = run("status", "--porcelain", "--", "server").splitlines()
    return info


# --------------------------------------------------------------------------- profile


def _frame_name(frame: str) -> str:
    """py-spy frame `func (path/to/file.py:12)` -> `relative/file.py:func`."""
    match = re.fullmatch(r"(.*) \((.*?):?(\d*)\)", frame)
    if not match:
        return frame
    func, path = match.group(1), match.group(2)
    for marker in ("/site-packages/", "/lib/python3.", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/python3."):
                path = "stdlib/" + path.split("/", 1)[1]
            break
    return f"{path}:{func}"


def summarise_profile(raw: str, top: int) -> dict[str, Any]:
    """Self (leaf) and inclusive shares per function, of all on-CPU samples."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count
    total = max(1, total)
    return {
        "samples": total,
        "self": [(name, n / total) for name, n in self_counts.most_common(top)],
        "inclusive": [(name, n / total) for name, n in incl_counts.most_common(top * 4)],
    }


def profile_gateway(
    args: argparse.Namespace, servers: dict[str, Server], workdir: Path
) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(py_spy).exists() or shutil.which("wrk") is None:
        return {"skipped": "needs py-spy (.venv/bin/pip install py-spy) and wrk"}
    out: dict[str, Any] = {}
    for key in ("hit", "stream_hit"):
        target = TARGETS[key]
        gateway = servers[target.server]
        raw_path = RESULTS_DIR / f"cache_hit_profile_{key}.txt"
        seconds = args.seconds
        recorder = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(gateway.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--duration",
                str(seconds + 1),
                "-o",
                str(raw_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        run, _ = run_wrk(
            gateway.base + target.path, wrk_script(target, workdir), seconds, args.connections
        )
        _, err = recorder.communicate(timeout=seconds + 30)
        if recorder.returncode != 0 or not raw_path.exists():
            out[key] = {"skipped": f"py-spy failed: {err.decode()[-500:]}"}
            continue
        summary = summarise_profile(raw_path.read_text(), args.profile_top)
        out[key] = {"req_per_s_while_sampled": run["req_per_s"], "raw": str(raw_path), **summary}
    return out


def print_profile(profile: dict[str, Any], top: int) -> None:
    for key, prof in profile.items():
        print()
        if "skipped" in prof:
            print(f"Profile {key}: skipped ({prof['skipped']})")
            continue
        print(
            f"Profile of the gateway under wrk, {TARGETS[key].label}: {prof['samples']} on-CPU"
            f" samples at {prof['req_per_s_while_sampled']:,.0f} req/s; shares of those samples"
        )
        print(f"  {'self (leaf) time':70} share")
        for name, share in prof["self"][:top]:
            print(f"  {name:70} {share:5.1%}")
        print(f"  {'inclusive, project code (server/)':70} share")
        for name, share in [p for p in prof["inclusive"] if p[0].startswith("server/")][:top]:
            print(f"  {name:70} {share:5.1%}")


# --------------------------------------------------------------------------- report


def wrk_version() -> dict[str, str]:
    wrk = shutil.which("wrk")
    if not wrk:
        return {}
    probe = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    return {"wrk": (probe.stdout + probe.stderr).split("[")[0].strip()}


def verdicts(lat: dict[str, Any], tp: dict[str, Any], mem: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, value: float, unit: str, target: str, passed: bool, aim: bool = False):
        rows.append(
            {
                "figure": name,
                "value": value,
                "unit": unit,
                "target": target,
                "passed": passed,
                "kind": "aim" if aim else "target",
            }
        )

    row(
        "non-streaming hit p50",
        lat["hit"]["p50_ms"],
        "ms",
        "<= 1 ms",
        lat["hit"]["p50_ms"] <= TARGET_P50_MS,
    )
    row(
        "non-streaming hit p99",
        lat["hit"]["p99_ms"],
        "ms",
        "<= 3 ms",
        lat["hit"]["p99_ms"] <= TARGET_P99_MS,
    )
    row(
        "non-streaming hits/s, 32 connections",
        tp["hit"]["req_per_s"],
        "req/s",
        ">= 3,000",
        tp["hit"]["req_per_s"] >= TARGET_HITS_PER_S,
    )
    row(
        f"RSS, cache full ({mem['max_size_mb']} MB)",
        mem["rss_checked_mb"],
        "MB",
        f"<= {mem['bound_mb']} MB",
        mem["passed"],
    )
    floor_p50 = lat["floor"]["p50_ms"]
    floor_rps = tp["floor"]["req_per_s"]
    for key in ("hit", "stream_hit", "hit_info", "stream_hit_info"):
        ratio = lat[key]["p50_ms"] / floor_p50
        row(f"{key} p50 / floor p50", ratio, "x", "<= 2x", ratio <= AIM_RATIO, aim=True)
        ratio = floor_rps / tp[key]["req_per_s"]
        row(f"floor req/s / {key} req/s", ratio, "x", "<= 2x", ratio <= AIM_RATIO, aim=True)
    return rows


def print_report(report: dict[str, Any]) -> None:
    lat, tp, mem = report["latency"], report["throughput"], report["memory"]
    code = report["code"]
    print()
    print(
        f"Gateway code: HEAD {code.get('head', '?')}, server/ sha256 {code['server_sha256']},"
        f" {len(code.get('uncommitted_server_files', []))} uncommitted file(s) under server/"
    )
    print(
        f"Latency, one keep-alive connection, raw socket client, {report['params']['rounds']}"
        f" rounds x {report['params']['requests']} requests; medians of the rounds"
    )
    header = f"{'target':44} {'p50 ms':>7} {'p99 ms':>7}   {'req/s, 32 conn':>14} {'p50 ms':>7}"
    header += f" {'p99 ms':>7} {'srv busy':>8}"
    print(header)
    print("-" * len(header))
    for key in LATENCY_KEYS:
        t = tp[key]
        print(
            f"{TARGETS[key].label:44} {lat[key]['p50_ms']:7.3f} {lat[key]['p99_ms']:7.3f}"
            f"   {t['req_per_s']:14,.0f} {t.get('p50_ms', float('nan')):7.2f}"
            f" {t.get('p99_ms', float('nan')):7.2f} {t['server_busy']:8.0%}"
        )
    aio = lat["aiohttp_client"]
    print(
        "aiohttp ClientSession (limit=1) instead of the raw socket: p50 "
        + ", ".join(f"{k} {v['p50_ms']:.3f} ms" for k, v in aio.items())
    )
    print(f"Throughput client: {tp['client']}, {tp['connections']} connections, {tp['seconds']} s")
    for title, m in (
        ("Memory, default settings", mem),
        ("Memory, diagnostic: CHATBOT_QUEUE_TICKET_TTL_SECONDS=1", report["memory_ticket_ttl_1s"]),
    ):
        print()
        if "skipped" in m:
            print(f"{title}: skipped ({m['skipped']})")
            continue
        print(
            f"{title}: CACHE_MAX_SIZE_MB={m['max_size_mb']}; idle RSS {m['idle_rss_mb']:.1f} MB;"
            f" {m['requests']} distinct answers of ~{m['answer_chars_mean']:,.0f} chars in"
            f" {m['seconds']:.0f} s"
        )
        for label, point in (
            ("at first eviction", m["at_first_eviction"]),
            ("after a cache-full of turnover", m["after_turnover"]),
            ("peak RSS while full", m["peak_while_full"]),
        ):
            print(
                f"  {label:32} RSS {point['rss_mb']:6.1f} MB  accounted"
                f" {point['size_bytes'] / 2**20:5.1f} MiB  entries {point['entries']:5}"
                f"  evictions {point['evictions']}"
            )
        print(
            f"  RSS checked {m['rss_checked_mb']:.1f} MB against {m['bound_mb']} MB:"
            f" {'PASS' if m['passed'] else 'FAIL'}"
        )
    print()
    print(f"{'figure':44} {'measured':>12}  {'target':>10}  result")
    for r in report["verdicts"]:
        value = (
            f"{r['value']:,.0f} {r['unit']}"
            if r["unit"] == "req/s"
            else (f"{r['value']:.2f} {r['unit']}")
        )
        kind = "" if r["kind"] == "target" else " (aim)"
        print(
            f"{r['figure']:44} {value:>12}  {r['target']:>10}  "
            f"{'PASS' if r['passed'] else 'FAIL'}{kind}"
        )
    print("Anchors (not measured here): " + "; ".join(ANCHORS))


# --------------------------------------------------------------------------- driver


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="latency requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per target")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run, s")
    parser.add_argument("--warm-seconds", type=int, default=2, help="wrk warm-up per target, s")
    parser.add_argument("--tp-rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--fill-mb", type=int, default=32, help="CACHE_MAX_SIZE_MB when filling")
    parser.add_argument("--fill-tokens", type=int, default=1500, help="tokens per fill answer")
    parser.add_argument("--fill-batch", type=int, default=50, help="fill requests between checks")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp load client")
    add_run_args(parser, profile=True)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.warmup = 200, 2, 20
        args.seconds, args.warm_seconds, args.tp_rounds = 2, 1, 1
        args.fill_mb, args.fill_batch = 4, 20
    args.output = args.output or results_path("cache_hit", args.quick)
    return args


def main() -> int:
    args = parse_args()
    server_cpu, pinning = pin_this_script(args.no_pin, "servers (simulator, gateways, floor)")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    code = code_version()
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="cache_hit_") as tmp:
        workdir = Path(tmp)
        try:
            sim_port = free_port()
            servers["sim"] = spawn(
                "sim",
                simulator_command(sim_port, 64, launcher=(PYTHON, "-m", "server.simulator")),
                "/api/version",
                sim_port,
                workdir,
                cpu=server_cpu,
            )
            floor_port = free_port()
            servers["floor"] = spawn(
                "floor",
                [PYTHON, "-c", FLOOR_CODE, str(floor_port)],
                "/",
                floor_port,
                workdir,
                cpu=server_cpu,
            )
            servers["gw"] = spawn_gateway(
                "gw", servers["sim"], workdir, {"LOG_LEVEL": "warning"}, cpu=server_cpu
            )
            # Info is the default level; set explicitly so a .env in the repo cannot change it.
            # Its log goes to a file in a temporary directory (the cheapest sink a real
            # deployment would have; a terminal is slower).
            servers["gw_info"] = spawn_gateway(
                "gw_info", servers["sim"], workdir, {"LOG_LEVEL": "info"}, cpu=server_cpu
            )
            for name in ("gw", "gw_info"):
                warm_entry(servers[name])
            time.sleep(0.5)
            idle_rss = {name: servers[name].rss_mb() for name in ("gw", "gw_info")}
            print(f"servers up ({pinning}); measuring latency", file=sys.stderr)
            latency = measure_latency(args, servers)
            print("measuring throughput", file=sys.stderr)
            throughput = measure_throughput(args, servers, workdir)
            loaded_rss = {name: servers[name].rss_mb() for name in ("gw", "gw_info")}
            info_log_bytes = servers["gw_info"].log_path.stat().st_size
            info_hits = cache_stats(servers["gw_info"])["response_cache"]["hits"]
            profile = profile_gateway(args, servers, workdir) if args.profile else None
            for name in ("gw", "gw_info", "floor"):
                stop(servers.pop(name))
            print("measuring memory with the cache full", file=sys.stderr)
            memory = measure_memory(args, servers["sim"], workdir, server_cpu)
            # Diagnostic, not a target: the same fill with finished tickets forgotten after 1 s
            # instead of [queue].ticket_ttl_seconds, to tell the cache's own memory from what
            # finished requests keep alive meanwhile.
            try:
                memory_ttl1 = measure_memory(
                    args,
                    servers["sim"],
                    workdir,
                    server_cpu,
                    "gw_fill_ttl1",
                    {"CHATBOT_QUEUE_TICKET_TTL_SECONDS": "1"},
                )
            except RuntimeError as exc:  # e.g. a gateway without that setting
                memory_ttl1 = {"skipped": str(exc)[-300:]}
        finally:
            for server in servers.values():
                stop(server)

    code["server_sha256_at_end"] = code_version()["server_sha256"]
    if code["server_sha256_at_end"] != code["server_sha256"]:
        print("WARNING: files under server/ changed during the run", file=sys.stderr)
    report: dict[str, Any] = {
        "benchmark": "cache_hit",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(("aiohttp", "cachetools", "psutil"), wrk_version()),
        "code": code,
        "pinning": pinning,
        "params": run_params(args),
        "targets": {
            "hit_p50_ms": TARGET_P50_MS,
            "hit_p99_ms": TARGET_P99_MS,
            "hits_per_s_32_connections": TARGET_HITS_PER_S,
            "rss_extra_mb_over_max_size": TARGET_RSS_EXTRA_MB,
            "aim_ratio_vs_floor": AIM_RATIO,
        },
        "anchors": ANCHORS,
        "latency": latency,
        "throughput": throughput,
        "gateway_rss_mb": {"idle_after_warm_up": idle_rss, "after_load": loaded_rss},
        "info_log": {
            "bytes": info_log_bytes,
            "hits": info_hits,
            "bytes_per_hit": info_log_bytes / max(1, info_hits),
        },
        "memory": memory,
        "memory_ticket_ttl_1s": memory_ttl1,
        "profile": profile,
    }
    report["verdicts"] = verdicts(latency, throughput, memory)
    print_report(report)
    print(
        f"Gateway RSS idle after warm-up {idle_rss['gw']:.1f} MB, after the load"
        f" {loaded_rss['gw']:.1f} MB (LOG_LEVEL=warning). Info-level log:"
        f" {report['info_log']['bytes_per_hit']:.0f} bytes per hit."
    )
    if profile:
        print_profile(profile, args.profile_top)
    write_json(args.output, report)
    print(f"\nJSON written to {args.output} (run took {report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
