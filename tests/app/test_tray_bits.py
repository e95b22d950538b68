"""Start at Login and the notification rules, on the real objects."""

from __future__ import annotations

import sys

import pytest

from app import autostart, tray
from app.tray import Tray


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux desktop entry")
def test_start_at_login_writes_and_removes_the_autostart_entry(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    entry = tmp_path / "autostart" / "chatbot-companion.desktop"
    tray = Tray()
    action = tray.actions["login"]
    assert action.isCheckable() and not action.isChecked()
    action.trigger()  # the person ticks Start at Login
    assert entry.exists() and autostart.is_enabled()
    text = entry.read_text()
    assert "[Desktop Entry]" in text and "Exec=" in text and "Name=Chatbot Companion" in text
    action.trigger()  # and unticks it
    assert not entry.exists() and not autostart.is_enabled()
    # A fresh tray shows what is on disk.
    autostart.set_enabled(True)
    fresh = Tray()
    assert fresh.actions["login"].isChecked()


def test_ollama_notices_are_not_repeated_within_a_minute(start_app, qtbot, monkeypatch):
    app = start_app(tray=True)
    # Until the first probe has answered, reachability is unknown and nothing is told.
    qtbot.waitUntil(lambda: app.controller._ollama_up is True, timeout=5000)
    notices: list[str] = []
    app.controller.notify.connect(lambda title, _msg: notices.append(title))
    c = app.controller
    c._watch_ollama(False)
    c._watch_ollama(True)
    c._watch_ollama(False)
    # A short outage's end is told; the flapping after it, within a minute, is not.
    assert notices == ["Ollama unreachable", "Ollama is back"]
    monkeypatch.setattr("app.controller.NOTIFY_EVERY_S", 0.0)
    c._watch_ollama(True)
    c._watch_ollama(False)
    assert notices == ["Ollama unreachable", "Ollama is back", "Ollama unreachable"]


def test_port_in_use_is_notified(start_app, qtbot):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        app = start_app(tray=True, port=port)
        assert app.controller.state == "failed"
        assert app.companion.tray.state == "failed"
        headline = app.companion.tray.menu.actions()[0].text()
        assert headline == "Server not running: open the dashboard"


def test_a_notification_is_not_replaced_before_it_has_been_read(qtbot, monkeypatch):
    monkeypatch.setattr(tray, "MESSAGE_MS", 200)  # 8 s in the app
    icon = Tray()
    config = ("Configuration problem", "[cache].ttl_seconds = -5: must be ...")
    ollama = ("Ollama unreachable", "Ollama at http://localhost:11434 does not answer")
    icon.show_message(*config)
    icon.show_message(*ollama)  # a second later, as at start-up with Ollama down
    icon.show_message(*ollama)  # a repeat waits once, not twice
    assert icon.showing() == config
    qtbot.wait(100)
    assert icon.showing() == config  # still there: not wiped by the next one
    qtbot.waitUntil(lambda: icon.showing() == ollama, timeout=2000)
    qtbot.waitUntil(lambda: icon.showing() is None, timeout=2000)
