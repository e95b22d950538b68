"""A thousand live streams at once through the gateway: its CPU per relayed token, the delay it
adds per token, and whether any client starves (issue #19, point 4).

Run from the repository root:  .venv/bin/python bench/streams.py  (add --quick for a smoke run)

Processes, each started here: `--hosts` Ollama simulators (a token every 20 ms, `--tokens` per
answer) pinned to CPU 0 with this script (the client), and the gateway (`python -m server` from
this checkout, default log level `info`) alone on CPU 1 (`--no-pin` turns pinning off). The
gateway gets a config file naming the simulators as `[[ollama.hosts]]`, each with
`max_concurrent = 64` (the registry's ceiling per host; one host may not be listed twice), so
`--hosts` × 64 generations may run at once (1,024 by default), and `max_queue_size` above the
number of streams.

Each round opens `--streams` native `/api/chat` streams, each with its own question (so every
one is a miss and its own generation), started `--stagger-ms` apart, once straight to the
simulators (stream i to simulator i mod `--hosts`) and once through the gateway, in an order
that alternates with the round. A raw asyncio client (one connection per stream, chunked NDJSON
decoded by hand) takes the wall-clock arrival time of every line. The simulator stamps each
line's `created_at` when it makes it (its own time.time_ns(), the same clock), and the gateway
relays the simulator's lines unchanged, so:

- delay per token: arrival minus `created_at`, over all tokens; the direct run measures what the
  simulator and this client add (the simulator stamps a line before its 20 ms sleep, so this is
  at least 20 ms), and the gateway run the same plus the gateway; the difference of the two is
  the delay the gateway adds (median, p90, p99);
- CPU per relayed token: the gateway's CPU time (psutil, by pid) during the run over the tokens
  the client received through it;
- starvation: each stream's delivery rate, (tokens - 1) / (last arrival - first arrival), and
  their min / median / max; the aim is that the slowest stream gets at least 80 % of the median
  rate (AIM_MIN_RATE_SHARE), through the gateway as directly.

Every stream must end with Ollama's `done: true` line, with `--tokens` content lines.

`--api chat-optimized` or `--api openai` streams the gateway's SSE (`/api/chat-optimized`,
`/v1/chat/completions`) instead: the gateway run only (the simulators speak only Ollama's API),
and no delay per token (an SSE frame carries no `created_at`); CPU per token and rates as above.
"""

from __future__ import annotations

import stdlib_first  # noqa: F401  (first: moves this folder behind the standard library)

# isort: split
import argparse
import asyncio
import calendar
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from cache_hit import code_version, summarise_profile
from common import (
    CLIENT_CPU,
    RESULTS_DIR,
    ROOT,
    SERVER_CPU,
    Server,
    add_run_args,
    can_pin,
    free_port,
    machine_info,
    percentile,
    results_path,
    run_params,
    simulator_command,
    spawn,
    stop,
    write_json,
)

PYTHON = str(ROOT / ".venv" / "bin" / "python")
MODEL = "llama3.2"
PER_HOST = 64  # [[ollama.hosts]].max_concurrent's ceiling in the config registry
AIM_MIN_RATE_SHARE = 0.80  # the slowest stream gets >= 80 % of the median stream's rate
AIM_ADDED_DELAY_MS = 5.0  # median delay the gateway adds to a token (an aim, not a target)
# How far past its schedule a token may arrive straight from the simulators (p50) for the
# comparison with the gateway run to mean something.
MAX_DIRECT_SLACK_MS = 5.0


# --------------------------------------------------------------------------- servers


def gateway_config(path: Path, sims: list[Server], args: argparse.Namespace) -> None:
    lines = [
        "[queue]",
        f"max_concurrent = {PER_HOST}",
        f"max_queue_size = {max(100, 2 * args.streams)}",
        "[ollama]",
        'model = "llama3.2"',
        "warm_up = false",
        "[logging]",
        'level = "info"',
    ]
    for sim in sims:
        lines += ["[[ollama.hosts]]", f'url = "{sim.base}"', f"max_concurrent = {PER_HOST}"]
    path.write_text("\n".join(lines) + "\n")


def spawn_gateway(
    sims: list[Server], workdir: Path, args: argparse.Namespace, cpu: int | None
) -> Server:
    config = workdir / "gateway.toml"
    gateway_config(config, sims, args)
    port = free_port()
    command = [PYTHON, "-m", "server", "--config", str(config), "--port", str(port)]
    return spawn("gateway", command, "/health", port, workdir, {"LOG_LEVEL": "info"}, cpu)


