"""The launcher check in scripts/install_desktop.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

INSTALL_DESKTOP = ROOT / "scripts" / "install_desktop.sh"
APP_ID = "chatbot-companion"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scripts")
pytestmark = linux_only


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
