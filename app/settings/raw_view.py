"""The read-only view of the effective TOML, with the file's path and an "Open in editor" button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


class RawView(QWidget):
    """Sized to its whole text: it sits in the page's scroll area, so it scrolls with the form
    rather than inside it."""

    open_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path_label = QLabel("No file loaded yet")
        self.path_label.setTextFormat(Qt.TextFormat.PlainText)
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.path_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.open_button = QPushButton("Open in editor")
        self.open_button.setToolTip("Open the configuration file in the system's text editor")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self.open_requested)
        self.text_edit = QPlainTextEdit()
        self.text_edit.setReadOnly(True)
        self.text_edit.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.text_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.text_edit.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.text_edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.text_edit.setAccessibleName("Effective configuration (TOML)")

        header = QHBoxLayout()
        header.setSpacing(8)
        header.addWidget(self.path_label, 1)
        header.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(header)
        layout.addWidget(self.text_edit)
        self.set_toml("", "")

    def set_toml(self, text: str, path: str) -> None:
        self.text_edit.setPlainText(text)
        self.path_label.setText(path or "No file loaded yet")
        self.path_label.setToolTip(path)
        self.open_button.setEnabled(bool(path))
        lines = max(3, text.count("\n") + 1)
        margins = self.text_edit.contentsMargins()
        doc_margin = 2 * self.text_edit.document().documentMargin()
        scrollbar = self.text_edit.horizontalScrollBar().sizeHint().height()
        height = lines * self.text_edit.fontMetrics().lineSpacing() + doc_margin + scrollbar
        self.text_edit.setFixedHeight(int(height) + margins.top() + margins.bottom())

    def text(self) -> str:
        return self.text_edit.toPlainText()

    def path(self) -> str:
        return self.path_label.toolTip()
