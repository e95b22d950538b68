"""The desktop app's start-up, memory and qasync overhead, measured against its targets.

Run: .venv/bin/python bench/desktop.py [--rounds 5] [--quick]
     .venv/bin/python bench/desktop.py --themes [--rounds 3]   # RSS under Qt's GTK theme
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

from common import (
    RESULTS_DIR,
    free_port,
    machine_info,
    process_rss_mb,
    results_path,
    simulator_command,
    terminate,
    write_json,
)

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
    kind: str, port: int, sim_url: str, xdg: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, dict[str, float]]:
    """Start the app (or the headless server); return it and when things happened."""
    env = {
        **os.environ,
        **(extra_env or {}),
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


# --------------------------------------------------------------------------- --themes

# Qt's platform themes as a desktop sets them (QT_QPA_PLATFORMTHEME), GTK's light and dark.
THEMES: dict[str, dict[str, str]] = {
    "none": {},
    "gtk3 light": {"QT_QPA_PLATFORMTHEME": "gtk3", "GTK_THEME": "Adwaita"},
    "gtk3 dark": {"QT_QPA_PLATFORMTHEME": "gtk3", "GTK_THEME": "Adwaita:dark"},
}
# The app sets GDK_GL=disable while it creates its QApplication (app/qt_env.py) unless the user
# set GDK_GL; an empty value disables nothing, so with it the app starts as it did before.
BUILDS = {"before": {"GDK_GL": ""}, "after": {}}


def fresh_display() -> tuple[str, list[subprocess.Popen]]:
    """A new Xvfb and trayer. New, because GDK keeps its OpenGL probe's result on the root
    window (GDK_VISUALS): only the first GTK program on a display pays for the probe."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x860x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as f:
        display = ":" + f.readline().strip()
    tray = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--SetDockType", "true"],
        env={**os.environ, "DISPLAY": display},
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return display, [xvfb, tray]


def rss_by_mapping(pid: int) -> dict[str, int]:
    """KiB resident per mapped file ([heap], [anon] and the like for the rest)."""
    out: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=5)
        if "-" in first[0] and not first[0].endswith(":"):
            name = first[5] if len(first) > 5 else "[anon]"
        elif first[0] == "Rss:":
            out[name] = out.get(name, 0) + int(first[1])
    return out


def theme_round(theme: str, build: str, sim_url: str) -> tuple[float, dict[str, int]]:
    """RSS (MB) of the app with its dashboard open, on a fresh display; and its mappings."""
    display, procs = fresh_display()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runtime = Path(tmp, "run")
            runtime.mkdir(mode=0o700)
            env = {
                "DISPLAY": display,
                "XDG_RUNTIME_DIR": str(runtime),
                "XDG_CACHE_HOME": str(Path(tmp, "cache")),
                **THEMES[theme],
                **BUILDS[build],
            }
            for var in ("QT_QPA_PLATFORMTHEME", "GTK_THEME", "GDK_GL"):
                os.environ.pop(var, None)  # only what the variant sets
            app, _ = launch("qasync", free_port(), sim_url, tmp, env)
            try:
                subprocess.run(
                    [str(BIN / "chatbot-companion")],
                    env={**os.environ, "XDG_CONFIG_HOME": tmp, "QT_QPA_PLATFORM": "xcb", **env},
                    capture_output=True,
                    timeout=30,
                )
                time.sleep(3)
                return process_rss_mb(app.pid), rss_by_mapping(app.pid)
            finally:
                terminate(app, 15)
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


def themes(rounds: int, sim_url: str) -> None:
    if not (shutil.which("Xvfb") and shutil.which("trayer")):
        sys.exit("--themes needs Xvfb and trayer (apt-get install xvfb trayer libgtk-3-0)")
    rss: dict[str, list[float]] = {}
    maps: dict[str, dict[str, int]] = {}
    for _ in range(rounds):
        for build in BUILDS:
            for theme in THEMES:
                key = f"{theme}, {build}"
                mb, maps[key] = theme_round(theme, build, sim_url)
                rss.setdefault(key, []).append(mb)
    med = {k: statistics.median(v) for k, v in rss.items()}
    print(f"\nRSS with the dashboard open, medians of {rounds} round(s); target <= 150 MB")
    for key, value in med.items():
        spread = f"{min(rss[key]):.0f}-{max(rss[key]):.0f}"
        print(f"{key:22} {value:6.0f} MB  ({spread})  {'PASS' if value <= 150 else 'FAIL'}")
    base = maps["none, after"]
    for key in ("gtk3 dark, after", "gtk3 dark, before"):
        grown = {k: v - base.get(k, 0) for k, v in maps[key].items()}
        top = sorted(grown.items(), key=lambda kv: -kv[1])[:6]
        print(f"\nlargest growth over 'none, after', {key} (last round):")
        for name, kib in top:
            print(f"  {kib / 1024:+6.1f} MB  {name}")
    machine = machine_info(["PySide6-Essentials", "qasync"])
    write_json(RESULTS_DIR / "desktop_themes.json", {"rss_mb": rss, "machine": machine})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--themes", action="store_true", help="RSS with no platform theme, GTK light and dark"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    procs: list[subprocess.Popen] = []
    if not args.themes:
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
    if args.themes:
        try:
            themes(args.rounds, sim_url)
        finally:
            terminate(procs[-1], 10)
        return
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
    out = results_path("desktop", args.quick)
    write_json(out, {"rounds": results, "medians": med, "ratio": ratio})


if __name__ == "__main__":
    main()
