"""The Settings page's fields say what they hold: a number field keeps what was typed (empty, or
out of range) with the server's message and Save disabled, instead of quietly showing another
value; a value set by the environment is marked from the start; and the notices above the form
do not outlive their news or say one thing twice."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import contextlib
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDoubleSpinBox, QLabel, QSpinBox
from pytestqt.qtbot import QtBot

from app.config_manager import values_of
from app.dashboard import DashboardWindow
from app.settings import SettingsPage
from app.settings.notice import Notice
from server.config import Key, default_toml, registry, validate_value

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

NUMERIC = [k for k in registry() if k.type in ("int", "float")]


@pytest.fixture
def page(qtbot: QtBot) -> SettingsPage:
    p = SettingsPage()
    qtbot.addWidget(p)
    p.resize(1000, 720)
    p.show()
    qtbot.waitExposed(p)
    p.activateWindow()
    return p


def spin_box(page: SettingsPage, key: Key) -> QSpinBox | QDoubleSpinBox:
    editor = page.field(key.section, key.name)
    assert isinstance(editor, QSpinBox | QDoubleSpinBox)
    return editor


def retype(qtbot: QtBot, spin: QSpinBox | QDoubleSpinBox, text: str) -> None:
    """Select everything in the field and type `text` over it, as a user would."""
    spin.window().activateWindow()
    spin.setFocus()
    qtbot.waitUntil(spin.hasFocus, timeout=1000)
    spin.selectAll()
    qtbot.keyClick(spin, Qt.Key.Key_Delete)
    qtbot.keyClicks(spin, text)


def tab_away(qtbot: QtBot, spin: QSpinBox | QDoubleSpinBox) -> None:
    qtbot.keyClick(spin, Qt.Key.Key_Tab)
    qtbot.waitUntil(lambda: not spin.hasFocus(), timeout=1000)  # the focus-out really happened


def server_says(key: Key, text: str) -> str:
    """The server's message for `text` in `key`, as typed in a field."""
    value: Any = text
    with contextlib.suppress(ValueError):
        value = int(text) if key.type == "int" else float(text)
    with pytest.raises(ValueError) as exc:
        validate_value(key, value)
    return str(exc.value)


def shown_texts(page: SettingsPage) -> list[str]:
    return [label.text() for label in page.findChildren(QLabel) if label.isVisibleTo(page)]


def assert_blocked(page: SettingsPage, key: Key, spin: QSpinBox | QDoubleSpinBox, typed: str):
    message = server_says(key, typed)
    assert spin.text() == typed  # what the user typed, not another value
    assert page.field_error(key.section, key.name) == message
    assert message in shown_texts(page)
    assert not page.save_button.isEnabled()
    assert key.dotted in page.save_hint.text()


PORT = next(k for k in registry() if k.dotted == "[server].port")


# -- 1. an emptied field stays empty, with its error ------------------------------------------


@pytest.mark.parametrize("leave", ["tab", "enter"])
def test_an_emptied_port_stays_empty_with_its_error_when_left(
    qtbot: QtBot, page: SettingsPage, leave: str
) -> None:
    spin = spin_box(page, PORT)
    retype(qtbot, spin, "")
    assert page.field_error("server", "port") == server_says(PORT, "")
    assert server_says(PORT, "") == '[server].port = "": must be a whole number 1..65535'
    if leave == "tab":
        tab_away(qtbot, spin)
    else:
        qtbot.keyClick(spin, Qt.Key.Key_Return)
    # The field, its message and Save agree: empty, an error naming the key, nothing to save.
    assert spin.text() == ""
    assert_blocked(page, PORT, spin, "")
    assert page.save_hint.text() == "Fix 1 field to save: [server].port"

    retype(qtbot, spin, "8181")
    assert page.field_error("server", "port") == ""
    with qtbot.waitSignal(page.save_requested, timeout=1000) as blocker:
        page.save_button.click()
    assert blocker.args[0] == {("server", "port"): 8181}


def test_an_emptied_port_stays_empty_across_the_dashboards_tabs(qtbot: QtBot) -> None:
    window = DashboardWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    window.show_settings()
    page = window.settings
    spin = spin_box(page, PORT)
    retype(qtbot, spin, "")
    window.tabs.setCurrentIndex(0)  # the Overview: the page and its fields are hidden
    assert not spin.isVisible()
    window.show_settings()
    assert spin.text() == ""
    assert_blocked(page, PORT, spin, "")
    assert window.tabs.tabText(1) == "Settings •"


def test_a_spin_box_emptied_then_set_by_the_form_shows_the_value(
    qtbot: QtBot, page: SettingsPage
) -> None:
    spin = spin_box(page, PORT)
    retype(qtbot, spin, "")
    page.revert()  # the form is filled again: what was typed goes
    assert spin.text() == "8080"
    assert page.field_error("server", "port") == ""
    assert not page.save_button.isEnabled()  # nothing changed


# -- 2. out of range: said, not altered -------------------------------------------------------


def test_99999_in_the_port_field_is_kept_and_named_with_the_range(
    qtbot: QtBot, page: SettingsPage
) -> None:
    spin = spin_box(page, PORT)
    retype(qtbot, spin, "99999")
    assert spin.text() == "99999"
    assert page.field_error("server", "port") == (
        "[server].port = 99999: must be a whole number 1..65535"
    )
    tab_away(qtbot, spin)
    assert_blocked(page, PORT, spin, "99999")
    # An arrow steps into the range from there (a choice the user makes, not a silent one).
    spin.setFocus()
    qtbot.keyClick(spin, Qt.Key.Key_Down)
    assert spin.text() == "65534"
    assert page.field_error("server", "port") == ""
    assert page.save_button.isEnabled()


