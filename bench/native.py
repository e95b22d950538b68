"""Ollama's native /api/chat through the gateway: added time on a streamed miss, and native hits
against /api/chat-optimized hits.

Run from the repository root:  .venv/bin/python bench/native.py  (add --quick for a smoke run)

Every server is its own process, started here: the Ollama simulator with a token delay (64
tokens, 5 ms apart, 10 ms before the first), one gateway in front of it (`chatbot-backend`,
LOG_LEVEL=warning, warm-up off) and the bare relay (below). All three run on CPU 1; this script
and wrk run on CPU 0 (`--no-pin` turns that off).

1. Stream overhead: `POST /api/chat` streams, each with its own question (so every one through
   the gateway is a miss), sent to the simulator directly, through a bare aiohttp relay (the
   floor: what any aiohttp hop costs here) and through the gateway, one after the other in
   rotating order, over several rounds. A raw blocking socket client timestamps the arrival of
   the first and of the last NDJSON line; figures are median and p90 over all streams, the
   time each hop adds, and the relay's and the gateway's CPU per stream.
2. Hits: one question, stored by one miss, asked again through native `/api/chat` (`stream:
   false` and streamed) and through `/api/chat-optimized` (`stream: false` and SSE). Latency
   with the raw socket client, one keep-alive connection per kind, requests one at a time,
   rounds rotated; throughput with wrk (32 connections), or an aiohttp client if wrk is missing.
   A diagnostic: the native hit back to back and after the gateway sat idle for 100 ms.

`--profile` also samples the gateway with py-spy under wrk, per hit kind.

The wrk runner, the py-spy summary and the code fingerprint are cache_hit.py's.
"""

from __future__ import annotations

import stdlib_first  # noqa: F401  (first: moves this folder behind the standard library)