# --------------------------------------------------------------------------- client


@dataclass
class StreamResult:
    arrivals_ns: list[int] = field(default_factory=list)  # wall clock, per content line
    stamps: list[bytes] = field(default_factory=list)  # created_at, per content line
    done: bool = False
    error: str = ""


_STAMP = b'"created_at":"'
# Per API: its path, and what marks a content line and the last line of a stream.
APIS = {
    "native": ("/api/chat", b'"done":false', b'"done":true'),
    "chat-optimized": ("/api/chat-optimized", b'"content":', b'"done":true'),
    "openai": ("/v1/chat/completions", b'"finish_reason":null', b"data: [DONE]"),
}


async def one_stream(
    port: int, question: str, tokens: int, result: StreamResult, api: str = "native"
) -> None:
    path, content, last = APIS[api]
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "options": {"sim_tokens": tokens},
        }
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return
    try:
        writer.write(head + body)
        status_line = await reader.readline()
        if b" 200 " not in status_line:
            result.error = status_line.decode(errors="replace").strip()
            return
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if not chunked:
            result.error = "not a chunked stream"
            return
        pending = b""
        arrivals, stamps = result.arrivals_ns, result.stamps
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            now = time.time_ns()
            pending += data[:-2]
            *lines, pending = pending.split(b"\n")
            for text in lines:
                if last in text:
                    result.done = True
                elif content in text:
                    arrivals.append(now)
                    at = text.find(_STAMP)
                    if at >= 0:
                        start = at + len(_STAMP)
                        stamps.append(text[start : text.index(b'"', start)])
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


async def run_streams(
    ports: list[int], args: argparse.Namespace, label: str
) -> tuple[list[StreamResult], float]:
    results = [StreamResult() for _ in range(args.streams)]
    tag = uuid.uuid4().hex[:8]

    async def delayed(i: int) -> None:
        await asyncio.sleep(i * args.stagger_ms / 1000)
        port = ports[i % len(ports)]
        question = f"streams bench {label} {tag} question {i}"
        await one_stream(port, question, args.tokens, results[i], args.api)

    started = time.perf_counter()
    await asyncio.gather(*(delayed(i) for i in range(args.streams)))
    return results, time.perf_counter() - started


# --------------------------------------------------------------------------- figures

_SECONDS: dict[bytes, int] = {}


def stamp_ns(stamp: bytes) -> int:
    """RFC 3339 UTC with up to 9 fractional digits (the simulator's created_at) to ns."""
    whole, _, frac = stamp.rstrip(b"Z").partition(b".")
    seconds = _SECONDS.get(whole)
    if seconds is None:
        parsed = time.strptime(whole.decode(), "%Y-%m-%dT%H:%M:%S")
        seconds = _SECONDS[whole] = calendar.timegm(parsed)
    return seconds * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")


def summarise(results: list[StreamResult], args: argparse.Namespace) -> dict[str, Any]:
    errors = [r.error for r in results if r.error]
    incomplete = sum(1 for r in results if not r.done or len(r.arrivals_ns) != args.tokens)
    delays_ms: list[float] = []
    rates: list[float] = []
    for r in results:
        if r.stamps:  # native lines only: SSE frames carry no created_at
            for arrived, stamp in zip(r.arrivals_ns, r.stamps, strict=True):
                delays_ms.append((arrived - stamp_ns(stamp)) / 1e6)
        if len(r.arrivals_ns) >= 2:
            span = (r.arrivals_ns[-1] - r.arrivals_ns[0]) / 1e9
            if span > 0:
                rates.append((len(r.arrivals_ns) - 1) / span)
    tokens = sum(len(r.arrivals_ns) for r in results)
    out: dict[str, Any] = {
        "streams": len(results),
        "errors": len(errors),
        "first_errors": errors[:5],
        "incomplete": incomplete,
        "tokens": tokens,
    }
    if delays_ms:
        out["delay_ms"] = {
            "p50": statistics.median(delays_ms),
            "p90": percentile(delays_ms, 90),
            "p99": percentile(delays_ms, 99),
            "max": max(delays_ms),
        }
    if rates:
        median = statistics.median(rates)
        out["rate_tokens_per_s"] = {
            "min": min(rates),
            "p10": percentile(rates, 10),
            "median": median,
            "max": max(rates),
            "min_share_of_median": min(rates) / median,
        }
    return out


