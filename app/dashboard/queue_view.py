"""The live queue: the requests being answered and those waiting for a slot, each with a Cancel
button (also the context menu and the Delete key), or a short note when there are none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import QModelIndex, QPoint, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QStackedWidget,
    QTableView,
    QWidget,
)

from app.dashboard import formatting as fmt
from app.dashboard.keyed_rows import KeyedRowsModel, Row, read_only_table

COLUMNS = (
    "Request",
    "Endpoint",
    "Model",
    "User",
    "State",
    "Position",
    "ETA",
    "Elapsed",
    "",  # the Cancel buttons
)
NUMERIC = ("Position", "ETA", "Elapsed")
CANCEL = COLUMNS.index("")
USER = COLUMNS.index("User")
# The widest text a fixed-width column must fit (else its header).
SAMPLES = {
    "Request": "r-AbCdEfGhIjKlMnOp",
    "Endpoint": "chat-optimized",
    "User": "anonymous",
    "State": "waiting",
    "Position": "Position",
    "ETA": "~12 min",
    "Elapsed": "12 min",
}
EMPTY_TEXT = "No requests waiting or being answered right now."
# Rows listed at most: the line can be 100,000 long, and a row carries a button. The rest are
# summed up in one last row (the tab and the Queue tile count them all).
MAX_ROWS = 200
MORE = "\x00more"  # the summing-up row's key: no request id is empty-prefixed like this
HEADER_TIPS = {
    "Request": "The request's id (its request_id, or one the gateway gave it)",
    "State": "running: being answered now; waiting: for a free slot ([queue].max_concurrent)",
    "Position": "Place in line",
    "ETA": "Expected wait for a slot: place in line × recent generation time ÷ slots",
    "Elapsed": "Time since the request arrived",
}
# The gateway's ticket states, as the table names them.
STATES = {"processing": "running", "queued": "waiting"}


def seconds(ms: float) -> str:
    """A wait or an age: '0.4 s', '12 s', '3 min', '1 h 05 min' (never '0.0 s' for a wait
    that is short but not over)."""
    s = max(0.1 if ms > 0 else 0.0, ms / 1000)
    return f"{s:.1f} s" if s < 10 else fmt.duration(s)


def make_row(entry: Mapping[str, Any]) -> Row:
    request_id = str(entry.get("request_id", ""))
    state = STATES.get(str(entry.get("status", "")), str(entry.get("status", "")))
    position = int(entry.get("position") or 0)
    waiting = state == "waiting"
    user = str(entry.get("user") or "")
    cells = (
        request_id,
        str(entry.get("endpoint") or "") or fmt.DASH,
        str(entry.get("model") or "") or fmt.DASH,
        user or fmt.DASH,
        state,
        f"{position:,}" if waiting and position else fmt.DASH,
        f"~{seconds(float(entry.get('estimated_wait_ms') or 0))}" if waiting else fmt.DASH,
        seconds(float(entry.get("elapsed_ms", entry.get("waited_ms")) or 0)),
        "",
    )
    tones = (
        "",
        "",
        "",
        "muted" if user == "anonymous" else "",
        "good" if state == "running" else "",
    )
    priority = str(entry.get("priority") or "")
    tip = " · ".join(filter(None, (request_id, user, priority and f"{priority} priority")))
    return Row(request_id, cells, tip, tones)


class QueueView(QStackedWidget):
    """`set_entries(snapshot["queue_entries"])` once a second; emits `cancel_requested(id)`."""

    cancel_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = KeyedRowsModel(COLUMNS, NUMERIC, HEADER_TIPS)
        self.total = 0  # requests in the queue, listed or not
        self.table = self._make_table()
        self.placeholder = QLabel(EMPTY_TEXT)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.placeholder.setWordWrap(True)
        self.addWidget(self.placeholder)
        self.addWidget(self.table)
        self.cancel_action = QAction("Cancel Request", self.table)
        self.cancel_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.cancel_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.cancel_action.setToolTip("Cancel the selected request: its client gets an error")
        self.cancel_action.triggered.connect(self._cancel_selected)
        self.table.addAction(self.cancel_action)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)
        self.menu: QMenu | None = None
        self._cancelling: set[str] = set()
        self.set_entries([])

    def _make_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.model)
        read_only_table(table, QPushButton("Cancel").sizeHint().height())
        header = table.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        # Model names vary most in length: that column takes the spare width.
        header.setSectionResizeMode(COLUMNS.index("Model"), QHeaderView.ResizeMode.Stretch)
        metrics = table.fontMetrics()
        for col, name in enumerate(COLUMNS):
            if name in SAMPLES:
                header.resizeSection(col, metrics.horizontalAdvance(SAMPLES[name]) + 24)
        header.resizeSection(CANCEL, QPushButton("Cancel").sizeHint().width() + 8)
        return table

    # -- public interface -------------------------------------------------------------------

    def set_entries(
        self, entries: Sequence[Mapping[str, Any]] | None, named_users: bool = False
    ) -> None:
        """Show the gateway's queue entries (running first, then the line in order)."""
        valid = [e for e in entries or () if isinstance(e, Mapping)]
        self.total = len(valid)
        rows = [make_row(e) for e in valid[:MAX_ROWS]]
        if len(valid) > MAX_ROWS:
            more = f"and {len(valid) - MAX_ROWS:,} more waiting (not listed)"
            tip = f"Only the first {MAX_ROWS} are listed"
            rows.append(Row(MORE, ("…", "", more), tip, ("muted", "", "muted")))
        self.table.setColumnHidden(USER, not named_users)
        self.model.sync(rows)
        self._cancelling &= {row.key for row in rows}
        for i, row in enumerate(rows):
            if row.key == MORE:
                continue
            index = self.model.index(i, CANCEL)
            button = self.table.indexWidget(index)
            if button is None:
                button = self._make_button(row.key)
                self.table.setIndexWidget(index, button)
            button.setEnabled(row.key not in self._cancelling)
        self.setCurrentWidget(self.table if rows else self.placeholder)

    def row_count(self) -> int:
        """The rows shown (the summing-up one included)."""
        return self.model.rowCount()

    def button(self, request_id: str) -> QPushButton | None:
        row = self.model.row_of(request_id)
        if row < 0:
            return None
        widget = self.table.indexWidget(self.model.index(row, CANCEL))
        return widget if isinstance(widget, QPushButton) else None

    def selected_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.key(rows[0].row()) if rows else None

    def select(self, request_id: str) -> None:
        row = self.model.row_of(request_id)
        if row >= 0:
            self.table.selectRow(row)

    def palette_changed(self, palette: QPalette) -> None:
        self.model.set_palette(palette)

    # -- cancelling -------------------------------------------------------------------------

    def _make_button(self, request_id: str) -> QPushButton:
        button = QPushButton("Cancel")
        button.setToolTip(f"Cancel {request_id}: its client gets an error")
        button.setAccessibleName(f"Cancel {request_id}")
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        button.clicked.connect(lambda: self.cancel(request_id))
        return button

    def cancel(self, request_id: str) -> None:
        """Ask for the request to be cancelled; its button is disabled until the row goes."""
        if request_id == MORE or request_id in self._cancelling:
            return
        if self.model.row_of(request_id) < 0:
            return
        self._cancelling.add(request_id)
        button = self.button(request_id)
        if button is not None:
            button.setEnabled(False)
        self.cancel_requested.emit(request_id)

    def _cancel_selected(self) -> None:
        request_id = self.selected_id()
        if request_id is not None:
            self.cancel(request_id)

    def _context_menu(self, pos: QPoint) -> None:
        index: QModelIndex = self.table.indexAt(pos)
        if not index.isValid():
            return
        self.table.selectRow(index.row())
        request_id = self.model.key(index.row())
        if request_id == MORE:
            return
        self.cancel_action.setText(f"Cancel {request_id}")
        self.cancel_action.setEnabled(request_id not in self._cancelling)
        if self.menu is None:
            self.menu = QMenu(self.table)
            self.menu.addAction(self.cancel_action)
        # popup(), never exec(): a nested loop would stall the server sharing this event loop.
        self.menu.popup(self.table.viewport().mapToGlobal(pos))
