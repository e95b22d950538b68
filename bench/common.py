"""Helpers shared by the benchmark scripts: server processes, ports, pinning, figures, reports."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
GATEWAY_BIN = str(ROOT / ".venv" / "bin" / "chatbot-backend")
# When pinned: the servers on one core, the load generators (the script, wrk) on the other.
SERVER_CPU, CLIENT_CPU = 1, 0


# --------------------------------------------------------------------------- command line


def add_run_args(
    parser: argparse.ArgumentParser,
    *,
    pin: bool = True,
    profile: bool = False,
    profile_top: int = 15,
) -> None:
    """Add the flags most scripts share, in this order: --no-pin (unless `pin` is False),
    --profile and --profile-top (if `profile`; `profile_top` is its default), --quick and
    --output. --output is None unless given: the script picks its file, see results_path()."""
    if pin:
        parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients")
    if profile:
        parser.add_argument("--profile", action="store_true", help="py-spy the gateway under wrk")
        parser.add_argument("--profile-top", type=int, default=profile_top)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--output", type=Path, help="JSON results path")


def run_params(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed command line for a JSON report, without --output and --profile-top (where the
    report goes and how much of a profile is printed say nothing about the figures)."""
    return {k: v for k, v in vars(args).items() if k not in ("output", "profile_top")}


def results_path(name: str, quick: bool) -> Path:
    """bench/results/<name>.json, or <name>_quick.json for a --quick run, so that a smoke run
    never overwrites a real run's figures."""
    return RESULTS_DIR / (f"{name}_quick.json" if quick else f"{name}.json")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def can_pin() -> bool:
    """Whether processes can be pinned to separate cores (Linux, at least 2 CPUs)."""
    return hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def pin_this_script(no_pin: bool, servers: str) -> tuple[int | None, str]:
    """Pin this script (and wrk, its child) to CLIENT_CPU unless told not to or unable: the
    CPU for the servers (None when not pinned) and a line saying how things are pinned."""
    if no_pin or not can_pin():
        return None, "not pinned"
    os.sched_setaffinity(0, {CLIENT_CPU})
    return SERVER_CPU, f"{servers} on CPU {SERVER_CPU}; this script and wrk on CPU {CLIENT_CPU}"


def process_rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_answers(
    proc: subprocess.Popen[Any], url: str, name: str, timeout: float, output: Callable[[], str]
) -> None:
    """Poll `url` until it answers. Raise if the process exits first (with `output()`, what it
    wrote) or if `timeout` seconds pass (the process is stopped then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {output()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    terminate(proc, 10)
    raise RuntimeError(f"{name} did not answer within {timeout:g} s")


def simulator_command(
    port: int,
    tokens: int | None = None,
    token_delay_ms: float = 0,
    first_token_delay_ms: float = 0,
    launcher: Sequence[str] = (sys.executable, "-m", "server.simulator"),
) -> list[str]:
    """The Ollama simulator's command line; zero token delays by default (as fast as read)."""
    command = [*launcher, "--port", str(port)]
    if tokens is not None:
        command += ["--tokens", str(tokens)]
    return [
        *command,
        "--token-delay-ms",
        str(token_delay_ms),
        "--first-token-delay-ms",
        str(first_token_delay_ms),
    ]


@dataclass
class Server:
    """A server process started by spawn(), its output going to log_path."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        return process_rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system


def spawn(
    name: str,
    command: list[str],
    ready_path: str,
    port: int,
    logdir: Path,
    env: Mapping[str, str] | None = None,
    cpu: int | None = None,
) -> Server:
    """Start `command` (output to logdir/name.log, on core `cpu` if given) and wait up to 20 s
    for GET ready_path to answer."""
    log_path = logdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            # Pinned before exec, so every thread the server starts stays on that core.
            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        )
    server = Server(name, port, proc, log_path)
    wait_until_answers(
        proc, server.base + ready_path, name, 20, lambda: log_path.read_text()[-2000:]
    )
    return server


def stop(server: Server) -> None:
    terminate(server.proc, 10)


def spawn_gateway(
    name: str, sim: Server, logdir: Path, env: Mapping[str, str], cpu: int | None = None
) -> Server:
    """A gateway (`chatbot-backend`) in front of the simulator, with Ollama warm-up off."""
    port = free_port()
    env = {"CHATBOT_OLLAMA_API_URL": sim.base, "CHATBOT_OLLAMA_WARM_UP": "false", **env}
    return spawn(name, [GATEWAY_BIN, "--port", str(port)], "/health", port, logdir, env, cpu)


# --------------------------------------------------------------------------- HTTP


def http_json_response(url: str, body: dict[str, Any] | None = None) -> tuple[Any, Message]:
    """GET (or POST `body` as JSON) and return the decoded JSON answer and its headers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read()), resp.headers


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    return http_json_response(url, body)[0]


# --------------------------------------------------------------------------- figures and reports


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def machine_info(
    packages: Iterable[str], extra_versions: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """CPU count and model, Python and OS, and the versions of `packages` (if installed)."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    versions.update(extra_versions or {})
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
