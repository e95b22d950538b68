"""Several Ollama hosts: does throughput scale with hosts, and do ETAs stay as good as with one?

Run from the repository root:  .venv/bin/python bench/hosts.py  (add --quick for a smoke run)

For 1, 2 and 3 hosts, each an Ollama simulator process at a fixed pace (default 20 tokens,
10 ms before the first and 10 ms between tokens: ~0.2 s an answer), a fresh gateway
(`chatbot-backend`, `[[ollama.hosts]]` through CHATBOT_OLLAMA_HOSTS, each host max_concurrent
N, LOG_LEVEL=warning, max_queue_size 1000) first answers a few lone requests (so its ETAs use a
measured generation time, not the 30 s default estimate), then gets a burst: `--waves` x N x
hosts streamed chat requests started at once, each a distinct question (nothing is cached or
coalesced), so every configuration has the same number of waves and ideally takes as long.

Figures per burst:
  throughput   completed generations per second: answers / (last done - burst start);
               scaling = that / the 1-host figure of the same round (aim: ~1x, ~2x, ~3x)
  ETA error    |ETA in the first `queued` frame - the actual wait for a slot (stats.queue_ms)|,
               median over the clients that were told one; aim: within the figure of one host
               with as many slots in all (1 x 2N, 1 x 3N: run as references), whose burst has
               the same schedule, so the ETA formula's own error is the same; shown next to the
               one host of N slots
  spread       each simulator's share of the generations and its max_in_progress (must be N)
Rounds interleave the host counts (order reversed every other round); the table shows medians.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    RESULTS_DIR,
    Server,
    free_port,
    http_json,
    machine_info,
    pin_this_script,
    simulator_command,
    spawn,
    spawn_gateway,
    stop,
    write_json,
)

CHAT = "/api/chat-optimized"
# Scaling aims: k hosts give ~k x the 1-host throughput; "~" read as at least 85 % of it.
SCALING_FLOOR = 0.85
# "Within the 1-host figure": every configuration has the same waves, so the same waits; its
# median |ETA error| in ms may be the 1-host one plus 20 % (round-to-round noise on 2 cores).
ETA_TOLERANCE = 1.2


@dataclass
class Client:
    status: int = 0
    error: str | None = None
    first_eta_ms: int | None = None
    queue_ms: int | None = None
    t_done: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.t_done is not None


async def stream_chat(session: aiohttp.ClientSession, url: str, question: str, t0: float) -> Client:
    rec = Client()
    body = {"messages": [{"role": "user", "content": question}], "stream": True}
    try:
        async with session.post(url, json=body) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return rec
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                frame = json.loads(line[6:])
                if "error" in frame:
                    rec.error = f"{frame.get('code')}: {frame['error']}"
                    return rec
                if frame.get("queued") and rec.first_eta_ms is None:
                    rec.first_eta_ms = frame["estimated_wait_ms"]
                if frame.get("done"):
                    rec.t_done = time.perf_counter() - t0
                    rec.queue_ms = (frame.get("stats") or {}).get("queue_ms")
            if rec.t_done is None:
                rec.error = "stream ended without a done frame"
    except (aiohttp.ClientError, TimeoutError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    return rec


def start_simulators(
    args: argparse.Namespace, count: int, logdir: Path, cpu: int | None
) -> list[Server]:
    sims = []
    for i in range(count):
        port = free_port()
        command = simulator_command(
            port, args.tokens, args.token_delay_ms, args.first_token_delay_ms
        )
        sims.append(spawn(f"sim{i}", command, "/api/version", port, logdir, cpu=cpu))
    return sims


def start_gateway(name: str, sims: list[Server], n: int, logdir: Path, cpu: int | None) -> Server:
    hosts = [{"url": sim.base, "max_concurrent": n} for sim in sims]
    env = {
        "LOG_LEVEL": "warning",
        "CHATBOT_QUEUE_MAX_QUEUE_SIZE": "1000",
        "CHATBOT_OLLAMA_HOSTS": json.dumps(hosts),
    }
    return spawn_gateway(name, sims[0], logdir, env, cpu)


async def wait_hosts_up(gateway: Server, count: int) -> None:
    """The gateway has probed every host (routing needs their tags) before the burst."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = await asyncio.to_thread(http_json, gateway.base + "/health")
        hosts = health.get("hosts") or health.get("ollama", {}).get("hosts") or []
        if sum(1 for h in hosts if h.get("state") == "up") >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway did not see {count} hosts up: {health}")


