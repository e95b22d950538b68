"""The Create key dialog: asks a name and a role, makes the key, and shows it once.

The key itself lives only in the read-only field that shows it; the dialog hands the page the
stored entry (name, role and the key's hash), and clears the field when it closes.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase, QGuiApplication, QPalette
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.settings import tones
from server.auth import ROLES, new_key, parse_key_entry

log = logging.getLogger("chatbot.ui")

ROLE_HELP = {
    "user": "Chat, generate and embed; sees only its own queue tickets.",
    "batch": "As a user, but its generations queue behind interactive ones.",
    "admin": "Also clears the cache, resets stats, manages models and sees everyone's tickets.",
}
DIALOG_WIDTH = 460
NAME_RULE = "A name is 1 to 64 letters, digits or . _ @ - (no spaces)."
SHOWN_ONCE = (
    "This is the only time the key is shown: copy it now. The settings keep only its hash. "
    "It works once the settings are saved."
)
USAGE = "Clients send it as Authorization: Bearer <key>, or as X-API-Key: <key>."


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a key, judged by the server's own parser of stored entries."""
    try:
        parse_key_entry(f"{name}:user:sha256:{'0' * 64}")
    except ValueError:
        return NAME_RULE
    return None


def _wrapped(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    return label


class CreateKeyDialog(QDialog):
    """Open it with open(), never exec(): the server shares this event loop."""

    created = Signal(str)  # the entry to store, "name:role:sha256:<hex>"; never the key

    def __init__(self, taken: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Create API key")
        self._taken = set(taken)
        self.entry = ""

        self.name_field = QLineEdit()
        self.name_field.setPlaceholderText("e.g. alice or ci-runner")
        self.name_field.setToolTip(
            "Who the key is for: the dashboard and the stats show this name, never the key"
        )
        self.name_field.setMaxLength(64)
        self.role_field = QComboBox()
        self.role_field.addItems(list(ROLES))
        self.role_help = _wrapped()
        self.role_help.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.name_note = _wrapped()
        self.name_note.hide()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Cancel | QDialogButtonBox.StandardButton.Ok
        )
        self.create_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.create_button.setText("Create key")

        self.heading = _wrapped()
        bold = QFont(self.heading.font())
        bold.setBold(True)
        self.heading.setFont(bold)
        self.key_field = QLineEdit()
        self.key_field.setReadOnly(True)
        self.key_field.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.key_field.setAccessibleName("New API key")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the key to the clipboard")
        self.once_note = _wrapped(SHOWN_ONCE)
        self.usage_note = _wrapped(USAGE)
        self.usage_note.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.done_button = QPushButton("Done")

        # Two steps, one shown at a time: ask, then show the key.
        self.ask_page = self._ask_page()
        self.key_page = self._key_page()
        self.key_page.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.ask_page)
        layout.addWidget(self.key_page)
        self.setMinimumWidth(DIALOG_WIDTH)

        self.name_field.textChanged.connect(self._check_name)
        self.role_field.currentTextChanged.connect(self._show_role_help)
        self.buttons.accepted.connect(self._create)
        self.buttons.rejected.connect(self.reject)
        self.copy_button.clicked.connect(self._copy)
        self.done_button.clicked.connect(self.accept)
        self.finished.connect(self._forget)
        self._check_name("")
        self._show_role_help(self.role_field.currentText())

    def _ask_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout()
        form.addRow("Name", self.name_field)
        form.addRow("", self.name_note)
        form.addRow("Role", self.role_field)
        form.addRow("", self.role_help)
        column = QVBoxLayout(page)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(form)
        column.addStretch(1)
        column.addWidget(self.buttons)
        return page

    def _key_page(self) -> QWidget:
        page = QWidget()
        line = QHBoxLayout()
        line.addWidget(self.key_field, 1)
        line.addWidget(self.copy_button)
        done = QHBoxLayout()
        done.addStretch(1)
        done.addWidget(self.done_button)
        column = QVBoxLayout(page)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.heading)
        column.addLayout(line)
        column.addWidget(self.once_note)
        column.addWidget(self.usage_note)
        column.addStretch(1)
        column.addLayout(done)
        return page

    # -- asking -----------------------------------------------------------------------------

    def _check_name(self, text: str) -> None:
        name = text.strip()
        problem = name_problem(name) if name else None
        warning = (
            f"A key named {name!r} exists: revoke it before saving, or pick another name."
            if not problem and name in self._taken
            else ""
        )
        note = problem or warning
        if note != self.name_note.text():
            self.name_note.setText(note)
            self.name_note.setVisible(bool(note))
            tones.color_text(self.name_note, "error" if problem else "warning")
            self.adjustSize()  # a wrapped note needs the height to show in full
        self.create_button.setEnabled(bool(name) and problem is None)

    def _show_role_help(self, role: str) -> None:
        self.role_help.setText(ROLE_HELP.get(role, ""))

    def _create(self) -> None:
        name, role = self.name_field.text().strip(), self.role_field.currentText()
        if not name or name_problem(name):
            return
        key, self.entry = new_key(name, role)
        log.info("settings: created an API key for %r (%s), not saved yet", name, role)
        self.heading.setText(f"The new key for {name} ({role})")
        self.key_field.setText(key)
        metrics = self.key_field.fontMetrics()
        self.key_field.setMinimumWidth(metrics.horizontalAdvance(key) + 16)
        self.ask_page.hide()
        self.key_page.show()
        self.adjustSize()
        self.done_button.setDefault(True)
        self.key_field.setFocus()
        self.key_field.selectAll()
        self.created.emit(self.entry)

    # -- showing ----------------------------------------------------------------------------

    def shown_key(self) -> str:
        return self.key_field.text()

    def _copy(self) -> None:
        clipboard = QGuiApplication.clipboard()
        clipboard.setText(self.key_field.text())
        self.copy_button.setText("Copied")

    def _forget(self) -> None:
        # Closed by Done, Escape or the window's close button: the key goes with the dialog.
        self.key_field.clear()
