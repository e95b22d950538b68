"""Queue at scale: thousands of streamed clients waiting at once (#19, point 2).

Run from the repository root:  .venv/bin/python bench/queue_scale.py  (--quick for a smoke run)

For each line length W (default 1,000 and 10,000) a fresh gateway (`chatbot-backend`,
LOG_LEVEL=warning, max_concurrent N = 4, max_queue_size and max_connections above W) sits in
front of the Ollama simulator. N "blocker" streams take the slots with slow answers; then W
streamed `/api/chat-optimized` clients, each with its own question (no cache hit, no
coalescing), join the line and wait. Once the gateway says all W wait, its RSS is read: the
growth since before the clients came, divided by W, is the memory per waiting streamed client.
Then the blockers leave and the line drains: the W answers are fast (3 tokens, no delays), so
slots free hundreds of times a second, the worst case for position notices.

Each client counts its `queued` frames and notes when its position changed. Figures: frames
per client and in all, and position updates per client (aim: a client told position p hears a
new one at most every clamp(ceil(p / 100), 1, 30) s, plus a 5 s heartbeat that says where it
is, instead of one per freed slot, W/2 on average); the shortest gap between two position
updates to one client (aim ≥ ~1 s, less the client's own delay in reading); the gateway's CPU
seconds to fill and to drain the line, per waiting client (aim: about the same at 1,000 and
10,000, i.e. no quadratic work, apart from the heartbeats). `--pythonpath DIR`
runs the gateway from another checkout (e.g. the commit before #19) for a before/after.

`--queue-only` measures the queue alone, without sockets: in a child process (so `--pythonpath`
picks the code), W entries wait behind N slots on a simulated clock and one generation ends
every 1 / `--rate` s until the line is empty. Figures: position notices (`on_change` calls for a
moved position) in all and per client, and the CPU seconds of the drain per client (the queue's
own work, the simulated timers included). "every 1 s" rows run this checkout with
notify_positions = inf, i.e. every entry told at most once a second, the rule before the notice
interval grew with the position.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
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
    machine_info,
    results_path,
    simulator_command,
    spawn,
    spawn_gateway,
    stop,
    write_json,
)

CHAT = "/api/chat-optimized"
FAST = {"sim_tokens": 3, "sim_token_delay_ms": 0, "sim_first_token_delay_ms": 20}
SLOW = {"sim_tokens": 2000, "sim_token_delay_ms": 100, "sim_first_token_delay_ms": 0}


@dataclass
class Client:
    frames: int = 0
    moves: list[float] = field(default_factory=list)  # when its position changed
    last_position: int = -1
    done: bool = False
    error: str = ""


async def stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any], c: Client) -> None:
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                c.error = f"HTTP {resp.status}"
                return
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                frame = json.loads(line[6:])
                if frame.get("queued"):
                    c.frames += 1
                    if frame["position"] != c.last_position:
                        c.last_position = frame["position"]
                        c.moves.append(time.monotonic())
                elif frame.get("done"):
                    c.done = True
                elif "error" in frame:
                    c.error = str(frame.get("code"))
    except (aiohttp.ClientError, TimeoutError) as exc:
        c.error = type(exc).__name__


def body(text: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "stream": True, "options": options}


async def wait_for(predicate: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def queue_stats(gw: Server) -> dict[str, Any]:
    return dict(http_json(gw.base + "/api/cache-stats")["queue"])


async def one_run(args: argparse.Namespace, sim: Server, logdir: Path, w: int, tag: str) -> dict:
    env = {
        "LOG_LEVEL": "warning",
        "CHATBOT_QUEUE_MAX_CONCURRENT": str(args.slots),
        "CHATBOT_QUEUE_MAX_QUEUE_SIZE": str(w + 100),
        "CHATBOT_SERVER_MAX_CONNECTIONS": str(w + 1000),
        "CHATBOT_CACHE_ENABLED": "false",
    }
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
        env["CHATBOT_CONFIG"] = str(Path(args.pythonpath) / "config.toml")  # its own keys
    gw = spawn_gateway(f"gw-{tag}", sim, logdir, env)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        try:
            url = gw.base + CHAT
            # Warm-up: imports, connection to the simulator, the first generations timed.
            for i in range(3):
                await stream(session, url, body(f"warm {tag} {i}", FAST), Client())
            rss0, cpu0 = gw.rss_mb(), gw.cpu_seconds()
            blockers = [Client() for _ in range(args.slots)]
            blocking = [
                asyncio.create_task(stream(session, url, body(f"block {tag} {i}", SLOW), c))
                for i, c in enumerate(blockers)
            ]
            await wait_for(lambda: queue_stats(gw)["active"] == args.slots, 30, "the blockers")
            clients = [Client() for _ in range(w)]
            t_fill = time.monotonic()
            tasks = [
                asyncio.create_task(stream(session, url, body(f"wait {tag} {i}", FAST), c))
                for i, c in enumerate(clients)
            ]
            await wait_for(lambda: queue_stats(gw)["waiting"] == w, 600, f"{w} waiting")
            fill_s = time.monotonic() - t_fill
            await asyncio.sleep(2)  # let the connections settle (first frames written)
            rss_full, cpu_full = gw.rss_mb(), gw.cpu_seconds()
            frames_before = sum(c.frames for c in clients)
            for task in blocking:
                task.cancel()  # the blockers leave: their slots free and the line drains
            t_drain = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), 1200)
            drain_s = time.monotonic() - t_drain
            cpu_end = gw.cpu_seconds()
        finally:
            stop(gw)
    opened = (logdir / f"gw-{tag}.log").read_text(errors="replace")
    gaps = [b - a for c in clients for a, b in zip(c.moves[1:], c.moves[2:], strict=False)]
    per_client = [c.frames for c in clients]
    return {
        "waiting": w,
        "failed": sum(1 for c in clients if not c.done),
        "errors": sorted({c.error for c in clients if c.error})[:5],
        "fill_s": fill_s,
        "drain_s": drain_s,
        "rss_before_mb": rss0,
        "rss_full_mb": rss_full,
        "kib_per_waiting_client": (rss_full - rss0) * 1024 / w,
        "cpu_fill_s": cpu_full - cpu0,
        "cpu_drain_s": cpu_end - cpu_full,
        "cpu_drain_ms_per_client": (cpu_end - cpu_full) * 1000 / w,
        "frames_total": sum(per_client),
        "frames_while_draining": sum(per_client) - frames_before,
        "frames_per_client_median": statistics.median(per_client),
        "frames_per_client_max": max(per_client),
        # Frames that carried a new position (a notice, or a heartbeat that found a move).
        "moves_per_client_median": statistics.median(len(c.moves) for c in clients),
        # Between position updates after the first move (the first frame is the join itself).
        "min_gap_between_moves_s": min(gaps) if gaps else None,
        "gaps_under_0_9_s": sum(1 for g in gaps if g < 0.9),
        "share_gaps_under_0_9_s": sum(1 for g in gaps if g < 0.9) / len(gaps) if gaps else 0.0,
        "gaps": len(gaps),
        "open_files_warning": [ln for ln in opened.splitlines() if "open-files" in ln][:2],
    }


# The drain on a simulated clock, run in a child: argv = waiting, slots, rate, notify_positions
# ("" for the code's default). Prints {"notices", "looks", "cpu_s", "sim_s"} as JSON.
DRAIN = """
import heapq, json, sys, time
from collections import deque
from server.services.queue import GenerationQueue, Priority, State