def _above(key: Key) -> str:
    assert key.max is not None
    return str(int(key.max) + 1)


@pytest.mark.parametrize("key", NUMERIC, ids=lambda k: k.dotted)
def test_every_number_field_keeps_a_value_above_its_maximum_and_says_so(
    qtbot: QtBot, page: SettingsPage, key: Key
) -> None:
    spin = spin_box(page, key)
    typed = _above(key)
    retype(qtbot, spin, typed)
    assert_blocked(page, key, spin, typed)
    assert f"..{_fmt_bound(key.max)}" in page.field_error(key.section, key.name)
    tab_away(qtbot, spin)
    assert_blocked(page, key, spin, typed)


@pytest.mark.parametrize("key", NUMERIC, ids=lambda k: k.dotted)
def test_every_number_field_keeps_a_negative_value_and_says_so(
    qtbot: QtBot, page: SettingsPage, key: Key
) -> None:
    # The spin box used to drop the "-": "-5" became "5", a valid value the user never typed.
    spin = spin_box(page, key)
    retype(qtbot, spin, "-5")
    assert_blocked(page, key, spin, "-5")
    tab_away(qtbot, spin)
    assert_blocked(page, key, spin, "-5")


def test_letters_are_still_refused_as_typed(qtbot: QtBot, page: SettingsPage) -> None:
    spin = spin_box(page, PORT)
    retype(qtbot, spin, "80a81")
    assert spin.text() == "8081"
    assert page.field_error("server", "port") == ""


def _fmt_bound(bound: float | None) -> str:
    assert bound is not None
    return str(int(bound)) if float(bound).is_integer() else str(bound)


# -- 3. values set outside the file are marked from the start ---------------------------------


def test_a_value_from_the_environment_is_marked_before_any_save(start_app, qtbot, monkeypatch):
    monkeypatch.setenv("CHATBOT_QUEUE_MAX_CONCURRENT", "3")
    monkeypatch.setenv("NEXT_PUBLIC_OLLAMA_MODEL", "qwen2.5:7b")
    monkeypatch.setenv("CHATBOT_CACHE_TTL_SECONDS", "-5")  # invalid: reported, does not run
    app = start_app(file_text=default_toml())
    page = app.companion.dashboard.settings
    assert page.values()[("queue", "max_concurrent")] == 3  # what runs
    shown = shown_texts(page)
    for section, name, var in [
        ("queue", "max_concurrent", "CHATBOT_QUEUE_MAX_CONCURRENT"),
        ("ollama", "model", "NEXT_PUBLIC_OLLAMA_MODEL"),
    ]:
        marker = (
            f"Set by the environment variable {var}, which wins over the config file: an edit "
            "here is saved to the file but does not run."
        )
        assert marker in shown, (section, name)
        assert var in page.field(section, name).toolTip()
    # The fixture pins the Ollama URL as the command line would.
    assert any(t.startswith("Set by the command line") for t in shown)
    assert "Set by" not in page.field("cache", "ttl_seconds").toolTip()
    assert "Set by" not in page.field("cache", "max_size_mb").toolTip()
    assert page.status_text() == ""  # nothing was saved


# -- 4. notices that outlive their news -------------------------------------------------------


def visible_error_notices(page: SettingsPage) -> list[Notice]:
    return [n for n in page.findChildren(Notice) if n.isVisibleTo(page) and n.kind() == "error"]


def save(app, qtbot: QtBot, **changes: Any) -> None:
    """Save through the manager what the Settings page's Save sends, and wait for "Saved"."""
    values = values_of(app.controller.gateway.config)
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        values[(section, name)] = value
    task = app.companion.config_manager.save(values)
    qtbot.waitUntil(task.done, timeout=5000)
    task.result()
    page = app.companion.dashboard.settings
    assert page.status_text().startswith("Saved.")
    assert page.status.isVisibleTo(page)


def test_saved_goes_as_soon_as_the_form_is_edited(start_app, qtbot):
    app = start_app()
    page = app.companion.dashboard.settings
    app.companion.dashboard.show_settings()
    app.companion.dashboard.show()
    qtbot.waitExposed(page)
    save(app, qtbot, cache__max_size_mb=64)
    retype(qtbot, spin_box(page, PORT), "")  # an invalid edit is pending
    assert not page.save_button.isEnabled()
    assert not page.status.isVisibleTo(page)
    assert not any(t.startswith("Saved") for t in shown_texts(page))


def test_a_save_error_stays_while_the_form_is_edited(qtbot: QtBot, page: SettingsPage) -> None:
    page.set_status("Could not save: disk full; the file was left as it was", "error")
    retype(qtbot, spin_box(page, PORT), "8181")
    assert page.status_text() == "Could not save: disk full; the file was left as it was"


def test_a_broken_outside_edit_shows_one_red_notice(start_app, qtbot):
    app = start_app()
    page = app.companion.dashboard.settings
    app.companion.dashboard.show_settings()
    app.companion.dashboard.show()
    qtbot.waitExposed(page)
    save(app, qtbot, cache__max_size_mb=64)
    path = app.controller.config_path
    path.write_text(path.read_text().replace("max_size_mb = 64", "max_size_mb = 0"))
    qtbot.waitUntil(lambda: bool(page.file_problems_text()), timeout=5000)
    problem = "[cache].max_size_mb = 0: must be a whole number 1..65536"
    assert visible_error_notices(page) == [page.file_problems]
    assert "still running the configuration it had before" in page.file_problems_text()
    assert problem in page.file_problems_text()
    # The error is said once on the page, and the "Saved" from before the edit is gone.
    assert sum(problem in t for t in shown_texts(page)) == 1
    assert not page.status.isVisibleTo(page)