def measure(args: argparse.Namespace, sims: list[Server], gateway: Server) -> dict[str, Any]:
    targets = {"direct": [s.port for s in sims], "gateway": [gateway.port]}

    def sims_cpu() -> float:
        return sum(s.cpu_seconds() for s in sims)

    rounds: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    for index in range(args.rounds):
        order = ["direct", "gateway"] if index % 2 == 0 else ["gateway", "direct"]
        if args.api != "native":
            order = ["gateway"]  # the simulators speak only Ollama's API
        this: dict[str, Any] = {}
        for name in order:
            recorder = None
            if args.profile and name == "gateway" and index == 0:
                recorder = start_profile(gateway)
            gw_cpu0 = gateway.cpu_seconds()
            sim_cpu0 = sims_cpu()
            own0 = time.process_time()
            results, wall = asyncio.run(run_streams(targets[name], args, f"r{index}-{name}"))
            if recorder is not None:
                profile = stop_profile(recorder, args)
            summary = summarise(results, args)
            summary["wall_s"] = wall
            summary["client_busy"] = (time.process_time() - own0) / wall
            summary["simulator_busy"] = (sims_cpu() - sim_cpu0) / wall
            gw_cpu = gateway.cpu_seconds() - gw_cpu0
            summary["gateway_busy"] = gw_cpu / wall
            if name == "gateway":
                summary["gateway_cpu_s"] = gw_cpu
                summary["gateway_cpu_us_per_token"] = gw_cpu / max(1, summary["tokens"]) * 1e6
                summary["gateway_rss_mb"] = gateway.rss_mb()
            this[name] = summary
            delay = summary.get("delay_ms", {})
            rate = summary.get("rate_tokens_per_s", {})
            print(
                f"  round {index + 1}/{args.rounds} {name:8} {summary['tokens']:7,} tokens in"
                f" {wall:5.1f} s, errors {summary['errors']}, incomplete {summary['incomplete']};"
                f" delay p50 {delay.get('p50', 0):6.1f} ms p99 {delay.get('p99', 0):7.1f} ms;"
                f" rate min/median {rate.get('min', 0):5.1f}/{rate.get('median', 0):5.1f};"
                f" gateway busy {summary['gateway_busy']:.0%}",
                file=sys.stderr,
            )
        rounds.append(this)
    return {"rounds": rounds, **figures(rounds), "profile": profile}


PROFILE_RAW = RESULTS_DIR / "streams_profile_gateway.txt"


