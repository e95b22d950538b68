"""Cache-hit throughput against the bare aiohttp floor, at the default log level (issue #19).

Run from the repository root:  .venv/bin/python bench/throughput.py  (add --quick for a smoke run)

Every server is its own process, started here, all on CPU 1; this script and wrk run on CPU 0
(`--no-pin` turns that off): the Ollama simulator (64 tokens, zero delays), the bare aiohttp
floor (cache_hit.py's: one handler returning a small fixed JSON body) and the gateway at
`LOG_LEVEL=info`, the default, with its access log going to a file. The gateway measured is a
copy of this checkout's `server/` taken when the script starts, so others' edits during the run
do not change it. `--baseline REF` adds a second gateway, `server/` as of the git commit REF
(`git archive`), measured in the same rounds: the before and after of a change in one run.
`--also NAME:KEY=VALUE` adds this checkout's gateway once more with other settings, such as
`asyncio:GATEWAY_EVENT_LOOP=asyncio` (asyncio's event loop instead of uvloop).

One question is stored by a miss, then asked as a non-streamed hit three ways: `/api/chat-
optimized`, native `/api/chat` and `/v1/chat/completions`. Each round runs wrk (1 thread, 32
connections) against the floor and against every gateway and kind, in an order that rotates with
the round; each gateway run must have been all cache hits (`/api/cache-stats`). A kind's ratio
is its hits/s over the floor's req/s in the same round; the figure is the median over rounds.
The µs of server CPU per request (psutil, by pid) is printed too: unlike req/s it does not depend
on how much of its core a server got while others share the machine.

`--profile` samples the gateway with py-spy under wrk, per kind (raw stacks in
bench/results/throughput_profile_{kind}.txt).
"""

from __future__ import annotations

import stdlib_first  # noqa: F401  (first: moves this folder behind the standard library)

# isort: split
import argparse
import dataclasses
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cache_hit import FLOOR_CODE, code_version, run_wrk
from common import (
    ROOT,
    Server,
    add_run_args,
    free_port,
    machine_info,
    pin_this_script,
    results_path,
    run_params,
    simulator_command,
    spawn,
    stop,
    write_json,
)
from native import (
    HIT_KINDS,
    HitKind,
    RawClient,
    chat_body,
    header,
    http_request,
    load_run,
    print_profile,
    profile_gateway,
)

PYTHON = str(ROOT / ".venv" / "bin" / "python")


def _bench_openai() -> Any:
    """bench/openai.py, by path: the name `openai` is the OpenAI client package's."""
    path = Path(__file__).with_name("openai.py")
    spec = importlib.util.spec_from_file_location("bench_openai", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


OPENAI_KINDS: dict[str, HitKind] = _bench_openai().OPENAI_KINDS
AIM_RATIO = 0.5  # issue #19: a hit at >= 0.5x the floor's throughput

QUESTION = "throughput bench hit: why is the sky blue?"
KINDS: dict[str, HitKind] = {
    key: dataclasses.replace(source[key], body=chat_body(QUESTION, stream=False))
    for source, key in (
        (HIT_KINDS, "optimized"),
        (HIT_KINDS, "native"),
        (OPENAI_KINDS, "openai"),
    )
}


# --------------------------------------------------------------------------- servers


def snapshot_server(ref: str | None, into: Path) -> Path:
    """A copy of `server/`, from the working tree (ref None) or from git commit `ref`; the
    folder to put on PYTHONPATH."""
    into.mkdir(parents=True)
    if ref is None:
        shutil.copytree(
            ROOT / "server", into / "server", ignore=shutil.ignore_patterns("__pycache__")
        )
        return into
    archive = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(ROOT), "archive", ref, "server"],
        capture_output=True,
        check=True,
    ).stdout
    tar_path = into / "server.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into


def spawn_gateway(
    name: str, code: Path, sim: Server, logdir: Path, env: dict[str, str], cpu: int | None
) -> Server:
    """`python -m server` with `code` first on the path (-P: not the checkout's own folder),
    the default log level spelled out so that a .env cannot change it."""
    port = free_port()
    env = {
        "PYTHONPATH": str(code),
        "CHATBOT_OLLAMA_API_URL": sim.base,
        "CHATBOT_OLLAMA_WARM_UP": "false",
        "LOG_LEVEL": "info",
        **env,
    }
    command = [PYTHON, "-P", "-m", "server", "--port", str(port)]
    return spawn(name, command, "/health", port, logdir, env, cpu)


