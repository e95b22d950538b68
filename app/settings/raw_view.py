"""The read-only view of the effective TOML, with the file's path and an "Open in editor" button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase, QFontMetricsF
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def is_monospaced(font: QFont) -> bool:
    """Whether every character takes the same width: what a reader of aligned TOML needs.
    Measured, not Qt's fixedPitch flag, which is False for some monospaced fonts (Noto Sans Mono
    through fontconfig's `monospace`)."""
    metrics = QFontMetricsF(font)
    widths = {metrics.horizontalAdvance(c * 8) for c in "iM0 ="}
    return len(widths) == 1


def monospace_font() -> QFont:
    """The system's fixed-width font; where that is not monospaced after all, the first
    installed family that is."""
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    if is_monospaced(font):
        return font
    for family in QFontDatabase.families():
        candidate = QFont(family, font.pointSize())
        if QFontDatabase.isFixedPitch(family) and is_monospaced(candidate):
            return candidate
    return font  # none installed: the best there is


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
        self.text_edit.setFont(monospace_font())
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
