"""The log tail: a bounded, read-only, monospace view that follows new lines while at the bottom."""

from __future__ import annotations

from PySide6.QtGui import (
    QFontDatabase,
    QShowEvent,
    QSyntaxHighlighter,
    QTextCharFormat,
    QTextDocument,
)
from PySide6.QtWidgets import QPlainTextEdit, QWidget

from app.dashboard.colors import BAD, WARN, text_tone

MAX_LINES = 500


class _LevelHighlighter(QSyntaxHighlighter):
    """Tints WARNING and ERROR/CRITICAL lines; runs once per new line, not per repaint."""

    def __init__(self, document: QTextDocument, owner: QWidget) -> None:
        super().__init__(document)
        self._owner = owner

    def highlightBlock(self, text: str) -> None:
        if " ERROR " in text or " CRITICAL " in text:
            color = BAD
        elif " WARNING " in text:
            color = WARN
        else:
            return
        fmt = QTextCharFormat()
        fmt.setForeground(text_tone(color, self._owner.palette()))
        self.setFormat(0, len(text), fmt)


class LogTail(QPlainTextEdit):
    def __init__(self, max_lines: int = MAX_LINES, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(max_lines)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setPlaceholderText("No log lines yet.")
        self.setUndoRedoEnabled(False)
        self._highlighter = _LevelHighlighter(self.document(), self)
        self._follow = True

    def append_line(self, line: str) -> None:
        """Append one line; keep following the tail unless the user has scrolled up."""
        bar = self.verticalScrollBar()
        across = self.horizontalScrollBar()
        left = across.value()
        if self.isVisible():
            self._follow = bar.value() >= bar.maximum()
        self.appendPlainText(line.rstrip("\n"))
        # appendPlainText moves the view to the end of a long line; keep where the user was
        # (at the start, where the time and level are).
        across.setValue(left)
        if self._follow and self.isVisible():
            bar.setValue(bar.maximum())

    def line_count(self) -> int:
        return 0 if self.document().isEmpty() else self.document().blockCount()

    def showEvent(self, event: QShowEvent) -> None:
        # Lines appended while hidden did not scroll; catch up when the window is shown again.
        super().showEvent(event)
        self.horizontalScrollBar().setValue(0)
        if self._follow:
            self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())