# isort: split
import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cache_hit import code_version, run_wrk, summarise_profile
from common import (
    RESULTS_DIR,
    ROOT,
    Server,
    add_run_args,
    free_port,
    http_json,
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
MODEL = "llama3.2"

# Targets, from issue #12. "As fast as" is read as within 10 %: on this machine two runs of
# the same thing differ by that much.
TARGET_ADDED_FIRST_MS = 1.0
TARGET_HIT_RATIO = 1.10


# The floor for the stream: a bare aiohttp relay with the gateway's upstream client (a pooled
# ClientSession) and server settings (no access log, handler cancellation). It forwards the
# request body and relays each read as it comes, with no parsing, queue or cache: what any
# aiohttp proxy between the client and Ollama costs on this machine.
RELAY_CODE = """
import asyncio, signal, sys
import aiohttp
from aiohttp import web
UPSTREAM = sys.argv[2]
SESSION = web.AppKey("session", aiohttp.ClientSession)
async def session_ctx(app):
    app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    yield
    await app[SESSION].close()
async def chat(request):
    body = await request.read()
    headers = {"Content-Type": "application/json"}
    async with request.app[SESSION].post(UPSTREAM + "/api/chat", data=body, headers=headers) as up:
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.content_type})
        await resp.prepare(request)
        async for data in up.content.iter_any():
            await resp.write(data)
        await resp.write_eof()
        return resp
async def main(port):
    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/", lambda request: web.Response(text="ok"))
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


# --------------------------------------------------------------------------- raw HTTP client


@dataclass
class Exchange:
    """One response as the raw client saw it; times in seconds from the request's first byte."""

    status: int
    head: str
    body: bytes
    first_line_s: float  # the first b"\n" of the body arrived
    last_line_s: float  # the last b"\n" of the body arrived
    end_s: float  # the response was complete (Content-Length reached or the last chunk)
    # (decoded body bytes, seconds) after each recv: when any part of the body arrived.
    arrivals: list[tuple[int, float]] = field(default_factory=list)

    def arrived_s(self, offset: int) -> float:
        """When the body's first `offset` bytes were in, from the request's first byte."""
        for length, at in self.arrivals:
            if length >= offset:
                return at
        raise ValueError(f"the body has {len(self.body)} bytes, not {offset}")


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class RawClient:
    """One keep-alive HTTP/1.1 connection over a blocking socket that timestamps each recv.

    A chunked body is decoded as it arrives, so the arrival of every line is known; the work
    per recv is a few slices, the same for every server measured. Parsing and checking the
    lines happens after the clock stops.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def exchange(self, request: bytes) -> Exchange:
        sock = self.sock
        started = time.perf_counter()
        sock.sendall(request)
        pending = bytearray(self._recv())
        now = time.perf_counter()
        while (head_end := pending.find(b"\r\n\r\n")) < 0:
            pending += self._recv()
            now = time.perf_counter()
        head = bytes(pending[:head_end]).decode("latin-1")
        del pending[: head_end + 4]
        body = bytearray()
        first = last = 0.0
        length = _CONTENT_LENGTH.search(b"\r\n" + head.encode("latin-1") + b"\r\n")
        chunked = length is None
        remaining = 0 if chunked else int(length.group(1))  # type: ignore[union-attr]
        in_data = not chunked  # inside a chunk's data (or a Content-Length body)
        finished = False
        arrivals: list[tuple[int, float]] = []
        while True:
            before = len(body)
            while True:  # decode what has arrived
                if in_data:
                    take = min(remaining, len(pending))
                    body += pending[:take]
                    del pending[:take]
                    remaining -= take
                    if remaining:
                        break
                    if not chunked:
                        finished = True
                        break
                    in_data = False
                    remaining = -2  # the CRLF after a chunk's data
                elif remaining == -2:
                    if len(pending) < 2:
                        break
                    del pending[:2]
                    remaining = 0
                else:
                    eol = pending.find(b"\r\n")
                    if eol < 0:
                        break
                    size = int(bytes(pending[:eol]).split(b";")[0], 16)
                    if size == 0:
                        # Last chunk; no trailers are sent, so its CRLF follows.
                        if len(pending) >= eol + 4:
                            finished = True
                        break
                    del pending[: eol + 2]
                    remaining, in_data = size, True
            if body.find(b"\n", before) >= 0:
                last = now - started
                if not first:
                    first = last
            arrivals.append((len(body), now - started))
            if finished:
                break
            pending += self._recv()
            now = time.perf_counter()
        end = now - started
        if re.search(r"\r\nconnection:\s*close", head, re.IGNORECASE):
            sock.close()
            self.sock = self._connect()
        status = int(head.split(" ", 2)[1])
        return Exchange(status, head, bytes(body), first, last, end, arrivals)


def http_request(port: int, path: str, body: dict[str, Any], accept: str | None = None) -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if accept:
        lines.append(f"Accept: {accept}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


# --------------------------------------------------------------------------- checks


def header(head: str, name: str) -> str | None:
    match = re.search(rf"\r\n{name}:\s*([^\r]*)", head, re.IGNORECASE)
    return match.group(1).strip() if match else None


def check_ndjson_stream(ex: Exchange, x_cache: str | None) -> int:
    """A complete native stream: NDJSON lines, the last one `done: true`. Returns the lines."""
    if ex.status != 200:
        raise RuntimeError(f"status {ex.status}: {ex.body[:300]!r}")
    if x_cache is not None and header(ex.head, "X-Cache") != x_cache:
        raise RuntimeError(f"expected X-Cache: {x_cache}, headers {ex.head!r}")
    lines = [json.loads(line) for line in ex.body.split(b"\n") if line.strip()]
    if not lines or lines[-1].get("done") is not True or any("error" in c for c in lines):
        raise RuntimeError(f"stream did not end with a done line: {ex.body[-300:]!r}")
    return len(lines)


def check_native_whole(ex: Exchange) -> None:
    answer = json.loads(ex.body)
    if ex.status != 200 or header(ex.head, "X-Cache") != "HIT" or answer.get("done") is not True:
        raise RuntimeError(f"not a native hit: {ex.status} {ex.head!r} {ex.body[:300]!r}")


def check_native_stream_hit(ex: Exchange) -> None:
    check_ndjson_stream(ex, "HIT")


def check_optimized_whole(ex: Exchange) -> None:
    answer = json.loads(ex.body)
    if ex.status != 200 or header(ex.head, "X-Cache") != "HIT" or answer.get("cached") is not True:
        raise RuntimeError(f"not a cached answer: {ex.status} {ex.head!r} {ex.body[:300]!r}")


def check_sse_hit(ex: Exchange) -> None:
    if ex.status != 200 or header(ex.head, "X-Cache") != "HIT":
        raise RuntimeError(f"not an SSE hit: {ex.status} {ex.head!r}")
    last = ex.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    if not last.startswith(b"data: ") or json.loads(last[6:]).get("cached") is not True:
        raise RuntimeError(f"SSE did not end with a cached done frame: {last[:300]!r}")


# --------------------------------------------------------------------------- 1. stream overhead


def chat_body(question: str, stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "stream": stream}


def stream_summary(samples: list[Exchange]) -> dict[str, float]:
    first = [s.first_line_s * 1000 for s in samples]
    last = [s.last_line_s * 1000 for s in samples]
    return {
        "first_p50_ms": statistics.median(first),
        "first_p90_ms": percentile(first, 90),
        "last_p50_ms": statistics.median(last),
        "last_p90_ms": percentile(last, 90),
    }


STREAM_TARGETS = ("direct", "relay", "gateway")
STREAM_LABELS = {
    "direct": "simulator directly",
    "relay": "bare aiohttp relay (floor)",
    "gateway": "through the gateway",
}


def _paired(base: list[Exchange], other: list[Exchange]) -> dict[str, float]:
    """Differences per question: the same question went to both, a moment apart."""
    first = [(o.first_line_s - b.first_line_s) * 1000 for b, o in zip(base, other, strict=True)]
    last = [(o.last_line_s - b.last_line_s) * 1000 for b, o in zip(base, other, strict=True)]
    return {
        "first_p50_ms": statistics.median(first),
        "first_p90_ms": percentile(first, 90),
        "last_p50_ms": statistics.median(last),
        "last_p90_ms": percentile(last, 90),
    }


def measure_streams(args: argparse.Namespace, servers: dict[str, Server]) -> dict[str, Any]:
    """Each question goes to the simulator, the bare relay and the gateway, in rotating order."""
    clients = {name: RawClient(servers[name].port) for name in STREAM_TARGETS}
    expect = {"direct": None, "relay": None, "gateway": "MISS"}
    samples: dict[str, list[Exchange]] = {name: [] for name in STREAM_TARGETS}
    lines: set[int] = set()
    rounds: list[dict[str, Any]] = []
    counter = 0
    cpu0 = {name: servers[name].cpu_seconds() for name in ("relay", "gateway")}

    def ask_all(record: bool) -> None:
        nonlocal counter
        counter += 1
        body = chat_body(f"native stream {counter}: how far is the moon?")
        shift = counter % len(STREAM_TARGETS)
        for name in STREAM_TARGETS[shift:] + STREAM_TARGETS[:shift]:
            client = clients[name]
            ex = client.exchange(http_request(client.port, "/api/chat", body))
            lines.add(check_ndjson_stream(ex, expect[name]))
            if record:
                samples[name].append(ex)

    try:
        for _ in range(args.stream_warmup):
            ask_all(record=False)
        for round_index in range(args.rounds):
            start = {name: len(s) for name, s in samples.items()}
            for _ in range(args.streams):
                ask_all(record=True)
            row = {name: stream_summary(s[start[name] :]) for name, s in samples.items()}
            rounds.append(row)
            first = ", ".join(f"{n} {row[n]['first_p50_ms']:.2f}" for n in STREAM_TARGETS)
            last = ", ".join(f"{n} {row[n]['last_p50_ms']:.1f}" for n in STREAM_TARGETS)
            print(
                f"  streams round {round_index + 1}/{args.rounds}, p50 ms: first line {first};"
                f" last line {last}",
                file=sys.stderr,
            )
        # Only their own streams (warm-up included) use the relay's and the gateway's CPU.
        cpu_ms = {
            name: (servers[name].cpu_seconds() - cpu0[name]) / counter * 1000 for name in cpu0
        }
    finally:
        for client in clients.values():
            client.close()

    out: dict[str, Any] = {"streams_per_target": len(samples["direct"]), "lines": sorted(lines)}
    out["cpu_ms_per_stream"] = cpu_ms
    for name, s in samples.items():
        out[name] = stream_summary(s)
    for name in ("relay", "gateway"):
        out[f"{name}_added"] = {key: out[name][key] - out["direct"][key] for key in out[name]}
        out[f"{name}_paired"] = _paired(samples["direct"], samples[name])
    out["gateway_over_relay"] = _paired(samples["relay"], samples["gateway"])
    out["rounds"] = rounds
    out["raw_ms"] = {
        name: [[round(x.first_line_s * 1000, 3), round(x.last_line_s * 1000, 3)] for x in s]
        for name, s in samples.items()
    }
    return out


# --------------------------------------------------------------------------- 2. hits


@dataclass
class HitKind:
    key: str
    label: str
    path: str
    body: dict[str, Any]
    accept: str | None
    check: Callable[[Exchange], None]
    endpoint: str  # in /api/cache-stats' "endpoints"


HIT_QUESTION = "native bench hit: why is the sky blue?"
HIT_KINDS = {
    k.key: k
    for k in (
        HitKind(
            "native",
            "native /api/chat, stream: false",
            "/api/chat",
            chat_body(HIT_QUESTION, stream=False),
            None,
            check_native_whole,
            "chat",
        ),
        HitKind(
            "optimized",
            "/api/chat-optimized, stream: false",
            "/api/chat-optimized",
            chat_body(HIT_QUESTION, stream=False),
            None,
            check_optimized_whole,
            "chat-optimized",
        ),
        HitKind(
            "native_stream",
            "native /api/chat, NDJSON stream",
            "/api/chat",
            chat_body(HIT_QUESTION, stream=True),
            None,
            check_native_stream_hit,
            "chat",
        ),
        HitKind(
            "optimized_stream",
            "/api/chat-optimized, SSE stream",
            "/api/chat-optimized",
            chat_body(HIT_QUESTION, stream=True),
            "text/event-stream",
            check_sse_hit,
            "chat-optimized",
        ),
    )
}
# Each native kind is compared with the /api/chat-optimized kind that answers the same way.
PAIRS = (("native", "optimized"), ("native_stream", "optimized_stream"))


def warm_hits(gateway: Server) -> dict[str, Any]:
    """One miss stores the answer; then every kind must answer it from the cache. Whether the
    first /api/chat-optimized request was already a hit says if both protocols share the entry."""
    client = RawClient(gateway.port)
    try:
        kind = HIT_KINDS["native"]
        miss = client.exchange(http_request(gateway.port, kind.path, kind.body, kind.accept))
        if header(miss.head, "X-Cache") != "MISS":
            raise RuntimeError(f"the first request should be a miss: {miss.head!r}")
        first: dict[str, str | None] = {}
        for kind in HIT_KINDS.values():
            request = http_request(gateway.port, kind.path, kind.body, kind.accept)
            ex = client.exchange(request)
            first[kind.key] = header(ex.head, "X-Cache")
            if first[kind.key] != "HIT":  # not shared: store this protocol's own entry
                ex = client.exchange(request)
            kind.check(ex)
    finally:
        client.close()
    return {"first_answer_x_cache": first, "one_entry_for_both": first["optimized"] == "HIT"}


def hit_summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {"p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99)}


def measure_hit_latency(
    args: argparse.Namespace, gateway: Server, kinds: dict[str, HitKind] = HIT_KINDS
) -> dict[str, Any]:
    keys = list(kinds)
    clients = {k: RawClient(gateway.port) for k in keys}
    requests = {
        k: http_request(gateway.port, kinds[k].path, kinds[k].body, kinds[k].accept) for k in keys
    }
    per_round: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    sizes: dict[str, int] = {}

    def run(key: str, count: int) -> list[float]:
        out = []
        for _ in range(count):
            ex = clients[key].exchange(requests[key])
            out.append(ex.end_s)
            kinds[key].check(ex)
            sizes[key] = len(ex.body)
        return out

    try:
        for key in keys:
            run(key, args.warmup)
        for round_index in range(args.rounds):
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                per_round[key].append(hit_summary(run(key, args.requests)))
            line = "  ".join(f"{k} {per_round[k][-1]['p50_ms']:.3f}" for k in keys)
            print(f"  hit latency round {round_index + 1}/{args.rounds}: {line}", file=sys.stderr)
    finally:
        for client in clients.values():
            client.close()
    return {
        key: {
            "label": kinds[key].label,
            "body_bytes": sizes[key],
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "rounds": rounds,
        }
        for key, rounds in per_round.items()
    }


def measure_idle_wake(args: argparse.Namespace, gateway: Server) -> dict[str, Any]:
    """Diagnostic: the same native hit sent back to back, and after the gateway sat idle for
    `--idle-gap-ms` (as it does while a model computes), in alternating blocks."""
    kind = HIT_KINDS["native"]
    client = RawClient(gateway.port)
    request = http_request(gateway.port, kind.path, kind.body, kind.accept)
    samples: dict[str, list[float]] = {"back_to_back": [], "after_idle": []}
    try:
        for _ in range(args.idle_blocks):
            for name, gap in (("back_to_back", 0.0), ("after_idle", args.idle_gap_ms / 1000)):
                for _ in range(args.idle_requests):
                    if gap:
                        time.sleep(gap)
                    ex = client.exchange(request)
                    kind.check(ex)
                    samples[name].append(ex.end_s * 1000)
    finally:
        client.close()
    out: dict[str, Any] = {"gap_ms": args.idle_gap_ms}
    for name, values in samples.items():
        out[name] = {"p50_ms": statistics.median(values), "requests": len(values)}
    return out


def wrk_script(kind: HitKind, workdir: Path) -> Path:
    headers = {"Content-Type": "application/json"}
    if kind.accept:
        headers["Accept"] = kind.accept
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{json.dumps(kind.body)}]==]"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path = workdir / f"{kind.key}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


async def aiohttp_load(
    kind: HitKind, base: str, seconds: float, connections: int
) -> dict[str, Any]:
    """Without wrk: `connections` keep-alive clients in this process (which may be the limit)."""
    headers = {
        "Content-Type": "application/json",
        **({"Accept": kind.accept} if kind.accept else {}),
    }
    data = json.dumps(kind.body).encode()
    count = bad = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def worker() -> None:
            nonlocal count, bad
            while time.perf_counter() < deadline:
                async with session.post(base + kind.path, data=data, headers=headers) as resp:
                    await resp.read()
                count += 1
                bad += resp.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - started
    return {"req_per_s": count / wall, "requests": count, "non_2xx": bad, "socket_errors": ""}


def endpoint_hits(gateway: Server, endpoint: str) -> int:
    stats = http_json(gateway.base + "/api/cache-stats")
    return int(stats["endpoints"].get(endpoint, {}).get("hits", 0))


def load_run(
    args: argparse.Namespace, gateway: Server, kind: HitKind, seconds: float, workdir: Path
) -> dict[str, Any]:
    hits_before = endpoint_hits(gateway, kind.endpoint)
    cpu0, wall0 = gateway.cpu_seconds(), time.perf_counter()
    if args.use_wrk:
        run, _ = run_wrk(
            gateway.base + kind.path, wrk_script(kind, workdir), int(seconds), args.connections
        )
    else:
        run = asyncio.run(aiohttp_load(kind, gateway.base, seconds, args.connections))
    run["server_busy"] = (gateway.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    run["cache_hits"] = endpoint_hits(gateway, kind.endpoint) - hits_before
    if run["non_2xx"] or run["socket_errors"]:
        raise RuntimeError(f"{kind.key}: errors under load: {run}")
    # wrk counts completed responses; a few more may have been started when it stopped.
    if run["cache_hits"] < run["requests"]:
        raise RuntimeError(f"{kind.key}: {run['requests']} answers, {run['cache_hits']} hits")
    return run


def measure_hit_throughput(
    args: argparse.Namespace,
    gateway: Server,
    workdir: Path,
    kinds: dict[str, HitKind] = HIT_KINDS,
) -> dict[str, Any]:
    keys = list(kinds)
    per_round: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for key in keys:
        load_run(args, gateway, kinds[key], args.warm_seconds, workdir)
    for round_index in range(args.tp_rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:
            run = load_run(args, gateway, kinds[key], args.seconds, workdir)
            per_round[key].append(run)
            print(
                f"  hit throughput round {round_index + 1}/{args.tp_rounds} {key:17}"
                f" {run['req_per_s']:8,.0f} req/s  gateway busy {run['server_busy']:4.0%}",
                file=sys.stderr,
            )
    out: dict[str, Any] = {
        "client": f"wrk -t1 -c{args.connections}" if args.use_wrk else "aiohttp",
        "seconds": args.seconds,
    }
    for key, runs in per_round.items():
        entry: dict[str, Any] = {"label": kinds[key].label, "rounds": runs}
        for name in ("req_per_s", "p50_ms", "p99_ms", "server_busy"):
            values = [r[name] for r in runs if name in r]
            if values:
                entry[name] = statistics.median(values)
        out[key] = entry
    return out


# --------------------------------------------------------------------------- profile


def profile_gateway(
    args: argparse.Namespace,
    gateway: Server,
    workdir: Path,
    kinds: dict[str, HitKind] = HIT_KINDS,
    name: str = "native",
) -> dict[str, Any]:
    """py-spy on the gateway under wrk, per hit kind (on-CPU samples only); raw stacks in
    bench/results/{name}_profile_{kind}.txt."""
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(py_spy).exists() or not args.use_wrk:
        return {"skipped": "needs py-spy (.venv/bin/pip install py-spy) and wrk"}
    out: dict[str, Any] = {}
    for key, kind in kinds.items():
        raw_path = RESULTS_DIR / f"{name}_profile_{key}.txt"
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        recorder = subprocess.Popen(
            [
                *(py_spy, "record", "--pid", str(gateway.pid), "--rate", "250"),
                *("--format", "raw", "--duration", str(args.seconds + 1), "-o", str(raw_path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        run = load_run(args, gateway, kind, args.seconds, workdir)
        _, err = recorder.communicate(timeout=args.seconds + 30)
        if recorder.returncode != 0 or not raw_path.exists():
            out[key] = {"skipped": f"py-spy failed: {err.decode()[-500:]}"}
            continue
        summary = summarise_profile(raw_path.read_text(), args.profile_top)
        out[key] = {"req_per_s_while_sampled": run["req_per_s"], "raw": str(raw_path), **summary}
    return out


def print_profile(profile: dict[str, Any], top: int, kinds: dict[str, HitKind] = HIT_KINDS) -> None:
    for key, prof in profile.items():
        print()
        if "skipped" in prof:
            print(f"Profile {key}: skipped ({prof['skipped']})")
            continue
        print(
            f"Profile, {kinds[key].label} under wrk: {prof['samples']} on-CPU samples at"
            f" {prof['req_per_s_while_sampled']:,.0f} req/s"
        )
        print(f"  {'inclusive, project code (server/)':70} share")
        for name, share in [p for p in prof["inclusive"] if p[0].startswith("server/")][:top]:
            print(f"  {name:70} {share:5.1%}")


# --------------------------------------------------------------------------- report


def verdicts(
    streams: dict[str, Any], lat: dict[str, Any], tp: dict[str, Any]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(figure: str, value: float, unit: str, target: str, passed: bool) -> None:
        rows.append(
            {"figure": figure, "value": value, "unit": unit, "target": target, "passed": passed}
        )

    added = streams["gateway_added"]["first_p50_ms"]
    row(
        "stream: added time to first line, p50",
        added,
        "ms",
        f"<= {TARGET_ADDED_FIRST_MS:g} ms",
        added <= TARGET_ADDED_FIRST_MS,
    )
    for native, optimized in PAIRS:
        ratio = lat[native]["p50_ms"] / lat[optimized]["p50_ms"]
        row(
            f"hit p50: {native} / {optimized}",
            ratio,
            "x",
            f"<= {TARGET_HIT_RATIO:.2f}x",
            ratio <= TARGET_HIT_RATIO,
        )
        ratio = tp[optimized]["req_per_s"] / tp[native]["req_per_s"]
        row(
            f"hit req/s: {optimized} / {native}",
            ratio,
            "x",
            f"<= {TARGET_HIT_RATIO:.2f}x",
            ratio <= TARGET_HIT_RATIO,
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    streams, lat, tp = report["streams"], report["hit_latency"], report["hit_throughput"]
    p = report["params"]
    code = report["code"]
    print()
    print(
        f"Gateway code: HEAD {code.get('head', '?')}, server/ sha256 {code['server_sha256']},"
        f" {len(code.get('uncommitted_server_files', []))} uncommitted file(s) under server/"
    )
    print(
        f"1. Native /api/chat streams, {p['tokens']} tokens, {p['first_token_delay_ms']:g} ms"
        f" then {p['token_delay_ms']:g} ms apart; {streams['streams_per_target']} streams per"
        " target, every gateway stream a miss; ms from the request's first byte"
    )
    header = f"{'':30} {'first p50':>9} {'first p90':>9} {'last p50':>9} {'last p90':>9}"
    print(header)
    print("-" * len(header))
    rows = [(name, STREAM_LABELS[name]) for name in STREAM_TARGETS]
    rows += [
        ("relay_added", "relay added (relay - direct)"),
        ("gateway_added", "gateway added (gw - direct)"),
        ("gateway_paired", "  per question, gw - direct"),
        ("gateway_over_relay", "  per question, gw - relay"),
    ]
    for name, label in rows:
        s = streams[name]
        print(
            f"{label:30} {s['first_p50_ms']:9.2f} {s['first_p90_ms']:9.2f}"
            f" {s['last_p50_ms']:9.2f} {s['last_p90_ms']:9.2f}"
        )
    cpu = streams["cpu_ms_per_stream"]
    print(f"CPU per stream: relay {cpu['relay']:.2f} ms, gateway {cpu['gateway']:.2f} ms")
    print()
    print(
        f"2. Hits: latency one connection, raw socket, {p['rounds']} rounds x {p['requests']}"
        f" (medians of the rounds); throughput {tp['client']}, {p['seconds']} s x"
        f" {p['tp_rounds']} rounds (medians)"
    )
    header = f"{'':36} {'bytes':>6} {'p50 ms':>7} {'p99 ms':>7}   {'req/s':>8} {'busy':>5}"
    print(header)
    print("-" * len(header))
    for key, kind in HIT_KINDS.items():
        print(
            f"{kind.label:36} {lat[key]['body_bytes']:6} {lat[key]['p50_ms']:7.3f}"
            f" {lat[key]['p99_ms']:7.3f}   {tp[key]['req_per_s']:8,.0f}"
            f" {tp[key]['server_busy']:5.0%}"
        )
    idle = report["idle_wake"]
    print(
        f"Native hit p50 back to back {idle['back_to_back']['p50_ms']:.3f} ms, after"
        f" {idle['gap_ms']:g} ms idle {idle['after_idle']['p50_ms']:.3f} ms"
    )
    shared = report["hit_warm_up"]["one_entry_for_both"]
    print(f"One cache entry for both protocols: {'yes' if shared else 'NO'}")
    print()
    print(f"{'figure':48} {'measured':>9}  {'target':>8}  result")
    for r in report["verdicts"]:
        print(
            f"{r['figure']:48} {r['value']:7.2f} {r['unit']:1}  {r['target']:>8}  "
            f"{'PASS' if r['passed'] else 'FAIL'}"
        )


# --------------------------------------------------------------------------- driver


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per streamed answer")
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=10.0)
    parser.add_argument(
        "--streams", type=int, default=50, help="questions per round, each to all three"
    )
    parser.add_argument("--stream-warmup", type=int, default=5, help="questions, not counted")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (streams and hit latency)")
    parser.add_argument("--requests", type=int, default=2000, help="hit requests per round")
    parser.add_argument("--warmup", type=int, default=200, help="hit warm-up requests per kind")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run, s")
    parser.add_argument("--warm-seconds", type=int, default=2, help="wrk warm-up per kind, s")
    parser.add_argument("--tp-rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--idle-gap-ms", type=float, default=100, help="idle gap, idle-wake diagnostic"
    )
    parser.add_argument("--idle-requests", type=int, default=40, help="per idle-wake block")
    parser.add_argument("--idle-blocks", type=int, default=3, help="idle-wake blocks")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp load client")
    add_run_args(parser, profile=True)
    args = parser.parse_args()
    if args.quick:
        args.streams, args.stream_warmup, args.rounds = 5, 2, 2
        args.requests, args.warmup = 200, 20
        args.seconds, args.warm_seconds, args.tp_rounds = 2, 1, 1
        args.idle_requests, args.idle_blocks = 10, 1
    args.output = args.output or results_path("native", args.quick)
    args.use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    return args


def main() -> int:
    args = parse_args()
    server_cpu, pinning = pin_this_script(args.no_pin, "simulator, relay and gateway")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    code = code_version()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="native_") as tmp:
        workdir = Path(tmp)
        try:
            sim_port = free_port()
            command = simulator_command(
                sim_port,
                args.tokens,
                args.token_delay_ms,
                args.first_token_delay_ms,
                launcher=(PYTHON, "-m", "server.simulator"),
            )
            sim = spawn("sim", command, "/api/version", sim_port, workdir, cpu=server_cpu)
            servers.append(sim)
            gateway = spawn_gateway("gw", sim, workdir, {"LOG_LEVEL": "warning"}, cpu=server_cpu)
            servers.append(gateway)
            relay_port = free_port()
            relay = spawn(
                "relay",
                [PYTHON, "-c", RELAY_CODE, str(relay_port), sim.base],
                "/",
                relay_port,
                workdir,
                cpu=server_cpu,
            )
            servers.append(relay)
            print(f"servers up ({pinning}); measuring streams", file=sys.stderr)
            streams = measure_streams(args, {"direct": sim, "relay": relay, "gateway": gateway})
            print("measuring hits", file=sys.stderr)
            warm = warm_hits(gateway)
            hit_latency = measure_hit_latency(args, gateway)
            hit_throughput = measure_hit_throughput(args, gateway, workdir)
            idle_wake = measure_idle_wake(args, gateway)
            profile = profile_gateway(args, gateway, workdir) if args.profile else None
            sim_stats = http_json(sim.base + "/simulator/stats")
            gateway_stats = http_json(gateway.base + "/api/cache-stats")
        finally:
            for server in servers:
                stop(server)

    code["server_sha256_at_end"] = code_version()["server_sha256"]
    if code["server_sha256_at_end"] != code["server_sha256"]:
        print("WARNING: files under server/ changed during the run", file=sys.stderr)
    report: dict[str, Any] = {
        "benchmark": "native",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(("aiohttp", "psutil"), {"wrk": "yes" if args.use_wrk else "no"}),
        "code": code,
        "pinning": pinning,
        "params": run_params(args),
        "targets": {
            "added_first_line_ms": TARGET_ADDED_FIRST_MS,
            "native_vs_optimized_hit_ratio": TARGET_HIT_RATIO,
        },
        "streams": streams,
        "hit_warm_up": warm,
        "hit_latency": hit_latency,
        "hit_throughput": hit_throughput,
        "idle_wake": idle_wake,
        "profile": profile,
        "simulator_stats": sim_stats,
        "gateway_stats": {k: gateway_stats.get(k) for k in ("endpoints", "response_cache")},
    }
    report["verdicts"] = verdicts(streams, hit_latency, hit_throughput)
    print_report(report)
    if profile:
        print_profile(profile, args.profile_top)
    write_json(args.output, report)
    print(f"\nJSON written to {args.output} (run took {report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
