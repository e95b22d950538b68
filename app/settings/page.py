"""The Settings page: a form built from the config registry, validated live with the server's
own rules. It renders what it is given and emits signals; saving, applying and testing the
connection are the controller's."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.settings import tones
from app.settings.editors import ModelEditor, make_editor
from app.settings.field_row import FieldRow
from app.settings.hosts_editor import HostsEditor
from app.settings.keys import KeysEditor
from app.settings.list_editor import ListEditor
from app.settings.notice import Notice
from app.settings.raw_view import RawView
from server.config import Key, registry

log = logging.getLogger("chatbot.ui")

KeyId = tuple[str, str]
URL_WIDTH = 340
FILE_PROBLEMS_TITLE = "The config file has errors:"


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    font = QFont(label.font())
    font.setBold(True)
    label.setFont(font)
    label.setContentsMargins(2, 8, 0, 0)
    return label


class SettingsPage(QWidget):
    # object, not dict: a dict signal goes through QVariantMap, which takes string keys only.
    # {(section, name): validated value} for the keys to write: those edited, and those whose
    # value in the file is marked as not used. Every other key keeps what the file says.
    save_requested = Signal(object)
    # The same, after the user confirmed replacing a file that is not TOML.
    replace_requested = Signal(object)
    test_connection_requested = Signal(str)  # the Ollama URL in the form
    open_file_requested = Signal()
    dirty_changed = Signal(bool)

    def __init__(self, keys: list[Key] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._keys = list(keys) if keys is not None else registry()
        self._defaults: dict[KeyId, Any] = {(k.section, k.name): k.default for k in self._keys}
        self._loaded: dict[KeyId, Any] = dict(self._defaults)
        self._clean: dict[KeyId, Any] = {}
        self._dirty = False
        self._filling = False
        self._models: list[str] | None = None  # None: not known yet, so no warning
        self._connection_kind: str | None = None
        self._rows: dict[KeyId, FieldRow] = {}
        self._flagged: dict[KeyId, str] = {}

        self.status = Notice()
        self.file_problems = Notice()
        # Under the problems: what the user can do about a broken file.
        self.open_file_button = QPushButton("Open in editor")
        self.open_file_button.setToolTip("Open the configuration file in the system's text editor")
        self.replace_button = QPushButton("Replace the file")
        self.replace_button.setToolTip(
            "Write the settings shown here over the file that cannot be read "
            "(its old text is kept as a .bak beside it)"
        )
        self.file_actions = QWidget()
        self.test_button = QPushButton("Test connection")
        self.test_button.setToolTip("Ask the Ollama server at this URL for its version and models")
        self.connection_result = QLabel()
        self.connection_result.setTextFormat(Qt.TextFormat.PlainText)
        self.connection_result.setWordWrap(True)
        self.connection_result.setSizePolicy(
            QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred
        )
        self.raw_view = RawView()
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Write the settings to the config file and apply them")
        self.revert_button = QPushButton("Revert")
        self.revert_button.setToolTip("Discard unsaved edits: back to the running configuration")
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.setToolTip("Fill the form with the shipped defaults (not saved yet)")
        self.save_hint = QLabel()
        self.save_hint.setTextFormat(Qt.TextFormat.PlainText)
        self.save_hint.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.save_hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        self._url_key = next((k for k in self._keys if k.check == "url"), None)
        self._hosts_key = next((k for k in self._keys if k.type == "hosts"), None)
        self._build()
        self.save_button.clicked.connect(self._on_save)
        self.revert_button.clicked.connect(self.revert)
        self.defaults_button.clicked.connect(self.restore_defaults)
        self.test_button.clicked.connect(self._on_test)
        self.raw_view.open_requested.connect(self.open_file_requested)
        self.open_file_button.clicked.connect(self.open_file_requested)
        self.replace_button.clicked.connect(self._on_replace)
        self.load(self._defaults)

    # -- construction -----------------------------------------------------------------------

    def _build(self) -> None:
        form = QWidget()
        column = QVBoxLayout(form)
        column.setContentsMargins(0, 0, 8, 0)  # room beside the scroll bar
        column.setSpacing(6)
        metrics = self.fontMetrics()
        longest = max((metrics.horizontalAdvance(k.name) for k in self._keys), default=0)
        label_width = longest + metrics.horizontalAdvance("MM")  # room for a bold label
        sections = list(dict.fromkeys(k.section for k in self._keys))
        for section in sections:
            box = QFrame()
            box.setFrameShape(QFrame.Shape.StyledPanel)
            grid = QGridLayout(box)
            grid.setContentsMargins(10, 8, 10, 8)
            grid.setHorizontalSpacing(12)
            grid.setVerticalSpacing(6)
            grid.setColumnMinimumWidth(0, label_width)
            grid.setColumnStretch(1, 1)
            for i, key in enumerate(k for k in self._keys if k.section == section):
                row = self._make_row(key)
                grid.addWidget(row.label, i, 0, Qt.AlignmentFlag.AlignTop)
                grid.addWidget(row.body, i, 1, Qt.AlignmentFlag.AlignTop)
            column.addWidget(_heading(f"[{section}]"))
            column.addWidget(box)
        column.addWidget(_heading("Effective configuration"))
        column.addWidget(self.raw_view)
        column.addStretch(1)
        if self._url_key is None:
            self.test_button.hide()

        scroll = QScrollArea()
        scroll.setWidget(form)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area = scroll

        buttons = QHBoxLayout()
        buttons.setSpacing(8)
        buttons.addWidget(self.defaults_button)
        buttons.addWidget(self.save_hint, 1)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.save_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 8)
        layout.setSpacing(8)
        actions = QHBoxLayout(self.file_actions)
        actions.setContentsMargins(0, 0, 0, 0)
        actions.addStretch(1)
        actions.addWidget(self.open_file_button)
        actions.addWidget(self.replace_button)
        self.replace_button.hide()
        self.file_actions.hide()
        layout.addWidget(self.status)
        layout.addWidget(self.file_problems)
        layout.addWidget(self.file_actions)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)

    def _make_row(self, key: Key) -> FieldRow:
        editor = make_editor(key)
        extras: list[QWidget] = []
        if key is self._url_key:
            extras = [self.test_button, self.connection_result]
        row = FieldRow(key, editor, extras)
        if key is self._url_key:
            # The URL shares its line with the button and the result, which takes what is left.
            row.outline.setMinimumWidth(URL_WIDTH)
            row.line_layout.setStretch(0, 0)
            row.line_layout.setStretch(2, 1)
        self._rows[(key.section, key.name)] = row
        editor.edited.connect(lambda row=row: self._on_edited(row))
        return row

    # -- public interface -------------------------------------------------------------------

    def load(self, values: dict[KeyId, Any]) -> None:
        """Fill the form from the running configuration; the form is clean afterwards."""
        self._loaded = {k: values.get(k, default) for k, default in self._defaults.items()}
        self._fill(self._loaded)
        # What the widgets show (a float rounded to the spin box's decimals, say) is "clean".
        self._clean = self.values()
        self._update_state()

    def set_flagged(self, flagged: dict[KeyId, str]) -> None:
        """Mark the keys whose value in the file is not used (each with its problem): the form
        shows what runs instead, and a Save writes that, so they count as unsaved changes."""
        self._flagged = {k: v for k, v in flagged.items() if k in self._rows}
        for row in self._rows.values():
            self._validate(row)
        self._update_state()

    def flagged(self) -> dict[KeyId, str]:
        return dict(self._flagged)

    def set_sources(self, sources: dict[KeyId, str]) -> None:
        """Mark the keys set outside the file, each with what sets it ("the environment variable
        PORT", "the command line"): that value runs whatever the file says. Shown from the
        start, so nobody edits one and wonders after the Save why it did not take."""
        for k, row in self._rows.items():
            source = sources.get(k)
            row.set_source(
                f"Set by {source}, which wins over the config file: an edit here is saved to "
                "the file but does not run."
                if source
                else ""
            )

    def values(self) -> dict[KeyId, Any]:
        """What the form holds now: typed where it parses, the text as typed where not."""
        return {k: row.editor.raw() for k, row in self._rows.items()}

    def restore_defaults(self) -> None:
        """Fill the form with the registry's defaults, unsaved."""
        self._fill(self._defaults)
        self._update_state()

    def revert(self) -> None:
        """Discard unsaved edits: back to the last load()."""
        self._fill(self._loaded)
        self._update_state()

    def is_dirty(self) -> bool:
        return self._dirty

    def set_models(self, models: list[str]) -> None:
        """Offer the models Ollama reports in the model field; other names stay allowed."""
        self._models = list(models)
        for row in self._rows.values():
            if isinstance(row.editor, ModelEditor):
                row.editor.set_models(self._models)
                self._validate(row)

    def show_connection_result(self, ok: bool, text: str) -> None:
        self.connection_result.setText(text)
        self.connection_result.setToolTip(text)
        self._connection_kind = "ok" if ok else "error"
        tones.color_text(self.connection_result, self._connection_kind, self.palette())

    def set_status(self, text: str, kind: str) -> None:
        """A line at the top of the page; kind is "info", "ok" or "error". "" hides it."""
        if kind not in tones.KINDS:
            log.warning("settings: unknown status kind %r", kind)
            kind = "info"
        self.status.set_message(text, kind)

    def set_file_problems(self, problems: list[str], title: str = "") -> None:
        """The errors of the configuration, under a title saying what runs instead; an empty
        list hides the box."""
        if problems:
            body = "\n".join(f"• {p}" for p in problems)
            self.file_problems.set_message(body, "error", title or FILE_PROBLEMS_TITLE)
        else:
            self.file_problems.set_message("", "error")
            self.replace_button.hide()
        self.file_actions.setVisible(bool(problems))

    def confirm_replace(self, message: str) -> None:
        """A Save was refused because the file is not TOML: offer to replace it."""
        self.file_problems.set_message(
            message, "error", "The config file is not valid TOML: a Save would replace all of it"
        )
        self.replace_button.show()
        self.file_actions.show()

    def status_text(self) -> str:
        return self.status.text()

    def file_problems_text(self) -> str:
        return self.file_problems.text()

    def set_raw_toml(self, text: str, path: str) -> None:
        self.raw_view.set_toml(text, path)

    def close_dialogs(self) -> None:
        """Dismiss the page's open dialogs: the window is going away."""
        for row in self._rows.values():
            if isinstance(row.editor, KeysEditor):
                row.editor.close_dialog()

    def field(self, section: str, name: str) -> QWidget:
        return self._rows[(section, name)].editor

    def field_error(self, section: str, name: str) -> str:
        return self._rows[(section, name)].error()

    def field_warning(self, section: str, name: str) -> str:
        return self._rows[(section, name)].warning()

    def field_source(self, section: str, name: str) -> str:
        return self._rows[(section, name)].source_text()

    # -- internals --------------------------------------------------------------------------

    def _fill(self, values: dict[KeyId, Any]) -> None:
        self._filling = True
        try:
            for k, row in self._rows.items():
                row.editor.set_value(values[k])
        finally:
            self._filling = False
        for row in self._rows.values():
            self._validate(row)
        self._link_url_and_hosts()

    def _on_edited(self, row: FieldRow) -> None:
        if self._filling:
            return
        if self.status.text() and self.status.kind() in ("ok", "info"):
            # "Saved…" is news about the form as it was: once it is edited again, it would read
            # as if the edit were saved too. Errors stay (why the file was not written).
            self.set_status("", "info")
        self._validate(row)
        if row.key in (self._url_key, self._hosts_key):
            # api_url is the hosts' fallback, and unused while hosts are listed: each says so.
            self._link_url_and_hosts()
        self._update_state()

    def _row_of(self, key: Key | None) -> FieldRow | None:
        return self._rows.get((key.section, key.name)) if key is not None else None

    def _link_url_and_hosts(self) -> None:
        url_row, hosts_row = self._row_of(self._url_key), self._row_of(self._hosts_key)
        if url_row is None or hosts_row is None or not isinstance(hosts_row.editor, HostsEditor):
            return
        hosts_row.editor.set_fallback_url(str(url_row.editor.raw()))
        self._validate(url_row)

    def _validate(self, row: FieldRow) -> None:
        _value, error = row.check()
        warning = ""
        flag = self._flagged.get((row.key.section, row.key.name))
        if not error and flag and row.key is self._hosts_key:
            # One message per bad host: the hosts that are fine run, the others are dropped.
            warning = f"Not used from the file: {flag}. The hosts shown run, and Save writes them."
        elif not error and flag:
            # "[cache].ttl_seconds = -5: must be a whole number 1..31536000"
            value, _, rule = flag.partition(" = ")[2].rpartition(": ")
            warning = (
                f"The file's value {value} is not used ({rule}): this one runs, and Save writes it."
            )
        elif not error and isinstance(row.editor, ModelEditor):
            warning = self._model_warning(row.editor.raw().strip())
        elif not error and row.key is self._url_key:
            hosts = self._row_of(self._hosts_key)
            if hosts is not None and hosts.editor.raw():
                warning = f"Not used while {hosts.key.dotted} lists hosts (below)."
        row.show(error, warning)
        if row.key is self._url_key:
            self.test_button.setEnabled(not error)
            self.connection_result.clear()  # a result for another URL would mislead

    def _model_warning(self, name: str) -> str:
        if self._models is None:
            return ""
        # Ollama lists "llama3.2:latest" for a model asked for as "llama3.2".
        if name in self._models or f"{name}:latest" in self._models:
            return ""
        return f'"{name}" is not among the models Ollama reports'

    def _update_state(self) -> None:
        current = self.values()
        changed = [k for k, v in current.items() if v != self._clean.get(k) or k in self._flagged]
        for k, row in self._rows.items():
            row.set_changed(k in changed)
        invalid = [row.key.dotted for row in self._rows.values() if row.error()]
        dirty = bool(changed)
        self.save_button.setEnabled(dirty and not invalid)
        self.revert_button.setEnabled(dirty)
        if invalid:
            s = "" if len(invalid) == 1 else "s"
            hint, kind = f"Fix {len(invalid)} field{s} to save: {', '.join(invalid)}", "error"
        elif dirty:
            s = "" if len(changed) == 1 else "s"
            hint, kind = f"{len(changed)} unsaved change{s}", None
        else:
            hint, kind = "No unsaved changes", None
        self.save_hint.setText(hint)
        self.save_hint.setToolTip(hint)
        tones.color_text(self.save_hint, kind, self.palette())
        if dirty != self._dirty:
            self._dirty = dirty
            self.dirty_changed.emit(dirty)

    def changed_values(self) -> dict[KeyId, Any] | None:
        """The validated values of the keys a Save writes; None while a field is invalid."""
        out: dict[KeyId, Any] = {}
        current = self.values()
        for k, row in self._rows.items():
            value, error = row.check()
            if error:
                log.warning("settings: not saving, %s", error)
                return None
            if current[k] != self._clean.get(k) or k in self._flagged:
                out[k] = value
        return out

    def _on_save(self) -> None:
        out = self.changed_values()
        if out is None:  # the button is disabled then; this guards a programmatic click
            return
        log.info("settings: save requested (%s)", ", ".join(f"[{s}].{n}" for s, n in out))
        self.save_requested.emit(out)

    def _on_replace(self) -> None:
        out = self.changed_values()
        if out is None:
            return
        log.info("settings: replacing the config file that is not TOML")
        self.replace_button.hide()
        self.replace_requested.emit(out)

    def _on_test(self) -> None:
        if self._url_key is None:
            return
        url = str(self._rows[(self._url_key.section, self._url_key.name)].editor.raw()).strip()
        self.connection_result.setText("Testing…")
        self._connection_kind = None
        tones.color_text(self.connection_result, None)
        self.test_connection_requested.emit(url)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            # The page hears of a new palette before its children take it on: tone for ours.
            palette = self.palette()
            for row in self._rows.values():
                row.refresh_colors(palette)
                if isinstance(row.editor, ListEditor | HostsEditor):
                    row.editor.refresh_colors(palette)
            tones.color_text(self.connection_result, self._connection_kind, palette)
            self._update_state()
        super().changeEvent(event)
