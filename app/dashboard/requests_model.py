"""Table model of the most recent requests, newest first, updated by inserting only new rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QPalette

from app.dashboard import formatting as fmt
from app.dashboard.colors import BAD, WARN, text_tone

COLUMNS = (
    "Time",
    "Endpoint",
    "User",
    "Model",
    "Cached",
    "Queue (ms)",
    "TTFT (ms)",
    "Total (ms)",
    "Tokens",
    "Status",
)
NUMERIC = frozenset(COLUMNS.index(c) for c in ("Queue (ms)", "TTFT (ms)", "Total (ms)", "Tokens"))
STATUS = COLUMNS.index("Status")
USER = COLUMNS.index("User")
# Who sent a request when no key or user header named anyone: shown muted, as the usual case.
ANONYMOUS = "anonymous"
MAX_ROWS = 100
# Interrupted (by the client, or by a restart or quit of this server) rather than failed: amber,
# not red.
SOFT_STATUSES = frozenset({"cancelled", "disconnected", "server_restart", "shutdown"})

_Index = QModelIndex | QPersistentModelIndex


class Row(NamedTuple):
    key: tuple[str, float]
    cells: tuple[str, ...]
    status: str
    tooltip: str
    anonymous: bool = False


def make_row(rec: Mapping[str, Any]) -> Row:
    """Format a record once, when it arrives; `data()` then only hands out strings."""
    status = str(rec.get("status", ""))
    request_id = str(rec.get("request_id", ""))
    when = float(rec.get("time", 0.0))
    endpoint = str(rec.get("endpoint") or "")
    model = str(rec.get("model", ""))
    # A key's name (never the key), a user header's value, or "anonymous"; records from before
    # API keys have none.
    user = str(rec.get("user") or "")
    cells = (
        fmt.clock(when),
        # Records from before the native API have no endpoint: a dash rather than a guess.
        endpoint or fmt.DASH,
        user or fmt.DASH,
        model,
        "yes" if rec.get("cached") else "no",
        fmt.millis(rec.get("queue_ms")),
        fmt.millis(rec.get("ttft_ms")),
        fmt.millis(rec.get("total_ms")),
        f"{int(rec.get('tokens') or 0):,}",
        status,
    )
    tooltip = " · ".join(filter(None, (request_id, endpoint, user, model, status)))
    return Row((request_id, when), cells, status, tooltip, user == ANONYMOUS)


def _key(rec: Mapping[str, Any]) -> tuple[str, float]:
    return str(rec.get("request_id", "")), float(rec.get("time", 0.0))


class RequestsModel(QAbstractTableModel):
    """`update(recent)` takes the gateway's oldest-first list and keeps rows newest first."""

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        super().__init__()
        self._rows: list[Row] = []
        self._max_rows = max_rows
        self._colors: dict[str, QColor] = {
            "bad": QColor(BAD),
            "soft": QColor(WARN),
            "muted": QPalette().color(QPalette.ColorRole.PlaceholderText),
        }

    def set_palette(self, palette: QPalette) -> None:
        """Pick status colours legible on this palette (called again when the theme changes)."""
        self._colors = {
            "bad": text_tone(BAD, palette),
            "soft": text_tone(WARN, palette),
            "muted": palette.color(QPalette.ColorRole.PlaceholderText),
        }
        if self._rows:
            for col in (USER, STATUS):
                self.dataChanged.emit(
                    self.index(0, col),
                    self.index(len(self._rows) - 1, col),
                    [Qt.ItemDataRole.ForegroundRole],
                )

    def update(self, recent: Sequence[Mapping[str, Any]]) -> int:
        """Bring the rows up to date; returns how many rows were inserted at the top.

        Only new records are inserted (and the oldest removed), so the view keeps its selection
        and scroll position. If the history does not continue the one shown (the server was
        restarted, say), the model is reset and -1 is returned.
        """
        if not recent:
            if self._rows:
                self._reset([])
                return -1
            return 0
        top = self._rows[0].key if self._rows else None
        if top is not None and _key(recent[-1]) == top:
            return 0  # the common case: nothing new this second
        start = 0
        if top is not None:
            start = next(
                (i + 1 for i in range(len(recent) - 1, -1, -1) if _key(recent[i]) == top), -1
            )
            if start < 0:
                self._reset(recent)
                return -1
        new = [make_row(r) for r in reversed(recent[start:][-self._max_rows :])]
        self.beginInsertRows(QModelIndex(), 0, len(new) - 1)
        self._rows[:0] = new
        self.endInsertRows()
        if len(self._rows) > self._max_rows:
            self.beginRemoveRows(QModelIndex(), self._max_rows, len(self._rows) - 1)
            del self._rows[self._max_rows :]
            self.endRemoveRows()
        return len(new)

    def _reset(self, recent: Sequence[Mapping[str, Any]]) -> None:
        self.beginResetModel()
        self._rows = [make_row(r) for r in reversed(recent[-self._max_rows :])]
        self.endResetModel()

    def cell(self, row: int, column: int) -> str:
        return self._rows[row].cells[column]

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return row.cells[col]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            h = Qt.AlignmentFlag.AlignRight if col in NUMERIC else Qt.AlignmentFlag.AlignLeft
            return h | Qt.AlignmentFlag.AlignVCenter
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == STATUS and row.status != "ok":
                return self._colors["soft" if row.status in SOFT_STATUSES else "bad"]
            if col == USER and row.anonymous:
                return self._colors["muted"]
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.tooltip or None
        return None

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole and orientation == Qt.Orientation.Horizontal:
            h = Qt.AlignmentFlag.AlignRight if section in NUMERIC else Qt.AlignmentFlag.AlignLeft
            return h | Qt.AlignmentFlag.AlignVCenter
        return None