def warm(gateway: Server) -> None:
    """One miss stores the answer; then each kind must answer it from the cache."""
    client = RawClient(gateway.port)
    try:
        first = KINDS["optimized"]
        client.exchange(http_request(gateway.port, first.path, first.body, first.accept))
        for kind in KINDS.values():
            request = http_request(gateway.port, kind.path, kind.body, kind.accept)
            ex = client.exchange(request)
            if header(ex.head, "X-Cache") != "HIT":  # a protocol with its own entry
                ex = client.exchange(request)
            kind.check(ex)
    finally:
        client.close()


# --------------------------------------------------------------------------- measuring


def floor_run(args: argparse.Namespace, floor: Server, seconds: int) -> dict[str, Any]:
    cpu0, wall0 = floor.cpu_seconds(), time.perf_counter()
    run, _ = run_wrk(floor.base + "/", None, seconds, args.connections)
    cpu = floor.cpu_seconds() - cpu0
    run["server_busy"] = cpu / (time.perf_counter() - wall0)
    run["cpu_us_per_request"] = cpu / max(1, run["requests"]) * 1e6
    if run["non_2xx"] or run["socket_errors"]:
        raise RuntimeError(f"floor: errors under load: {run}")
    return run


def gateway_run(
    args: argparse.Namespace, gateway: Server, kind: HitKind, seconds: int, workdir: Path
) -> dict[str, Any]:
    cpu0 = gateway.cpu_seconds()
    run = load_run(args, gateway, kind, seconds, workdir)  # checks: all answers were hits
    run["cpu_us_per_request"] = (gateway.cpu_seconds() - cpu0) / max(1, run["cache_hits"]) * 1e6
    return run


def measure(
    args: argparse.Namespace, floor: Server, gateways: dict[str, Server], workdir: Path
) -> dict[str, Any]:
    jobs = ["floor"] + [f"{g}/{k}" for g in gateways for k in KINDS]

    def one(job: str, seconds: int) -> dict[str, Any]:
        if job == "floor":
            return floor_run(args, floor, seconds)
        name, kind = job.split("/")
        return gateway_run(args, gateways[name], KINDS[kind], seconds, workdir)

    for job in jobs:  # warm-up: every server sees the load once
        one(job, args.warm_seconds)
    rounds: list[dict[str, dict[str, Any]]] = []
    for index in range(args.rounds):
        shift = index % len(jobs)
        this: dict[str, dict[str, Any]] = {}
        for job in jobs[shift:] + jobs[:shift]:
            this[job] = one(job, args.seconds)
        for job in jobs[1:]:
            this[job]["ratio"] = this[job]["req_per_s"] / this["floor"]["req_per_s"]
        rounds.append(this)
        line = "  ".join(
            f"{job} {run['req_per_s']:,.0f}"
            + (f" ({run['ratio']:.2f}x)" if "ratio" in run else "")
            + f" busy {run['server_busy']:.0%}"
            for job, run in this.items()
        )
        print(f"  round {index + 1}/{args.rounds}: {line}", file=sys.stderr)
    out: dict[str, Any] = {}
    for job in jobs:
        runs = [r[job] for r in rounds]
        entry: dict[str, Any] = {"rounds": runs}
        for name in ("req_per_s", "ratio", "cpu_us_per_request", "server_busy", "p50_ms"):
            values = [r[name] for r in runs if name in r]
            if values:
                entry[name] = statistics.median(values)
                entry[f"{name}_range"] = [min(values), max(values)]
        out[job] = entry
    return out


# --------------------------------------------------------------------------- report


