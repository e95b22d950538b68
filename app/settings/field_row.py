"""One setting's row: its label, its editor in an outline that turns red while the value is
invalid, the server's message under it, and the help text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QFont, QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QSizePolicy, QVBoxLayout, QWidget

from app.settings import tones
from app.settings.editors import COMPACT, COMPACT_WIDTH, BoolEditor, Editor
from app.settings.hosts_editor import HostsEditor
from server.config import ConfigError, HostSpec, Key, validate_value

OUTLINE = 2  # px around each editor, where the invalid frame is drawn
WIDE_MAX = 560  # px: a host name or model in a field across the whole window reads poorly
HOSTS_MAX = 860  # px: the hosts table has four columns, the URL and models wide ones


class Outline(QWidget):
    """Holds an editor and frames it in the error colour while `invalid`. Painted rather than
    styled: a style sheet on a spin box or combo box would replace the platform look."""

    def __init__(self, editor: Editor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._invalid = False
        layout = QHBoxLayout(self)
        layout.setContentsMargins(OUTLINE, OUTLINE, OUTLINE, OUTLINE)
        # A check box keeps its own size: stretched, it would ignore clicks beside its box.
        if isinstance(editor, BoolEditor):
            layout.addWidget(editor, 0, Qt.AlignmentFlag.AlignLeft)
        else:
            layout.addWidget(editor)
        self.setSizePolicy(editor.sizePolicy().horizontalPolicy(), QSizePolicy.Policy.Fixed)

    def set_invalid(self, invalid: bool) -> None:
        if invalid != self._invalid:
            self._invalid = invalid
            self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        if not self._invalid:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QPen(tones.accent("error"), 2))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(1, 1, -1, -1), 4, 4)


def _small(label: QLabel) -> None:
    font = QFont(label.font())
    font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
    label.setFont(font)


class FieldRow:
    """The widgets of one key, and its validation. `extras` sit beside the editor."""

    def __init__(self, key: Key, editor: Editor, extras: Sequence[QWidget] = ()) -> None:
        self.key = key
        self.editor = editor
        self.compact = isinstance(editor, COMPACT)
        self._error = ""
        self._warning = ""

        self.label = QLabel(key.name)
        self.label.setToolTip(key.help)
        self.label.setBuddy(editor)
        self.outline = Outline(editor)
        self.help = QLabel(key.help)
        self.help.setWordWrap(True)
        self.help.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        _small(self.help)
        self.note = QLabel()
        self.note.setTextFormat(Qt.TextFormat.PlainText)  # messages quote values verbatim
        self.note.setWordWrap(True)
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.note.hide()
        # Where the value comes from when the file is not what sets it (the environment or the
        # command line): said from the start, not only once a Save could not change it.
        self.source = QLabel()
        self.source.setTextFormat(Qt.TextFormat.PlainText)
        self.source.setWordWrap(True)
        self.source.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.source.hide()
        _small(self.source)

        # Every row's first line is as tall as a line edit, so labels line up with editors of
        # any height and the label column reads evenly.
        line_height = QLineEdit().sizeHint().height() + 2 * OUTLINE
        self.label.setMinimumHeight(line_height)
        line = QWidget()
        line.setMinimumHeight(line_height)
        self.line_layout = QHBoxLayout(line)
        self.line_layout.setContentsMargins(0, 0, 0, 0)
        self.line_layout.setSpacing(8)
        self.line_layout.addWidget(self.outline, 0 if self.compact else 1)
        if self.compact:  # one width for all: the help texts beside them line up
            self.outline.setFixedWidth(COMPACT_WIDTH + 2 * OUTLINE)
        else:
            self.outline.setMaximumWidth(HOSTS_MAX if isinstance(editor, HostsEditor) else WIDE_MAX)
        for extra in extras:
            self.line_layout.addWidget(extra, 0, Qt.AlignmentFlag.AlignVCenter)
        if self.compact:
            self.line_layout.addWidget(self.help, 1)
        elif not extras:
            self.line_layout.addStretch(0)
        self.body = QWidget()
        column = QVBoxLayout(self.body)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(1)
        column.addWidget(line)
        column.addWidget(self.note)
        column.addWidget(self.source)
        if not self.compact:
            self.help.setContentsMargins(OUTLINE, 0, 0, 0)
            column.addWidget(self.help)

    def check(self) -> tuple[Any, str]:
        """(the validated value, "") or (None, the server's message for what the field holds)."""
        raw = self.editor.raw()
        try:
            value = validate_value(self.key, raw)
        except ConfigError as exc:
            problem = exc.problems[0]
            if self.key.check == "keys" and isinstance(raw, list):
                # Quoting every entry's hash buries the reason: name the key, then the reason.
                quoted = json.dumps(raw, ensure_ascii=False)
                reason = problem.removeprefix(f"{self.key.dotted} = {quoted}: ")
                problem = f"{self.key.dotted}: {reason}"
            elif self.key.type == "hosts":
                # One message per bad host field, each naming ollama.hosts[N].field: all of them.
                problem = "\n".join(exc.problems)
            return None, problem
        if isinstance(value, tuple):
            # Host tables as the file writes them, so a Save can put them in [[ollama.hosts]].
            value = [v.to_dict() if isinstance(v, HostSpec) else v for v in value]
        return value, ""

    def show(self, error: str, warning: str = "") -> None:
        """Show the error (red) or, failing that, the warning (amber) under the editor."""
        self._error, self._warning = error, warning
        self.note.setText(error or warning)
        self.note.setVisible(bool(error or warning))
        self.outline.set_invalid(bool(error))
        self.editor.setProperty("invalid", bool(error))
        self.refresh_colors()

    def set_source(self, text: str) -> None:
        """Say under the editor, and in its tooltips, what sets the value instead of the file;
        "" when the file does."""
        self.source.setText(text)
        self.source.setVisible(bool(text))
        tip = f"{self.key.help}\n\n{text}" if text else self.key.help
        self.editor.setToolTip(tip)
        self.label.setToolTip(tip)
        self.refresh_colors()

    def source_text(self) -> str:
        return self.source.text()

    def set_changed(self, changed: bool) -> None:
        """Embolden the label of a key whose value differs from the loaded one."""
        font = QFont(self.label.font())
        if font.bold() != changed:
            font.setBold(changed)
            self.label.setFont(font)

    def error(self) -> str:
        return self._error

    def warning(self) -> str:
        return self._warning

    def refresh_colors(self, background: QPalette | None = None) -> None:
        """Re-tone the message, for `background` when the palette is changing."""
        tones.color_text(self.note, "error" if self._error else "warning", background)
        tones.color_text(self.source, "info", background)
