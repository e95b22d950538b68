"""The desktop app's start-up, memory and qasync overhead, measured against its targets.

Run: .venv/bin/python bench/desktop.py [--rounds 5] [--quick]
Needs a display: if DISPLAY is unset it starts Xvfb and trayer (Debian: xvfb trayer) itself.
Targets (issue: desktop app, part 1): server answering /health <= 1.5 s after launch; RSS <= 150 MB
with the dashboard open; cache-hit throughput on the qasync loop >= 60 % of headless. wrk (Debian
package) measures throughput with 32 connections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import RESULTS_DIR, free_port, process_rss_mb, simulator_command, terminate, write_json

BIN = Path(sys.executable).parent
LOG_LEVEL = os.environ.get("BENCH_LOG_LEVEL", "info")
BODY = {"messages": [{"role": "user", "content": "bench"}], "stream": False}


def wait_http(url: str, timeout: float = 30.0, data: bytes | None = None) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                r.read()
                return time.monotonic()
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"{url} never answered")


def ensure_display(procs: list[subprocess.Popen]) -> None:
    if os.environ.get("DISPLAY"):
        return
    if not (shutil.which("Xvfb") and shutil.which("trayer")):
        sys.exit("no DISPLAY, and Xvfb/trayer are not installed (apt-get install xvfb trayer)")
    os.environ["DISPLAY"] = ":93"
    procs.append(
        subprocess.Popen(
            ["Xvfb", ":93", "-screen", "0", "1280x860x24", "-nolisten", "tcp"],
            stderr=subprocess.DEVNULL,
        )
    )
    time.sleep(1)
    procs.append(
        subprocess.Popen(
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "request",
                "--height",
                "28",
                "--SetDockType",
                "true",
            ],
            stderr=subprocess.DEVNULL,
        )
    )
    time.sleep(0.5)


def launch(
    kind: str, port: int, sim_url: str, xdg: str
) -> tuple[subprocess.Popen, dict[str, float]]:
    """Start the app (or the headless server); return it and when things happened."""
    env = {
        **os.environ,
        "PORT": str(port),
        "CHATBOT_OLLAMA_API_URL": sim_url,
        "CHATBOT_OLLAMA_WARM_UP": "false",
        "LOG_LEVEL": "info",
        "XDG_CONFIG_HOME": xdg,
        "QT_QPA_PLATFORM": "xcb",
    }
    cmd = [str(BIN / "chatbot-companion")] if kind == "qasync" else [str(BIN / "chatbot-backend")]
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=tempfile.gettempdir(),
    )

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "tray icon shown" in line and "tray" not in marks:
                marks["tray"] = time.monotonic() - t0

    threading.Thread(target=read_log, daemon=True).start()
    marks["health"] = wait_http(f"http://127.0.0.1:{port}/health") - t0
    return proc, marks


def wrk(url: str, seconds: int) -> float:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(BODY)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    procs: list[subprocess.Popen] = []
    ensure_display(procs)
    sim_port = free_port()
    procs.append(
        subprocess.Popen(
            simulator_command(sim_port, launcher=(str(BIN / "chatbot-backend"), "simulate-ollama")),
            stderr=subprocess.DEVNULL,
        )
    )
    sim_url = f"http://127.0.0.1:{sim_port}"
    wait_http(f"{sim_url}/api/version")
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "start_health_s",
            "start_tray_s",
            "headless_start_health_s",
            "rss_idle_closed_mb",
            "rss_idle_open_mb",
            "rss_after_load_open_mb",
            "headless_rss_mb",
            "qasync_rps",
            "headless_rps",
        )
    }
    try:
        with tempfile.TemporaryDirectory() as xdg:
            for _ in range(args.rounds):
                port = free_port()
                app, marks = launch("qasync", port, sim_url, xdg)
                url = f"http://127.0.0.1:{port}"
                results["start_health_s"].append(marks["health"])
                deadline = time.monotonic() + 10
                while "tray" not in marks and time.monotonic() < deadline:
                    time.sleep(0.01)
                results["start_tray_s"].append(marks.get("tray", float("nan")))
                time.sleep(2)
                results["rss_idle_closed_mb"].append(process_rss_mb(app.pid))
                # A second launch raises the first one's dashboard.
                subprocess.run(
                    [str(BIN / "chatbot-companion")],
                    env={**os.environ, "XDG_CONFIG_HOME": xdg, "QT_QPA_PLATFORM": "xcb"},
                    capture_output=True,
                    timeout=30,
                )
                time.sleep(3)
                results["rss_idle_open_mb"].append(process_rss_mb(app.pid))
                wait_http(f"{url}/api/chat-optimized", data=json.dumps(BODY).encode())
                results["qasync_rps"].append(wrk(f"{url}/api/chat-optimized", args.seconds))
                time.sleep(1.5)
                results["rss_after_load_open_mb"].append(process_rss_mb(app.pid))
                terminate(app, 15)

                port = free_port()
                headless, marks = launch("headless", port, sim_url, xdg)
                url = f"http://127.0.0.1:{port}"
                results["headless_start_health_s"].append(marks["health"])
                wait_http(f"{url}/api/chat-optimized", data=json.dumps(BODY).encode())
                results["headless_rps"].append(wrk(f"{url}/api/chat-optimized", args.seconds))
                results["headless_rss_mb"].append(process_rss_mb(headless.pid))
                terminate(headless, 15)
    finally:
        for p in reversed(procs):
            p.terminate()
    med = {k: statistics.median(v) for k, v in results.items() if v}
    ratio = med["qasync_rps"] / med["headless_rps"]
    rows = [
        (
            "launch → /health answers (s)",
            f"{med['start_health_s']:.2f}",
            "≤ 1.5",
            med["start_health_s"] <= 1.5,
        ),
        ("launch → tray icon shown (s)", f"{med['start_tray_s']:.2f}", "—", None),
        ("headless launch → /health (s)", f"{med['headless_start_health_s']:.2f}", "—", None),
        ("RSS idle, dashboard closed (MB)", f"{med['rss_idle_closed_mb']:.0f}", "—", None),
        (
            "RSS idle, dashboard open (MB)",
            f"{med['rss_idle_open_mb']:.0f}",
            "≤ 150",
            med["rss_idle_open_mb"] <= 150,
        ),
        (
            "RSS after load, dashboard open (MB)",
            f"{med['rss_after_load_open_mb']:.0f}",
            "≤ 150",
            med["rss_after_load_open_mb"] <= 150,
        ),
        ("RSS headless after load (MB)", f"{med['headless_rss_mb']:.0f}", "—", None),
        ("cache hits/s, qasync (wrk -c32)", f"{med['qasync_rps']:.0f}", "—", None),
        ("cache hits/s, headless (wrk -c32)", f"{med['headless_rps']:.0f}", "—", None),
        ("qasync / headless throughput", f"{ratio:.0%}", "≥ 60 %", ratio >= 0.6),
    ]
    print(f"\nmedians of {args.rounds} round(s)")
    print(f"{'figure':40} {'measured':>10} {'target':>8}  result")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{name:40} {value:>10} {target:>8}  {verdict}")
    out = RESULTS_DIR / ("desktop_quick.json" if args.quick else "desktop.json")
    write_json(out, {"rounds": results, "medians": med, "ratio": ratio})


if __name__ == "__main__":
    main()
