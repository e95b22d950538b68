"""The tray app's memory with the dashboard open, on a real X server under a GTK platform theme.

Qt's GTK platform theme (`QT_QPA_PLATFORMTHEME=gtk3`, what a GNOME or dark-GTK desktop sets)
once cost 52 MB: gtk_init probed OpenGL and loaded Mesa and libLLVM (bench/README.md, "Desktop
memory"). GDK caches that probe's result on the root window, so only the first GTK program on a
display pays it: each test here starts its own Xvfb, where nothing has run before.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from PySide6.QtGui import QImage

from app.qt_env import gdk_without_gl
from tests.conftest import ROOT, free_port, wait_json

LIMIT_MB = 150
TITLE = "Chatbot Companion"
TOOLS = ("Xvfb", "trayer", "xwininfo", "import")  # Debian: xvfb trayer x11-utils imagemagick

# The memory test's needs (the unit test below has none).
NEEDS_X_AND_GTK = [
    pytest.mark.skipif(sys.platform != "linux", reason="X11 and GTK: Linux only"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in TOOLS),
        reason="needs Xvfb, trayer, xwininfo and import (Debian: xvfb trayer x11-utils "
        "imagemagick; scripts/test.sh installs them)",
    ),
    pytest.mark.skipif(
        not ctypes.util.find_library("gtk-3"),
        reason="needs GTK 3 for Qt's gtk3 platform theme (Debian: libgtk-3-0)",
    ),
]


@dataclass
class Display:
    name: str
    env: dict[str, str]


@pytest.fixture
def display() -> Iterator[Display]:
    """A fresh Xvfb (it picks a free display number itself) with trayer as the tray host."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x860x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    procs = [xvfb]
    try:
        with os.fdopen(read) as f:
            number = f.readline().strip()  # written once the server accepts connections
        assert number, "Xvfb did not start"
        name = f":{number}"
        env = {**os.environ, "DISPLAY": name}
        procs.append(
            subprocess.Popen(
                ["trayer", "--edge", "top", "--align", "right", "--SetDockType", "true"],
                env=env,
                stderr=subprocess.DEVNULL,
            )
        )
        yield Display(name, env)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def simulator() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.simulator", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_json(f"{url}/api/version", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def app_env(tmp_path: Path, display: Display, gtk_theme: str, ollama: str) -> dict[str, str]:
    """The app as a person on a GTK desktop runs it, with its per-user state in tmp_path."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        k: v
        for k, v in display.env.items()
        if k not in ("WAYLAND_DISPLAY", "GDK_GL", "MALLOC_ARENA_MAX")
    }
    return {
        **env,
        "QT_QPA_PLATFORM": "xcb",
        "QT_QPA_PLATFORMTHEME": "gtk3",
        "GTK_THEME": gtk_theme,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_RUNTIME_DIR": str(runtime),
        "CHATBOT_OLLAMA_API_URL": ollama,
        "CHATBOT_OLLAMA_WARM_UP": "false",
    }


def dashboard_window(env: dict[str, str], proc: subprocess.Popen[str]) -> str:
    """The id of the dashboard's X window once it is mapped (the app must still be running).
    The tray icon's window has the same name, but it is not a top-level window."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the app exited ({proc.returncode})"
        tree = subprocess.run(
            ["xwininfo", "-root", "-children"], env=env, capture_output=True, text=True
        ).stdout
        for line in tree.splitlines():
            if f'"{TITLE}": ("chatbot-companion"' in line:
                window = line.split()[0]
                info = subprocess.run(
                    ["xwininfo", "-id", window], env=env, capture_output=True, text=True
                ).stdout
                if "IsViewable" in info:
                    return window
        time.sleep(0.05)
    raise AssertionError("the dashboard never appeared")


def window_lightness(env: dict[str, str], window: str) -> float:
    """Mean lightness (0 black .. 1 white) of a window as it is on screen."""
    png = subprocess.run(
        ["import", "-window", window, "png:-"], env=env, capture_output=True, check=True
    ).stdout
    image = QImage.fromData(png)
    assert not image.isNull()
    step = 8
    values = [
        image.pixelColor(x, y).lightnessF()
        for x in range(0, image.width(), step)
        for y in range(0, image.height(), step)
    ]
    return sum(values) / len(values)


def needs_x_and_gtk(test: Callable[..., None]) -> Callable[..., None]:
    for mark in NEEDS_X_AND_GTK:
        test = mark(test)
    return test


@needs_x_and_gtk
@pytest.mark.parametrize(
    ("gtk_theme", "dark"), [("Adwaita:dark", True), ("Adwaita", False)], ids=["dark", "light"]
)
def test_dashboard_open_under_the_gtk_theme_stays_under_150_mb(
    tmp_path, display, simulator, gtk_theme, dark
):
    env = app_env(tmp_path, display, gtk_theme, simulator)
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_json(f"http://127.0.0.1:{port}/health", app)
        # Launching it again opens the running app's dashboard, as a person would.
        second = subprocess.run(
            [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert second.returncode == 0, second.stderr
        window = dashboard_window(env, app)
        # The theme still applies: the window is drawn in the theme's colours. Polled, as the
        # first frame may still be on its way.
        deadline = time.monotonic() + 20
        lightness = window_lightness(env, window)
        while (lightness < 0.5) != dark and time.monotonic() < deadline:
            time.sleep(0.1)
            lightness = window_lightness(env, window)
        assert (lightness < 0.5) == dark, f"mean lightness {lightness:.2f} under {gtk_theme}"
        maps = Path(f"/proc/{app.pid}/maps").read_text()
        assert "libgtk-3" in maps, "Qt did not load its GTK platform theme"
        rss_mb = psutil.Process(app.pid).memory_info().rss / 2**20
        assert rss_mb < LIMIT_MB, f"RSS {rss_mb:.0f} MB with the dashboard open"
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            _, err = app.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            app.kill()
            raise
    assert app.returncode == 0, err


def test_gdk_gl_is_off_only_while_qt_starts_and_a_users_own_value_wins(monkeypatch):
    """Programs the app opens later (an editor for the config file) get the user's environment,
    and a user who set GDK_GL keeps it."""
    monkeypatch.delenv("GDK_GL", raising=False)
    with gdk_without_gl():
        assert os.environ["GDK_GL"] == "disable"
    assert "GDK_GL" not in os.environ
    monkeypatch.setenv("GDK_GL", "always")
    with gdk_without_gl():
        assert os.environ["GDK_GL"] == "always"
    assert os.environ["GDK_GL"] == "always"
