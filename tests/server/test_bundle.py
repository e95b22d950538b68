"""Smoke test of the PyInstaller bundle: build it, run it headless and as the tray app.

Marked `bundle`; it runs with the server suite (CI included). Skipped, saying why, only where
PyInstaller is not installed (`pip install -e '.[package]'`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_json

pytestmark = [
    pytest.mark.bundle,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (the package extra)")
    pytest.importorskip("PySide6", reason="the bundle is the desktop app: needs the gui extra")
    out = tmp_path_factory.mktemp("bundle")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "ERROR",
            "--distpath",
            str(out / "dist"),
            "--workpath",
            str(out / "work"),
            str(ROOT / "packaging" / "chatbot-companion.spec"),
        ],
        check=True,
        cwd=ROOT,
        timeout=900,
    )
    exe = out / "dist" / "chatbot-companion" / "chatbot-companion"
    assert exe.is_file() and os.access(exe, os.X_OK)
    return exe


@pytest.fixture(scope="module")
def sim_url():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.simulator",
            "--port",
            str(port),
            "--token-delay-ms",
            "0",
            "--first-token-delay-ms",
            "0",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_json(url + "/api/version", proc)
    yield url
    proc.terminate()
    proc.wait(10)


def chat(base: str) -> dict:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "bundle"}], "stream": False}
    ).encode()
    req = urllib.request.Request(
        base + "/api/chat-optimized", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run(exe: Path, args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    # Its own runtime directory (0700, as the single-instance lock expects): a companion already
    # running for this user must not turn a launch into "raise the other one and exit".
    runtime = tempfile.mkdtemp(prefix="runtime-", dir=tmp_path)
    return subprocess.Popen(
        [str(exe), *args],
        cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": runtime, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def test_bundle_serves_headless_with_a_cached_round_trip(bundle, sim_url, tmp_path):
    port = free_port()
    proc = run(
        bundle,
        ["--headless", "--port", str(port)],
        {"CHATBOT_OLLAMA_API_URL": sim_url, "CHATBOT_OLLAMA_WARM_UP": "false"},
        tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_json(base + "/health", proc)["status"] == "ok"
        first, second = chat(base), chat(base)
        assert first["cached"] is False and second["cached"] is True
        assert first["content"] == second["content"] and first["content"]
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_bundle_runs_the_tray_app_and_quits_cleanly(bundle, sim_url, tmp_path):
    port = free_port()
    env = {
        "CHATBOT_OLLAMA_API_URL": sim_url,
        "CHATBOT_OLLAMA_WARM_UP": "false",
        "PORT": str(port),
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    proc = run(bundle, [], env, tmp_path)
    try:
        assert wait_json(f"http://127.0.0.1:{port}/health", proc)["status"] == "ok"
        assert chat(f"http://127.0.0.1:{port}")["done"] is True
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    # First run wrote the user's config from the bundled default.
    made = tmp_path / "xdg" / "chatbot-companion" / "config.toml"
    assert made.read_text() == (ROOT / "config.toml").read_text()
