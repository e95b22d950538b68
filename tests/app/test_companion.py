"""The companion app driven through its real widgets, against a real server and simulator."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp

from app.single_instance import SingleInstance
from app.tray import tooltip_text
from tests.conftest import free_port

CHAT = "/api/chat-optimized"


async def chat(url: str, text: str = "hello", stream: bool = False) -> dict:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url + CHAT, json={"messages": [{"role": "user", "content": text}], "stream": stream}
        ) as r,
    ):
        assert r.status == 200
        if stream:
            return {"body": await r.text()}
        return await r.json()


def test_tiles_table_and_tooltip_follow_traffic(start_app, run, qtbot):
    app = start_app(tray=True)
    dash = app.companion.dashboard
    run(chat(app.url, "one"))
    run(chat(app.url, "one"))  # a cache hit
    run(chat(app.url, "two", stream=True))
    qtbot.waitUntil(lambda: dash.tiles["hit_rate"].value_text() == "33 %", timeout=5000)
    assert (
        "1 hits" in dash.tiles["hit_rate"].sub_text()
        or "1 hit" in dash.tiles["hit_rate"].sub_text()
    )
    assert dash.tiles["cache"].value_text() == "2 entries"
    qtbot.waitUntil(lambda: dash.requests_table.model().rowCount() == 3, timeout=5000)
    assert app.companion.tray is not None
    tip = app.companion.tray.icon.toolTip()
    assert tip.startswith("Chatbot Companion · hit 33% · queue 0 · ") and tip.endswith(" MB")
    assert app.controller.state == "serving"


def test_tooltip_text():
    snap = {
        "response_cache": {"hit_rate": 0.7349},
        "queue": {"waiting": 1, "active": 1},
        "memory": {"rss_mb": 83.6},
    }
    assert tooltip_text(snap) == "Chatbot Companion · hit 73% · queue 2 · 84 MB"


def test_flush_from_the_tray_menu_shows_at_once(start_app, run):
    app = start_app(tray=True)
    run(chat(app.url, "keep me"))
    app.controller.tick()
    dash = app.companion.dashboard
    assert (
        dash.tiles["cache"].value_text() == "1 entries"
        or dash.tiles["cache"].value_text() == "1 entry"
    )
    app.companion.tray.actions["flush"].trigger()
    dash.confirm_dialog.accept()  # it asks first, as the dashboard's button does
    assert app.controller.gateway.cache.entries == 0
    assert dash.tiles["cache"].value_text() == "0 entries"  # no waiting for the next tick


def test_flush_from_the_dashboard_asks_first(start_app, run, qtbot):
    app = start_app()
    run(chat(app.url, "keep me"))
    dash = app.companion.dashboard
    qtbot.mouseClick(dash.flush_button, qtbot_button())
    assert dash.confirm_dialog is not None and dash.confirm_dialog.isVisible()
    assert app.controller.gateway.cache.entries == 1  # nothing happens before the answer
    dash.confirm_dialog.accept()
    qtbot.waitUntil(lambda: app.controller.gateway.cache.entries == 0, timeout=2000)


def qtbot_button():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_restart_from_the_menu_keeps_the_cache_and_serves_again(start_app, run, qtbot):
    port = free_port()
    app = start_app(tray=True, port=port)
    run(chat(app.url, "survives"))
    states = []
    app.controller.state_changed.connect(lambda s, _m: states.append(s))
    app.companion.tray.actions["restart"].trigger()
    qtbot.waitUntil(lambda: states[-2:] == ["starting", "serving"], timeout=10_000)
    assert app.controller.host.port == port
    assert run(chat(app.url, "survives"))["cached"] is True


def test_port_in_use_is_shown_and_the_app_stays_up(start_app, qtbot, run):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        app = start_app(port=port)
        assert app.controller.state == "failed"
        banner = app.companion.dashboard.banner.text()
        assert f"Port {port} is in use" in banner and "[server].port" in banner
        assert not app.task.done()  # still running, waiting for the user
    # The other program went away: Restart Server recovers.
    app.companion.dashboard.restart_button.click()
    qtbot.waitUntil(lambda: app.controller.state == "serving", timeout=10_000)
    assert run(chat(app.url))["done"] is True


def test_without_a_tray_the_dashboard_is_the_window_and_closing_quits(start_app, qtbot):
    app = start_app(tray=False)
    dash = app.companion.dashboard
    assert app.companion.tray is None
    qtbot.waitUntil(dash.isVisible, timeout=2000)
    dash.close()
    qtbot.waitUntil(app.task.done, timeout=10_000)
    assert app.task.exception() is None


def test_quit_from_the_menu_shuts_down_cleanly(start_app, qtbot):
    app = start_app(tray=True)
    port = app.controller.host.port
    app.companion.tray.actions["quit"].trigger()
    qtbot.waitUntil(app.task.done, timeout=10_000)
    assert app.task.exception() is None
    assert app.controller.state == "stopped"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing left listening


def test_ollama_going_away_is_told(start_app, qtbot):
    app = start_app(tray=True, ollama__api_url=f"http://127.0.0.1:{free_port()}")
    qtbot.waitUntil(lambda: app.controller.state == "ollama_down", timeout=5000)
    assert "unreachable" in app.companion.dashboard.banner.text()


def test_streams_keep_flowing_while_the_ui_is_busy(start_app, run, qtbot):
    """A dialog open, the window resized, the dashboard updating: no stream stalls."""
    app = start_app(tray=True)
    dash = app.companion.dashboard
    dash.show()
    gaps: list[float] = []

    async def slow_stream(i: int) -> str:
        body = {
            "messages": [{"role": "user", "content": f"busy {i}"}],
            "options": {"sim_tokens": 40, "sim_token_delay_ms": 10},
        }
        last = time.monotonic()
        text = ""
        async with aiohttp.ClientSession() as s, s.post(app.url + CHAT, json=body) as r:
            async for line in r.content:
                if line.strip():
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    text += json.loads(line[6:]).get("content", "")
        return text

    async def traffic() -> list[str]:
        return await asyncio.gather(*(slow_stream(i) for i in range(3)))

    task = asyncio.get_event_loop().create_task(traffic())
    qtbot.mouseClick(dash.flush_button, qtbot_button())  # the confirmation stays open
    for w, h in ((900, 650), (1200, 800), (700, 500), (1000, 720)):
        dash.resize(w, h)
        qtbot.wait(30)
    qtbot.waitUntil(task.done, timeout=15_000)
    texts = task.result()
    assert all(len(t.split()) >= 30 for t in texts)
    assert dash.confirm_dialog is not None and dash.confirm_dialog.isVisible()
    dash.confirm_dialog.reject()
    # Tokens come every 10 ms; a blocked loop (a nested exec(), say) would show as a long gap.
    assert max(gaps) < 0.5, max(gaps)


def test_single_instance_second_launch_asks_the_first(qtbot, tmp_path):
    name = f"chatbot-companion-test-{time.monotonic_ns()}"
    first = SingleInstance(name, tmp_path)
    assert first.acquire()
    try:
        assert (tmp_path / f"{name}.lock").exists()
        second = SingleInstance(name, tmp_path)
        assert not second.acquire()
        with qtbot.waitSignal(first.activated, timeout=3000):
            assert second.notify_first()
    finally:
        first.release()
    third = SingleInstance(name, tmp_path)
    assert third.acquire()  # free again once the first is gone
    third.release()


def test_single_instance_lives_in_the_runtime_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    tmp_path.chmod(0o700)
    instance = SingleInstance()
    assert instance.lock_path.parent == tmp_path
    assert instance.address.startswith(str(tmp_path))


def test_hit_rate_chart_follows_the_last_minute_not_all_time(start_app, run, qtbot, monkeypatch):
    monkeypatch.setattr("app.controller.HIT_RATE_WINDOW_S", 0.3)  # a minute in production
    app = start_app()
    for text in ("a", "b", "c"):
        run(chat(app.url, text))  # three misses
    app.controller.tick()
    qtbot.wait(400)  # the misses age out of the window
    app.controller.tick()
    run(chat(app.url, "a"))
    run(chat(app.url, "b"))  # two hits
    snap = app.controller.snapshot()
    assert snap["response_cache"]["hit_rate"] == 0.4  # 2 of 5 since start: the tile
    assert snap["hit_rate_recent"] == 1.0  # 2 of 2 lately: the chart
    app.controller.tick()
    assert app.companion.dashboard.charts["hit_rate"].values()[-1] == 1.0
