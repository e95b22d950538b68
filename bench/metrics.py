"""What the Prometheus instrumentation costs a cache hit: hit throughput with and without it.

Two gateways (`chatbot-backend`, LOG_LEVEL=warning) in front of the simulator, identical but for
`GATEWAY_METRICS=off` in one's environment: that one makes no metric updates and has no
/metrics. Each answers the same non-streaming cache hit (`POST /api/chat-optimized`, the
cheapest request and so the one where the instrumentation weighs most) under
`wrk -t1 -c32`, the two interleaved round by round with the order swapped each round; the figure
is the ratio of the medians. Afterwards the instrumented gateway's `/metrics` must count every
answer wrk got, and a scrape's own time and size are measured.

The wrk runner is cache_hit.py's. See bench/README.md, "Metrics: the cost of instrumentation".
"""

from __future__ import annotations

import stdlib_first  # noqa: F401  (first: moves this folder behind the standard library)

# isort: split
import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cache_hit import code_version, run_wrk
from common import (
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
    simulator_command,
    spawn,
    stop,
    write_json,
)
from prometheus_client.parser import text_string_to_metric_families

PYTHON = str(ROOT / ".venv" / "bin" / "python")
AIM = 0.05  # at most 5 % fewer hits per second with the instrumentation
BODY = {"messages": [{"role": "user", "content": "bench"}], "stream": False}
GATEWAYS = {"on": {}, "off": {"GATEWAY_METRICS": "off"}}


def spawn_repo_gateway(
    name: str, sim: Server, logdir: Path, env: dict[str, str], cpu: int | None
) -> Server:
    """As common.spawn_gateway, but `python -m server` from this checkout: the code measured is
    this repository's even when the venv's `chatbot-backend` was installed from elsewhere."""
    port = free_port()
    env = {"CHATBOT_OLLAMA_API_URL": sim.base, "CHATBOT_OLLAMA_WARM_UP": "false", **env}
    command = [PYTHON, "-m", "server", "--port", str(port)]
    return spawn(name, command, "/health", port, logdir, env, cpu)


def warm_entry(gateway: Server) -> None:
    url = gateway.base + "/api/chat-optimized"
    http_json_response(url, BODY)
    answer, headers = http_json_response(url, BODY)
    if headers.get("X-Cache") != "HIT" or answer.get("cached") is not True:
        raise RuntimeError(f"{gateway.name}: no cache hit after warming")


def cache_hits(gateway: Server) -> int:
    return int(http_json(gateway.base + "/api/cache-stats")["response_cache"]["hits"])


