"""The Overview's live queue and per-model table, driven through the real widgets against the real
gateway and simulator: rows for who runs and waits, Cancel ending the client's request, and
per-model figures with what Ollama has installed and loaded."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from PySide6.QtCore import Qt

from app.dashboard.models_view import UNKNOWN
from app.dashboard.queue_view import EMPTY_TEXT, MAX_ROWS, MORE, USER, QueueView
from server import simulator
from tests.conftest import free_port

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

CHAT = "/api/chat-optimized"
# Long enough to outlast any test (4,000 tokens 25 ms apart: 100 s), so the first request holds
# the only slot while the others wait, however slow the machine.
SLOW = {"sim_tokens": 4000, "sim_token_delay_ms": 25}


async def stream(url: str, request_id: str, text: str) -> list[dict[str, Any]]:
    """A streaming client: every frame it was sent, up to the end of the stream."""
    body = {
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "request_id": request_id,
        "options": SLOW,
    }
    async with aiohttp.ClientSession() as s, s.post(url + CHAT, json=body) as r:
        assert r.status == 200, await r.text()
        return [json.loads(line[6:]) async for line in r.content if line.startswith(b"data: ")]


async def chat(url: str, text: str, model: str | None = None) -> int:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    if model:
        body["model"] = model
    async with aiohttp.ClientSession() as s, s.post(url + CHAT, json=body) as r:
        await r.read()
        return r.status


def column(view: QueueView, name: str) -> list[str]:
    return [view.model.cell(row, name) for row in range(view.row_count())]


def test_live_queue_shows_who_runs_and_waits_and_cancel_ends_the_request(start_app, qtbot, qloop):
    app = start_app(queue__max_concurrent=1)
    dash = app.companion.dashboard
    view = dash.queue_view
    dash.activity.setCurrentWidget(view)
    assert view.currentWidget() is view.placeholder and view.placeholder.text() == EMPTY_TEXT

    clients = {}
    for rid in ("run-1", "wait-1", "wait-2"):
        clients[rid] = qloop.create_task(stream(app.url, rid, f"question {rid}"))
        # One at a time, so the order in line is the order they were sent.
        qtbot.waitUntil(lambda rid=rid: rid in view.model.row_keys(), timeout=10_000)
    try:
        assert view.currentWidget() is view.table
        assert view.model.row_keys() == ["run-1", "wait-1", "wait-2"]
        assert column(view, "State") == ["running", "waiting", "waiting"]
        assert column(view, "Position") == ["—", "1", "2"]
        assert column(view, "ETA")[0] == "—"
        assert all(eta.startswith("~") for eta in column(view, "ETA")[1:])
        assert set(column(view, "Endpoint")) == {"chat-optimized"}
        assert set(column(view, "Model")) == {app.controller.gateway.config.ollama.model}
        assert view.table.isColumnHidden(USER)  # no keys: nobody to name
        assert dash.activity.tabText(dash.activity.indexOf(view)) == "Live queue (3)"

        # The selection survives the once-a-second updates.
        view.select("wait-2")
        with qtbot.waitSignal(app.controller.snapshot_ready, timeout=3000):
            pass
        assert view.selected_id() == "wait-2"

        # Cancel on a waiting request: its client hears "cancelled", the row goes, the rest
        # move up.
        button = view.button("wait-1")
        assert button is not None
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(clients["wait-1"].done, timeout=10_000)
        frames = clients["wait-1"].result()
        assert frames[-1]["code"] == "cancelled" and frames[-1]["done"] is True
        qtbot.waitUntil(lambda: view.model.row_keys() == ["run-1", "wait-2"], timeout=5000)
        qtbot.waitUntil(lambda: column(view, "Position") == ["—", "1"], timeout=5000)
        assert view.selected_id() == "wait-2"
        assert not clients["run-1"].done() and not clients["wait-2"].done()

        # The Delete key cancels the selected one.
        dash.activateWindow()
        view.table.setFocus()
        qtbot.waitUntil(view.table.hasFocus, timeout=2000)
        qtbot.keyClick(view.table, Qt.Key.Key_Delete)
        qtbot.waitUntil(clients["wait-2"].done, timeout=10_000)
        assert clients["wait-2"].result()[-1]["code"] == "cancelled"

        # The context menu cancels the running one, which frees the slot.
        qtbot.waitUntil(lambda: view.model.row_keys() == ["run-1"], timeout=5000)
        rect = view.table.visualRect(view.model.index(0, 0))
        view.table.customContextMenuRequested.emit(rect.center())
        assert view.menu is not None
        qtbot.waitUntil(view.menu.isVisible, timeout=2000)
        assert view.cancel_action.text() == "Cancel run-1"
        view.cancel_action.trigger()
        qtbot.waitUntil(clients["run-1"].done, timeout=10_000)
        assert clients["run-1"].result()[-1]["code"] == "cancelled"
        view.menu.close()

        qtbot.waitUntil(lambda: view.currentWidget() is view.placeholder, timeout=5000)
        assert dash.activity.tabText(dash.activity.indexOf(view)) == "Live queue"
        assert app.controller.gateway.snapshot()["queue"]["cancelled"] == 3
    finally:
        for task in clients.values():
            task.cancel()
        qtbot.waitUntil(lambda: all(t.done() for t in clients.values()), timeout=10_000)


def test_live_queue_names_users_when_keys_are_on(start_app, qtbot, qloop):
    from server import auth

    key, entry = auth.new_key("alice", "user")
    app = start_app(queue__max_concurrent=1, auth__keys=(entry,))
    view = app.companion.dashboard.queue_view

    async def keyed(rid: str) -> int:
        body = {"messages": [{"role": "user", "content": rid}], "stream": True}
        body.update(request_id=rid, options=SLOW)
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(app.url + CHAT, json=body, headers=headers) as r,
        ):
            await r.read()
            return r.status

    task = qloop.create_task(keyed("k-1"))
    try:
        qtbot.waitUntil(lambda: view.model.row_keys() == ["k-1"], timeout=10_000)
        assert not view.table.isColumnHidden(USER)
        assert column(view, "User") == ["alice"]
    finally:
        task.cancel()
        qtbot.waitUntil(task.done, timeout=10_000)


def entries(ids: range, elapsed: int) -> list[dict[str, Any]]:
    """Queue entries as the gateway gives them: the first one running, the rest in line."""
    return [
        {
            "request_id": f"q-{i}",
            "status": "processing" if i == ids[0] else "queued",
            "position": i - ids[0],
            "estimated_wait_ms": 1000 * (i - ids[0]),
            "elapsed_ms": elapsed,
            "endpoint": "chat",
            "model": "llama3.2",
            "user": "anonymous",
        }
        for i in ids
    ]


def test_queue_view_keeps_selection_and_scroll_through_updates(qtbot):
    view = QueueView()
    qtbot.addWidget(view)
    view.resize(700, 200)
    view.show()

    view.set_entries(entries(range(40), 100))
    bar = view.table.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=2000)
    view.select("q-30")
    bar.setValue(bar.maximum() // 2)
    scrolled = bar.value()
    assert 0 < scrolled < bar.maximum()
    first_button = view.button("q-30")
    # A second later: the first one finished, everyone moved up, all are a second older.
    view.set_entries(entries(range(1, 40), 1100))
    assert view.model.row_keys()[0] == "q-1"
    assert view.model.cell(0, "State") == "running"
    assert view.selected_id() == "q-30"
    assert bar.value() == scrolled
    assert view.button("q-30") is first_button  # the same row, not a new one
    assert view.button("q-0") is None
    # Malformed entries (a newer or broken server) show what they can rather than crash.
    view.set_entries([{"request_id": "odd", "status": "queued", "position": None}, "junk"])
    assert view.model.row_keys() == ["odd"]


def test_models_table_shows_figures_and_what_ollama_has(start_app, run, qtbot):
    settings = simulator.SimulatorSettings(
        tokens=12,
        token_delay_ms=2,
        first_token_delay_ms=2,
        models=("llama3.2:latest", "qwen2.5:0.5b"),
    )
    runner, port = run(simulator.start(settings))
    try:
        app = start_app(ollama__api_url=f"http://127.0.0.1:{port}")
        models = app.companion.dashboard.models_view.table_model
        assert run(chat(app.url, "one")) == 200
        assert run(chat(app.url, "one")) == 200  # a cache hit
        run(app.controller.refresh_models())

        def row(name: str) -> dict[str, str]:
            i = models.row_of(name)
            return {c: models.cell(i, c) for c in models.columns} if i >= 0 else {}

        qtbot.waitUntil(lambda: row("llama3.2:latest").get("Loaded") == "loaded", timeout=5000)
        busy = row("llama3.2:latest")
        assert (busy["Requests"], busy["Hit rate"], busy["Installed"]) == ("2", "50 %", "yes")
        assert busy["Avg generation (ms)"] != "—"  # one generation measured
        # A model Ollama has that nobody asked for is listed too, after the busy one.
        assert models.row_keys() == ["llama3.2:latest", "qwen2.5:0.5b"]
        idle = row("qwen2.5:0.5b")
        assert (idle["Requests"], idle["Hit rate"], idle["Avg generation (ms)"]) == (
            "0",
            "—",
            "—",
        )
        assert (idle["Installed"], idle["Loaded"]) == ("yes", "no")
    finally:
        run(runner.cleanup())


def test_models_table_says_unknown_when_ollama_does_not_answer(start_app, run, qtbot):
    app = start_app(ollama__api_url=f"http://127.0.0.1:{free_port()}")
    models = app.companion.dashboard.models_view.table_model
    run(app.controller.refresh_models())
    run(chat(app.url, "hello"))  # fails: Ollama does not answer
    configured = app.controller.gateway.config.ollama.model
    name = configured if ":" in configured else f"{configured}:latest"
    qtbot.waitUntil(lambda: models.row_of(name) >= 0, timeout=5000)
    qtbot.waitUntil(lambda: models.cell(models.row_of(name), "Requests") == "1", timeout=5000)
    i = models.row_of(name)
    assert (models.cell(i, "Installed"), models.cell(i, "Loaded")) == (UNKNOWN, UNKNOWN)
    assert models.cell(i, "Avg generation (ms)") == "—"  # it failed: nothing generated
    tip = models.data(models.index(i, 0), Qt.ItemDataRole.ToolTipRole)
    assert "unknown" in tip and "127.0.0.1" in tip


def test_a_long_line_lists_the_first_rows_and_counts_the_rest(qtbot):
    view = QueueView()
    qtbot.addWidget(view)
    view.set_entries(entries(range(MAX_ROWS + 50), 100))
    assert view.total == MAX_ROWS + 50
    assert view.row_count() == MAX_ROWS + 1
    last = view.row_count() - 1
    assert view.model.key(last) == MORE
    assert view.model.cell(last, "Model") == "and 50 more waiting (not listed)"
    assert view.button(MORE) is None
    with qtbot.assertNotEmitted(view.cancel_requested):
        view.cancel(MORE)
    # The line shortens: the summing-up row goes, every request has its button.
    view.set_entries(entries(range(10), 100))
    assert view.model.row_keys() == [f"q-{i}" for i in range(10)]
    assert all(view.button(f"q-{i}") is not None for i in range(10))


def test_what_ollama_has_is_asked_again_in_the_background(start_app, run, qtbot, monkeypatch):
    # The app asks every MODELS_EVERY_S (10 s); a shorter period keeps the test quick.
    monkeypatch.setattr("app.controller.MODELS_EVERY_S", 0.2)
    app = start_app()
    models = app.companion.dashboard.models_view.table_model
    name = "llama3.2:latest"
    qtbot.waitUntil(lambda: models.row_of(name) >= 0, timeout=5000)
    qtbot.waitUntil(lambda: models.cell(models.row_of(name), "Installed") == "yes", timeout=5000)
    assert models.cell(models.row_of(name), "Loaded") == "no"  # nothing asked it yet
    assert run(chat(app.url, "load it")) == 200
    # No refresh_models() here: the controller's own loop notices the model was loaded.
    qtbot.waitUntil(lambda: models.cell(models.row_of(name), "Loaded") == "loaded", timeout=5000)