async def one_configuration(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    hosts: int,
    n: int,
    tag: str,
    logdir: Path,
    cpu: int | None,
) -> dict[str, Any]:
    sims = start_simulators(args, hosts, logdir, cpu)
    gateway: Server | None = None
    try:
        gateway = start_gateway(f"gw-{hosts}-{tag}", sims, n, logdir, cpu)
        await wait_hosts_up(gateway, hosts)
        url = gateway.base + CHAT
        for i in range(args.warmup):  # measured generation times for the ETA
            warm = await stream_chat(
                session, url, f"hosts bench warm {tag} {i}", time.perf_counter()
            )
            if not warm.ok:
                raise RuntimeError(f"warm-up request failed: {warm.error}")
        for sim in sims:
            http_json(sim.base + "/simulator/reset", {})
        clients = args.waves * n * hosts
        t0 = time.perf_counter()
        records = await asyncio.gather(
            *(stream_chat(session, url, f"hosts bench {tag} q{i}", t0) for i in range(clients))
        )
        sim_stats = [http_json(sim.base + "/simulator/stats") for sim in sims]
    finally:
        if gateway is not None:
            stop(gateway)
        for sim in sims:
            stop(sim)
    ok = [r for r in records if r.ok]
    wall = max((r.t_done for r in ok if r.t_done is not None), default=math.nan)
    told = [
        (r.first_eta_ms, r.queue_ms)
        for r in ok
        if r.first_eta_ms is not None and r.queue_ms is not None
    ]
    errors = [abs(eta - wait) for eta, wait in told]
    waits = [wait for _, wait in told]
    return {
        "config": f"{hosts}x{n}",
        "hosts": hosts,
        "max_concurrent": n,
        "clients": clients,
        "failed": len(records) - len(ok),
        "errors": sorted({r.error or "?" for r in records if not r.ok})[:3],
        "wall_s": wall,
        "per_second": len(ok) / wall if ok else 0.0,
        "eta_abs_error_ms": statistics.median(errors) if errors else None,
        "eta_abs_error_pct": (
            statistics.median(e / w * 100 for e, w in zip(errors, waits, strict=True) if w > 0)
            if errors
            else None
        ),
        "eta_signed_error_ms": statistics.median(e - w for e, w in told) if told else None,
        "median_wait_ms": statistics.median(waits) if waits else None,
        "told_eta": len(errors),
        "generations_per_host": [s["generations"] for s in sim_stats],
        "max_in_progress_per_host": [s["max_in_progress"] for s in sim_stats],
    }


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:{spec}}"
    )


async def run(args: argparse.Namespace, logdir: Path, cpu: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    configs = configurations(args)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=600)
    ) as session:
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for hosts, n in order:
                tag = f"r{round_index}h{hosts}n{n}"
                row = await one_configuration(args, session, hosts, n, tag, logdir, cpu)
                row["round"] = round_index
                rows.append(row)
                print(
                    f"round {round_index + 1}/{args.rounds} {hosts} host(s) x {n} slots:"
                    f" {row['per_second']:6.1f}/s over {row['wall_s']:.2f} s,"
                    f" ETA |err| {fmt(row['eta_abs_error_ms'], '.0f')} ms"
                    f" ({fmt(row['eta_abs_error_pct'], '.0f')} %),"
                    f" per host {row['generations_per_host']}"
                    f" max {row['max_in_progress_per_host']}, failed {row['failed']}",
                    file=sys.stderr,
                )
    base = f"1x{args.max_concurrent}"
    for row in rows:
        one = [r for r in rows if r["round"] == row["round"] and r["config"] == base]
        row["scaling"] = row["per_second"] / one[0]["per_second"] if one else None
    return rows


