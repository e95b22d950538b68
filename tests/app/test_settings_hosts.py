"""The `[ollama].hosts` table on the Settings page: the shipped config saves again, rows typed in
are judged by the server's rules (messages naming ollama.hosts[N].field), a Save writes
`[[ollama.hosts]]` tables the server reads back and runs, and a file with hosts is left alone."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomlkit
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLineEdit
from pytestqt.qtbot import QtBot

from app.companion import Companion
from app.config_manager import ConfigManager, values_of
from app.controller import Controller
from app.settings import SettingsPage
from app.settings.hosts_editor import EMPTY_HINT, FIELDS, HostsEditor
from server import simulator
from server.config import HostSpec, default_toml, load

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

HOSTS_LINE = next(line for line in default_toml().splitlines() if line.startswith("hosts = "))


@pytest.fixture
def page(qtbot: QtBot) -> SettingsPage:
    p = SettingsPage()
    qtbot.addWidget(p)
    p.resize(1000, 720)
    p.show()
    qtbot.waitExposed(p)
    return p


def hosts_editor(page: SettingsPage) -> HostsEditor:
    editor = page.field("ollama", "hosts")
    assert isinstance(editor, HostsEditor)
    return editor


def open_cell_editor(qtbot: QtBot, editor: HostsEditor) -> QLineEdit:
    def found() -> QLineEdit | None:
        lines = editor.table.viewport().findChildren(QLineEdit)
        return next((line for line in lines if line.isVisible()), None)

    qtbot.waitUntil(lambda: found() is not None, timeout=1000)
    line = found()
    assert line is not None
    return line


def type_cell(qtbot: QtBot, editor: HostsEditor, row: int, name: str, text: str) -> None:
    """Open the cell as a double click would, type over it and press Enter."""
    item = editor.table.item(row, FIELDS.index(name))
    editor.table.setCurrentItem(item)
    editor.table.editItem(item)
    line = open_cell_editor(qtbot, editor)
    line.selectAll()
    qtbot.keyClicks(line, text)
    qtbot.keyClick(line, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: editor.cell_text(row, FIELDS.index(name)) == text.strip())


def add_row(qtbot: QtBot, editor: HostsEditor) -> int:
    """Click Add and type nothing yet (the new row's editor is closed with Escape)."""
    rows = editor.table.rowCount()
    qtbot.mouseClick(editor.add_button, Qt.MouseButton.LeftButton)
    qtbot.keyClick(open_cell_editor(qtbot, editor), Qt.Key.Key_Escape)
    assert editor.table.rowCount() == rows + 1
    return rows


# -- the page as it loads ---------------------------------------------------------------------


def test_the_shipped_config_loads_clean_and_an_edit_can_be_saved(
    qtbot: QtBot, page: SettingsPage, tmp_path: Path
) -> None:
    # The regression: the running config holds hosts as a tuple, which the page showed as "()"
    # and judged a bad URL, so every Save stayed disabled ("Fix 1 field to save").
    path = tmp_path / "config.toml"
    path.write_text(default_toml())
    page.load(values_of(load(path, env={})))
    assert page.field_error("ollama", "hosts") == ""
    assert page.save_hint.text() == "No unsaved changes"
    page.field("cache", "ttl_seconds").setValue(600)
    assert page.save_button.isEnabled()
    with qtbot.waitSignal(page.save_requested, timeout=1000) as blocker:
        page.save_button.click()
    assert blocker.args[0] == {("cache", "ttl_seconds"): 600}  # the hosts are not written


def test_no_hosts_shows_an_empty_table_that_says_api_url_is_used(
    qtbot: QtBot, page: SettingsPage
) -> None:
    editor = hosts_editor(page)
    assert editor.table.rowCount() == 0
    assert editor.empty_hint.isVisibleTo(page) and editor.empty_hint.text() == EMPTY_HINT
    assert [editor.table.horizontalHeaderItem(i).text() for i in range(4)] == [
        "URL",
        "Max concurrent",
        "Weight",
        "Models (comma-separated)",
    ]
    assert page.field_warning("ollama", "api_url") == ""

    # The first Add starts with the URL in api_url: the host the gateway uses now.
    page.field("ollama", "api_url").setText("http://gpu1:11434")
    row = add_row(qtbot, editor)
    assert not editor.empty_hint.isVisibleTo(page)
    assert editor.raw() == [{"url": "http://gpu1:11434"}]
    assert page.field_warning("ollama", "api_url") == (
        "Not used while [ollama].hosts lists hosts (below)."
    )
    # A second Add starts blank, and a blank row is neither saved nor counted.
    add_row(qtbot, editor)
    assert editor.raw() == [{"url": "http://gpu1:11434"}]
    assert editor.row_labels() == [str(row), ""]
    assert page.save_button.isEnabled()


# -- validation, as the server judges it -------------------------------------------------------


def test_a_bad_url_and_max_concurrent_0_are_named_by_row_and_block_save(
    qtbot: QtBot, page: SettingsPage
) -> None:
    editor = hosts_editor(page)
    add_row(qtbot, editor)  # api_url's host
    add_row(qtbot, editor)
    type_cell(qtbot, editor, 1, "url", "gpu2:11434")
    type_cell(qtbot, editor, 1, "max_concurrent", "0")
    error = page.field_error("ollama", "hosts")
    url_problem = (
        'ollama.hosts[1].url = "gpu2:11434": must be an http:// or https:// URL with a host, '
        "e.g. http://localhost:11434"
    )
    concurrent_problem = "ollama.hosts[1].max_concurrent = 0: must be a whole number 1..64"
    assert error.splitlines() == [url_problem, concurrent_problem]
    assert not page.save_button.isEnabled()
    assert page.save_hint.text() == "Fix 1 field to save: [ollama].hosts"
    # The cells the messages name carry them; the row header shows the same index.
    assert editor.cell_problem(1, "url") == url_problem
    assert editor.cell_problem(1, "max_concurrent") == concurrent_problem
    assert editor.cell_problem(0, "url") == ""
    assert editor.row_labels() == ["0", "1"]

    type_cell(qtbot, editor, 1, "url", "http://gpu2:11434")
    type_cell(qtbot, editor, 1, "max_concurrent", "2")
    type_cell(qtbot, editor, 1, "weight", "0.5")
    type_cell(qtbot, editor, 1, "models", "llama3.2, nomic-embed-text,")
    assert page.field_error("ollama", "hosts") == ""
    assert editor.cell_problem(1, "url") == ""
    with qtbot.waitSignal(page.save_requested, timeout=1000) as blocker:
        page.save_button.click()
    assert blocker.args[0][("ollama", "hosts")] == [
        {"url": "http://localhost:11434"},
        {
            "url": "http://gpu2:11434",
            "max_concurrent": 2,
            "weight": 0.5,
            "models": ["llama3.2", "nomic-embed-text"],
        },
    ]


def test_the_same_host_twice_and_a_missing_url_are_named(qtbot: QtBot, page: SettingsPage) -> None:
    editor = hosts_editor(page)
    add_row(qtbot, editor)
    add_row(qtbot, editor)
    type_cell(qtbot, editor, 1, "url", "http://localhost:11434/")
    add_row(qtbot, editor)
    type_cell(qtbot, editor, 2, "weight", "2")
    assert page.field_error("ollama", "hosts").splitlines() == [
        'ollama.hosts[1].url = "http://localhost:11434/": the same host as ollama.hosts[0]',
        "ollama.hosts[2].url: missing (each [[ollama.hosts]] table needs a url)",
    ]
    assert editor.cell_problem(2, "url").startswith("ollama.hosts[2].url: missing")
    assert not page.save_button.isEnabled()
    editor.table.selectRow(1)
    qtbot.mouseClick(editor.remove_button, Qt.MouseButton.LeftButton)
    assert page.field_error("ollama", "hosts").splitlines() == [
        "ollama.hosts[1].url: missing (each [[ollama.hosts]] table needs a url)"
    ]


def test_a_file_value_with_a_bad_host_is_marked_and_the_good_ones_are_saved(
    qtbot: QtBot, page: SettingsPage
) -> None:
    good = HostSpec("http://gpu1:11434", 2)
    page.load({("ollama", "hosts"): (good,)})
    problem = "ollama.hosts[1].max_concurrent = 0: must be a whole number 1..64"
    page.set_flagged({("ollama", "hosts"): problem})
    assert page.field_warning("ollama", "hosts") == (
        f"Not used from the file: {problem}. The hosts shown run, and Save writes them."
    )
    with qtbot.waitSignal(page.save_requested, timeout=1000) as blocker:
        page.save_button.click()
    assert blocker.args[0] == {("ollama", "hosts"): [good.to_dict()]}


# -- saving through the app, live --------------------------------------------------------------


class Running:
    def __init__(self, companion: Companion, task: asyncio.Task[None], path: Path) -> None:
        self.companion, self.task, self.path = companion, task, path

    @property
    def page(self) -> SettingsPage:
        return self.companion.dashboard.settings


@pytest.fixture
def start_from_file(qtbot, qloop, tmp_path, monkeypatch) -> Iterator[Callable[[str], Running]]:
    """The companion started from a user's file as it is: nothing pinned from the command line
    (which, for api_url, would set the file's hosts aside)."""
    # The desktop app's answer cache is a file in the user's cache directory: this test's own.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    started: list[Running] = []

    def start(text: str) -> Running:
        path = tmp_path / "config.toml"
        path.write_text(text)
        manager = ConfigManager(path)
        loaded = manager.load_initial(create=False)
        controller = Controller(loaded.config, path, port_override=0, drain_seconds=1)
        companion = Companion(controller, manager, tray_available=False, loaded=loaded)
        running = Running(companion, qloop.create_task(companion.run()), path)
        started.append(running)
        qtbot.waitUntil(
            lambda: controller.state in ("serving", "failed", "ollama_down"), timeout=10_000
        )
        companion.dashboard.show_settings()
        companion.dashboard.show()
        qtbot.waitExposed(running.page)
        return running

    yield start
    for running in started:
        running.companion.quit()
        qtbot.waitUntil(running.task.done, timeout=15_000)
        running.task.result()
        running.companion.dashboard.close()
        running.companion.dashboard.deleteLater()


@pytest.fixture
def second_sim(run) -> Iterator[str]:
    settings = simulator.SimulatorSettings(tokens=4, models=("qwen2.5:7b",))
    runner, port = run(simulator.start(settings))
    yield f"http://127.0.0.1:{port}"
    run(runner.cleanup())


def user_file(api_url: str, hosts: str = "") -> str:
    text = (
        default_toml()
        .replace('api_url = "http://localhost:11434"', f'api_url = "{api_url}"')
        .replace("warm_up = true", "warm_up = false")
        .replace("ttl_seconds = 3600", "ttl_seconds = 3600  # an hour, as agreed")
    )
    if hosts:
        text = text.replace(HOSTS_LINE + "\n", "").replace("\n[cache]", f"\n{hosts}\n[cache]")
    return text


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.json()


def test_a_second_host_added_on_the_page_is_saved_as_tables_and_runs(
    start_from_file, run, qtbot: QtBot, sim_url: str, second_sim: str
) -> None:
    app = start_from_file(user_file(sim_url))
    page, before = app.page, app.path.read_text()
    editor = hosts_editor(page)
    add_row(qtbot, editor)  # starts with api_url, the simulator in use
    add_row(qtbot, editor)
    type_cell(qtbot, editor, 1, "url", second_sim)
    type_cell(qtbot, editor, 1, "max_concurrent", "2")
    type_cell(qtbot, editor, 1, "models", "qwen2.5:7b")
    assert page.save_button.isEnabled()
    page.save_button.click()
    qtbot.waitUntil(lambda: page.status_text().startswith("Saved."), timeout=5000)

    text = app.path.read_text()
    assert [line for line in text.splitlines() if line.startswith("[[")] == ["[[ollama.hosts]]"] * 2
    assert tomlkit.parse(text).unwrap()["ollama"]["hosts"] == [
        {"url": sim_url},
        {"url": second_sim, "max_concurrent": 2, "models": ["qwen2.5:7b"]},
    ]
    assert load(app.path, env={}).ollama.hosts == (
        HostSpec(sim_url),
        HostSpec(second_sim, 2, 1.0, ("qwen2.5:7b",)),
    )
    # Comments elsewhere are kept, only the hosts changed, and the next section stands apart.
    assert "\n\n[cache]\n" in text
    assert "ttl_seconds = 3600  # an hour, as agreed" in text
    assert "# Cache complete answers in RAM" in text
    assert text.startswith(before.split("[ollama]")[0])
    # Applied live, as api_url is: no restart, and /api/tags lists both hosts' models.
    assert "Applied without a restart: [ollama].hosts." in page.status_text()
    assert "Restarting" not in page.status_text()
    assert not page.save_button.isEnabled()  # what runs is what the form shows
    controller = app.companion.controller
    hosts = controller.gateway.hosts.hosts
    assert [(h.url, h.max_concurrent) for h in hosts] == [(sim_url, 1), (second_sim, 2)]
    qtbot.waitUntil(lambda: all(h.state == "up" for h in hosts), timeout=10_000)
    tags = run(get_json(f"http://127.0.0.1:{controller.host.port}/api/tags"))
    assert {m["name"] for m in tags["models"]} == {"llama3.2:latest", "qwen2.5:7b"}


def test_a_file_with_hosts_is_shown_clean_and_not_rewritten(
    start_from_file, qtbot: QtBot, sim_url: str, second_sim: str
) -> None:
    hosts = (
        "# The two boxes under the desk.\n"
        "[[ollama.hosts]]\n"
        f'url = "{sim_url}"  # the old one\n'
        "max_concurrent = 1\n"
        "\n"
        "[[ollama.hosts]]\n"
        f'url = "{second_sim}"\n'
        "weight = 2.5\n"
        'models = ["qwen2.5:7b"]\n'
    )
    app = start_from_file(user_file("http://localhost:1", hosts))
    page, before = app.page, app.path.read_text()
    editor = hosts_editor(page)
    assert editor.raw() == [
        {"url": sim_url, "max_concurrent": 1},
        {"url": second_sim, "weight": 2.5, "models": ["qwen2.5:7b"]},
    ]
    assert page.field_error("ollama", "hosts") == ""
    assert page.save_hint.text() == "No unsaved changes"
    assert not page.save_button.isEnabled()

    page.field("cache", "ttl_seconds").setValue(600)
    page.save_button.click()
    qtbot.waitUntil(lambda: page.status_text().startswith("Saved."), timeout=5000)
    after = app.path.read_text()
    assert after == before.replace("ttl_seconds = 3600", "ttl_seconds = 600")
    assert hosts in after  # byte for byte, comments included

    # The same through the manager given every running value (hosts as the gateway holds them).
    values = values_of(app.companion.controller.gateway.config)
    values[("cache", "ttl_seconds")] = 700
    task = app.companion.config_manager.save(values)
    qtbot.waitUntil(task.done, timeout=5000)
    task.result()
    assert app.path.read_text() == before.replace("ttl_seconds = 3600", "ttl_seconds = 700")


def test_editing_the_hosts_on_the_page_keeps_the_files_comments(
    start_from_file, qtbot: QtBot, sim_url: str, second_sim: str
) -> None:
    first = (
        "# The two boxes under the desk.\n"
        "[[ollama.hosts]]  # the old one\n"
        "# 8 GB of VRAM\n"
        f'url = "{sim_url}"\n'
        "max_concurrent = 1  # more and it swaps\n"
    )
    second = (
        "\n# The new box.\n"
        "[[ollama.hosts]]\n"
        f'url = "{second_sim}"  # on the 10G switch\n'
        'models = ["qwen2.5:7b"]  # the only one that fits\n'
    )
    app = start_from_file(user_file("http://localhost:1", first + second))
    page, before = app.page, app.path.read_text()
    editor = hosts_editor(page)

    def save() -> str:
        assert page.status_text() == ""  # the edit cleared the last "Saved."
        page.save_button.click()
        qtbot.waitUntil(lambda: page.status_text().startswith("Saved."), timeout=5000)
        return app.path.read_text()

    # One field of one host: that line changes, its comment and every other line stay.
    type_cell(qtbot, editor, 1, "max_concurrent", "3")
    second = second.replace("models =", "max_concurrent = 3\nmodels =")
    assert save() == before.replace(
        first + second.replace("max_concurrent = 3\n", ""), first + second
    )
    # The first host removed: its table goes, the comment above the list and the second
    # host's own stay.
    editor.table.selectRow(0)
    qtbot.mouseClick(editor.remove_button, Qt.MouseButton.LeftButton)
    text = save()
    assert text == before.replace(
        first + second.replace("max_concurrent = 3\n", ""),
        "# The two boxes under the desk.\n" + second,
    )
    # A host added: a table of its own after the others, which keep their comments.
    row = add_row(qtbot, editor)
    type_cell(qtbot, editor, row, "url", sim_url)
    type_cell(qtbot, editor, row, "weight", "2")
    added = f'\n[[ollama.hosts]]\nurl = "{sim_url}"\nweight = 2.0\n'
    assert save() == text.replace(second, second + added)
    assert "Applied without a restart: [ollama].hosts." in page.status_text()
    assert "Restarting" not in page.status_text()
    assert load(app.path, env={}).ollama.hosts == (
        HostSpec(second_sim, 3, 1.0, ("qwen2.5:7b",)),
        HostSpec(sim_url, None, 2.0),
    )
    hosts = app.companion.controller.gateway.hosts.hosts
    assert [(h.url, h.max_concurrent, h.weight) for h in hosts] == [
        (second_sim, 3, 1.0),
        (sim_url, 1, 2.0),
    ]


def test_an_api_url_from_the_command_line_marks_the_hosts_as_set_aside(
    start_app, qtbot: QtBot, sim_url: str
) -> None:
    hosts = f'[[ollama.hosts]]\nurl = "{sim_url}"\nmax_concurrent = 2\n'
    app = start_app(file_text=user_file("http://localhost:1", hosts))  # pins api_url
    page = app.companion.dashboard.settings
    assert app.controller.gateway.config.ollama.hosts == ()  # api_url alone runs
    assert page.field_source("ollama", "hosts") == (
        "Set by the command line for [ollama].api_url, which wins over the config file: an edit "
        "here is saved to the file but does not run."
    )