def scrape(gateway: Server) -> tuple[float, str]:
    """One GET /metrics: (milliseconds, body)."""
    started = time.perf_counter()
    with urllib.request.urlopen(gateway.base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return (time.perf_counter() - started) * 1000, text


def requests_counted(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "chatbot_requests_total"
    )


def wrk_lua(workdir: Path) -> Path:
    path = workdir / "hit.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{json.dumps(BODY)}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def measure(args: argparse.Namespace, gateways: dict[str, Server], lua: Path) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in gateways}

    def one(name: str, seconds: int) -> dict[str, Any]:
        gateway = gateways[name]
        url = gateway.base + "/api/chat-optimized"
        hits0, cpu0, wall0 = cache_hits(gateway), gateway.cpu_seconds(), time.perf_counter()
        run, client_cpu = run_wrk(url, lua, seconds, args.connections)
        wall = time.perf_counter() - wall0
        run["server_busy"] = (gateway.cpu_seconds() - cpu0) / wall
        run["client_busy"] = client_cpu / wall
        run["cache_hits"] = cache_hits(gateway) - hits0
        # CPU per hit: unlike hits/s, it does not depend on how much of its core the gateway
        # got, so it holds on a machine shared with other work.
        run["cpu_us_per_hit"] = run["server_busy"] / run["req_per_s"] * 1e6
        if run["non_2xx"] or run["socket_errors"] or run["cache_hits"] < run["requests"]:
            raise RuntimeError(f"{name}: not all answers were clean hits: {run}")
        return run

    names = list(gateways)
    for name in names:  # warm-up: each gateway sees the connections once
        one(name, args.warm_seconds)
    for index in range(args.rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            run = one(name, args.seconds)
            rounds[name].append(run)
            print(
                f"  round {index + 1}/{args.rounds} metrics {name:3} {run['req_per_s']:9,.0f}"
                f" hits/s  server busy {run['server_busy']:4.0%}",
                file=sys.stderr,
            )
    result: dict[str, Any] = {}
    for name, runs in rounds.items():
        entry: dict[str, Any] = {"rounds": runs}
        for key in (
            "req_per_s",
            "p50_ms",
            "p99_ms",
            "server_busy",
            "client_busy",
            "cpu_us_per_hit",
        ):
            entry[key] = statistics.median(r[key] for r in runs if key in r)
        result[name] = entry
    # Per round too: each round's pair ran back to back, so its ratio is the least noisy.
    result["per_round_cost"] = [
        1 - on["req_per_s"] / off["req_per_s"]
        for on, off in zip(rounds["on"], rounds["off"], strict=True)
    ]
    result["cost"] = 1 - result["on"]["req_per_s"] / result["off"]["req_per_s"]
    result["per_round_cpu_cost"] = [
        on["cpu_us_per_hit"] / off["cpu_us_per_hit"] - 1
        for on, off in zip(rounds["on"], rounds["off"], strict=True)
    ]
    result["cpu_cost"] = result["on"]["cpu_us_per_hit"] / result["off"]["cpu_us_per_hit"] - 1
    return result


def measure_scrapes(gateway: Server, count: int) -> dict[str, Any]:
    scrape(gateway)
    times, size = [], 0
    for _ in range(count):
        ms, text = scrape(gateway)
        times.append(ms)
        size = len(text.encode())
    return {
        "count": count,
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "bytes": size,
    }


def record_cost(count: int) -> dict[str, float]:
    """In this process: µs per `Gateway.record` of a hit, with and without the metrics."""
    sys.path.insert(0, str(ROOT))  # this checkout's `server`, whatever the venv points at
    from server.config import load
    from server.gateway import Gateway
    from server.streams import RequestRecord

    record = RequestRecord("r", "llama3.2", "chat-optimized", cached=True, ttft_ms=0, tokens=64)
    figures = {}
    for name, on in (("on", True), ("off", False)):
        gateway = Gateway(load(None, env={}), metrics=on)
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(count):
                gateway.record(record)
            runs.append((time.perf_counter() - started) / count * 1e6)
        figures[name] = statistics.median(runs)
    figures["added_us"] = figures["on"] - figures["off"]
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run, s")
    parser.add_argument("--warm-seconds", type=int, default=2, help="wrk warm-up per gateway, s")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (each runs both)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scrapes", type=int, default=200, help="timed GET /metrics")
    parser.add_argument("--records", type=int, default=100000, help="in-process records timed")
    parser.add_argument(
        "--control",
        action="store_true",
        help="A/A run: both gateways without metrics, to see the noise between two processes",
    )
    add_run_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warm_seconds, args.rounds, args.scrapes = 2, 1, 2, 20
        args.records = 10000
    if args.output is None:
        args.output = results_path("metrics_control" if args.control else "metrics", args.quick)
    return args


def main() -> int:
    args = parse_args()
    server_cpu, _ = pin_this_script(args.no_pin, "simulator and gateways")
    pin = server_cpu is not None
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    code = code_version()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="metrics_") as tmp:
        workdir = Path(tmp)
        try:
            sim_port = free_port()
            sim = spawn(
                "sim",
                simulator_command(sim_port, 64, launcher=(PYTHON, "-m", "server.simulator")),
                "/api/version",
                sim_port,
                workdir,
                cpu=server_cpu,
            )
            servers.append(sim)
            gateways = {}
            for name, env in GATEWAYS.items():
                env = GATEWAYS["off"] if args.control else env
                gateways[name] = spawn_repo_gateway(
                    f"gw_{name}", sim, workdir, {"LOG_LEVEL": "warning", **env}, server_cpu
                )
                servers.append(gateways[name])
                warm_entry(gateways[name])
            if args.control:
                throughput = measure(args, gateways, wrk_lua(workdir))
                write_json(args.output, {"control": True, "throughput": throughput})
                print(
                    f"A/A (both without metrics): 'on' vs 'off' {throughput['cost']:+.1%} hits/s,"
                    f" CPU per hit {throughput['cpu_cost']:+.1%};"
                    f" per round {[f'{c:+.1%}' for c in throughput['per_round_cost']]}"
                )
                return 0
            try:
                scrape(gateways["off"])
                raise RuntimeError("the gateway with GATEWAY_METRICS=off still serves /metrics")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            counted0 = requests_counted(scrape(gateways["on"])[1])
            hits0 = cache_hits(gateways["on"])
            print(f"servers up (pinned: {pin}); measuring hit throughput", file=sys.stderr)
            throughput = measure(args, gateways, wrk_lua(workdir))
            # The server's own count of hits (warm-up runs included) against the metrics'.
            answered = cache_hits(gateways["on"]) - hits0
            counted = requests_counted(scrape(gateways["on"])[1]) - counted0
            if counted != answered:
                raise RuntimeError(f"/metrics counted {counted} requests, the cache {answered}")
            scrapes = measure_scrapes(gateways["on"], args.scrapes)
            in_process = record_cost(args.records)
        finally:
            for server in reversed(servers):
                stop(server)
    report = {
        "benchmark": "metrics",
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "machine": machine_info(["aiohttp", "prometheus_client", "psutil"], {}),
        "code": code,
        "parameters": vars(args) | {"output": str(args.output), "pinned": pin},
        "throughput": throughput,
        "scrapes": scrapes,
        "record_us": in_process,
        "requests_counted_by_metrics": counted,
        "cache_hits_during_load": answered,
    }
    write_json(args.output, report)
    on, off = throughput["on"], throughput["off"]
    print(f"\nnon-streaming cache hit, wrk -t1 -c{args.connections}, median of {args.rounds}:")
    for name, entry in (("with metrics", on), ("without (GATEWAY_METRICS=off)", off)):
        print(
            f"  {name:31} {entry['req_per_s']:9,.0f} hits/s  p50 {entry['p50_ms']:.2f} ms"
            f"  p99 {entry['p99_ms']:.2f} ms  server busy {entry['server_busy']:.0%}"
            f"  {entry['cpu_us_per_hit']:.0f} µs CPU per hit"
        )
    per_round = ", ".join(f"{c:+.1%}" for c in throughput["per_round_cost"])
    verdict = "PASS" if throughput["cost"] <= AIM else "not met"
    print(f"  cost: {throughput['cost']:+.1%} of hit throughput (aim ≤ {AIM:.0%}): {verdict}")
    print(f"  per round: {per_round}")
    cpu_rounds = ", ".join(f"{c:+.1%}" for c in throughput["per_round_cpu_cost"])
    print(f"  CPU per hit: {throughput['cpu_cost']:+.1%} (per round: {cpu_rounds})")
    print(
        f"in process, Gateway.record of a hit: {in_process['on']:.2f} µs with metrics,"
        f" {in_process['off']:.2f} µs without: +{in_process['added_us']:.2f} µs per hit"
        f" ({in_process['added_us'] / off['cpu_us_per_hit']:.1%} of a hit's CPU without)"
    )
    print(
        f"GET /metrics: p50 {scrapes['p50_ms']:.2f} ms, p99 {scrapes['p99_ms']:.2f} ms,"
        f" {scrapes['bytes']:,} bytes; chatbot_requests_total grew by {counted:,.0f},"
        f" as many as the cache's hits ({answered:,})"
    )
    print(f"results: {args.output.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
