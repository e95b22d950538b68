"""The Overview's Hosts tab and the Ollama tile with several hosts, driven through the real app
against three real simulators with different models: every host listed with its models, one
stopped shown down (why, when it is tried again, in the warning colour) and back after it
restarts on the same port; one host keeps the tile as it always was."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette

from app.dashboard.colors import GOOD, WARN, text_tone
from app.dashboard.hosts_view import HostsView, summary, tile_view
from server import simulator
from server.config import default_toml

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

MODELS = (
    ("llama3.2:latest", "qwen3:4b"),
    ("llama3.2:latest", "mistral:latest", "gemma3:1b"),
    ("phi3:latest",),
)
# Long enough for a probe that failed a few times to come round again (backoff: 1, 2, 4 … s).
BACK_WITHIN_MS = 45_000


class Sim:
    """A simulator playing one Ollama host, which the test can stop and start on its port."""

    def __init__(self, models: tuple[str, ...]) -> None:
        self.settings = simulator.SimulatorSettings(
            tokens=4, token_delay_ms=0, first_token_delay_ms=0, models=models
        )
        self.port = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner, self.port = await simulator.start(self.settings, port=self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
def sims(run) -> Iterator[list[Sim]]:
    started = [Sim(models) for models in MODELS]
    try:
        for sim in started:
            run(sim.start())
        yield started
    finally:
        for sim in started:
            run(sim.stop())


def dark_palette() -> QPalette:
    dark = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, "#2b2b2b"),
        (QPalette.ColorRole.Base, "#1e1e1e"),
        (QPalette.ColorRole.Text, "#e6e6e6"),
        (QPalette.ColorRole.WindowText, "#e6e6e6"),
    ):
        dark.setColor(role, QColor(color))
    return dark


def column(view: HostsView, name: str) -> list[str]:
    model = view.table_model
    return [model.cell(row, name) for row in range(model.rowCount())]


def tooltip(view: HostsView, url: str) -> str:
    model = view.table_model
    return str(model.data(model.index(model.row_of(url), 0), Qt.ItemDataRole.ToolTipRole))


async def chat(url: str, model: str) -> int:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(url + "/api/chat-optimized", json=body) as r:
        await r.read()
        return r.status


def test_hosts_tab_lists_each_host_and_shows_one_down_and_back(
    start_app: Callable[..., Any], run, qtbot, sims: list[Sim]
) -> None:
    a, b, c = sims
    hosts = [{"url": s.url, "max_concurrent": 2} for s in sims]
    hosts[1]["weight"] = 2.5
    # The hosts as if given on the command line, over the shipped file (start_app's own way,
    # saving the overrides into the file, cannot write host tables yet).
    app = start_app(file_text=default_toml(), ollama__hosts=hosts)
    dash = app.companion.dashboard
    view = dash.hosts_view
    tab = dash.activity.indexOf(view)
    tile = dash.tiles["ollama"]
    dash.activity.setCurrentWidget(view)
    dash.show()
    qtbot.waitExposed(dash)

    def states() -> list[str]:
        return column(view, "State")

    qtbot.waitUntil(lambda: states() == ["up"] * 3, timeout=10_000)
    assert app.controller.snapshot()["hosts"]  # the controller hands the hosts on
    assert column(view, "Host") == [a.url, b.url, c.url]
    assert column(view, "Models") == ["2", "3", "1"]
    assert column(view, "Weight") == ["1", "2.5", "1"]
    assert column(view, "Running") == ["0 of 2"] * 3
    assert column(view, "Last error") == ["—"] * 3
    for sim, models in zip(sims, MODELS, strict=True):
        assert f"Installed: {', '.join(sorted(models))}" in tooltip(view, sim.url)
    assert dash.activity.tabText(tab) == "Hosts (3/3)"
    assert not dash.activity.tabBar().tabTextColor(tab).isValid()
    assert tile.value_text() == "3 of 3 hosts up" and tile.tone() == GOOD
    assert all(f"{s.url}: up, 0 of 2 running" in tile.toolTip() for s in sims)

    # A model only the third host has runs there, and is then loaded there.
    assert run(chat(app.url, "phi3")) == 200
    qtbot.waitUntil(lambda: column(view, "Loaded")[2] == "phi3:latest", timeout=5000)
    assert column(view, "Loaded")[:2] == ["none", "none"]

    told: list[tuple[str, str]] = []
    app.controller.notify.connect(lambda title, text: told.append((title, text)))
    view.select(b.url)
    run(c.stop())
    qtbot.waitUntil(lambda: states()[2].startswith("down"), timeout=10_000)
    assert re.fullmatch(r"down · (next try in \d+ s|trying now)", states()[2]), states()
    assert states()[:2] == ["up", "up"]
    error = column(view, "Last error")[2]
    assert "not reachable" in error and c.url not in error  # the URL is in the first column
    assert "Installed (when last reached): phi3:latest" in tooltip(view, c.url)
    assert view.selected_url() == b.url  # the selection survived the updates
    qtbot.waitUntil(lambda: tile.value_text() == "2 of 3 hosts up", timeout=2000)
    assert tile.tone() == WARN
    assert f"{c.url}: down (" in tile.toolTip() and f"{a.url}: up" in tile.toolTip()
    # The tray tells it too: one host of three down is news, though Ollama as a whole answers.
    qtbot.waitUntil(lambda: bool(told), timeout=2000)
    assert told[-1][0] == "Ollama host down"
    assert c.url in told[-1][1] and "2 of 3 hosts up" in told[-1][1]
    assert dash.activity.tabText(tab) == "Hosts (2/3)"
    assert dash.activity.tabBar().tabTextColor(tab) == text_tone(WARN, dash.palette())
    # A theme switched to dark keeps the warning legible: lighter, not the light theme's shade.
    light = dash.palette()
    dash.setPalette(dark_palette())
    assert dash.activity.tabBar().tabTextColor(tab) == text_tone(WARN, dark_palette())
    assert text_tone(WARN, dark_palette()) != text_tone(WARN, light)
    dash.setPalette(light)

    # The same port answers again: back up at its next probe, the warning gone.
    run(c.start())
    qtbot.waitUntil(lambda: states()[2] == "up", timeout=BACK_WITHIN_MS)
    assert column(view, "Last error")[2] == "—"
    qtbot.waitUntil(lambda: dash.activity.tabText(tab) == "Hosts (3/3)", timeout=2000)
    assert dash.activity.tabBar().tabTextColor(tab) == QColor()
    qtbot.waitUntil(lambda: tile.value_text() == "3 of 3 hosts up", timeout=2000)
    assert tile.tone() == GOOD
    assert view.selected_url() == b.url
    qtbot.waitUntil(lambda: told[-1][0] == "Ollama host back", timeout=2000)
    assert c.url in told[-1][1] and "3 of 3 hosts up" in told[-1][1]
    assert [title for title, _ in told] == ["Ollama host down", "Ollama host back"]


def test_one_host_keeps_the_tile_as_it_was_and_lists_the_host(
    start_app: Callable[..., Any], qtbot, sim_url: str
) -> None:
    app = start_app()
    dash = app.companion.dashboard
    view = dash.hosts_view
    qtbot.waitUntil(lambda: column(view, "State") == ["up"], timeout=10_000)
    assert column(view, "Host") == [sim_url]
    assert dash.activity.tabText(dash.activity.indexOf(view)) == "Hosts (1/1)"
    tile = dash.tiles["ollama"]
    qtbot.waitUntil(lambda: tile.value_text() == "reachable", timeout=2000)
    assert f"Ollama at {sim_url}" in tile.toolTip()
    assert "hosts up" not in tile.toolTip()


def test_hosts_not_probed_yet_are_counted_but_not_coloured() -> None:
    hosts = [
        {
            "url": "http://a:11434",
            "state": "up",
            "models": ["m"],
            "running": 1,
            "max_concurrent": 2,
        },
        {"url": "http://b:11434", "state": "unknown"},
    ]
    view = tile_view(hosts)
    assert view is not None and view.value == "1 of 2 hosts up" and view.tone is None
    assert (
        view.detail == "http://a:11434: up, 1 of 2 running, 1 model\nhttp://b:11434: not probed yet"
    )
    assert summary(hosts).title == "Hosts (1/2)" and summary(hosts).tone is None
    assert tile_view(hosts[:1]) is None  # one host: the tile as it always was


def test_the_settings_model_list_has_every_hosts_models(
    start_app: Callable[..., Any], run, qtbot, sims: list[Sim]
) -> None:
    hosts = [{"url": s.url} for s in sims]
    app = start_app(file_text=default_toml(), ollama__hosts=hosts)
    manager = app.companion.config_manager
    told: list[list[str]] = []
    manager.models.connect(told.append)
    run(manager.refresh_models())
    assert told, "no model list was offered"
    # The union of the three hosts' models, not only the first host's.
    assert set(told[-1]) == {name for models in MODELS for name in models}