def start_profile(gateway: Server) -> subprocess.Popen[bytes] | None:
    """py-spy on the gateway until stop_profile (raw stacks in PROFILE_RAW)."""
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(py_spy).exists():
        print("no py-spy (.venv/bin/pip install py-spy): no profile", file=sys.stderr)
        return None
    PROFILE_RAW.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(gateway.pid), "--rate", "100", "--format", "raw"]
    recorder = subprocess.Popen(
        [*command, "-o", str(PROFILE_RAW)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(0.5)
    return recorder


def stop_profile(recorder: subprocess.Popen[bytes], args: argparse.Namespace) -> dict[str, Any]:
    recorder.send_signal(signal.SIGINT)
    _, err = recorder.communicate(timeout=60)
    if not PROFILE_RAW.exists():
        return {"skipped": f"py-spy failed: {err.decode()[-300:]}"}
    return {"raw": str(PROFILE_RAW), **summarise_profile(PROFILE_RAW.read_text(), 30)}


def figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of each figure, and the gateway's added delay per round."""

    def med(name: str, *path: str) -> float:
        values = []
        for r in rounds:
            value: Any = r[name]
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(float(value))
        return statistics.median(values) if values else float("nan")

    out: dict[str, Any] = {}
    for name in ("direct", "gateway") if "direct" in rounds[0] else ("gateway",):
        out[name] = {
            "delay_ms": {p: med(name, "delay_ms", p) for p in ("p50", "p90", "p99", "max")},
            "rate": {
                k: med(name, "rate_tokens_per_s", k)
                for k in ("min", "p10", "median", "max", "min_share_of_median")
            },
            "errors": sum(r[name]["errors"] for r in rounds),
            "incomplete": sum(r[name]["incomplete"] for r in rounds),
            "simulator_busy": med(name, "simulator_busy"),
            "client_busy": med(name, "client_busy"),
            "gateway_busy": med(name, "gateway_busy"),
        }
    out["gateway"]["cpu_us_per_token"] = med("gateway", "gateway_cpu_us_per_token")
    out["gateway"]["rss_mb"] = med("gateway", "gateway_rss_mb")
    added = [r for r in rounds if "delay_ms" in r["gateway"] and "delay_ms" in r.get("direct", {})]
    out["added_delay_ms"] = {
        p: statistics.median(
            r["gateway"]["delay_ms"][p] - r["direct"]["delay_ms"][p] for r in added
        )
        if added
        else float("nan")
        for p in ("p50", "p90", "p99")
    }
    return out


# --------------------------------------------------------------------------- report


def print_report(report: dict[str, Any]) -> None:
    p = report["params"]
    m = report["measured"]
    g = m["gateway"]
    # Without a direct run (an SSE API), its column says nan.
    d = m.get("direct") or {
        "delay_ms": dict.fromkeys(("p50", "p90", "p99"), float("nan")),
        "rate": dict.fromkeys(("min", "p10", "median", "max", "min_share_of_median"), float("nan")),
        "simulator_busy": float("nan"),
        "client_busy": float("nan"),
        "errors": 0,
        "incomplete": 0,
    }
    print()
    print(
        f"{p['api']}: {p['streams']} streams of {p['tokens']} tokens,"
        f" {p['token_delay_ms']:g} ms apart"
        f" (scheduled {p['streams'] * 1000 / p['token_delay_ms']:,.0f} tokens/s), started"
        f" {p['stagger_ms']:g} ms apart; {p['hosts']} hosts x {PER_HOST} = "
        f"{p['hosts'] * PER_HOST} generations at once; {report['pinning']}; medians of"
        f" {p['rounds']} rounds"
    )
    print(f"{'':38} {'direct':>10} {'gateway':>10}")
    for label, key in (("delay per token p50, ms", "p50"), ("p90", "p90"), ("p99", "p99")):
        print(f"{label:38} {d['delay_ms'][key]:10.1f} {g['delay_ms'][key]:10.1f}")
    for label, key in (
        ("stream rate min, tokens/s", "min"),
        ("p10", "p10"),
        ("median", "median"),
        ("max", "max"),
    ):
        print(f"{label:38} {d['rate'][key]:10.1f} {g['rate'][key]:10.1f}")
    print(
        f"{'simulators busy (their core)':38} {d['simulator_busy']:10.0%}"
        f" {g['simulator_busy']:10.0%}"
    )
    print(f"{'client busy (same core)':38} {d['client_busy']:10.0%} {g['client_busy']:10.0%}")
    print(f"{'gateway busy (its own core)':38} {'':10} {g['gateway_busy']:10.0%}")
    print(
        f"{'errors / incomplete streams':38} {d['errors']:>5}/{d['incomplete']:<4}"
        f" {g['errors']:>5}/{g['incomplete']:<4}"
    )
    print()
    added = m["added_delay_ms"]
    # The direct run shows whether the simulators and this client kept the schedule: a
    # simulator stamps a line just before its token delay, so a direct p50 well past that
    # delay means their core was the limit, and then the difference of the runs measures
    # their load, not the gateway.
    slack = d["delay_ms"]["p50"] - p["token_delay_ms"]
    kept = slack <= MAX_DIRECT_SLACK_MS
    if not kept and "direct" in m:
        print(
            f"NOTE: straight to the simulators, a token arrived {slack:.0f} ms after its"
            f" schedule (p50; more than {MAX_DIRECT_SLACK_MS:g} ms): the simulators and the"
            " client could not keep up on their core, so the added delay is not measurable at"
            " this rate (try a larger --token-delay-ms or fewer --streams)."
        )
    share_g = g["rate"]["min_share_of_median"]
    share_d = d["rate"]["min_share_of_median"]
    rows = [
        ("gateway CPU per relayed token", f"{g['cpu_us_per_token']:.1f} µs", "(measured)", None),
        (
            "  so one core relays at most",
            f"{1e6 / g['cpu_us_per_token']:,.0f} tok/s",
            "(measured)",
            None,
        ),
        (
            "delay added per token, p50",
            f"{added['p50']:.2f} ms" if kept else "n/a",
            f"<= {AIM_ADDED_DELAY_MS:g} ms",
            added["p50"] <= AIM_ADDED_DELAY_MS if kept else None,
        ),
        ("delay added per token, p90", f"{added['p90']:.2f} ms" if kept else "n/a", "", None),
        ("delay added per token, p99", f"{added['p99']:.2f} ms" if kept else "n/a", "", None),
        (
            "slowest stream / median, gateway",
            f"{share_g:.0%}",
            f">= {AIM_MIN_RATE_SHARE:.0%}",
            share_g >= AIM_MIN_RATE_SHARE,
        ),
        ("slowest stream / median, direct", f"{share_d:.0%}", "(reference)", None),
        ("gateway RSS after a run", f"{g['rss_mb']:.0f} MB", "(measured)", None),
    ]
    print(f"{'figure':38} {'measured':>14}  {'aim':>12}  result")
    for figure, value, aim, passed in rows:
        result = "" if passed is None else ("PASS" if passed else "FAIL")
        print(f"{figure:38} {value:>14}  {aim:>12}  {result}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--api", choices=sorted(APIS), default="native", help="what to stream")
    parser.add_argument("--tokens", type=int, default=250, help="content lines per answer")
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=50.0)
    parser.add_argument("--stagger-ms", type=float, default=1.0, help="between stream starts")
    parser.add_argument("--hosts", type=int, default=16, help=f"x {PER_HOST} generations at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway, round 1")
    add_run_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.streams, args.tokens, args.rounds, args.hosts = 50, 30, 1, 2
    args.output = args.output or results_path("streams", args.quick)
    return args


def raise_open_files() -> tuple[int, int]:
    """A thousand client sockets need more than the usual soft limit of 1,024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 65536
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main() -> int:
    args = parse_args()
    nofile = raise_open_files()
    if nofile[0] < args.streams * 2 + 100:
        print(f"warning: open-files limit {nofile[0]} may be too low", file=sys.stderr)
    pin = not args.no_pin and can_pin()
    if pin:
        os.sched_setaffinity(0, {CLIENT_CPU})
    pinning = (
        f"gateway on CPU {SERVER_CPU}; simulator and this client on CPU {CLIENT_CPU}"
        if pin
        else "not pinned"
    )
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    code = code_version()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="streams_") as tmp:
        workdir = Path(tmp)
        try:
            sims = []
            for n in range(args.hosts):
                sim_port = free_port()
                sim = spawn(
                    f"sim{n}",
                    simulator_command(
                        sim_port,
                        args.tokens,
                        args.token_delay_ms,
                        args.first_token_delay_ms,
                        launcher=(PYTHON, "-m", "server.simulator"),
                    ),
                    "/api/version",
                    sim_port,
                    workdir,
                    cpu=CLIENT_CPU if pin else None,
                )
                servers.append(sim)
                sims.append(sim)
            gateway = spawn_gateway(sims, workdir, args, SERVER_CPU if pin else None)
            servers.append(gateway)
            gateway_nofile = psutil.Process(gateway.pid).rlimit(psutil.RLIMIT_NOFILE)
            print(f"servers up ({pinning}); measuring", file=sys.stderr)
            measured = measure(args, sims, gateway)
        finally:
            for server in servers:
                stop(server)
    report: dict[str, Any] = {
        "benchmark": "streams",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(("aiohttp", "orjson", "psutil")),
        "code": code,
        "pinning": pinning,
        "open_files": {"client": list(nofile), "gateway": list(gateway_nofile)},
        "params": run_params(args),
        "aims": {
            "min_rate_share_of_median": AIM_MIN_RATE_SHARE,
            "added_delay_p50_ms": AIM_ADDED_DELAY_MS,
        },
        "measured": measured,
    }
    print_report(report)
    profile = measured.get("profile")
    if profile and "self" in profile:
        print(f"\nProfile of the gateway, round 1 ({profile['samples']} samples), self time:")
        for name, share in profile["self"][:20]:
            print(f"  {name:70} {share:5.1%}")
        print("  inclusive, server/ code:")
        for name, share in [p for p in profile["inclusive"] if p[0].startswith("server/")][:25]:
            print(f"  {name:70} {share:5.1%}")
    write_json(args.output, report)
    print(f"\nJSON written to {args.output} (run took {report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
