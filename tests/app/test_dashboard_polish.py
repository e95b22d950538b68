"""Dashboard polish: chart ranges and bounded history, readable axes and line colours in light
and dark themes, the Ollama tile and status bar, banners that clear, keyboard shortcuts."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import socket
from collections.abc import Iterator
from itertools import pairwise

import aiohttp
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from pytestqt.qtbot import QtBot

from app.chart_history import COARSE_MAX, FINE_MAX, ChartHistory
from app.config_manager import values_of
from app.controller import Controller
from app.dashboard import DashboardWindow
from app.dashboard.colors import CHART_CONTRAST, contrast_ratio
from tests.app.test_dashboard_widgets import snapshot
from tests.app.test_settings_live import get, save
from tests.conftest import free_port, make_config

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

HOUR = 3600.0


@pytest.fixture
def window(qtbot: QtBot) -> DashboardWindow:
    w = DashboardWindow()
    qtbot.addWidget(w)
    return w


@pytest.fixture
def controller() -> Iterator[Controller]:
    """A controller that is never started: its history is driven with made-up times."""
    c = Controller(make_config(), None)
    yield c
    c.logs.detach()


def feed(c: Controller, start: float, seconds: int, step: float = 1.0) -> None:
    """`seconds` once-a-second ticks from `start`, memory rising by 1 MB a tick."""
    for i in range(int(seconds / step)):
        snap = snapshot(memory={"rss_mb": float(i)}, hit_rate_recent=0.5)
        c.record_history(snap, start + i * step)


def palette(window: str, base: str, text: str, highlight: str) -> QPalette:
    p = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, window),
        (QPalette.ColorRole.Base, base),
        (QPalette.ColorRole.AlternateBase, base),
        (QPalette.ColorRole.Text, text),
        (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.ButtonText, text),
        (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.PlaceholderText, "#8a8a8a"),
        (QPalette.ColorRole.Mid, "#777777"),
        (QPalette.ColorRole.Highlight, highlight),
    ):
        p.setColor(role, QColor(color))
    return p


LIGHT = palette("#efefef", "#ffffff", "#1a1a1a", "#7fb2f0")  # a pale highlight
DARK = palette("#2b2b2b", "#1e1e1e", "#e6e6e6", "#264f78")  # a dark one, for white text on it


# -- chart history and ranges -----------------------------------------------------------------


def test_the_controller_hands_its_history_to_the_charts(
    controller: Controller, window: DashboardWindow
) -> None:
    feed(controller, 1000.0, 20)
    snap = snapshot(memory={"rss_mb": 99.0})
    controller.record_history(snap, 1020.0)
    window.update_snapshot(snap)
    assert window.charts["memory"].values() == [*map(float, range(20)), 99.0]
    assert window.charts["memory"].current_text() == "99.0 MB"


def test_switching_the_range_changes_the_plotted_span(
    controller: Controller, window: DashboardWindow
) -> None:
    feed(controller, 0.0, int(3 * HOUR))  # three hours of ticks
    snap = snapshot()
    controller.record_history(snap, 3 * HOUR)
    window.update_snapshot(snap)
    chart, picker = window.charts["memory"], window.chart_panel.picker
    assert picker.current() == "5min"

    def plotted() -> tuple[float, float]:
        times = chart.times()
        return chart.span_seconds(), times[-1] - times[0]

    span, covered = plotted()
    assert span == 300 and 295 <= covered < 300
    assert chart.axis_texts()[2:] == ("−5 min", "now")

    picker.buttons["1h"].click()
    span, covered = plotted()
    assert span == HOUR and HOUR - 20 <= covered < HOUR
    assert chart.axis_texts()[2:] == ("−1 h", "now")

    picker.buttons["all"].click()
    span, covered = plotted()
    first = chart.times()[0]
    assert first < 5 * 60  # since start: back to the first minutes, not just the last hour
    assert covered == span == pytest.approx(3 * HOUR - first)
    assert chart.axis_texts()[2] == f"−{chart.axis_texts()[2][1:]}" and "h" in chart.axis_texts()[2]

    picker.buttons["5min"].click()
    assert chart.span_seconds() == 300


def test_since_start_covers_all_history_and_recent_points_stay_fine(
    controller: Controller,
) -> None:
    feed(controller, 50.0, int(2 * HOUR))
    history = controller.history
    since = history.series("memory", None)
    assert since[0][0] < 50.0 + 10 * 60  # the oldest (coarse) bucket holds the first minutes
    assert since[-1] == (50.0 + 2 * HOUR - 1, 2 * HOUR - 1)  # the newest sample as it is
    last_five = [t for t, _ in history.series("memory", 300)]
    assert len(last_five) == 300 and last_five[1] - last_five[0] == 1.0  # every sample
    hour = [t for t, _ in history.series("memory", HOUR)]
    older = [t for t in hour if t < last_five[0]]
    assert all(9.0 <= b - a <= 11.0 for a, b in pairwise(older))  # 10-s means


def test_history_memory_is_bounded_after_days_of_ticks(controller: Controller) -> None:
    feed(controller, 0.0, int(72 * HOUR), step=2.0)  # three days, a tick every 2 s
    history = controller.history
    bound = FINE_MAX + 362 + COARSE_MAX
    assert len(history) <= bound
    since = history.series("queue", None)
    assert since[0][0] < HOUR and since[-1][0] == 72 * HOUR - 2
    # Ticks faster than once a second (flushes, tests) do not grow it either.
    feed(controller, 72 * HOUR, 600, step=0.1)
    assert len(history) <= bound


def test_a_history_given_the_wrong_values_says_so() -> None:
    with pytest.raises(ValueError, match="3 values expected, got 2"):
        ChartHistory().add(0.0, (1.0, 2.0))
    with pytest.raises(ValueError, match="unknown series 'cpu'"):
        ChartHistory().series("cpu", None)


def test_hit_rate_chart_title_says_what_is_plotted(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(hit_rate_recent=0.25))
    chart = window.charts["hit_rate"]
    assert "last minute" not in chart.title()
    assert "1-min rolling" in chart.title()
    assert chart.span_seconds() == 300 and chart.axis_texts() == ("0 %", "100 %", "−5 min", "now")


def test_axes_show_the_range_with_units(window: DashboardWindow) -> None:
    for rss in (80.0, 96.0, 120.0):
        window.update_snapshot(snapshot(memory={"rss_mb": rss}, queue={"waiting": 3}))
    assert window.charts["memory"].axis_texts()[:2] == ("80.0 MB", "120 MB")
    assert window.charts["queue"].axis_texts()[:2] == ("0", "4")


# -- colours ----------------------------------------------------------------------------------


@pytest.mark.parametrize("theme", [LIGHT, DARK], ids=["light", "dark"])
def test_chart_lines_stand_out_from_the_base(
    qtbot: QtBot, window: DashboardWindow, theme: QPalette
) -> None:
    window.setPalette(theme)
    window.show()
    qtbot.waitExposed(window)
    window.update_snapshot(snapshot())
    base = theme.color(QPalette.ColorRole.Base)
    for chart in window.charts.values():
        assert chart.palette().color(QPalette.ColorRole.Base) == base
        assert contrast_ratio(chart.line_color(), base) >= CHART_CONTRAST


def test_contrast_ratio_is_wcags() -> None:
    assert contrast_ratio(QColor("#000000"), QColor("#ffffff")) == pytest.approx(21.0)
    assert contrast_ratio(QColor("#777777"), QColor("#ffffff")) == pytest.approx(4.48, abs=0.01)
    assert contrast_ratio(QColor("#123456"), QColor("#123456")) == 1.0


# -- Ollama tile and status bar ---------------------------------------------------------------


def test_the_ollama_tile_keeps_the_url_whole_and_tells_it_in_full(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.show()
    qtbot.waitExposed(window)
    url = "http://gpu-box.lab.internal.example.org:11434"
    window.update_snapshot(
        snapshot(ollama={"reachable": False, "url": url, "model": "qwen2.5-coder:32b-instruct"})
    )
    tile = window.tiles["ollama"]
    shown = tile.sub_shown()
    host = url.removeprefix("http://")
    assert tile.sub_text() == f"qwen2.5-coder:32b-instruct · {host}"
    assert shown != tile.sub_text()  # too wide for the tile: something was cut…
    assert shown.startswith(host[:4]) or shown.endswith(host)  # …but not the URL's start…
    assert shown.endswith(":11434")  # …nor its port
    assert url in tile.toolTip()
    window.update_snapshot(snapshot(ollama={"url": url}))
    assert url in tile.toolTip()  # also while Ollama answers


def test_the_model_name_gives_way_to_the_url(qtbot: QtBot, window: DashboardWindow) -> None:
    window.show()
    qtbot.waitExposed(window)
    window.update_snapshot(snapshot(ollama={"reachable": False, "model": "llama3.2"}))
    assert window.tiles["ollama"].sub_shown().endswith("· 127.0.0.1:11434")


def test_status_bar_shows_the_version_only_while_ollama_answers(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(ollama={"reachable": True, "version": "0.33.0"}))
    assert "Ollama 0.33.0" in window.status_label.text()
    window.update_snapshot(snapshot(ollama={"reachable": False, "version": "0.33.0"}))
    text = window.status_label.text()
    assert "0.33.0" not in text and "Ollama unreachable" in text


# -- banners ----------------------------------------------------------------------------------


def test_the_restart_message_clears_when_the_restart_is_over(start_app, qtbot: QtBot) -> None:
    old_port, new_port = free_port(), free_port()
    app = start_app(port=None, server__port=old_port)
    page = app.companion.dashboard.settings
    told: list[str] = []
    app.companion.config_manager.status.connect(lambda text, _kind: told.append(text))
    with qtbot.waitSignal(app.controller.restart_ended, timeout=10_000) as ended:
        save(app, qtbot, server__port=new_port)
        assert told[-1].endswith(
            f"Restarting the server for [server].port (now 127.0.0.1:{new_port})…"
        )
    assert ended.args == [True, f"http://localhost:{new_port}"]
    assert app.controller.state == "serving"
    status = page.status_text()
    assert "Restarting" not in status
    assert status.startswith("Saved.")
    assert status.endswith(f"Server restarted. Serving on http://localhost:{new_port}.")
    assert page.status.kind() == "ok"


def test_a_failed_restart_replaces_the_message_with_the_failure(start_app, qtbot: QtBot) -> None:
    app = start_app(port=None, server__port=free_port())
    page = app.companion.dashboard.settings
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with qtbot.waitSignal(app.controller.restart_ended, timeout=10_000) as ended:
            save(app, qtbot, server__port=port)
    reason = (
        f"Port {port} is in use by another program. Change [server].port in "
        f"{app.controller.config_path} (tray menu: Open Config) or set PORT={port + 1}, "
        "then Restart Server."
    )
    assert ended.args == [False, reason]
    assert app.controller.state == "failed"
    assert page.status_text() == f"Saved. The restart failed: {reason}"
    assert page.status.kind() == "error"


def test_a_restart_from_the_dashboard_leaves_the_settings_line_alone(
    start_app, qtbot: QtBot
) -> None:
    app = start_app()
    dashboard = app.companion.dashboard
    page = dashboard.settings
    values = values_of(app.controller.gateway.config)
    values[("queue", "max_concurrent")] = 0
    task = app.companion.config_manager.save(values)
    qtbot.waitUntil(task.done, timeout=5000)
    not_saved = "Not saved: [queue].max_concurrent = 0: must be a whole number 1..64"
    assert page.status_text() == not_saved
    with qtbot.waitSignal(app.controller.restart_ended, timeout=10_000) as ended:
        qtbot.mouseClick(dashboard.restart_button, Qt.MouseButton.LeftButton)
    assert ended.args[0] is True
    assert page.status_text() == not_saved and page.status.kind() == "error"


def test_an_edit_made_while_the_server_restarts_is_not_told_it_was_saved(
    start_app, qtbot: QtBot
) -> None:
    app = start_app(port=None, server__port=free_port())
    page = app.companion.dashboard.settings

    def edit_at_once(text: str, _kind: str) -> None:
        # Before the restart has run a step: the user edits as soon as the line appears.
        if "Restarting the server" in text:
            page.field("cache", "ttl_seconds").setValue(600)

    app.companion.config_manager.status.connect(edit_at_once)
    with qtbot.waitSignal(app.controller.restart_ended, timeout=10_000) as ended:
        save(app, qtbot, server__port=free_port())
    assert ended.args[0] is True
    # The edit cleared "Saved…", and "Server restarted" would read as if the edit were saved.
    assert page.status_text() == ""
    assert page.save_button.isEnabled()


def test_a_port_saved_while_a_restart_drains_is_the_one_served(
    start_app, qloop, run, qtbot: QtBot
) -> None:
    # A slow stream keeps the first restart draining its old listener (for the app's 1 s
    # drain) after the new one is bound; a second port saved meanwhile must be bound next.
    app = start_app(port=None, server__port=free_port())
    first, second = free_port(), free_port()
    body = {
        "messages": [{"role": "user", "content": "slow"}],
        "stream": True,
        "options": {"sim_tokens": 40, "sim_token_delay_ms": 100},
    }

    async def stream() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(app.url + "/api/chat-optimized", json=body) as r,
        ):
            await r.read()

    slow = qloop.create_task(stream())
    qtbot.waitUntil(lambda: app.controller.host.streams_in_flight == 1, timeout=5000)
    with qtbot.waitSignal(app.controller.restart_ended, timeout=15_000) as ended:
        save(app, qtbot, server__port=first)
        qtbot.waitUntil(lambda: app.controller.host.port == first, timeout=5000)
        assert app.controller.host.streams_in_flight == 1  # the first restart still drains
        save(app, qtbot, server__port=second)
    assert ended.args == [True, f"http://localhost:{second}"]
    assert app.controller.state == "serving" and app.controller.host.port == second
    assert run(get(f"http://127.0.0.1:{second}/health"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        run(get(f"http://127.0.0.1:{first}/health"))
    qtbot.waitUntil(slow.done, timeout=5000)


# -- keyboard ---------------------------------------------------------------------------------


def shown_window(qtbot: QtBot, window: DashboardWindow) -> DashboardWindow:
    window.show()
    window.activateWindow()
    qtbot.waitExposed(window)
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)  # shortcuts go to the active window
    window.log_tail.setFocus()
    return window


@pytest.mark.parametrize("keys", ["Escape", "Ctrl+W"])
def test_esc_and_ctrl_w_hide_the_dashboard(
    qtbot: QtBot, window: DashboardWindow, keys: str
) -> None:
    shown_window(qtbot, window)
    with qtbot.assertNotEmitted(window.close_requested):
        if keys == "Escape":
            qtbot.keyClick(window.log_tail, Qt.Key.Key_Escape)
        else:
            qtbot.keyClick(window.log_tail, Qt.Key.Key_W, Qt.KeyboardModifier.ControlModifier)
        qtbot.waitUntil(lambda: not window.isVisible(), timeout=2000)


def test_without_a_tray_esc_keeps_the_window_and_ctrl_w_quits(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.set_close_quits(True)
    shown_window(qtbot, window)
    with qtbot.assertNotEmitted(window.close_requested):
        qtbot.keyClick(window.log_tail, Qt.Key.Key_Escape)
    assert window.isVisible()
    with qtbot.waitSignal(window.close_requested, timeout=2000):
        qtbot.keyClick(window.log_tail, Qt.Key.Key_W, Qt.KeyboardModifier.ControlModifier)


@pytest.mark.qt_log_ignore(
    "No such signal QPlatformNativeInterface", "This plugin does not support"
)  # a tray, offscreen
def test_ctrl_q_quits_the_app(start_app, qtbot: QtBot) -> None:
    app = start_app(tray=True)
    dashboard = app.companion.dashboard
    app.companion.show_dashboard()
    qtbot.waitExposed(dashboard)
    qtbot.waitUntil(dashboard.isActiveWindow, timeout=2000)
    dashboard.log_tail.setFocus()
    qtbot.keyClick(dashboard.log_tail, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(app.task.done, timeout=15_000)
    assert app.controller.state == "stopped"