waiting, slots, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
now, due, n = [1000.0], [], [0]

def schedule(delay, callback):
    n[0] += 1
    heapq.heappush(due, (now[0] + delay, n[0], callback))

def advance(seconds):
    end = now[0] + seconds
    while due and due[0][0] <= end:
        at, _, callback = heapq.heappop(due)
        now[0] = max(now[0], at)
        callback()
    now[0] = end

kw = {"notify_positions": float(sys.argv[4])} if sys.argv[4] else {}
q = GenerationQueue(max_concurrent=slots, max_queue_size=waiting + 1, estimated_ms=1000,
                    clock=lambda: now[0], schedule=schedule, **kw)
I = Priority.INTERACTIVE
running = deque(q.enqueue(I) for _ in range(slots))
line = deque(q.enqueue(I) for _ in range(waiting))
told = [0]
for e in line:
    e.on_change = lambda e=e: told.__setitem__(0, told[0] + 1)  # a listener wakes, reads
    e.position
start, t0 = time.process_time(), now[0]
while line or running:
    advance(1 / rate)
    q.release(running.popleft(), "completed", 100)
    while line and line[0].state is State.ACTIVE:
        running.append(line.popleft())
advance(60)
print(json.dumps({"notices": q.notices, "looks": getattr(q, "looks", q.notices),
                  "cpu_s": time.process_time() - start, "sim_s": now[0] - 60 - t0}))