def print_report(report: dict[str, Any]) -> None:
    tp = report["throughput"]
    floor = tp["floor"]
    print()
    print(
        f"wrk -t1 -c{report['params']['connections']}, {report['params']['rounds']} rounds of"
        f" {report['params']['seconds']} s; {report['pinning']}; gateways at LOG_LEVEL=info"
    )
    print(
        f"{'':34} {'req/s':>8} {'ratio':>6} {'(range)':>13} {'µs CPU/req':>11} {'CPU ratio':>9}"
        f" {'busy':>5}  aim"
    )
    print(
        f"{'bare aiohttp floor':34} {floor['req_per_s']:8,.0f} {'':6} {'':13}"
        f" {floor['cpu_us_per_request']:11.0f} {'':9} {floor['server_busy']:5.0%}"
    )
    for job, entry in tp.items():
        if job == "floor":
            continue
        name, kind = job.split("/")
        low, high = entry["ratio_range"]
        cpu_ratio = floor["cpu_us_per_request"] / entry["cpu_us_per_request"]
        verdict = "PASS" if entry["ratio"] >= AIM_RATIO else "FAIL"
        print(
            f"{name + ': ' + KINDS[kind].label:34.34} {entry['req_per_s']:8,.0f}"
            f" {entry['ratio']:5.2f}x {f'({low:.2f}-{high:.2f})':>13}"
            f" {entry['cpu_us_per_request']:11.0f} {cpu_ratio:8.2f}x {entry['server_busy']:5.0%}"
            f"  >= {AIM_RATIO}x {verdict}"
        )
    print(
        "ratio: hits/s over the floor's req/s in the same round (median of rounds); CPU ratio: "
        "the floor's µs per request over the gateway's (medians)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run, s")
    parser.add_argument("--warm-seconds", type=int, default=2, help="wrk warm-up per job, s")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline", metavar="REF", help="also measure server/ at git REF")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateways (repeatable)",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also measure this checkout's gateway with this environment, e.g. "
        "asyncio:GATEWAY_EVENT_LOOP=asyncio (repeatable)",
    )
    add_run_args(parser, profile=True, profile_top=25)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warm_seconds = 1, 2, 1
    args.output = args.output or results_path("throughput", args.quick)
    args.use_wrk = True
    if shutil.which("wrk") is None:
        parser.error("needs wrk (apt-get install -y wrk)")
    return args


def main() -> int:
    args = parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    server_cpu, pinning = pin_this_script(args.no_pin, "simulator, floor and gateways")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    code = code_version()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
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
            floor_port = free_port()
            floor = spawn(
                "floor",
                [PYTHON, "-c", FLOOR_CODE, str(floor_port)],
                "/",
                floor_port,
                workdir,
                cpu=server_cpu,
            )
            servers.append(floor)
            gateways: dict[str, Server] = {}
            variants = {"now": (None, extra_env)}
            if args.baseline:
                variants["base"] = (args.baseline, extra_env)
            for item in args.also:
                name, _, settings = item.partition(":")
                env = dict(pair.split("=", 1) for pair in settings.split(",") if pair)
                variants[name] = (None, {**extra_env, **env})
            code_dirs: dict[str | None, Path] = {}
            for name, (ref, env) in variants.items():
                if ref not in code_dirs:
                    code_dirs[ref] = snapshot_server(ref, workdir / f"code_{name}")
                gateways[name] = spawn_gateway(name, code_dirs[ref], sim, workdir, env, server_cpu)
                servers.append(gateways[name])
                warm(gateways[name])
            print(f"servers up ({pinning}); measuring", file=sys.stderr)
            throughput = measure(args, floor, gateways, workdir)
            log_bytes = gateways["now"].log_path.stat().st_size
            profile = (
                profile_gateway(args, gateways["now"], workdir, KINDS, "throughput")
                if args.profile
                else None
            )
        finally:
            for server in servers:
                stop(server)
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(("aiohttp", "orjson", "uvloop", "psutil")),
        "code": code,
        "baseline": args.baseline,
        "gateway_env": extra_env,
        "also": args.also,
        "pinning": pinning,
        "params": run_params(args),
        "aim_ratio": AIM_RATIO,
        "throughput": throughput,
        "info_log_bytes_now": log_bytes,
        "profile": profile,
    }
    print_report(report)
    if profile:
        print_profile(profile, args.profile_top, KINDS)
    write_json(args.output, report)
    print(f"\nJSON written to {args.output} (run took {report['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
