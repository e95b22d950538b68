"""Cache-tier benchmark: hit latency from RAM, SQLite and Redis in one run, and how often two
gateways sharing a Redis both generate the same question.

Run from the repository root:  .venv/bin/python bench/tiers.py  (add --quick for a smoke run)

Every server is its own process, started here: the Ollama simulator (zero token delays), a
redis-server of its own (free port, temp dir, no snapshots), and gateways in front of them:

- `memory`: no tier behind RAM — the baseline a RAM hit is compared with;
- `tiered`: sqlite+redis — it answers N distinct questions (misses), which fills both tiers,
  then its RAM hits are timed beside `memory`'s (aim: within 5 %);
- `sqlite`: backend sqlite on the same file, fresh RAM — each of the N questions, asked once,
  is a SQLite hit (then, asked again, a RAM hit);
- `redis`: backend redis, fresh RAM — each question, asked once, is a Redis hit.

Latency is one keep-alive connection, non-streamed requests one at a time over a raw socket
(bench/cache_hit.py's RawConnection): p50/p99 per target; RAM rounds are interleaved and the
medians of their p50s compared. The tier's own lookup (SqliteTier.get / RedisTier.get in this
process, no HTTP) is timed too.

Coalescing across gateways (a stretch goal, not built): two redis gateways in front of a slow
simulator (`--gen-ms` per answer) get the same new question, the second `offset` ms after the
first; the simulator's generation count says whether both generated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cache_hit import RawConnection, http_request, split_response
from common import (
    ROOT,
    Server,
    free_port,
    http_json,
    machine_info,
    percentile,
    pin_this_script,
    results_path,
    simulator_command,
    spawn,
    spawn_gateway,
    stop,
    write_json,
)

# bench/queue.py (the queue benchmark) shadows the stdlib's queue module, which the SQLite
# tier and the redis client import: this folder leaves the path once common is in.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if getattr(sys.modules.get("queue"), "__file__", "").startswith(str(_HERE)):
    del sys.modules["queue"]
sys.path.insert(0, str(ROOT))

AIM_RAM_RATIO = 1.05  # a RAM hit with tiers behind it, against one without
AIM_TIER_P50_MS = 1.0  # a SQLite or Redis hit, end to end
CHAT = "/api/chat-optimized"


def body(i: int | str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"tier bench question {i}"}], "stream": False}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": ms(statistics.median(samples)),
        "p99_ms": ms(percentile(samples, 99)),
    }


def timed(gateway: Server, bodies: list[dict[str, Any]], expect: str) -> list[float]:
    """Each body once over one keep-alive connection; every answer must say X-Cache `expect`."""
    conn = RawConnection(gateway.port)
    out = []
    try:
        for b in bodies:
            elapsed, raw = conn.roundtrip(http_request("POST", gateway.port, CHAT, b))
            status, head, _ = split_response(raw)
            if status != 200 or f"X-Cache: {expect}" not in head:
                raise RuntimeError(f"{gateway.name}: wanted {expect}, got {status} {head!r}")
            out.append(elapsed)
    finally:
        conn.close()
    return out


def tier_writes(gateway: Server) -> dict[str, int]:
    tiers = http_json(gateway.base + "/api/cache-stats")["response_cache"]["tiers"]
    return {name: t.get("writes", 0) for name, t in tiers.items() if name != "memory"}


def wait_writes(gateway: Server, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writes = tier_writes(gateway)
        if writes and all(w >= count for w in writes.values()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{gateway.name}: tiers wrote {tier_writes(gateway)}, wanted {count}")


def start_redis(workdir: Path, cpu: int | None) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        sys.exit("redis-server (or valkey-server) is needed: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # With the servers, not with this script: a server's neighbour, as in a deployment.
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


# --------------------------------------------------------------------------- the tier alone


async def lookup_only(db: Path, redis_url: str, keys: list[str]) -> dict[str, Any]:
    """SqliteTier.get and RedisTier.get timed in this process (no HTTP): what a tier adds."""
    from server.services.cache import CachedAnswer
    from server.services.cache_redis import RedisTier
    from server.services.cache_sqlite import SqliteTier

    text = "word " * 60
    out: dict[str, Any] = {}
    for name, tier in (
        ("sqlite", SqliteTier(db, max_size_mb=256, ttl_seconds=3600)),
        ("redis", RedisTier(redis_url, ttl_seconds=3600)),
    ):
        await tier.start()
        for key in keys:
            tier.put(key, CachedAnswer(text, "llama3.2", 60, time.monotonic()))
        while tier.counters.writes < len(keys):  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.01)
        samples = []
        for key in keys:
            started = time.perf_counter()
            found = await tier.get(key)
            samples.append(time.perf_counter() - started)
            assert found is not None, name
        await tier.close()
        out[name] = summary(samples)
    return out


async def ram_hit_in_process(
    db: Path, redis_url: str, rounds: int, per_round: int
) -> dict[str, Any]:
    """Gateway.complete() on a RAM hit, timed in this process (no HTTP, far less noise than
    the end-to-end figure): a memory-only gateway against a sqlite+redis one, in alternating
    rounds; the ratio is the median of the rounds' paired p50 ratios."""
    import dataclasses

    from server.chat_request import parse_chat_request
    from server.config import load
    from server.gateway import Gateway

    def config(backend: str) -> Any:
        env = {
            "CHATBOT_CACHE_BACKEND": backend,
            "CHATBOT_CACHE_DISK_PATH": str(db),
            "CHATBOT_CACHE_REDIS_URL": redis_url,
        }
        return load(None, env=env)

    gateways = {
        "memory": Gateway(config("memory"), metrics=False),
        "tiered": Gateway(config("sqlite+redis"), metrics=False),
    }
    req = parse_chat_request(body("in process"), gateways["memory"].config)
    for g in gateways.values():
        await g.tiers.start()
        g.cache.put(g.cache_key(req), "word " * 60, req.model, 60)
    p50s: dict[str, list[float]] = {name: [] for name in gateways}
    seq = 0
    for r in range(rounds):
        order = list(gateways) if r % 2 == 0 else list(reversed(gateways))
        for name in order:
            g, samples = gateways[name], []
            for _ in range(per_round):
                seq += 1
                one = dataclasses.replace(req, request_id=f"b{seq}")
                started = time.perf_counter()
                _, done = await g.complete(one)
                samples.append(time.perf_counter() - started)
                assert done.cached
            p50s[name].append(statistics.median(samples))
    for g in gateways.values():
        await g.tiers.close()
    ratios = [t / m for t, m in zip(p50s["tiered"], p50s["memory"], strict=True)]
    return {
        "memory_p50_us": round(statistics.median(p50s["memory"]) * 1e6, 2),
        "tiered_p50_us": round(statistics.median(p50s["tiered"]) * 1e6, 2),
        "ratio": round(statistics.median(ratios), 3),
    }


