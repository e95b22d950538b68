"""What the person sees around Quit, Flush and Ollama's comings and goings: the quitting strip and
Quit now, the tray's state, the flush dialog from either place, and the notifications."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp

from app.tray import Tray

CHAT = "/api/chat-optimized"
LONG = {"sim_tokens": 400, "sim_token_delay_ms": 20}  # 8 s: longer than any test waits


async def chat(url: str, text: str) -> dict:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + CHAT, json={"messages": [{"role": "user", "content": text}]}) as r,
    ):
        assert r.status == 200
        frames = [json.loads(line[6:]) async for line in r.content if line.strip()]
        return frames[-1]


class LongAnswer:
    """A client streaming an answer that outlasts the test unless something ends it."""

    def __init__(self, url: str) -> None:
        self.frames: list[dict] = []
        self.task = asyncio.get_event_loop().create_task(self._run(url))

    async def _run(self, url: str) -> None:
        body = {"messages": [{"role": "user", "content": "a long one"}], "options": LONG}
        async with aiohttp.ClientSession() as s, s.post(url + CHAT, json=body) as r:
            async for line in r.content:
                if line.strip():
                    self.frames.append(json.loads(line[6:]))


def quit_while_answering(start_app, qtbot):
    app = start_app(tray=True)
    app.controller.host.drain_seconds = 60  # Quit would wait a minute for the answer
    answer = LongAnswer(app.url)
    qtbot.waitUntil(lambda: len(answer.frames) >= 3, timeout=5000)
    app.companion.tray.actions["quit"].trigger()
    dash, tray = app.companion.dashboard, app.companion.tray
    # The loop keeps running (this wait is served by it) and both places say what goes on.
    qtbot.waitUntil(lambda: dash.quit_banner.isVisible() or not dash.isVisible(), timeout=3000)
    qtbot.waitUntil(lambda: tray.actions["quit_now"].isVisible(), timeout=3000)
    return app, answer


def test_quit_with_an_answer_running_says_so_and_quit_now_ends_at_once(start_app, qtbot):
    app = start_app(tray=True)
    dash, tray = app.companion.dashboard, app.companion.tray
    dash.show()
    app.controller.host.drain_seconds = 60
    answer = LongAnswer(app.url)
    qtbot.waitUntil(lambda: len(answer.frames) >= 3, timeout=5000)
    tray.actions["quit"].trigger()
    qtbot.waitUntil(dash.quit_banner.isVisible, timeout=3000)
    assert dash.quit_banner.label.text() == "Finishing 1 answer before quitting…"
    assert tray.icon.toolTip() == "Chatbot Companion · Finishing 1 answer before quitting…"
    assert tray.menu.actions()[0].text() == "Finishing 1 answer before quitting…"
    assert tray.actions["quit_now"].isVisible() and not tray.actions["flush"].isEnabled()
    # The dashboard stays live while it waits: frames keep coming in on the same loop.
    seen = len(answer.frames)
    qtbot.waitUntil(lambda: len(answer.frames) > seen + 5, timeout=3000)
    assert not app.task.done()

    qtbot.mouseClick(dash.quit_banner.button, _left())
    qtbot.waitUntil(app.task.done, timeout=5000)  # not the minute of drain time
    assert app.task.exception() is None and app.controller.state == "stopped"
    qtbot.waitUntil(answer.task.done, timeout=5000)
    assert answer.frames[-1]["code"] == "server_shutting_down"
    assert not dash.quit_banner.isVisible()


def test_quit_now_from_the_tray_menu(start_app, qtbot):
    app, answer = quit_while_answering(start_app, qtbot)
    app.companion.tray.actions["quit_now"].trigger()
    qtbot.waitUntil(app.task.done, timeout=5000)
    assert app.task.exception() is None
    qtbot.waitUntil(answer.task.done, timeout=5000)
    assert answer.frames[-1]["code"] == "server_shutting_down"
    [record] = [r for r in app.controller.gateway.recent if r.status != "ok"]
    assert record.status == "shutdown" and record.tokens >= 3


def test_quit_without_answers_running_shows_no_strip(start_app, qtbot):
    app = start_app(tray=True)
    shown: list[int] = []
    app.controller.quitting.connect(shown.append)
    app.companion.tray.actions["quit"].trigger()
    qtbot.waitUntil(app.task.done, timeout=5000)
    assert shown == [0] and not app.companion.dashboard.quit_banner.isVisible()


def test_ollama_back_is_always_told_after_unreachable(start_app, qtbot, monkeypatch):
    app = start_app(tray=True)
    qtbot.waitUntil(lambda: app.controller._ollama_up is True, timeout=5000)
    notices: list[str] = []
    app.controller.notify.connect(lambda title, _msg: notices.append(title))
    c = app.controller
    c._watch_ollama(False)
    c._watch_ollama(True)  # a short outage: its end is told too
    assert notices == ["Ollama unreachable", "Ollama is back"]
    c._watch_ollama(False)  # flapping within the minute: neither told again
    c._watch_ollama(True)
    assert notices == ["Ollama unreachable", "Ollama is back"]
    monkeypatch.setattr("app.controller.NOTIFY_EVERY_S", 0.0)
    c._watch_ollama(False)
    c._watch_ollama(True)
    assert notices[2:] == ["Ollama unreachable", "Ollama is back"]


def test_flush_from_the_tray_asks_first_and_tells_the_result(start_app, run, qtbot):
    app = start_app(tray=True)
    run(chat(app.url, "keep me"))
    dash, tray = app.companion.dashboard, app.companion.tray
    tray.actions["flush"].trigger()
    assert dash.confirm_dialog is not None and dash.confirm_dialog.isVisible()
    assert app.controller.gateway.cache.entries == 1  # nothing happens before the answer
    dash.confirm_dialog.accept()
    qtbot.waitUntil(lambda: app.controller.gateway.cache.entries == 0, timeout=2000)
    title, message = tray.showing() or ("", "")
    assert title == "Cache flushed" and message.startswith("Flushed 1 response (")


def test_flush_from_the_dashboard_tells_the_result_too(start_app, run, qtbot):
    app = start_app(tray=True)
    run(chat(app.url, "keep me"))
    dash = app.companion.dashboard
    dash.show()
    qtbot.mouseClick(dash.flush_button, _left())
    dash.confirm_dialog.accept()
    qtbot.waitUntil(lambda: app.companion.tray.showing() is not None, timeout=2000)
    assert app.companion.tray.showing()[0] == "Cache flushed"


def test_the_flush_dialog_counts_what_is_cached_now(start_app, run):
    app = start_app()
    app.controller._timer.stop()  # no snapshot after the answers below
    app.controller.tick()
    run(chat(app.url, "one"))
    run(chat(app.url, "two"))
    dash = app.companion.dashboard
    dash.show()
    dash.flush_button.click()
    assert dash.confirm_dialog is not None
    text = dash.confirm_dialog.informativeText()
    assert text.startswith("This drops 2 cached responses ("), text
    assert dash.confirm_dialog.windowTitle() == "Chatbot Companion"
    dash.confirm_dialog.reject()


def test_the_tray_cannot_flush_without_a_server(start_app, qtbot):
    fresh = Tray()
    assert not fresh.actions["flush"].isEnabled()  # while the server starts
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        app = start_app(tray=True, port=port)
        assert app.controller.state == "failed"
        assert not app.companion.tray.actions["flush"].isEnabled()
    app.companion.tray.actions["restart"].trigger()
    qtbot.waitUntil(lambda: app.controller.state == "serving", timeout=10_000)
    assert app.companion.tray.actions["flush"].isEnabled()


def _left():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_a_second_quit_quits_now(start_app, qtbot):
    app, answer = quit_while_answering(start_app, qtbot)
    app.companion.tray.actions["quit"].trigger()  # impatient: Quit again
    qtbot.waitUntil(app.task.done, timeout=5000)
    qtbot.waitUntil(answer.task.done, timeout=5000)
    assert answer.frames[-1]["code"] == "server_shutting_down"


def test_without_a_tray_the_closed_dashboard_comes_back_while_quit_waits(start_app, qtbot):
    app = start_app(tray=False)
    dash = app.companion.dashboard
    qtbot.waitUntil(dash.isVisible, timeout=2000)
    app.controller.host.drain_seconds = 60
    answer = LongAnswer(app.url)
    qtbot.waitUntil(lambda: len(answer.frames) >= 3, timeout=5000)
    dash.close()  # the only window: closing it quits
    qtbot.waitUntil(lambda: dash.isVisible() and dash.quit_banner.isVisible(), timeout=3000)
    assert dash.quit_banner.label.text() == "Finishing 1 answer before quitting…"
    dash.close()  # closing it again quits now
    qtbot.waitUntil(app.task.done, timeout=5000)
    assert app.task.exception() is None
