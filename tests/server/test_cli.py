"""The `chatbot-backend` command as a user runs it: real processes, the migration guide's curls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import ROOT, free_port

CLI = [sys.executable, "-m", "server"]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=30, env=full_env, cwd=cwd or ROOT
    )


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@contextmanager
def process(*args: str, port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    try:
        wait_port(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def curl(*args: str) -> str:
    out = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bad_value_stops_startup_with_one_line_and_exit_2():
    result = run_cli(env={"PORT": "99999"})
    assert result.returncode == 2
    assert result.stderr == (
        "config error: [server].port = 99999: must be a whole number 1..65535 (from PORT)\n"
    )


def test_bad_file_value_and_unknown_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 0\n[cache]\nmax_sise_mb = 5\n")
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "config error: [server].port = 0: must be a whole number 1..65535" in lines
    assert any(line.startswith("config error: [cache].max_sise_mb: unknown key") for line in lines)


def test_print_config_shows_the_effective_values(tmp_path):
    (tmp_path / ".env").write_text("CHATBOT_OLLAMA_MODEL=from-dotenv\n")
    result = run_cli(
        "--print-config", "--port", "9001", cwd=tmp_path, env={"CACHE_MAX_SIZE_MB": "64"}
    )
    assert result.returncode == 0, result.stderr
    assert 'model = "from-dotenv"' in result.stdout
    assert "port = 9001" in result.stdout
    assert "max_size_mb = 64" in result.stdout


def test_port_in_use_is_reported_plainly():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_cli("--port", str(port), env={"CHATBOT_OLLAMA_WARM_UP": "false"})
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "[server].port" in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_migration_guide_checks_against_the_simulator():
    sim_port, port = free_port(), free_port()
    with (
        process(
            "simulate-ollama",
            "--port",
            str(sim_port),
            "--token-delay-ms",
            "1",
            "--first-token-delay-ms",
            "5",
            port=sim_port,
        ),
        process(
            "--port",
            str(port),
            port=port,
            env={"CHATBOT_OLLAMA_API_URL": f"http://127.0.0.1:{sim_port}"},
        ) as backend,
    ):
        base = f"http://localhost:{port}"
        health = json.loads(curl(f"{base}/health"))
        assert health["status"] == "ok" and health["ollama"]["reachable"] is True

        answer = json.loads(
            curl(
                "-X",
                "POST",
                f"{base}/api/chat-optimized",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"messages":[{"role":"user","content":"test"}],"stream":false}',
            )
        )
        assert answer["done"] is True and answer["content"]

        stream = curl(
            "-N",
            "-X",
            "POST",
            f"{base}/api/chat-optimized",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: text/event-stream",
            "-d",
            '{"messages":[{"role":"user","content":"test"}],"stream":true}',
        )
        frames = [json.loads(line[6:]) for line in stream.split("\n") if line]
        assert "".join(f["content"] for f in frames) == answer["content"]
        assert frames[-1]["done"] is True

        # A bad request is answered and the server keeps going.
        bad = json.loads(curl("-X", "POST", f"{base}/api/chat-optimized", "-d", "{oops"))
        assert bad["code"] == "invalid_json"
        assert json.loads(curl(f"{base}/health"))["status"] == "ok"

        backend.send_signal(signal.SIGTERM)
        assert backend.wait(10) == 0
        log = backend.stderr.read()
    # One log line per chat request, with id, model, status, ttft, total and tokens.
    chat_lines = [ln for ln in log.splitlines() if "POST /api/chat-optimized" in ln]
    assert len(chat_lines) == 3
    assert "200 id=r-" in chat_lines[0] and "model=llama3.2" in chat_lines[0]
    assert "ttft=" in chat_lines[0] and "total=" in chat_lines[0] and "tokens=24" in chat_lines[0]
    assert "400" in chat_lines[2] or "error=invalid_json" in chat_lines[2]
    assert "Traceback" not in log
