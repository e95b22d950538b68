"""scripts/run.sh (its flags, the simulator first, signals, its children) and the launcher check
in scripts/install_desktop.sh."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, free_port, wait_json

RUN = ROOT / "scripts" / "run.sh"
INSTALL_DESKTOP = ROOT / "scripts" / "install_desktop.sh"
APP_ID = "chatbot-companion"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scripts")
pytestmark = linux_only


# --- scripts/run.sh --------------------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    port: int
    sim_port: int
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        return wait_json(f"http://127.0.0.1:{self.port}/health", self.proc)

    def child(self, marker: str) -> psutil.Process:
        """The script's child whose command line contains marker."""
        children = psutil.Process(self.proc.pid).children()
        return next(c for c in children if marker in " ".join(c.cmdline()))

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run.sh did not exit:\n{self.output}") from None


def two_free_ports() -> tuple[int, int]:
    port = free_port()
    while (other := free_port()) == port:
        pass
    return port, other


@pytest.fixture
def run_script(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start scripts/run.sh on free ports, in a process group of its own that is killed after the
    test whatever happened, so that no child can outlive it."""
    runs: list[Run] = []

    def start(*flags: str, install: bool = False, sim_port: int | None = None) -> Run:
        port, free_sim_port = two_free_ports()
        sim_port = sim_port or free_sim_port
        # No display: the headless server, never the tray app. No CHATBOT_* settings of ours.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DISPLAY", "WAYLAND_DISPLAY") and not k.startswith("CHATBOT_")
        }
        env["CHATBOT_SIM_PORT"] = str(sim_port)
        if not install:
            env["CHATBOT_SKIP_INSTALL"] = "1"
        log = tmp_path / f"run-{len(runs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", str(RUN), *flags, "--port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = Run(proc, port, sim_port, log)
        runs.append(run)
        return run

    yield start
    for run in runs:
        with_group_killed(run.proc)


def with_group_killed(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def group_is_empty(pgid: int, timeout: float = 10.0) -> bool:
    """Whether every process of the script's group is gone (an orphaned child keeps it alive)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def assert_all_stopped(run: Run) -> None:
    assert group_is_empty(run.proc.pid), f"a child outlived run.sh:\n{run.output}"
    assert port_is_free(run.port), "the gateway's port is still taken"
    assert port_is_free(run.sim_port), "the simulator's port is still taken"


@pytest.mark.parametrize(
    "flags", [("--simulate", "--headless"), ("--headless", "--simulate")], ids=" ".join
)
def test_run_serves_ok_at_once_and_sigterm_stops_both(run_script, flags):
    run = run_script(*flags)
    health = run.health()  # the first request the gateway answers
    assert health["status"] == "ok", health
    assert health["ollama"]["url"] == f"http://127.0.0.1:{run.sim_port}"
    assert run.child("simulate-ollama").is_running()

    run.proc.send_signal(signal.SIGTERM)
    status = run.wait()
    assert_all_stopped(run)
    assert status == 0, run.output  # the gateway's status: it shut down cleanly


def test_run_stops_both_on_sigint(run_script):
    run = run_script("--simulate", "--headless")
    assert run.health()["status"] == "ok"
    run.proc.send_signal(signal.SIGINT)
    status = run.wait()
    assert_all_stopped(run)
    assert status == 0, run.output


def test_run_stops_the_gateway_when_the_simulator_dies(run_script):
    run = run_script("--simulate", "--headless")
    run.health()
    run.child("simulate-ollama").kill()
    assert run.wait() == 1
    assert "the Ollama simulator stopped" in run.output
    assert_all_stopped(run)


def test_run_stops_the_simulator_when_the_gateway_dies(run_script):
    run = run_script("--headless", "--simulate")
    run.health()
    run.child(f"--port {run.port}").kill()
    assert run.wait() == 128 + signal.SIGKILL  # the gateway's status, as the shell reports it
    assert_all_stopped(run)


def test_run_passes_other_arguments_through_unchanged(run_script, tmp_path):
    config = tmp_path / "my config.toml"
    config.write_text('[ollama]\nmodel = "two words"\n', encoding="utf-8")
    run = run_script("--simulate", "--print-config", "--config", str(config), "--headless")
    assert run.wait() == 0, run.output  # --print-config ends the command; the simulator follows
    printed = run.output
    assert f"port = {run.port}\n" in printed
    assert 'model = "two words"\n' in printed
    assert f'api_url = "http://127.0.0.1:{run.sim_port}"\n' in printed
    assert_all_stopped(run)


def test_run_refuses_to_start_when_the_simulator_cannot(run_script):
    with socket.socket() as taken:  # another program on the simulator's port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sim_port = taken.getsockname()[1]
        run = run_script("--simulate", "--headless", sim_port=sim_port)
        assert run.wait() == 1
    assert f"is port {sim_port} in use? set CHATBOT_SIM_PORT" in run.output
    assert group_is_empty(run.proc.pid)
    assert port_is_free(run.port), "the gateway started without its Ollama"


def test_run_installs_and_runs_as_the_readme_says(run_script):
    """Once without CHATBOT_SKIP_INSTALL: bootstrap.sh, then the same start and stop."""
    run = run_script("--simulate", "--headless", install=True)
    health = wait_json(f"http://127.0.0.1:{run.port}/health", run.proc, timeout=120)
    assert health["status"] == "ok", health
    run.proc.send_signal(signal.SIGTERM)
    status = run.wait()
    assert_all_stopped(run)
    assert status == 0, run.output


# --- scripts/install_desktop.sh: the launcher must be able to start the app -------------------


def _install(launcher: Path, tmp: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if k != "CHATBOT_EXEC"}
    env.update(XDG_DATA_HOME=str(data), XDG_CONFIG_HOME=str(tmp / "config"), HOME=str(tmp))
    result = subprocess.run(
        ["bash", str(INSTALL_DESKTOP), str(launcher)],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, data / "applications" / f"{APP_ID}.desktop"


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def wrapped_python(flags: str) -> str:
    """A stand-in interpreter: this one, run with flags."""
    return f'#!/bin/sh\nexec "{sys.executable}" {flags} "$@"\n'


def fake_venv(root: Path, python_flags: str) -> Path:
    """A venv's layout whose bin/python is this interpreter run with python_flags, and a
    pip-style launcher that answers --version (as the real one does before it imports Qt)."""
    (root / "pyvenv.cfg").parent.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    _executable(
        root / "bin" / "python", f'#!/bin/sh\nexec "{sys.executable}" {python_flags} "$@"\n'
    )
    return _executable(root / "bin" / APP_ID, "#!/bin/sh\necho chatbot-companion 0.1.0\n")


def test_install_desktop_refuses_a_venv_without_the_gui_extra(tmp_path):
    # -S: no site-packages, so neither PySide6 nor qasync, as in `pip install -e .` without [gui].
    launcher = fake_venv(tmp_path / "venv", "-S")
    result, entry = _install(launcher, tmp_path)
    assert result.returncode == 1
    assert "cannot import PySide6 and qasync" in result.stderr
    assert "No module named 'PySide6'" in result.stderr
    assert "bash scripts/bootstrap.sh gui" in result.stderr
    assert "pip install -e '.[gui]'" in result.stderr
    assert not entry.exists() and not (tmp_path / "data").exists()


def test_install_desktop_refuses_a_launcher_whose_python_lacks_the_gui_extra(tmp_path):
    """A launcher outside a venv (pip install --user): the Python its #! line names counts."""
    python = _executable(
        tmp_path / "py" / "python3", f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n'
    )
    launcher = _executable(tmp_path / "bin" / APP_ID, f"#!{python}\nprint('0.1.0')\n")
    result, entry = _install(launcher, tmp_path)
    assert result.returncode == 1 and "cannot import PySide6" in result.stderr
    assert not entry.exists()


def test_install_desktop_accepts_a_venv_with_the_gui_extra(tmp_path):
    probe = subprocess.run(
        [sys.executable, "-c", "import PySide6.QtWidgets, qasync"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip("this interpreter has no PySide6/qasync to stand for a gui venv")
    launcher = fake_venv(tmp_path / "venv", "")
    result, entry = _install(launcher, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Exec={launcher}\n" in entry.read_text(encoding="utf-8")


def test_install_desktop_refuses_a_bundle_that_does_not_run(tmp_path):
    launcher = _executable(
        tmp_path / "dist" / APP_ID / APP_ID,
        "#!/bin/sh\necho 'error while loading shared libraries: libxcb-cursor.so.0' >&2\n"
        "exit 127\n",
    )
    result, entry = _install(launcher, tmp_path)
    assert result.returncode == 1
    assert f"`{APP_ID} --version` failed" in result.stderr
    assert "libxcb-cursor.so.0" in result.stderr
    assert not entry.exists() and not (tmp_path / "data").exists()