# --------------------------------------------------------------------------- coalescing


def coalescing(a: Server, b: Server, sim: Server, offsets_ms: list[int], trials: int) -> list[Any]:
    """Per offset: how many of `trials` new questions both gateways generated."""

    def generations() -> int:
        return int(http_json(sim.base + "/simulator/stats")["by_path"].get("/api/chat", 0))

    def ask(gateway: Server, b: dict[str, Any], results: list[str], at: float) -> None:
        time.sleep(max(0.0, at - time.monotonic()))
        conn = RawConnection(gateway.port)
        try:
            _, raw = conn.roundtrip(http_request("POST", gateway.port, CHAT, b))
            results.append(split_response(raw)[1])
        finally:
            conn.close()

    rows = []
    for offset in offsets_ms:
        both = 0
        for t in range(trials):
            q = body(f"coalesce {offset} {t} {time.time_ns()}")
            before = generations()
            results: list[str] = []
            start = time.monotonic() + 0.05
            threads = [
                threading.Thread(target=ask, args=(a, q, results, start)),
                threading.Thread(target=ask, args=(b, q, results, start + offset / 1000)),
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            both += generations() - before >= 2
        rows.append({"offset_ms": offset, "trials": trials, "both_generated": both})
    return rows


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (few requests)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers/client")
    parser.add_argument("--gen-ms", type=int, default=300, help="simulated generation, ms")
    args = parser.parse_args()
    n = 60 if args.quick else 400
    rounds = 3 if args.quick else 7
    per_round = 100 if args.quick else 400
    trials = 5 if args.quick else 20
    server_cpu, pinning = pin_this_script(args.no_pin, "servers")

    workdir = Path(tempfile.mkdtemp(prefix="bench-tiers-"))
    db = workdir / "answers.sqlite3"
    redis_proc, redis_url = start_redis(workdir, server_cpu)
    servers: list[Server] = []
    try:
        port = free_port()
        sim = spawn(
            "sim", simulator_command(port, tokens=60), "/api/version", port, workdir, cpu=server_cpu
        )
        servers.append(sim)
        quiet = {"LOG_LEVEL": "warning"}

        def gateway(name: str, backend: str, target: Server = sim) -> Server:
            env = {
                **quiet,
                "CHATBOT_CACHE_BACKEND": backend,
                "CHATBOT_CACHE_DISK_PATH": str(db),
                "CHATBOT_CACHE_REDIS_URL": redis_url,
            }
            g = spawn_gateway(name, target, workdir, env, cpu=server_cpu)
            servers.append(g)
            return g

        memory = gateway("memory", "memory")
        tiered = gateway("tiered", "sqlite+redis")
        bodies = [body(i) for i in range(n)]
        timed(tiered, bodies, "MISS")  # fills RAM, the SQLite file and Redis
        wait_writes(tiered, n)
        from_sqlite = gateway("sqlite", "sqlite")
        from_redis = gateway("redis", "redis")

        # RAM: the same question, tier-less against tiered, interleaved rounds.
        warm = body("ram")
        for g in (memory, tiered):
            timed(g, [warm], "MISS")
        ram_p50: dict[str, list[float]] = {"memory": [], "tiered": []}
        ram_all: dict[str, list[float]] = {"memory": [], "tiered": []}
        for r in range(rounds):
            # Alternating order (ABBA…), and the ratio taken per round: drift cancels out.
            for g in (memory, tiered) if r % 2 == 0 else (tiered, memory):
                samples = timed(g, [warm] * per_round, "HIT")
                ram_p50[g.name].append(statistics.median(samples))
                ram_all[g.name] += samples
        pairs = zip(ram_p50["tiered"], ram_p50["memory"], strict=True)
        ratio = statistics.median(t / m for t, m in pairs)

        sqlite_hits = timed(from_sqlite, bodies, "HIT")  # each one's first time here
        sqlite_then_ram = timed(from_sqlite, bodies, "HIT")  # now in its RAM
        redis_hits = timed(from_redis, bodies, "HIT")
        redis_then_ram = timed(from_redis, bodies, "HIT")
        for g, tier in ((from_sqlite, "sqlite"), (from_redis, "redis")):
            stats = http_json(g.base + "/api/cache-stats")["response_cache"]["tiers"]
            if stats[tier]["hits"] != n:
                raise RuntimeError(f"{g.name}: {stats[tier]['hits']} {tier} hits, wanted {n}")

        lookups = asyncio.run(
            lookup_only(workdir / "lookup.sqlite3", redis_url, [f"k{i}" for i in range(n)])
        )
        in_process = asyncio.run(
            ram_hit_in_process(workdir / "inproc.sqlite3", redis_url, rounds * 3, per_round * 5)
        )

        # Coalescing across gateways: a slow simulator, two redis gateways.
        port = free_port()
        delay = args.gen_ms / 20
        slow = spawn(
            "slow-sim",
            simulator_command(port, tokens=20, token_delay_ms=delay),
            "/api/version",
            port,
            workdir,
            cpu=server_cpu,
        )
        servers.append(slow)
        a = gateway("coalesce-a", "redis", slow)
        b = gateway("coalesce-b", "redis", slow)
        offsets = [0, args.gen_ms // 2, args.gen_ms * 2]
        coalesce = coalescing(a, b, slow, offsets, trials)
    finally:
        for s in servers:
            stop(s)
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(
            ["aiohttp", "redis"], {"sqlite": __import__("sqlite3").sqlite_version}
        ),
        "pinning": pinning,
        "quick": args.quick,
        "ram": {
            "memory_only": {
                **summary(ram_all["memory"]),
                "p50_rounds_ms": [ms(x) for x in ram_p50["memory"]],
            },
            "tiered": {
                **summary(ram_all["tiered"]),
                "p50_rounds_ms": [ms(x) for x in ram_p50["tiered"]],
            },
            "ratio": round(ratio, 3),
        },
        "sqlite_hit": summary(sqlite_hits),
        "sqlite_then_ram_hit": summary(sqlite_then_ram),
        "redis_hit": summary(redis_hits),
        "redis_then_ram_hit": summary(redis_then_ram),
        "lookup_only": lookups,
        "ram_hit_in_process": in_process,
        "coalescing": {"generation_ms": args.gen_ms, "rows": coalesce},
    }
    write_json(results_path("tiers", args.quick), result)

    def line(label: str, figures: dict[str, float], aim: str = "") -> None:
        print(
            f"  {label:<38} p50 {figures['p50_ms']:7.3f} ms  p99 {figures['p99_ms']:7.3f} ms  {aim}"
        )

    print(f"Cache tiers ({result['date']}, {pinning}; n = {n} distinct questions)")
    print("Hit latency, end to end (non-streamed, one keep-alive connection):")
    line("RAM hit, no tier behind (baseline)", result["ram"]["memory_only"])
    ok = "OK" if ratio <= AIM_RAM_RATIO else "MISSED"
    line(
        "RAM hit, sqlite+redis behind",
        result["ram"]["tiered"],
        f"ratio {ratio:.3f} (aim <= {AIM_RAM_RATIO}: {ok})",
    )
    for label, key in (
        ("SQLite hit (first ask on a fresh RAM)", "sqlite_hit"),
        ("Redis hit (first ask on a fresh RAM)", "redis_hit"),
    ):
        figures = result[key]
        ok = "OK" if figures["p50_ms"] < AIM_TIER_P50_MS else "MISSED"
        line(label, figures, f"aim p50 < {AIM_TIER_P50_MS} ms: {ok}")
    line("  the same, asked again (RAM hit)", result["sqlite_then_ram_hit"])
    ratio_ip = in_process["ratio"]
    ok = "OK" if ratio_ip <= AIM_RAM_RATIO else "MISSED"
    print(
        f"RAM hit in process (Gateway.complete, no HTTP): {in_process['memory_p50_us']} us "
        f"without tiers, {in_process['tiered_p50_us']} us with: ratio {ratio_ip:.3f} "
        f"(aim <= {AIM_RAM_RATIO}: {ok})"
    )
    print("The tier's own lookup, in process (no HTTP):")
    for name, figures in lookups.items():
        line(f"{name}.get()", figures)
    print(f"Coalescing across gateways (not built; generation ~{args.gen_ms} ms):")
    for row in coalesce:
        print(
            f"  second gateway {row['offset_ms']:4d} ms later: both generated in "
            f"{row['both_generated']}/{row['trials']}"
        )


if __name__ == "__main__":
    main()
