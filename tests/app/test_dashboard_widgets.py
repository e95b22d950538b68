"""The dashboard window fed synthetic snapshots: tiles, breakdown, charts, table, log, buttons,
close."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QMessageBox, QWidget
from pytestqt.qtbot import QtBot

from app.dashboard import DashboardWindow
from app.dashboard import formatting as fmt
from app.dashboard.requests_model import COLUMNS

pytestmark = [
    # Qt warnings (bad fonts, layout loops, wrong signals) fail the test; the offscreen plugin's
    # notes about what it cannot do (raise(), size hints) are expected.
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

T0 = 1_700_000_000.0


def record(i: int, **over: Any) -> dict[str, Any]:
    rec = {
        "time": T0 + i,
        "request_id": f"req-{i}",
        "endpoint": "chat-optimized",
        "user": "alice",
        "model": "llama3.2",
        "cached": i % 2 == 0,
        "queue_ms": 10 * i,
        "ttft_ms": 100 + i,
        "total_ms": 1000 + i,
        "tokens": 50 + i,
        "status": "ok",
    }
    return {**rec, **over}


def snapshot(**over: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "response_cache": {
            "enabled": True,
            "entries": 12,
            "size_bytes": 40_000,
            "max_size_mb": 256,
            "ttl_seconds": 3600,
            "hits": 30,
            "misses": 12,
            "hit_rate": 0.7143,
            "evictions": 0,
            "expirations": 0,
        },
        "queue": {
            "max_concurrent": 1,
            "active": 1,
            "waiting": 2,
            "max_queue_size": 100,
            "completed": 40,
            "cancelled": 1,
            "failed": 0,
            "rejected": 0,
            "avg_wait_ms": 12.5,
            "avg_generation_ms": 840.0,
            "estimated_time_per_request_ms": 840,
        },
        "batch": {
            "enabled": True,
            "coalesced": 0,
            "in_flight": 0,
            "batches": 0,
            "batched_items": 0,
            "pending": 0,
            "max_batch_size": 8,
            "batch_timeout_ms": 50,
        },
        "ollama": {
            "url": "http://127.0.0.1:11434",
            "model": "llama3.2",
            "reachable": True,
            "version": "0.5.7",
            "latency_ms": 1.2,
            "requests": 42,
            "errors": 0,
            "tokens_generated": 4000,
        },
        "memory": {"rss_mb": 84.2},
        "uptime_seconds": 125.0,
        "requests_per_s": 0.5,
        "api_url": "http://127.0.0.1:8080",
        "endpoints": {},
        "models": {},
        "recent": [],
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(snap.get(key), dict):
            snap[key] = {**snap[key], **value}
        else:
            snap[key] = value
    return snap


@pytest.fixture
def window(qtbot: QtBot) -> DashboardWindow:
    w = DashboardWindow()
    qtbot.addWidget(w)
    return w


def table_rows(w: DashboardWindow) -> list[list[str]]:
    model = w.requests_table.model()
    return [
        [model.index(r, c).data() for c in range(model.columnCount())]
        for r in range(model.rowCount())
    ]


# -- tiles ------------------------------------------------------------------------------------


def test_tiles_show_the_snapshot(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot())
    t = window.tiles
    assert set(t) == {"hit_rate", "cache", "queue", "memory", "requests", "ollama"}
    assert t["hit_rate"].value_text() == "71 %"
    assert t["hit_rate"].sub_text() == "30 hits · 12 misses"
    assert t["cache"].value_text() == "12 entries"
    assert t["cache"].sub_text() == "0.04 of 256 MB"
    assert t["queue"].value_text() == "2 waiting"
    assert t["queue"].sub_text() == "1 active of 1"
    assert t["memory"].value_text() == "84 MB RSS"
    assert t["requests"].value_text() == "0.5 /s"
    assert t["ollama"].value_text() == "reachable"
    assert t["ollama"].sub_text() == "llama3.2 · 1.2 ms"


def test_tiles_follow_changes(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot())
    window.update_snapshot(
        snapshot(
            response_cache={"entries": 1, "hit_rate": 0.0, "hits": 0, "misses": 1},
            queue={"waiting": 0, "active": 0, "max_concurrent": 2},
            ollama={"reachable": False, "latency_ms": None},
            memory={"rss_mb": 1234.0},
        )
    )
    t = window.tiles
    assert t["hit_rate"].value_text() == "0 %"
    assert t["cache"].value_text() == "1 entry"
    assert (t["queue"].value_text(), t["queue"].sub_text()) == ("0 waiting", "0 active of 2")
    assert t["memory"].value_text() == "1,234 MB RSS"
    assert t["ollama"].value_text() == "unreachable"
    assert t["ollama"].sub_text() == "llama3.2 · 127.0.0.1:11434"


def test_disabled_cache_and_a_sparse_snapshot(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(response_cache={"enabled": False}))
    assert window.tiles["cache"].value_text() == "off"
    # A stopped server may hand over next to nothing: show zeros rather than crash.
    window.update_snapshot({})
    assert window.tiles["queue"].value_text() == "0 waiting"
    assert window.tiles["ollama"].value_text() == "unreachable"


def test_a_long_value_shrinks_and_elides_but_reads_in_full(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.show()
    qtbot.waitExposed(window)
    window.update_snapshot(snapshot(ollama={"model": "qwen2.5-coder:32b-instruct-q4_K_M"}))
    tile = window.tiles["ollama"]
    assert tile.sub_text() == "qwen2.5-coder:32b-instruct-q4_K_M · 1.2 ms"
    assert "qwen2.5-coder:32b-instruct-q4_K_M" in tile.toolTip()


# -- per-endpoint and per-model breakdown -----------------------------------------------------

ENDPOINTS = {
    "generate": {"requests": 57, "hits": 0},
    "chat-optimized": {"requests": 1204, "hits": 540},
    "embed": {"requests": 980, "hits": 702},
    "chat": {"requests": 310, "hits": 31},
}


def shown(window: DashboardWindow, kind: str) -> list[tuple[str, str]]:
    return [(c.name, c.figures) for c in window.breakdown.shown(kind)]


def test_breakdown_shows_each_endpoint_busiest_first(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(endpoints=ENDPOINTS))
    assert shown(window, "endpoints") == [
        ("chat-optimized", "1,204 · 45 % hits"),
        ("embed", "980 · 72 % hits"),
        ("chat", "310 · 10 % hits"),
        ("generate", "57 · 0 % hits"),
    ]
    tips = [c.tooltip for c in window.breakdown.shown("endpoints")]
    assert tips[0] == "chat-optimized: 1,204 requests, 540 answered from the cache (45 %)"


def test_breakdown_sums_up_models_past_the_first_few(window: DashboardWindow) -> None:
    models = {
        "qwen3:4b": {"requests": 12, "hits": 4},
        "llama3.2:latest": {"requests": 1500, "hits": 600},
        "mistral:7b": {"requests": 12, "hits": 0},  # ties go by name: mistral before qwen3
        "nomic-embed-text:latest": {"requests": 980, "hits": 702},
        "phi4:14b": {"requests": 50, "hits": 10},
    }
    window.update_snapshot(snapshot(models=models))
    assert shown(window, "models") == [
        ("llama3.2:latest", "1,500 · 40 % hits"),
        ("nomic-embed-text:latest", "980 · 72 % hits"),
        ("phi4:14b", "50 · 20 % hits"),
        ("2 more", "24 · 17 % hits"),
    ]
    assert window.breakdown.shown("models")[-1].tooltip.splitlines() == [
        "mistral:7b: 12 requests, 0 answered from the cache (0 %)",
        "qwen3:4b: 12 requests, 4 answered from the cache (33 %)",
    ]
    # The gateway's bucket for models past its first 50 is summed up with the rest, never
    # ranked as if it were a model, even when it is busy.
    window.update_snapshot(
        snapshot(
            models={
                "llama3.2:latest": {"requests": 5, "hits": 1},
                "(other)": {"requests": 9, "hits": 9},
            }
        )
    )
    assert shown(window, "models") == [
        ("llama3.2:latest", "5 · 20 % hits"),
        ("others", "9 · 100 % hits"),
    ]
    assert "models past the first 50" in window.breakdown.shown("models")[-1].tooltip


def test_breakdown_follows_the_snapshots_in_the_same_widgets(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(endpoints=ENDPOINTS))
    widgets = window.breakdown.findChildren(QWidget)
    later = {**ENDPOINTS, "chat": {"requests": 2000, "hits": 1500}}
    del later["generate"]
    window.update_snapshot(snapshot(endpoints=later))
    assert shown(window, "endpoints") == [
        ("chat", "2,000 · 75 % hits"),
        ("chat-optimized", "1,204 · 45 % hits"),
        ("embed", "980 · 72 % hits"),
    ]
    window.update_snapshot(snapshot(endpoints={}))
    assert shown(window, "endpoints") == [("No requests yet", "")]
    assert window.breakdown.findChildren(QWidget) == widgets


def test_breakdown_before_any_request_and_from_an_older_server(window: DashboardWindow) -> None:
    assert shown(window, "endpoints") == shown(window, "models") == [("No requests yet", "")]
    window.update_snapshot(snapshot(models={"llama3.2": {"requests": 1, "hits": 0}}))
    assert shown(window, "endpoints") == [("No requests yet", "")]
    assert shown(window, "models") == [("llama3.2", "1 · 0 % hits")]
    older = snapshot(recent=[record(1)])
    del older["endpoints"], older["models"]
    window.update_snapshot(older)
    assert shown(window, "endpoints") == shown(window, "models") == [("—", "")]
    window.update_snapshot(snapshot(endpoints={"chat": {"requests": 3}, "embed": "junk"}))
    assert shown(window, "endpoints") == [("chat", "3 · 0 % hits")]


USERS = {
    "alice": {"requests": 40, "hits": 12},
    "anonymous": {"requests": 3, "hits": 0},
    "ci-runner": {"requests": 310, "hits": 200},
}


def test_breakdown_shows_requests_per_user_by_name(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(users=USERS))
    assert window.breakdown.line_visible("users")
    assert shown(window, "users") == [
        ("ci-runner", "310 · 65 % hits"),
        ("alice", "40 · 30 % hits"),
        ("anonymous", "3 · 0 % hits"),
    ]
    cells = window.breakdown.shown("users")
    assert [c.muted for c in cells] == [False, False, True]  # anonymous: the quiet usual case
    assert cells[0].tooltip == "ci-runner: 310 requests, 200 answered from the cache (65 %)"
    # Past its first 50 users the gateway counts the rest together: summed up, and said so.
    window.update_snapshot(
        snapshot(users={"alice": {"requests": 5, "hits": 1}, "(other)": {"requests": 9, "hits": 3}})
    )
    assert shown(window, "users") == [("alice", "5 · 20 % hits"), ("others", "9 · 33 % hits")]
    assert window.breakdown.shown("users")[-1].tooltip == (
        "users past the first 50: 9 requests, 3 answered from the cache (33 %)"
    )


def test_the_users_line_shows_only_when_someone_is_named(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.show()
    qtbot.waitExposed(window)
    breakdown = window.breakdown
    assert not breakdown.line_visible("users")  # before the first snapshot
    short = breakdown.height()
    window.update_snapshot(snapshot(users=USERS))
    qtbot.waitUntil(lambda: breakdown.height() > short, timeout=1000)
    tall = breakdown.height()
    older = snapshot()  # a server from before API keys sends no users
    without_users: list[dict[str, Any]] = [
        snapshot(users={"anonymous": {"requests": 5, "hits": 1}}),  # no keys, no user header
        snapshot(users={}),
        older,
        snapshot(users="junk"),
    ]
    for snap in without_users:
        window.update_snapshot(snapshot(users=USERS))
        assert breakdown.line_visible("users")
        window.update_snapshot(snap)
        assert not breakdown.line_visible("users"), snap.get("users")
        qtbot.waitUntil(lambda: breakdown.height() == short, timeout=1000)
    window.update_snapshot(snapshot(users=USERS))
    qtbot.waitUntil(lambda: breakdown.height() == tall, timeout=1000)
    # The other two lines keep their widgets and places throughout.
    assert [c.name for c in breakdown.shown("endpoints")] == ["No requests yet"]


def test_a_long_model_name_is_elided_and_reads_in_full(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.show()
    qtbot.waitExposed(window)
    name = "hf.co/bartowski/Qwen2.5-Coder-32B-Instruct-GGUF:Q4_K_M"
    window.update_snapshot(snapshot(models={name: {"requests": 7, "hits": 7}}))
    cell = window.breakdown.cell_widgets("models")[0]
    assert cell.cell().name == name
    assert cell.visible_name().endswith("…")
    assert name in cell.toolTip()
    assert cell.cell().figures == "7 · 100 % hits"  # the figures are never the part cut off


def test_breakdown_paints_with_a_dark_palette(qtbot: QtBot, window: DashboardWindow) -> None:
    dark = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, "#2b2b2b"),
        (QPalette.ColorRole.Base, "#1e1e1e"),
        (QPalette.ColorRole.Text, "#e6e6e6"),
        (QPalette.ColorRole.WindowText, "#e6e6e6"),
        (QPalette.ColorRole.PlaceholderText, "#9a9a9a"),
        (QPalette.ColorRole.Mid, "#555555"),
    ):
        dark.setColor(role, QColor(color))
    window.setPalette(dark)
    window.show()
    qtbot.waitExposed(window)
    window.update_snapshot(snapshot(endpoints=ENDPOINTS))
    image = window.breakdown.grab().toImage()
    background = image.pixelColor(image.width() // 2, 3)
    assert background.lightnessF() < 0.2
    lightest = max(
        image.pixelColor(x, y).lightnessF()
        for x in range(0, image.width() // 4)
        for y in range(image.height())
    )
    assert lightest > 0.7  # names painted in the palette's light text colour, not black


# -- charts -----------------------------------------------------------------------------------


def test_charts_accumulate_samples(window: DashboardWindow) -> None:
    for i in range(3):
        window.update_snapshot(
            snapshot(
                response_cache={"hit_rate": i / 10},
                queue={"waiting": i, "active": 1},
                memory={"rss_mb": 80.0 + i},
            )
        )
    assert set(window.charts) == {"hit_rate", "queue", "memory"}
    assert window.charts["hit_rate"].values() == [0.0, 0.1, 0.2]
    assert window.charts["queue"].values() == [1, 2, 3]
    assert window.charts["memory"].values() == [80.0, 81.0, 82.0]
    assert window.charts["memory"].current_text() == "82.0 MB"
    assert window.charts["memory"].range_text() == "min 80.0 MB · max 82.0 MB"


def test_charts_keep_five_minutes(window: DashboardWindow) -> None:
    for i in range(350):
        window.update_snapshot(snapshot(memory={"rss_mb": float(i)}))
    values = window.charts["memory"].values()
    assert len(values) == 300
    assert values[0] == 50.0 and values[-1] == 349.0


# -- requests table ---------------------------------------------------------------------------


def test_table_shows_recent_requests_newest_first(window: DashboardWindow) -> None:
    recent = [
        record(1),
        record(2, endpoint="embed", cached=True, queue_ms=0, ttft_ms=None, total_ms=3, tokens=1234),
        record(3, endpoint="generate", status="ollama_unavailable", model="qwen2.5", user="ci"),
    ]
    window.update_snapshot(snapshot(recent=recent))
    rows = table_rows(window)
    model = window.requests_table.model()
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers == [
        "Time", "Endpoint", "User", "Model", "Cached", "Queue (ms)", "TTFT (ms)", "Total (ms)",
        "Tokens", "Status",
    ]  # fmt: skip
    assert [r[-1] for r in rows] == ["ollama_unavailable", "ok", "ok"]
    when = time.strftime("%H:%M:%S", time.localtime(T0 + 3))
    assert rows[0][:4] == [when, "generate", "ci", "qwen2.5"]
    assert rows[1][1:] == ["embed", "alice", "llama3.2", "yes", "0", "—", "3", "1,234", "ok"]
    assert rows[2][1:] == [
        "chat-optimized", "alice", "llama3.2", "no", "10", "101", "1,001", "51", "ok"
    ]  # fmt: skip
    tooltip = model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole)
    assert "generate" in tooltip and "ci" in tooltip


def test_table_aligns_figures_right_and_colours_only_the_status(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(recent=[record(1, status="ollama_unavailable")]))
    model = window.requests_table.model()
    right = [
        bool(
            model.index(0, c).data(Qt.ItemDataRole.TextAlignmentRole) & Qt.AlignmentFlag.AlignRight
        )
        for c in range(model.columnCount())
    ]
    header_right = [
        bool(
            model.headerData(c, Qt.Orientation.Horizontal, Qt.ItemDataRole.TextAlignmentRole)
            & Qt.AlignmentFlag.AlignRight
        )
        for c in range(model.columnCount())
    ]
    # Time, Endpoint, User, Model, Cached | Queue, TTFT, Total, Tokens | Status
    assert right == header_right == [False] * 5 + [True] * 4 + [False]
    coloured = [
        model.index(0, c).data(Qt.ItemDataRole.ForegroundRole) is not None
        for c in range(model.columnCount())
    ]
    assert coloured == [False] * 9 + [True]


def test_table_shows_a_dash_for_records_without_an_endpoint(window: DashboardWindow) -> None:
    older = record(1)
    del older["endpoint"]
    window.update_snapshot(snapshot(recent=[older]))
    assert table_rows(window)[0][1:4] == ["—", "alice", "llama3.2"]


def test_table_names_who_sent_each_request(window: DashboardWindow) -> None:
    before_keys = record(1)
    del before_keys["user"]  # a server from before API keys
    recent = [before_keys, record(2, user="anonymous"), record(3, user="ci-runner")]
    window.update_snapshot(snapshot(recent=recent))
    model = window.requests_table.model()
    user = COLUMNS.index("User")
    assert COLUMNS.index("Endpoint") + 1 == user
    assert [r[user] for r in table_rows(window)] == ["ci-runner", "anonymous", "—"]
    # A name is shown as it is; "anonymous" (no key, no user header) is the quiet usual case.
    assert model.index(0, user).data(Qt.ItemDataRole.ForegroundRole) is None
    muted = model.index(1, user).data(Qt.ItemDataRole.ForegroundRole)
    placeholder = window.palette().color(QPalette.ColorRole.PlaceholderText)
    assert muted == placeholder
    assert "ci-runner" in model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole)


def test_a_long_user_name_is_elided_and_reads_in_full(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.show()
    qtbot.waitExposed(window)
    name = "a-very-long-key-name-for-the-nightly-evaluation@example.com"
    window.update_snapshot(snapshot(recent=[record(1, user=name)]))
    table = window.requests_table
    user = COLUMNS.index("User")
    assert table.columnWidth(user) < table.fontMetrics().horizontalAdvance(name)
    assert name in table.model().index(0, user).data(Qt.ItemDataRole.ToolTipRole)


def test_table_inserts_new_rows_and_keeps_the_selection(window: DashboardWindow) -> None:
    recent = [record(i) for i in range(5)]
    window.update_snapshot(snapshot(recent=recent))
    table = window.requests_table
    table.selectRow(2)  # req-2
    resets: list[bool] = []
    table.model().modelReset.connect(lambda: resets.append(True))
    window.update_snapshot(snapshot(recent=[*recent, record(5), record(6)]))
    assert table.model().rowCount() == 7
    selected = table.selectionModel().selectedRows()
    assert [table.model().index(i.row(), 0).data() for i in selected] == [
        time.strftime("%H:%M:%S", time.localtime(T0 + 2))
    ]
    assert resets == []


def test_table_keeps_at_most_100_rows(window: DashboardWindow) -> None:
    recent: list[dict[str, Any]] = []
    for i in range(150):
        recent = [*recent, record(i)][-100:]
        window.update_snapshot(snapshot(recent=recent))
    rows = table_rows(window)
    assert len(rows) == 100
    assert rows[0][-2] == "199" and rows[-1][-2] == "100"  # tokens = 50 + i: i 149 .. 50


def test_table_starts_over_when_the_history_does(window: DashboardWindow) -> None:
    window.update_snapshot(snapshot(recent=[record(i) for i in range(10)]))
    # A restarted server begins a fresh history that does not continue the rows shown.
    window.update_snapshot(snapshot(recent=[record(100, model="fresh")]))
    assert [r[COLUMNS.index("Model")] for r in table_rows(window)] == ["fresh"]
    window.update_snapshot(snapshot(recent=[]))
    assert table_rows(window) == []


def test_a_reader_scrolled_down_keeps_their_rows_in_view(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.show()
    qtbot.waitExposed(window)
    recent = [record(i) for i in range(60)]
    window.update_snapshot(snapshot(recent=recent))
    table = window.requests_table
    bar = table.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 10)

    def top_row_tokens() -> str:
        return str(table.model().index(table.rowAt(0), COLUMNS.index("Tokens")).data())

    for value in (10, bar.maximum()):  # somewhere in the middle, then at the very bottom
        bar.setValue(value)
        before = top_row_tokens()
        recent = [*recent, record(len(recent)), record(len(recent) + 1)]
        window.update_snapshot(snapshot(recent=recent))
        assert top_row_tokens() == before
    # At the top the table follows the newest requests.
    bar.setValue(0)
    window.update_snapshot(snapshot(recent=[*recent, record(len(recent))]))
    assert bar.value() == 0
    assert top_row_tokens() == str(50 + len(recent))


# -- log tail ---------------------------------------------------------------------------------


def test_log_tail_appends_and_is_bounded(window: DashboardWindow) -> None:
    window.append_log("12:00:00 INFO    chatbot.http: serving")
    window.append_log("12:00:01 WARNING chatbot.queue: almost full")
    assert window.log_tail.toPlainText().splitlines() == [
        "12:00:00 INFO    chatbot.http: serving",
        "12:00:01 WARNING chatbot.queue: almost full",
    ]
    assert window.log_tail.isReadOnly()
    for i in range(window.log_tail.maximumBlockCount() + 50):
        window.append_log(f"line {i}")
    assert window.log_tail.line_count() == window.log_tail.maximumBlockCount()
    assert window.log_tail.toPlainText().splitlines()[-1] == f"line {i}"


# -- buttons ----------------------------------------------------------------------------------


def test_flush_asks_first_and_emits_only_when_confirmed(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.set_state("serving", "Serving on http://127.0.0.1:8080")
    window.show()
    with qtbot.assertNotEmitted(window.flush_requested):
        window.flush_button.click()
        # click() returned while the dialog is up: it was open()ed, no nested exec() loop.
        dialog = window.confirm_dialog
        assert isinstance(dialog, QMessageBox)
        assert dialog.isVisible()
    with qtbot.waitSignal(window.flush_requested, timeout=1000):
        dialog.button(QMessageBox.StandardButton.Ok).click()
    assert window.confirm_dialog is None


def test_flush_cancelled_emits_nothing(qtbot: QtBot, window: DashboardWindow) -> None:
    window.set_state("serving", "")
    window.show()
    with qtbot.assertNotEmitted(window.flush_requested, wait=50):
        window.flush_button.click()
        assert window.confirm_dialog is not None
        window.confirm_dialog.button(QMessageBox.StandardButton.Cancel).click()
    assert window.confirm_dialog is None
    with qtbot.assertNotEmitted(window.flush_requested, wait=50):
        window.flush_button.click()
        assert window.confirm_dialog is not None
        window.confirm_dialog.reject()
    assert window.confirm_dialog is None


def test_flush_dialog_accept_confirms(qtbot: QtBot, window: DashboardWindow) -> None:
    window.set_state("serving", "")
    window.flush_button.click()
    assert window.confirm_dialog is not None
    with qtbot.waitSignal(window.flush_requested, timeout=1000):
        window.confirm_dialog.accept()


def test_second_flush_click_reuses_the_open_dialog(window: DashboardWindow) -> None:
    window.set_state("serving", "")
    window.flush_button.click()
    first = window.confirm_dialog
    window.flush_button.click()
    assert window.confirm_dialog is first


def test_restart_emits_without_asking(qtbot: QtBot, window: DashboardWindow) -> None:
    window.set_state("failed", "Port 8080 is in use")
    with qtbot.waitSignal(window.restart_requested, timeout=1000):
        window.restart_button.click()
    assert window.confirm_dialog is None


# -- state banner -----------------------------------------------------------------------------


def test_set_state_updates_the_banner_and_buttons(window: DashboardWindow) -> None:
    message = (
        "Port 8080 is in use by another program — change [server].port in /tmp/config.toml "
        "or set PORT, then Restart Server"
    )
    window.set_state("failed", message)
    assert window.banner.state() == "failed"
    assert window.banner.text() == message
    assert not window.flush_button.isEnabled()
    assert window.restart_button.isEnabled()
    window.set_state("serving", "Serving on http://127.0.0.1:8080")
    assert window.banner.text() == "Serving on http://127.0.0.1:8080"
    assert window.flush_button.isEnabled()
    window.set_state("starting", "Starting…")
    assert not window.restart_button.isEnabled()


# -- closing ----------------------------------------------------------------------------------


def test_close_quits_without_a_tray(qtbot: QtBot, window: DashboardWindow) -> None:
    window.set_close_quits(True)
    window.show()
    with qtbot.waitSignal(window.close_requested, timeout=1000):
        assert window.close()
    assert not window.isVisible()


def test_close_hides_with_a_tray(qtbot: QtBot, window: DashboardWindow) -> None:
    window.set_close_quits(False)
    window.show()
    with qtbot.assertNotEmitted(window.close_requested):
        window.close()
    assert not window.isVisible()
    window.show()  # reopened from the tray, state intact
    assert window.isVisible()


def test_closing_dismisses_a_pending_confirmation(qtbot: QtBot, window: DashboardWindow) -> None:
    window.set_state("serving", "")
    window.show()
    window.flush_button.click()
    with qtbot.assertNotEmitted(window.flush_requested):
        window.close()
    assert window.confirm_dialog is None


# -- bounded under load -----------------------------------------------------------------------


def test_nothing_grows_without_bound(window: DashboardWindow) -> None:
    recent: list[dict[str, Any]] = []
    for i in range(1000):
        recent = [*recent, record(i)][-100:]
        window.update_snapshot(snapshot(recent=recent, memory={"rss_mb": 80 + i % 7}))
        window.append_log(f"12:00:00 INFO    chatbot.http: request {i}")
    assert all(len(chart.values()) == 300 for chart in window.charts.values())
    assert window.requests_table.model().rowCount() == 100
    assert window.log_tail.line_count() <= window.log_tail.maximumBlockCount()


# -- formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5 s"), (300, "5 min"), (3725, "1 h 02 min"), (90_000, "1 d 1 h")],
)
def test_uptime_reads_naturally(seconds: float, text: str) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize(
    ("mb", "text"),
    [
        (0, "0.00"),
        (0.004, "<0.01"),
        (0.038, "0.04"),
        (3.21, "3.21"),
        (84.24, "84.2"),
        (1234, "1,234"),
    ],
)
def test_megabytes_keep_useful_precision(mb: float, text: str) -> None:
    assert fmt.megabytes(mb) == text


def test_answers_cut_by_a_restart_are_amber_and_counted_apart(window: DashboardWindow) -> None:
    window.update_snapshot(
        snapshot(
            recent=[
                record(1, status="server_restart"),
                record(2, status="disconnected"),
                record(3, status="ollama_unavailable"),
            ],
            queue={**snapshot()["queue"], "interrupted": 2},
        )
    )
    model = window.requests_table.model()
    status = model.columnCount() - 1

    def colour(row: int) -> Any:
        return model.index(row, status).data(Qt.ItemDataRole.ForegroundRole)

    by_status = {model.index(r, status).data(): colour(r) for r in range(3)}
    # Cut by the server's own restart: amber like a client's disconnect, not red like a failure.
    assert by_status["server_restart"] == by_status["disconnected"]
    assert by_status["server_restart"] != by_status["ollama_unavailable"]
    assert "1 cancelled, 2 cut by a restart" in window.status_label.text()
