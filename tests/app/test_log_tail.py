"""The dashboard's log tail: follows new lines unless scrolled up, wraps long ones, finds and
copies."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QContextMenuEvent, QGuiApplication
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.dashboard import DashboardWindow
from app.dashboard.log_tail import LogTail

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support"),
]


def last_line_in_view(tail: LogTail) -> bool:
    """Whether the document's last line is drawn inside the viewport (what a reader sees)."""
    block = tail.document().lastBlock()
    box = tail.blockBoundingGeometry(block).translated(tail.contentOffset())
    return box.bottom() <= tail.viewport().height() + 1 and box.top() >= 0


@pytest.fixture
def window(qtbot: QtBot) -> DashboardWindow:
    w = DashboardWindow()
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_follows_short_lines_sent_in_batches_by_the_controller(
    start_app, qtbot: QtBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatbot")
    app = start_app()  # no tray: the dashboard is shown
    window = app.companion.dashboard
    tail = window.log_tail
    assert window.isVisible()
    cache_log = logging.getLogger("chatbot.cache")
    for batch in range(12):  # as a dozen Flush Cache clicks would log, a few lines each
        for i in range(3):
            cache_log.info("flushed (%d.%d)", batch, i)
        app.controller.flush_log()  # the 500 ms batch, without waiting for the timer
        qtbot.waitUntil(lambda b=batch: f"({b}.2)" in tail.toPlainText(), timeout=2000)
        if batch == 4:
            # The Overview above the log grows (a section appears, the user resizes the
            # window): the tail gets shorter while it is at the bottom.
            height = tail.height()
            window.resize(window.width(), window.height() - 80)
            qtbot.waitUntil(lambda h=height: tail.height() < h)
        QApplication.processEvents()
    assert tail.document().lastBlock().text().endswith("(11.2)")
    qtbot.waitUntil(lambda: last_line_in_view(tail), timeout=2000)


def test_scrolled_up_it_stays_and_at_the_bottom_it_follows_again(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    tail = window.log_tail
    for i in range(80):
        window.append_log(f"12:00:{i % 60:02d} INFO    chatbot.http: line {i}")
    bar = tail.verticalScrollBar()
    assert bar.maximum() > 0 and last_line_in_view(tail)
    bar.setValue(bar.maximum() // 2)  # the user scrolls up to read
    first = tail.firstVisibleBlock().blockNumber()
    for i in range(80, 90):
        window.append_log(f"12:01:00 INFO    chatbot.http: line {i}")
    assert tail.firstVisibleBlock().blockNumber() == first
    assert not last_line_in_view(tail)
    bar.setValue(bar.maximum())  # back at the bottom: follows again
    window.append_log("12:01:01 INFO    chatbot.http: newest")
    assert last_line_in_view(tail)
    assert tail.document().lastBlock().text().endswith("newest")


def test_long_lines_wrap_and_read_whole(qtbot: QtBot, window: DashboardWindow) -> None:
    tail = window.log_tail
    long = "12:00:00 WARNING chatbot.ollama: " + "a very long message " * 30 + "END"
    window.append_log(long)
    assert tail.horizontalScrollBar().maximum() == 0  # nothing hides to the right
    block = tail.document().lastBlock()
    assert block.text() == long and block.layout().lineCount() > 1  # wrapped, in one line
    assert last_line_in_view(tail)


def lines(n: int) -> list[str]:
    return [f"12:00:{i % 60:02d} INFO    chatbot.http: request {i} done" for i in range(n)]


def test_ctrl_f_finds_enter_and_f3_go_on_and_esc_closes(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    for line in lines(60):
        window.append_log(line)
    window.append_log("12:01:00 ERROR   chatbot.queue: Slot lost")
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    tail, bar = window.log_tail, window.log_view.find_bar
    tail.setFocus()
    assert not bar.isVisible()
    qtbot.keyClick(tail, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert bar.isVisible() and bar.edit.hasFocus()
    qtbot.keyClicks(bar.edit, "REQUEST 1")  # any case
    first = tail.textCursor()
    assert first.selectedText() == "request 1" and first.block().text().endswith("request 1 done")
    assert bar.result.text() == "1 of 11"  # request 1, 10..19
    qtbot.keyClick(bar.edit, Qt.Key.Key_Return)
    assert tail.textCursor().block().text().endswith("request 10 done")
    qtbot.keyClick(bar.edit, Qt.Key.Key_F3)
    assert tail.textCursor().block().text().endswith("request 11 done")
    assert bar.result.text() == "3 of 11"
    qtbot.keyClick(bar.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    assert tail.textCursor().block().text().endswith("request 10 done")
    # Reading a match up the log stops the following; new lines do not move the view.
    assert not tail.is_following()
    top = tail.firstVisibleBlock().blockNumber()
    window.append_log("12:01:01 INFO    chatbot.http: newer")
    assert tail.firstVisibleBlock().blockNumber() == top
    bar.edit.setText("slot LOST")
    assert tail.textCursor().block().text().endswith("Slot lost")
    bar.edit.setText("no such thing")
    assert bar.result.text() == "no match"
    qtbot.keyClick(bar.edit, Qt.Key.Key_Escape)
    assert not bar.isVisible() and window.isVisible()  # Esc closed the bar, not the window
    assert tail.hasFocus()


def right_click(tail: LogTail, pos: QPoint) -> None:
    global_pos = tail.viewport().mapToGlobal(pos)
    event = QContextMenuEvent(QContextMenuEvent.Reason.Mouse, pos, global_pos)
    QApplication.sendEvent(tail.viewport(), event)


def test_lines_are_copied_by_selection_and_from_the_context_menu(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    for line in lines(3):
        window.append_log(line)
    tail = window.log_tail
    clipboard = QGuiApplication.clipboard()
    clipboard.clear()
    tail.selectAll()
    tail.setFocus()
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    qtbot.keyClick(tail, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert clipboard.text() == "\n".join(lines(3))

    # Without a selection the menu copies the line that was right-clicked.
    cursor = tail.textCursor()
    cursor.clearSelection()
    tail.setTextCursor(cursor)
    second = tail.blockBoundingGeometry(tail.document().findBlockByNumber(1))
    pos = second.translated(tail.contentOffset()).center().toPoint()
    menu_pos = QPoint(20, pos.y())
    right_click(tail, menu_pos)
    menu = tail.last_menu
    assert menu is not None
    copy = next(a for a in menu.actions() if a.text().startswith("Copy"))
    copy.trigger()
    assert clipboard.text() == lines(3)[1]
    menu.close()
    # With one, it copies the selection.
    tail.selectAll()
    right_click(tail, menu_pos)
    assert tail.last_menu is not None
    next(a for a in tail.last_menu.actions() if a.text() == "Copy").trigger()
    assert clipboard.text() == "\n".join(lines(3))
    tail.last_menu.close()


def test_lines_that_came_while_hidden_are_in_view_when_shown(
    qtbot: QtBot, window: DashboardWindow
) -> None:
    window.hide()
    for line in lines(120):
        window.append_log(line)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: last_line_in_view(window.log_tail), timeout=2000)
    assert window.log_tail.is_following()