"""


def queue_drain(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The queue alone, drained on a simulated clock (module docstring): rows per code and W."""
    codes = [("this checkout", str(ROOT), ""), ("every 1 s", str(ROOT), "inf")]
    if args.pythonpath:
        codes.append((f"{args.pythonpath}", args.pythonpath, ""))
    rows = []
    for r in range(args.rounds):
        for w in args.waiting:
            for code, path, positions in codes:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        DRAIN,
                        str(w),
                        str(args.slots),
                        str(args.rate),
                        positions,
                    ],
                    cwd=path,  # first on sys.path, ahead of PYTHONPATH
                    env={**os.environ, "PYTHONPATH": path},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = {"code": code, "waiting": w, "round": r, **json.loads(out.stdout)}
                row["notices_per_client"] = row["notices"] / w
                row["cpu_ms_per_client"] = row["cpu_s"] * 1000 / w
                rows.append(row)
                print(
                    f"round {r + 1}: W={w:>6} {code}: {row['notices']} notices"
                    f" ({row['notices_per_client']:.1f}/client), CPU"
                    f" {row['cpu_ms_per_client']:.3f} ms/client, drain {row['sim_s']:.0f} s",
                    file=sys.stderr,
                )
    return rows


def report_drain(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(
        f"\nThe queue alone: N = {args.slots} slots, one generation ends every"
        f" {1000 / args.rate:g} ms (simulated), medians of {args.rounds} round(s)\n"
    )
    head = (
        f"{'waiting':>8} {'code':<28} {'drain s':>7} {'notices':>10} {'per client':>10}"
        f" {'CPU ms/client':>13}"
    )
    print(head)
    print("-" * len(head))
    for w in args.waiting:
        for code in dict.fromkeys(r["code"] for r in rows):
            rs = [r for r in rows if r["waiting"] == w and r["code"] == code]
            print(
                f"{w:>8} {code[-28:]:<28} {med(rs, 'sim_s'):7.0f} {med(rs, 'notices'):10.0f}"
                f" {med(rs, 'notices_per_client'):10.1f} {med(rs, 'cpu_ms_per_client'):13.3f}"
            )
    print(
        "aims: notices per client and CPU per client growing like log W, not W (every 1 s:"
        " about drain seconds per client, which grows with W)"
    )


async def run(args: argparse.Namespace, sim: Server, logdir: Path) -> list[dict[str, Any]]:
    rows = []
    for r in range(args.rounds):
        sizes = args.waiting if r % 2 == 0 else list(reversed(args.waiting))
        for w in sizes:
            row = await one_run(args, sim, logdir, w, f"r{r}-w{w}")
            row["round"] = r
            rows.append(row)
            print(
                f"round {r + 1}: W={w:>6} fill {row['fill_s']:5.1f} s drain {row['drain_s']:5.1f}"
                f" s  {row['kib_per_waiting_client']:5.1f} KiB/client  CPU drain"
                f" {row['cpu_drain_ms_per_client']:.2f} ms/client  frames/client"
                f" {row['frames_per_client_median']} (max {row['frames_per_client_max']})"
                f" position updates/client {row['moves_per_client_median']}"
                f"  min gap {row['min_gap_between_moves_s']}  failed {row['failed']}",
                file=sys.stderr,
            )
    return rows


def med(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else float("nan")


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(f"\nQueue at scale: N = {args.slots} slots, medians of {args.rounds} round(s)\n")
    head = (
        f"{'waiting':>8} {'fill s':>7} {'drain s':>7} {'KiB/client':>10} {'CPU fill ms/c':>13}"
        f" {'CPU drain ms/c':>14} {'frames':>9} {'per client':>10} {'max':>5} {'moves/c':>7}"
        f" {'gaps<0.9s':>9} {'failed':>6}"
    )
    print(head)
    print("-" * len(head))
    for w in args.waiting:
        rs = [r for r in rows if r["waiting"] == w]
        print(
            f"{w:>8} {med(rs, 'fill_s'):7.1f} {med(rs, 'drain_s'):7.1f}"
            f" {med(rs, 'kib_per_waiting_client'):10.1f}"
            f" {med(rs, 'cpu_fill_s') * 1000 / w:13.2f}"
            f" {med(rs, 'cpu_drain_ms_per_client'):14.2f} {med(rs, 'frames_total'):9.0f}"
            f" {med(rs, 'frames_per_client_median'):10.1f} {med(rs, 'frames_per_client_max'):5.0f}"
            f" {med(rs, 'moves_per_client_median'):7.1f}"
            f" {med(rs, 'share_gaps_under_0_9_s') * 100:8.2f}% {sum(r['failed'] for r in rs):6}"
        )
    print(
        "aims: moves/c (position updates per client) ~ log W, told p at most every"
        " clamp(ceil(p / 100), 1, 30) s; frames per client ~ moves/c + drain s / 5 (the"
        " heartbeat), not W/2; gaps<0.9s = share of a client's successive position updates"
        " closer than 0.9 s (aim ~0: only a heartbeat that found a move); CPU ms per client"
        " the same at every W apart from the frames (no quadratic work); KiB per client bounded"
    )
    warnings = {ln for r in rows for ln in r["open_files_warning"]}
    if warnings:
        print("gateway log:", *sorted(warnings), sep="\n  ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", default="1000,10000", help="line lengths, comma-separated")
    parser.add_argument("--slots", type=int, default=4, help="[queue].max_concurrent")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pythonpath", default="", help="run the gateway from this checkout")
    parser.add_argument("--queue-only", action="store_true", help="the queue alone, no sockets")
    parser.add_argument(
        "--rate", type=float, default=160, help="--queue-only: generations ending a second"
    )
    add_run_args(parser, pin=False)
    args = parser.parse_args()
    args.waiting = [int(x) for x in args.waiting.split(",") if x.strip()]
    if args.quick:
        args.waiting, args.rounds = [200], 1
    # 10,000 client sockets here as well as in the gateway.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = datetime.now(UTC)
    if args.queue_only:
        rows = queue_drain(args)
        report_drain(args, rows)
        out = args.output or RESULTS_DIR / "queue_drain.json"
        write_json(
            out,
            {
                "benchmark": "queue_scale --queue-only",
                "date": started.isoformat(timespec="seconds"),
                "command": "python " + " ".join(sys.argv),
                "machine": machine_info(()),
                "params": {"waiting": args.waiting, "slots": args.slots, "rate": args.rate},
                "rows": rows,
            },
        )
        print(f"\nJSON written to {out}")
        return 0
    with tempfile.TemporaryDirectory(prefix="queue-scale-") as tmp:
        port = free_port()
        sim = spawn("simulator", simulator_command(port), "/api/version", port, Path(tmp))
        try:
            rows = asyncio.run(run(args, sim, Path(tmp)))
        finally:
            stop(sim)
    report(args, rows)
    out = args.output or results_path("queue_scale", args.quick)
    write_json(
        out,
        {
            "benchmark": "queue_scale",
            "date": started.isoformat(timespec="seconds"),
            "command": "python " + " ".join(sys.argv),
            "machine": machine_info(("aiohttp", "psutil")),
            "params": {"waiting": args.waiting, "slots": args.slots, "rounds": args.rounds},
            "rows": rows,
        },
    )
    print(f"\nJSON written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
