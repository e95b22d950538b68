"""`chatbot-companion` as a person starts it: a real process, its config, one instance, Quit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port, wait_json

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def runtime_dir(tmp_path) -> str:
    """A per-user runtime directory of the test's own (as $XDG_RUNTIME_DIR: mode 0700), so a
    companion this user already runs cannot answer for the one under test."""
    path = tmp_path / "run"
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


def launch(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),  # the user's config directory
        "XDG_RUNTIME_DIR": runtime_dir(tmp_path),
        "CHATBOT_OLLAMA_WARM_UP": "false",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_health(port: int, proc: subprocess.Popen) -> dict:
    return wait_json(f"http://127.0.0.1:{port}/health", proc, timeout=20.0)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_first_run_creates_the_users_config_serves_and_quits_cleanly(tmp_path):
    port = free_port()
    proc = launch(tmp_path, env={"PORT": str(port)})
    try:
        assert wait_health(port, proc)["version"]
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    created = tmp_path / "xdg" / "chatbot-companion" / "config.toml"
    assert created.read_text() == (ROOT / "config.toml").read_text()
    with __import__("socket").socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # no orphan listener


def test_second_launch_hands_over_and_exits_0(tmp_path):
    port = free_port()
    first = launch(tmp_path, env={"PORT": str(port)})
    try:
        wait_health(port, first)
        second = launch(tmp_path, env={"PORT": str(free_port())})
        _, err = second.communicate(timeout=20)
        assert second.returncode == 0
        assert "already running; its dashboard was raised" in err
        assert first.poll() is None
        # The lock and the socket are in the user's runtime directory, not in /tmp.
        names = sorted(p.name for p in (tmp_path / "run").iterdir())
        assert [n for n in names if n.startswith("chatbot-companion-")] == [
            f"chatbot-companion-{os.getuid()}.lock",
            f"chatbot-companion-{os.getuid()}.sock",
        ]
    finally:
        code, _ = stop(first)
    assert code == 0


def test_a_companion_in_another_session_does_not_stop_this_one(tmp_path):
    """Another runtime directory is another session (a second login, a test run beside the
    user's own tray app): each gets its own instance."""
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    elsewhere.mkdir()
    here.mkdir()
    first_port, second_port = free_port(), free_port()
    first = launch(elsewhere, env={"PORT": str(first_port)})
    try:
        wait_health(first_port, first)
        second = launch(here, env={"PORT": str(second_port)})
        try:
            assert wait_health(second_port, second)["version"]
        finally:
            code, err = stop(second)
        assert code == 0, err
        assert "already running" not in err
    finally:
        stop(first)


def test_headless_flag_is_the_plain_server(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app", "--headless", "--print-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CHATBOT_OLLAMA_MODEL": "qwen3:4b"},
    )
    assert result.returncode == 0
    assert 'model = "qwen3:4b"' in result.stdout


def test_no_display_is_explained_not_a_crash(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 2
    assert "no display found" in result.stderr and "--headless" in result.stderr


def test_broken_config_file_still_starts_and_is_left_alone(tmp_path):
    port = free_port()
    path = tmp_path / "broken.toml"
    path.write_text("[cache]\nmax_size_mb = 0\n")
    proc = launch(tmp_path, "--config", str(path), env={"PORT": str(port)})
    try:
        wait_health(port, proc)
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "config error: [cache].max_size_mb = 0" in err
    # Said as it is: the file's other values run, not "the last good" or "the defaults".
    assert "running on the file's other values, with defaults for the bad ones" in err
    assert path.read_text() == "[cache]\nmax_size_mb = 0\n"