def configurations(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(hosts, slots per host): 1, 2, 3 hosts of N slots; and, as the ETA reference, one host
    with as many slots as each multi-host setup has in all."""
    n = args.max_concurrent
    configs = [(k, n) for k in args.hosts]
    if not args.no_same_slots:
        configs += [(1, k * n) for k in args.hosts if k > 1]
    return configs


def summary(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per configuration. A multi-host setup's ETA error is judged against one host with
    the same slots in all (the same schedule, so the same ETA formula error) and shown next to
    the one host of N slots."""
    out = []
    for hosts, n in configurations(args):
        mine = [r for r in rows if r["config"] == f"{hosts}x{n}"]
        same = [r for r in rows if r["config"] == f"1x{hosts * n}"]
        scaling = med(mine, "scaling") if n == args.max_concurrent else None
        eta, same_eta = med(mine, "eta_abs_error_ms"), med(same, "eta_abs_error_ms")
        out.append(
            {
                "config": f"{hosts}x{n}",
                "hosts": hosts,
                "max_concurrent": n,
                "clients": mine[0]["clients"],
                "per_second": med(mine, "per_second"),
                "ideal_per_second": hosts * n / (args.gen_ms / 1000),
                "scaling": scaling,
                "scaling_aim": hosts if scaling is not None else None,
                "scaling_met": None if scaling is None else scaling >= SCALING_FLOOR * hosts,
                "eta_abs_error_ms": eta,
                "eta_abs_error_pct": med(mine, "eta_abs_error_pct"),
                "eta_signed_error_ms": med(mine, "eta_signed_error_ms"),
                "median_wait_ms": med(mine, "median_wait_ms"),
                "same_slots_one_host_eta_ms": same_eta,
                "eta_met": (
                    None
                    if hosts == 1 or eta is None or same_eta is None
                    else eta <= same_eta * ETA_TOLERANCE
                ),
                "failed": sum(r["failed"] for r in mine),
                "rounds": len(mine),
            }
        )
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    print(
        "hosts x slots  clients  completed/s (ideal)  scaling (aim)"
        "  ETA |err| ms  % of wait  bias ms  1 host same slots  met"
    )
    for row in table:
        checks = [row["scaling_met"], row["eta_met"]]
        met = "-" if checks == [None, None] else ("NO" if False in checks else "yes")
        aim = f"(~{row['scaling_aim']}x)" if row["scaling_aim"] is not None else ""
        scaling = fmt(row["scaling"], "6.2f") + ("x" if row["scaling"] is not None else "")
        print(
            f"{row['config']:>13}  {row['clients']:7}  {fmt(row['per_second'], '11.1f')}"
            f" ({row['ideal_per_second']:4.0f})  {scaling:7} {aim:6}"
            f"  {fmt(row['eta_abs_error_ms'], '12.0f')}  {fmt(row['eta_abs_error_pct'], '9.1f')}"
            f"  {fmt(row['eta_signed_error_ms'], '+7.0f')}"
            f"  {fmt(row['same_slots_one_host_eta_ms'], '17.0f')}  {met}"
        )
    print(
        f"aims: completed/s >= {SCALING_FLOOR:.0%} x hosts x the 1-host figure; median |ETA error|"
        f" at most {ETA_TOLERANCE:g} x that of one host with the same slots in all"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-concurrent", type=int, default=2, help="N of each host (2)")
    parser.add_argument("--waves", type=int, default=10, help="burst = waves x N x hosts (10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=4, help="lone requests before a burst")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay-ms", type=float, default=10)
    parser.add_argument("--first-token-delay-ms", type=float, default=10)
    parser.add_argument("--quick", action="store_true", help="1 round of 4 waves")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/...)")
    parser.add_argument("--logdir", type=Path, help="keep the servers' logs here")
    parser.add_argument(
        "--no-same-slots", action="store_true", help="skip the 1-host same-slots references"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.waves = 1, 4
    if 1 not in args.hosts:
        args.hosts = [1, *args.hosts]  # the reference for scaling
    args.gen_ms = args.first_token_delay_ms + args.token_delay_ms * (args.tokens - 1)
    cpu, pinning = pin_this_script(args.no_pin, "the gateway and the simulators")
    print(pinning, file=sys.stderr)
    if args.logdir is not None:
        args.logdir.mkdir(parents=True, exist_ok=True)
        rows = asyncio.run(run(args, args.logdir, cpu))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
            rows = asyncio.run(run(args, Path(tmp), cpu))
    table = summary(args, rows)
    print_table(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"hosts-{stamp}.json"
    write_json(
        out,
        {
            "date": stamp,
            "machine": machine_info(["aiohttp"]),
            "pinning": pinning,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "logdir")},
            "summary": table,
            "runs": rows,
        },
    )
    print(f"results: {out}", file=sys.stderr)
    return 0 if all(row["failed"] == 0 for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
