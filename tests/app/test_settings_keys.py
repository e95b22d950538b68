"""API keys on the Settings page: stored entries read as "name (role)", Create key… shows a new
key once and adds only its hash to the form, Revoke removes an entry, and the server's own check
judges the list."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import logging
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QLineEdit
from pytestqt.qtbot import QtBot

from app.dashboard import DashboardWindow
from app.settings import SettingsPage
from app.settings.key_dialog import NAME_RULE, CreateKeyDialog
from app.settings.keys import KeysEditor
from server.auth import digest, parse_key_entry
from server.config import registry

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

KeyId = tuple[str, str]
ALICE = "alice:admin:sha256:" + "ab" * 32
CI = "ci-runner:batch:sha256:" + "cd" * 32
RUNNING: dict[KeyId, Any] = {
    **{(k.section, k.name): k.default for k in registry()},
    ("auth", "keys"): [ALICE, CI],
}


@pytest.fixture
def page(qtbot: QtBot) -> SettingsPage:
    p = SettingsPage()
    qtbot.addWidget(p)
    p.resize(1000, 720)
    p.show()
    qtbot.waitExposed(p)
    p.load(RUNNING)
    return p


def keys_editor(page: SettingsPage) -> KeysEditor:
    editor = page.field("auth", "keys")
    assert isinstance(editor, KeysEditor)
    return editor


def open_dialog(qtbot: QtBot, editor: KeysEditor) -> CreateKeyDialog:
    editor.create_button.click()
    # click() returned with the dialog up: it was open()ed, no nested exec() loop.
    dialog = editor.dialog
    assert dialog is not None
    qtbot.waitExposed(dialog)
    return dialog


def create(qtbot: QtBot, editor: KeysEditor, name: str, role: str = "user") -> tuple[str, str]:
    """Create a key through the dialog as a user would; (the key shown, its dialog closed)."""
    dialog = open_dialog(qtbot, editor)
    qtbot.keyClicks(dialog.name_field, name)
    dialog.role_field.setCurrentText(role)
    assert dialog.create_button.isEnabled()
    dialog.create_button.click()
    key = dialog.shown_key()
    dialog.done_button.click()
    qtbot.waitUntil(lambda: not shiboken6.isValid(dialog), timeout=1000)
    return key, editor.raw()[-1]


def saved(qtbot: QtBot, page: SettingsPage) -> dict[KeyId, Any]:
    assert page.save_button.isEnabled()
    with qtbot.waitSignal(page.save_requested, timeout=1000) as blocker:
        page.save_button.click()
    return blocker.args[0]


def texts_on_screen() -> list[str]:
    return [w.text() for w in QApplication.allWidgets() if isinstance(w, QLineEdit)]


def test_stored_keys_read_as_name_and_role_and_edit_as_entries(
    qtbot: QtBot, page: SettingsPage
) -> None:
    editor = keys_editor(page)
    assert editor.shown_texts() == ["alice (admin)", "ci-runner (batch)"]
    lw = editor.list_widget
    assert lw.item(0).toolTip() == ALICE  # the stored entry, for whoever wants to see it
    assert editor.remove_button.text() == "Revoke"
    # An entry that does not parse is shown as it is, marked, with the server's reason.
    editor.set_value([ALICE, "bob:user:sha256:123"])
    assert editor.shown_texts() == ["alice (admin)", "bob:user:sha256:123"]
    assert "is not name:role:sha256:<64 hex digits>" in lw.item(1).toolTip()
    assert page.field_error("auth", "keys").startswith("[auth].keys: ")
    assert not page.save_button.isEnabled()
    # Editing a row opens the stored entry itself, not its description.
    lw.editItem(lw.item(0))
    qtbot.waitUntil(lambda: lw.viewport().findChild(QLineEdit) is not None, timeout=1000)
    line = lw.viewport().findChild(QLineEdit)
    assert line is not None and line.text() == ALICE


def test_create_key_shows_the_key_once_and_saves_only_its_hash(
    qtbot: QtBot, page: SettingsPage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatbot")
    editor = keys_editor(page)
    dialog = open_dialog(qtbot, editor)
    assert not dialog.create_button.isEnabled()  # no name yet
    qtbot.keyClicks(dialog.name_field, "bob")
    dialog.role_field.setCurrentText("batch")
    assert "queue behind interactive ones" in dialog.role_help.text()
    dialog.create_button.click()

    key = dialog.shown_key()
    assert key.startswith("cbk_") and len(key) == 47
    assert dialog.key_field.isReadOnly()
    assert dialog.key_field.selectedText() == key  # ready to copy
    assert "only time the key is shown" in dialog.once_note.text()
    assert dialog.heading.text() == "The new key for bob (batch)"
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == key
    # The form holds the entry: the name, the role and the key's hash; never the key.
    entry = editor.raw()[-1]
    assert parse_key_entry(entry).digest == digest(key)
    assert entry == f"bob:batch:sha256:{digest(key)}"
    assert editor.shown_texts()[-1] == "bob (batch)"
    assert editor.list_widget.currentRow() == 2  # the new one is the one selected
    assert key not in str(page.values())
    assert page.is_dirty()

    dialog.done_button.click()
    qtbot.waitUntil(lambda: not shiboken6.isValid(dialog), timeout=1000)
    assert editor.dialog is None
    assert key not in texts_on_screen()
    assert key not in caplog.text
    assert "created an API key for 'bob' (batch)" in caplog.text
    # Save writes that one change, through the normal path.
    assert saved(qtbot, page) == {("auth", "keys"): [ALICE, CI, entry]}


def test_cancel_or_escape_adds_nothing(qtbot: QtBot, page: SettingsPage) -> None:
    editor = keys_editor(page)
    dialog = open_dialog(qtbot, editor)
    qtbot.keyClicks(dialog.name_field, "bob")
    dialog.buttons.rejected.emit()
    qtbot.waitUntil(lambda: editor.dialog is None, timeout=1000)
    dialog = open_dialog(qtbot, editor)
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: editor.dialog is None, timeout=1000)
    assert editor.raw() == [ALICE, CI]
    assert not page.is_dirty()


def test_a_second_click_raises_the_open_dialog(qtbot: QtBot, page: SettingsPage) -> None:
    editor = keys_editor(page)
    first = open_dialog(qtbot, editor)
    assert editor.open_create_dialog() is first
    first.reject()


def test_a_name_the_server_would_refuse_cannot_be_created(qtbot: QtBot, page: SettingsPage) -> None:
    dialog = open_dialog(qtbot, keys_editor(page))
    for bad in ("dave smith", "dave:admin", "é"):
        dialog.name_field.setText(bad)
        assert not dialog.create_button.isEnabled(), bad
        assert dialog.name_note.text() == NAME_RULE
    dialog.name_field.setText("dave.smith@example.com")
    assert dialog.create_button.isEnabled()
    assert not dialog.name_note.isVisibleTo(dialog)
    dialog.reject()


def test_a_replacement_key_must_revoke_the_old_one_before_saving(
    qtbot: QtBot, page: SettingsPage
) -> None:
    editor = keys_editor(page)
    dialog = open_dialog(qtbot, editor)
    qtbot.keyClicks(dialog.name_field, "alice")
    # Allowed (that is how a key is replaced), with a warning saying what comes next.
    assert dialog.create_button.isEnabled()
    assert "A key named 'alice' exists: revoke it before saving" in dialog.name_note.text()
    dialog.reject()
    key, entry = create(qtbot, editor, "alice", "admin")
    # The server's own check reports the duplicate, at the field, and Save waits.
    assert page.field_error("auth", "keys") == "[auth].keys: the key name 'alice' is used twice"
    assert not page.save_button.isEnabled()
    assert "[auth].keys" in page.save_hint.text()
    # Revoke the old key: select it and remove it.
    editor.list_widget.setCurrentRow(0)
    assert editor.remove_button.isEnabled()
    editor.remove_button.click()
    assert page.field_error("auth", "keys") == ""
    assert saved(qtbot, page) == {("auth", "keys"): [CI, entry]}
    assert key not in str(page.values())


def test_closing_the_window_takes_the_key_with_it(qtbot: QtBot) -> None:
    window = DashboardWindow()
    qtbot.addWidget(window)
    window.show()
    window.show_settings()
    window.settings.load(RUNNING)
    editor = keys_editor(window.settings)
    dialog = open_dialog(qtbot, editor)
    qtbot.keyClicks(dialog.name_field, "bob")
    dialog.create_button.click()
    key = dialog.shown_key()
    window.close()  # to the tray
    qtbot.waitUntil(lambda: not shiboken6.isValid(dialog), timeout=1000)
    assert editor.dialog is None
    assert key not in texts_on_screen()
    assert window.settings.is_dirty()  # the entry stays, unsaved, for Save or Revert
