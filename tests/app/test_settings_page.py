"""The Settings page driven through its widgets: editors from the registry, live validation with
the server's messages, Save / Revert / Restore defaults, models, connection test, notices, and
the Settings tab of the dashboard."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
)
from pytestqt.qtbot import QtBot

from app.dashboard import DashboardWindow
from app.settings import SettingsPage
from app.settings.list_editor import ListEditor
from server.config import registry, validate_value

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]

KeyId = tuple[str, str]
DEFAULTS: dict[KeyId, Any] = {(k.section, k.name): k.default for k in registry()}
# A running configuration in which every key differs from its default.
RUNNING: dict[KeyId, Any] = {
    **DEFAULTS,
    ("server", "host"): "0.0.0.0",
    ("server", "port"): 9090,
    ("server", "max_body_kb"): 2048,
    ("server", "idle_timeout_seconds"): 30.0,
    ("server", "header_timeout_seconds"): 5.0,
    ("server", "body_timeout_seconds"): 20.0,
    ("server", "max_connections"): 512,
    ("ollama", "api_url"): "http://gpu-box:11434",
    ("ollama", "model"): "qwen2.5:7b",
    ("ollama", "system_prompt"): "Be brief.\nAnswer in English.",
    ("ollama", "keep_alive"): "1h30m",
    ("ollama", "timeout_seconds"): 120.5,
    ("ollama", "connect_timeout_seconds"): 2.5,
    ("ollama", "warm_up"): False,
    ("ollama", "probe_interval_seconds"): 30.0,
    ("ollama", "allow_management"): False,
    ("cache", "enabled"): False,
    ("cache", "max_size_mb"): 512,
    ("cache", "ttl_seconds"): 60,
    ("queue", "max_concurrent"): 2,
    ("queue", "max_queue_size"): 10,
    ("queue", "estimated_time_per_request_ms"): 1000,
    ("queue", "ticket_ttl_seconds"): 30,
    ("queue", "state_file"): "/var/lib/chatbot/queue.json",
    ("batch", "enabled"): False,
    ("batch", "max_batch_size"): 5,
    ("batch", "batch_timeout_ms"): 100,
    ("cache", "scope"): "per_key",
    ("cors", "allowed_origins"): ["http://localhost:5173", "*"],
    ("auth", "keys"): ["alice:admin:sha256:" + "ab" * 32],
    ("auth", "allow_anonymous"): True,
    ("auth", "user_header"): "X-OpenWebUI-User-Id",
    ("auth", "max_waiting_per_user"): 3,
    ("auth", "requests_per_minute_per_user"): 60,
    ("logging", "level"): "debug",
    ("ollama", "hosts"): [
        {"url": "http://gpu-box:11434", "max_concurrent": 2},
        {"url": "http://gpu-two:11434", "weight": 2.0, "models": ["qwen2.5:7b"]},
    ],
    ("cache", "backend"): "sqlite",
    ("cache", "disk_path"): "/var/cache/chatbot/answers.sqlite3",
    ("cache", "disk_max_size_mb"): 2048,
    ("cache", "redis_url"): "redis://cache-box:6379/0",
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


def edits(values: dict[KeyId, Any]) -> dict[KeyId, Any]:
    """What a Save of a form holding `values` writes: only what differs from what runs."""
    return {k: v for k, v in values.items() if v != RUNNING.get(k)}


def saved(qtbot: QtBot, page: SettingsPage) -> dict[KeyId, Any]:
    assert page.save_button.isEnabled()
    with qtbot.waitSignal(page.save_requested, timeout=1000) as blocker:
        page.save_button.click()
    return blocker.args[0]


def retype(qtbot: QtBot, widget: QLineEdit | QSpinBox | QDoubleSpinBox, text: str) -> None:
    """Select everything in the field and type `text` over it, as a user would."""
    widget.setFocus()
    widget.selectAll()
    if text:
        qtbot.keyClicks(widget, text)
    else:
        qtbot.keyClick(widget, Qt.Key.Key_Delete)


def open_list_editor(qtbot: QtBot, editor: ListEditor) -> QLineEdit:
    def found() -> QLineEdit | None:
        # The row's open editor: one just closed is hidden, and deleted only later.
        lines = editor.list_widget.viewport().findChildren(QLineEdit)
        return next((line for line in lines if line.isVisible()), None)

    qtbot.waitUntil(lambda: found() is not None, timeout=1000)
    line = found()
    assert line is not None
    return line


def list_editor(page: SettingsPage) -> ListEditor:
    editor = page.field("cors", "allowed_origins")
    assert isinstance(editor, ListEditor)
    return editor


# -- built from the registry ------------------------------------------------------------------


def test_every_registry_key_has_a_field_labelled_with_its_name_and_help(
    page: SettingsPage,
) -> None:
    labels = {label.buddy(): label for label in page.findChildren(QLabel) if label.buddy()}
    for key in registry():
        editor = page.field(key.section, key.name)
        assert editor.toolTip() == key.help, key.dotted
        assert labels[editor].text() == key.name
        assert labels[editor].toolTip() == key.help, key.dotted
        assert page.field_error(key.section, key.name) == ""
    assert set(page.values()) == set(DEFAULTS)


def test_each_kind_of_key_gets_the_fitting_editor(page: SettingsPage) -> None:
    for key in registry():
        editor = page.field(key.section, key.name)
        if key.type == "bool":
            assert isinstance(editor, QCheckBox)
        elif key.type == "int":
            assert isinstance(editor, QSpinBox)
            assert (editor.minimum(), editor.maximum()) == (key.min, key.max), key.dotted
        elif key.type == "float":
            assert isinstance(editor, QDoubleSpinBox)
            assert (editor.minimum(), editor.maximum()) == (key.min, key.max), key.dotted
        elif key.choices:
            assert isinstance(editor, QComboBox) and not editor.isEditable()
            assert [editor.itemText(i) for i in range(editor.count())] == list(key.choices)
        elif key.type == "list":
            assert isinstance(editor, ListEditor)
    assert isinstance(page.field("ollama", "api_url"), QLineEdit)
    model = page.field("ollama", "model")
    assert isinstance(model, QComboBox) and model.isEditable()
    assert isinstance(page.field("ollama", "system_prompt"), QPlainTextEdit)
    assert isinstance(page.field("ollama", "keep_alive"), QLineEdit)


def test_a_page_shows_only_the_keys_it_is_given(qtbot: QtBot) -> None:
    keys = [k for k in registry() if k.section == "cache"]
    p = SettingsPage(keys)
    qtbot.addWidget(p)
    assert set(p.values()) == {("cache", k.name) for k in keys}
    assert p.values()[("cache", "max_size_mb")] == 256
    assert not p.test_button.isVisibleTo(p)  # no URL key to test


# -- load, values, clean ----------------------------------------------------------------------


def test_load_round_trips_every_value_and_leaves_the_form_clean(page: SettingsPage) -> None:
    assert page.values() == RUNNING
    assert not page.is_dirty()
    assert not page.save_button.isEnabled()
    assert not page.revert_button.isEnabled()
    assert page.save_hint.text() == "No unsaved changes"


def test_load_accepts_the_config_as_the_server_holds_it(page: SettingsPage) -> None:
    # Config.to_dict() gives lists, a Config's fields tuples; a numeric keep_alive is seconds.
    page.load({**RUNNING, ("cors", "allowed_origins"): ("*",), ("ollama", "keep_alive"): 300})
    assert page.values()[("cors", "allowed_origins")] == ["*"]
    assert page.values()[("ollama", "keep_alive")] == "300"
    assert not page.is_dirty()


def test_save_is_disabled_on_a_clean_form_and_emits_nothing(
    qtbot: QtBot, page: SettingsPage
) -> None:
    with qtbot.assertNotEmitted(page.save_requested, wait=50):
        page.save_button.click()
    # Editing a value and editing it back is clean again.
    spin = page.field("cache", "max_size_mb")
    assert isinstance(spin, QSpinBox)
    spin.setValue(100)
    assert page.save_button.isEnabled()
    spin.setValue(512)
    assert not page.save_button.isEnabled()
    assert not page.is_dirty()


# -- editing through each kind of widget ------------------------------------------------------


def test_checkbox_edit_is_saved(qtbot: QtBot, page: SettingsPage) -> None:
    box = page.field("cache", "enabled")
    assert isinstance(box, QCheckBox) and not box.isChecked()
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    assert page.values()[("cache", "enabled")] is True
    assert saved(qtbot, page) == {("cache", "enabled"): True}  # only the edit


def test_spin_box_edits_typed_and_stepped_are_saved(qtbot: QtBot, page: SettingsPage) -> None:
    port = page.field("server", "port")
    assert isinstance(port, QSpinBox)
    retype(qtbot, port, "8181")
    ttl = page.field("cache", "ttl_seconds")
    assert isinstance(ttl, QSpinBox)
    ttl.setValue(7200)
    timeout = page.field("ollama", "timeout_seconds")
    assert isinstance(timeout, QDoubleSpinBox)
    retype(qtbot, timeout, "42.25")
    probe = page.field("ollama", "probe_interval_seconds")
    assert isinstance(probe, QDoubleSpinBox)
    probe.setValue(2.5)
    expected = {
        **RUNNING,
        ("server", "port"): 8181,
        ("cache", "ttl_seconds"): 7200,
        ("ollama", "timeout_seconds"): 42.25,
        ("ollama", "probe_interval_seconds"): 2.5,
    }
    assert page.values() == expected
    out = saved(qtbot, page)
    assert out == edits(expected)
    assert type(out[("server", "port")]) is int
    assert type(out[("ollama", "timeout_seconds")]) is float


def test_a_float_shows_without_trailing_zeros(page: SettingsPage) -> None:
    spin = page.field("ollama", "connect_timeout_seconds")
    assert isinstance(spin, QDoubleSpinBox)
    assert spin.text() == "2.5"
    spin.setValue(300)
    assert spin.text() == "300"


def test_text_and_choice_edits_are_saved(qtbot: QtBot, page: SettingsPage) -> None:
    host = page.field("server", "host")
    assert isinstance(host, QLineEdit)
    retype(qtbot, host, "192.168.1.5")
    keep_alive = page.field("ollama", "keep_alive")
    assert isinstance(keep_alive, QLineEdit)
    retype(qtbot, keep_alive, "-1")
    prompt = page.field("ollama", "system_prompt")
    assert isinstance(prompt, QPlainTextEdit)
    prompt.setFocus()
    prompt.selectAll()
    qtbot.keyClicks(prompt, "You are terse.")
    level = page.field("logging", "level")
    assert isinstance(level, QComboBox)
    level.setCurrentText("warning")
    model = page.field("ollama", "model")
    assert isinstance(model, QComboBox)
    retype(qtbot, model.lineEdit(), "mistral")
    expected = {
        **RUNNING,
        ("server", "host"): "192.168.1.5",
        ("ollama", "keep_alive"): "-1",
        ("ollama", "system_prompt"): "You are terse.",
        ("logging", "level"): "warning",
        ("ollama", "model"): "mistral",
    }
    assert page.values() == expected
    assert saved(qtbot, page) == edits(expected)


def test_origin_list_add_edit_and_remove(qtbot: QtBot, page: SettingsPage) -> None:
    editor = list_editor(page)
    lw = editor.list_widget
    assert not editor.remove_button.isEnabled()  # nothing selected
    # Add: a new row opens for typing; Enter commits it.
    editor.add_button.click()
    line = open_list_editor(qtbot, editor)
    qtbot.keyClicks(line, "https://chat.example.com")
    qtbot.keyClick(line, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: lw.item(2).text() == "https://chat.example.com", timeout=1000)
    # Edit the first row in place.
    lw.setCurrentRow(0)
    lw.editItem(lw.item(0))
    line = open_list_editor(qtbot, editor)
    line.selectAll()
    qtbot.keyClicks(line, "http://localhost:8000")
    qtbot.keyClick(line, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: lw.item(0).text() == "http://localhost:8000", timeout=1000)
    # Remove "*".
    lw.setCurrentRow(1)
    assert lw.item(1).text() == "*"
    editor.remove_button.click()
    # A row added and left empty is ignored.
    editor.add_button.click()
    qtbot.keyClick(open_list_editor(qtbot, editor), Qt.Key.Key_Return)
    assert lw.count() == 3
    expected = ["http://localhost:8000", "https://chat.example.com"]
    assert page.values()[("cors", "allowed_origins")] == expected
    assert page.field_error("cors", "allowed_origins") == ""
    assert saved(qtbot, page)[("cors", "allowed_origins")] == expected


def test_an_empty_origin_list_is_allowed(qtbot: QtBot, page: SettingsPage) -> None:
    editor = list_editor(page)
    editor.list_widget.selectAll()
    editor.remove_button.click()
    assert page.values()[("cors", "allowed_origins")] == []
    assert saved(qtbot, page)[("cors", "allowed_origins")] == []


# -- validation -------------------------------------------------------------------------------


def assert_blocked(page: SettingsPage, section: str, name: str, message: str) -> None:
    assert page.field_error(section, name) == message
    assert page.field(section, name).property("invalid") is True
    assert not page.save_button.isEnabled()
    assert f"[{section}].{name}" in page.save_hint.text()
    # What is shown is what the server itself says about the value.
    shown = [label.text() for label in page.findChildren(QLabel) if label.isVisibleTo(page)]
    assert message in shown


def assert_fixed(page: SettingsPage, section: str, name: str) -> None:
    assert page.field_error(section, name) == ""
    assert page.field(section, name).property("invalid") is False
    assert page.save_button.isEnabled()


@pytest.mark.parametrize(
    ("section", "name", "bad", "message", "good"),
    [
        (
            "ollama",
            "api_url",
            "localhost:11434",
            '[ollama].api_url = "localhost:11434": must be an http:// or https:// URL with a '
            "host, e.g. http://localhost:11434",
            "http://localhost:11434",
        ),
        (
            "ollama",
            "keep_alive",
            "forever",
            '[ollama].keep_alive = "forever": must be a duration like 5m, 1h30m, 0 or -1, or a '
            "number of seconds",
            "5m",
        ),
        ("ollama", "model", "  ", '[ollama].model = "  ": must not be empty', "llama3.2"),
        (
            "server",
            "host",
            "",
            '[server].host = "": must be an IP address or host name',
            "localhost",
        ),
    ],
)
def test_an_invalid_text_shows_the_servers_message_and_blocks_save(
    qtbot: QtBot, page: SettingsPage, section: str, name: str, bad: str, message: str, good: str
) -> None:
    editor = page.field(section, name)
    line = editor.lineEdit() if isinstance(editor, QComboBox) else editor
    assert isinstance(line, QLineEdit)
    with qtbot.assertNotEmitted(page.save_requested, wait=50):
        retype(qtbot, line, bad)
        assert_blocked(page, section, name, message)
        page.save_button.click()
    retype(qtbot, line, good)
    assert_fixed(page, section, name)
    assert saved(qtbot, page)[(section, name)] == good


def test_a_number_out_of_range_as_typed_shows_the_servers_message(
    qtbot: QtBot, page: SettingsPage
) -> None:
    spin = page.field("cache", "max_size_mb")
    assert isinstance(spin, QSpinBox)
    retype(qtbot, spin, "0")
    assert_blocked(
        page, "cache", "max_size_mb", "[cache].max_size_mb = 0: must be a whole number 1..65536"
    )
    retype(qtbot, spin, "")
    assert page.field_error("cache", "max_size_mb") == (
        '[cache].max_size_mb = "": must be a whole number 1..65536'
    )
    retype(qtbot, spin, "64")
    assert_fixed(page, "cache", "max_size_mb")
    assert saved(qtbot, page)[("cache", "max_size_mb")] == 64


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        (
            "http://localhost:3000/app",
            "'http://localhost:3000/app' is not an origin (scheme://host[:port], no path) or \"*\"",
        ),
        (
            "localhost:3000",
            "'localhost:3000' is not an origin (scheme://host[:port], no path) or \"*\"",
        ),
    ],
)
def test_an_origin_that_is_not_one_is_marked_and_blocks_save(
    qtbot: QtBot, page: SettingsPage, origin: str, reason: str
) -> None:
    editor = list_editor(page)
    lw = editor.list_widget
    editor.add_button.click()
    line = open_list_editor(qtbot, editor)
    qtbot.keyClicks(line, origin)
    qtbot.keyClick(line, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: lw.item(2).text() == origin, timeout=1000)
    message = f'[cors].allowed_origins = ["http://localhost:5173", "*", "{origin}"]: {reason}'
    assert_blocked(page, "cors", "allowed_origins", message)
    key = next(k for k in registry() if k.name == "allowed_origins")
    with pytest.raises(ValueError) as server_says:
        validate_value(key, ["http://localhost:5173", "*", origin])
    assert str(server_says.value) == message
    # The offending entry itself says why, the good ones don't.
    assert lw.item(2).toolTip() == reason
    assert lw.item(0).toolTip() == ""
    lw.setCurrentRow(2)
    editor.remove_button.click()
    assert page.field_error("cors", "allowed_origins") == ""
    assert not page.save_button.isEnabled()  # back to what was loaded: nothing to save


def test_several_invalid_fields_are_all_named(qtbot: QtBot, page: SettingsPage) -> None:
    retype(qtbot, page.field("ollama", "api_url"), "ftp://x")
    retype(qtbot, page.field("ollama", "keep_alive"), "soon")
    assert page.save_hint.text() == "Fix 2 fields to save: [ollama].api_url, [ollama].keep_alive"
    retype(qtbot, page.field("ollama", "api_url"), "https://x")
    assert page.save_hint.text() == "Fix 1 field to save: [ollama].keep_alive"
    retype(qtbot, page.field("ollama", "keep_alive"), "10m")
    assert page.save_hint.text() == "2 unsaved changes"


# -- revert and defaults ----------------------------------------------------------------------


def test_revert_discards_edits(qtbot: QtBot, page: SettingsPage) -> None:
    retype(qtbot, page.field("ollama", "api_url"), "nonsense")
    page.field("cache", "enabled").setChecked(True)
    list_editor(page).set_value(["http://a.test"])
    assert page.is_dirty()
    with qtbot.waitSignal(page.dirty_changed, timeout=1000) as blocker:
        page.revert_button.click()
    assert blocker.args == [False]
    assert page.values() == RUNNING
    assert page.field_error("ollama", "api_url") == ""
    assert not page.save_button.isEnabled()


def test_revert_goes_back_to_the_latest_load(qtbot: QtBot, page: SettingsPage) -> None:
    newer = {**RUNNING, ("queue", "max_concurrent"): 4}
    page.load(newer)
    page.field("queue", "max_concurrent").setValue(8)
    page.revert()
    assert page.values() == newer


def test_restore_defaults_fills_the_registry_defaults_unsaved(
    qtbot: QtBot, page: SettingsPage
) -> None:
    with qtbot.waitSignal(page.dirty_changed, timeout=1000) as blocker:
        page.defaults_button.click()
    assert blocker.args == [True]
    assert page.values() == DEFAULTS
    assert page.save_hint.text() == f"{len(DEFAULTS)} unsaved changes"
    assert saved(qtbot, page) == DEFAULTS
    page.revert()
    assert page.values() == RUNNING


# -- models -----------------------------------------------------------------------------------


def test_set_models_offers_them_and_keeps_the_current_name(page: SettingsPage) -> None:
    model = page.field("ollama", "model")
    assert isinstance(model, QComboBox)
    page.set_models(["llama3.2:latest", "qwen2.5:7b"])
    assert [model.itemText(i) for i in range(model.count())] == ["llama3.2:latest", "qwen2.5:7b"]
    assert model.currentText() == "qwen2.5:7b"
    assert not page.is_dirty()
    assert page.field_warning("ollama", "model") == ""
    model.setCurrentIndex(0)
    assert page.values()[("ollama", "model")] == "llama3.2:latest"


def test_an_unknown_model_warns_but_can_be_saved(qtbot: QtBot, page: SettingsPage) -> None:
    model = page.field("ollama", "model")
    assert isinstance(model, QComboBox)
    retype(qtbot, model.lineEdit(), "phi4")
    assert page.field_warning("ollama", "model") == ""  # nothing reported yet: no opinion
    page.set_models(["llama3.2:latest", "qwen2.5:7b"])
    warning = page.field_warning("ollama", "model")
    assert "not among the models Ollama reports" in warning and "phi4" in warning
    assert warning in [label.text() for label in page.findChildren(QLabel) if label.isVisible()]
    assert page.field_error("ollama", "model") == ""
    assert saved(qtbot, page)[("ollama", "model")] == "phi4"
    # A name without a tag is the ":latest" Ollama lists.
    retype(qtbot, model.lineEdit(), "llama3.2")
    assert page.field_warning("ollama", "model") == ""


# -- connection test --------------------------------------------------------------------------


def test_test_connection_carries_the_url_typed(qtbot: QtBot, page: SettingsPage) -> None:
    retype(qtbot, page.field("ollama", "api_url"), "http://10.0.0.7:11434")
    with qtbot.waitSignal(page.test_connection_requested, timeout=1000) as blocker:
        page.test_button.click()
    assert blocker.args == ["http://10.0.0.7:11434"]
    page.show_connection_result(True, "Ollama 0.5.7 · 3 models")
    assert page.connection_result.text() == "Ollama 0.5.7 · 3 models"
    page.show_connection_result(False, "Ollama not reachable at http://10.0.0.7:11434")
    assert page.connection_result.text() == "Ollama not reachable at http://10.0.0.7:11434"
    # Another URL: the old result no longer applies; an invalid one cannot be tested.
    retype(qtbot, page.field("ollama", "api_url"), "10.0.0.7")
    assert page.connection_result.text() == ""
    assert not page.test_button.isEnabled()


def test_connection_results_are_coloured_green_and_red(page: SettingsPage) -> None:
    page.show_connection_result(True, "ok")
    green = page.connection_result.palette().color(QPalette.ColorRole.WindowText)
    page.show_connection_result(False, "no")
    red = page.connection_result.palette().color(QPalette.ColorRole.WindowText)
    assert green.green() > green.red() and red.red() > red.green()


# -- notices and the raw view -----------------------------------------------------------------


def test_set_status_shows_a_line_and_hides_when_empty(page: SettingsPage) -> None:
    text = (
        "Applied: [cache].max_size_mb, [cors].allowed_origins. "
        "Restarting the server for [server].port…"
    )
    page.set_status(text, "ok")
    assert page.status.isVisible() and page.status_text() == text
    assert page.status.kind() == "ok"
    page.set_status("Could not save: disk full; the file was left as it was", "error")
    assert page.status.kind() == "error"
    assert page.status_text() == "Could not save: disk full; the file was left as it was"
    page.set_status("", "info")
    assert not page.status.isVisible()


def test_file_problems_are_listed_in_a_box(page: SettingsPage) -> None:
    problems = [
        "[cache].max_size_mb = 0: must be a whole number 1..65536",
        "[cors].allowed_origins = [\"<script>\"]: '<script>' is not an origin",
    ]
    page.set_file_problems(problems, "The config file has errors; running on its other values:")
    assert page.file_problems.isVisible()
    assert page.open_file_button.isVisible()  # what to do about it, right there
    text = page.file_problems_text()
    assert text.startswith("The config file has errors; running on its other values:")
    for problem in problems:
        assert f"• {problem}" in text  # verbatim: plain text, not HTML
    page.set_file_problems([])
    assert not page.file_problems.isVisible()
    assert not page.open_file_button.isVisible()


def test_a_marked_key_counts_as_a_change_and_is_saved_with_the_edits(
    qtbot: QtBot, page: SettingsPage
) -> None:
    page.set_flagged({("cache", "ttl_seconds"): "[cache].ttl_seconds = -5: must be 1..31536000"})
    assert page.field_warning("cache", "ttl_seconds") == (
        "The file's value -5 is not used (must be 1..31536000): this one runs, and Save writes it."
    )
    assert page.save_button.isEnabled()
    page.field("queue", "max_concurrent").setValue(5)
    assert saved(qtbot, page) == {
        ("queue", "max_concurrent"): 5,
        ("cache", "ttl_seconds"): RUNNING[("cache", "ttl_seconds")],
    }
    page.set_flagged({})
    assert page.field_warning("cache", "ttl_seconds") == ""


def test_raw_view_shows_the_toml_read_only_with_its_path(qtbot: QtBot, page: SettingsPage) -> None:
    view = page.raw_view
    assert not view.open_button.isEnabled()  # nothing to open yet
    toml = "[server]\nport = 9090\n\n[cache]\nmax_size_mb = 512\n"
    page.set_raw_toml(toml, "/home/ada/.config/chatbot-companion/config.toml")
    assert view.text() == toml
    assert view.path_label.text() == "/home/ada/.config/chatbot-companion/config.toml"
    assert view.text_edit.isReadOnly()
    # What the reader sees: every character as wide as the next, so the TOML lines up.
    metrics = view.text_edit.fontMetrics()
    assert len({metrics.horizontalAdvance(c * 10) for c in "iM0 =[]"}) == 1
    with qtbot.waitSignal(page.open_file_requested, timeout=1000):
        view.open_button.click()


# -- palettes ---------------------------------------------------------------------------------


def test_messages_stay_legible_on_a_dark_palette(qtbot: QtBot, page: SettingsPage) -> None:
    retype(qtbot, page.field("ollama", "api_url"), "bad")
    labels = [
        label for label in page.findChildren(QLabel) if label.text().startswith("[ollama].api_url")
    ]
    assert len(labels) == 1
    light = labels[0].palette().color(QPalette.ColorRole.WindowText)
    dark = QPalette(page.palette())
    dark.setColor(QPalette.ColorRole.Window, QColor("#202124"))
    dark.setColor(QPalette.ColorRole.WindowText, QColor("#e8e8e8"))
    page.setPalette(dark)
    on_dark = labels[0].palette().color(QPalette.ColorRole.WindowText)
    assert on_dark.lightnessF() > light.lightnessF()


# -- the dashboard's Settings tab -------------------------------------------------------------


def test_the_dashboard_has_overview_and_settings_tabs(qtbot: QtBot) -> None:
    window = DashboardWindow()
    qtbot.addWidget(window)
    tabs = window.tabs
    assert [tabs.tabText(i) for i in range(tabs.count())] == ["Overview", "Settings"]
    assert tabs.currentIndex() == 0
    assert isinstance(window.settings, SettingsPage)
    window.show_settings()
    assert tabs.currentWidget() is window.settings
    # The tab says when there is something unsaved.
    window.settings.field("cache", "max_size_mb").setValue(100)
    assert tabs.tabText(1) == "Settings •"
    window.settings.revert()
    assert tabs.tabText(1) == "Settings"
