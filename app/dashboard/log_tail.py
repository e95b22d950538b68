"""The log tail: a bounded, read-only, monospace view that follows new lines unless the user has
scrolled up, with a find bar (Ctrl+F) and copying of lines."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPoint, Qt
from PySide6.QtGui import (
    QContextMenuEvent,
    QFontDatabase,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
    QPalette,
    QShortcut,
    QShowEvent,
    QSyntaxHighlighter,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextOption,
)
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

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
    """Long lines wrap at the widget's width (a traceback or a long URL reads whole without
    scrolling sideways; continuation lines are indented by the wrap, not by us).

    Following is a state, not a position check at append time: it ends when the user scrolls
    up and resumes when they scroll back to the bottom. Anything else that changes the scroll
    range while following (new lines, the view getting shorter when the Overview above it
    grows, the first wrapped line) keeps the view pinned to the end.
    """

    def __init__(self, max_lines: int = MAX_LINES, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(max_lines)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setPlaceholderText("No log lines yet.")
        self.setUndoRedoEnabled(False)
        # Selection with the mouse or the keyboard, and Ctrl+C / Ctrl+A, on a read-only view.
        self.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
            | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self._highlighter = _LevelHighlighter(self.document(), self)
        self.last_menu: QMenu | None = None  # the latest context menu, for tests
        self._follow = True
        self._pinning = False
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)

    def append_line(self, line: str) -> None:
        """Append one or more newline-separated lines; the view follows them if it follows."""
        self.appendPlainText(line.rstrip("\n"))
        if self._follow:
            self._pin()

    def line_count(self) -> int:
        return 0 if self.document().isEmpty() else self.document().blockCount()

    def is_following(self) -> bool:
        return self._follow

    def line_at(self, pos: QPoint) -> str:
        """The whole log line (not just the wrapped row) under a viewport position."""
        return self.cursorForPosition(pos).block().text()

    def copy_selection_or_line(self, pos: QPoint | None = None) -> str:
        """Copy the selection, or without one the line under `pos` (else the cursor's)."""
        cursor = self.textCursor()
        if cursor.hasSelection():
            # A selection across lines holds U+2029 paragraph separators, not newlines.
            text = cursor.selectedText().replace("\u2029", "\n")
        elif pos is not None:
            text = self.line_at(pos)
        else:
            text = cursor.block().text()
        QGuiApplication.clipboard().setText(text)
        return text

    def _on_scrolled(self, value: int) -> None:
        if not self._pinning:
            self._follow = value >= self.verticalScrollBar().maximum()

    def _on_range_changed(self, _minimum: int, _maximum: int) -> None:
        if self._follow:
            self._pin()

    def _pin(self) -> None:
        bar = self.verticalScrollBar()
        self._pinning = True
        try:
            bar.setValue(bar.maximum())
        finally:
            self._pinning = False

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        menu = QMenu(self)
        pos = event.pos()
        has_selection = self.textCursor().hasSelection()
        copy = menu.addAction("Copy" if has_selection else "Copy Line")
        copy.setShortcut(QKeySequence.StandardKey.Copy)
        copy.triggered.connect(lambda: self.copy_selection_or_line(pos))
        select_all = menu.addAction("Select All")
        select_all.setShortcut(QKeySequence.StandardKey.SelectAll)
        select_all.triggered.connect(self.selectAll)
        menu.addSeparator()
        find = menu.addAction("Find…")
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(self._open_find)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.last_menu = menu
        menu.popup(event.globalPos())

    def _open_find(self) -> None:
        parent = self.parentWidget()
        if isinstance(parent, LogView):
            parent.open_find()

    def showEvent(self, event: QShowEvent) -> None:
        # Lines appended while hidden may not have moved the view; catch up when shown again.
        super().showEvent(event)
        if self._follow:
            self._pin()


class FindBar(QWidget):
    """A one-line find bar under the log: Enter/F3 next, Shift+Enter/Shift+F3 previous, Esc
    closes. Matching ignores case; the search wraps around at either end."""

    def __init__(self, tail: LogTail, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._tail = tail
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("Find in log")
        self.edit.setClearButtonEnabled(True)
        self.edit.setAccessibleName("Find in log")
        self.edit.installEventFilter(self)
        self.edit.textChanged.connect(self._on_text_changed)
        self.edit.returnPressed.connect(self.find_next)
        self.result = QLabel()
        self.result.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        previous = QToolButton()
        previous.setText("▲")
        previous.setToolTip("Previous match (Shift+F3)")
        previous.clicked.connect(self.find_previous)
        following = QToolButton()
        following.setText("▼")
        following.setToolTip("Next match (F3, Enter)")
        following.clicked.connect(self.find_next)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Close (Esc)")
        close.clicked.connect(self.close_bar)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.result)
        layout.addWidget(previous)
        layout.addWidget(following)
        layout.addWidget(close)

    def find_next(self) -> bool:
        """Select the next match (F3 with the bar closed opens it instead)."""
        if not self.isVisible():
            parent = self.parentWidget()
            if isinstance(parent, LogView):
                parent.open_find()
            return False
        return self._find(backward=False)

    def find_previous(self) -> bool:
        return self._find(backward=True)

    def close_bar(self) -> None:
        self.hide()
        self._tail.setFocus()

    def _find(self, *, backward: bool) -> bool:
        needle = self.edit.text()
        if not needle:
            self.result.clear()
            return False
        flags = QTextDocument.FindFlag.FindBackward if backward else QTextDocument.FindFlag(0)
        found = self._tail.find(needle, flags)
        if not found:  # wrap around
            cursor = self._tail.textCursor()
            cursor.movePosition(
                QTextCursor.MoveOperation.End if backward else QTextCursor.MoveOperation.Start
            )
            self._tail.setTextCursor(cursor)
            found = self._tail.find(needle, flags)
        self._show_count(needle, found)
        return found

    def _on_text_changed(self, text: str) -> None:
        # Search as one types, from the start of the current match so it can grow in place.
        cursor = self._tail.textCursor()
        cursor.setPosition(cursor.selectionStart())
        self._tail.setTextCursor(cursor)
        if text:
            self.find_next()
        else:
            self.result.clear()

    def _show_count(self, needle: str, found: bool) -> None:
        if not found:
            self.result.setText("no match")
            return
        haystack = self._tail.toPlainText().casefold()
        total = haystack.count(needle.casefold())
        before = haystack[: self._tail.textCursor().selectionStart()].count(needle.casefold())
        self.result.setText(f"{before + 1} of {total}")

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.edit and event.type() == QEvent.Type.KeyPress:
            assert isinstance(event, QKeyEvent)
            key, shift = event.key(), event.modifiers() & Qt.KeyboardModifier.ShiftModifier
            if key == Qt.Key.Key_Escape:
                self.close_bar()
                return True
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and shift:
                self.find_previous()
                return True
        return super().eventFilter(watched, event)


class LogView(QWidget):
    """The log tail with its find bar (hidden until Ctrl+F or the context menu's Find…)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tail = LogTail(parent=self)
        self.find_bar = FindBar(self.tail)
        self.find_bar.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.tail, 1)
        layout.addWidget(self.find_bar)
        context = Qt.ShortcutContext.WidgetWithChildrenShortcut
        for keys, slot in (
            (QKeySequence.StandardKey.FindNext, self.find_bar.find_next),
            (QKeySequence.StandardKey.FindPrevious, self.find_bar.find_previous),
        ):
            shortcut = QShortcut(keys, self)
            shortcut.setContext(context)
            shortcut.activated.connect(slot)

    def open_find(self) -> None:
        """Show the find bar with the selected text (if one line) and put the focus in it."""
        selected = self.tail.textCursor().selectedText()
        if selected and "\u2029" not in selected:
            self.find_bar.edit.setText(selected)
        self.find_bar.show()
        self.find_bar.edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.find_bar.edit.selectAll()
