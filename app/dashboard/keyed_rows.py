"""A table model of rows with stable keys, brought up to date in place (moves, inserts, removals,
changed cells) so a view keeps its selection, scroll position and per-row widgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QAbstractItemView, QTableView

from app.dashboard.colors import BAD, GOOD, WARN, text_tone

_Index = QModelIndex | QPersistentModelIndex
KEY_ROLE = Qt.ItemDataRole.UserRole


class Row(NamedTuple):
    """One row: its key, the texts of its cells, a tooltip, and a tone per cell ("" for the
    plain text colour, else "good", "warn", "bad" or "muted"; shorter than the cells is fine)."""

    key: str
    cells: tuple[str, ...]
    tooltip: str = ""
    tones: tuple[str, ...] = ()


class KeyedRowsModel(QAbstractTableModel):
    def __init__(
        self,
        columns: Sequence[str],
        numeric: Sequence[str] = (),
        header_tips: Mapping[str, str] | None = None,
        centered: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.columns = tuple(columns)
        self._centered = frozenset(self.columns.index(c) for c in centered)
        self._header_tips = dict(header_tips or {})
        self._numeric = frozenset(self.columns.index(c) for c in numeric)
        self._rows: list[Row] = []
        self._colors: dict[str, QColor] = {}
        self.set_palette(QPalette())

    def set_palette(self, palette: QPalette) -> None:
        """Tones legible on this palette (called again when the theme changes)."""
        self._colors = {
            "good": text_tone(GOOD, palette),
            "warn": text_tone(WARN, palette),
            "bad": text_tone(BAD, palette),
            "muted": palette.color(QPalette.ColorRole.PlaceholderText),
        }
        if self._rows:
            self.dataChanged.emit(
                self.index(0, 0),
                self.index(len(self._rows) - 1, len(self.columns) - 1),
                [Qt.ItemDataRole.ForegroundRole],
            )

    def sync(self, rows: Sequence[Row]) -> None:
        """Show `rows`, in that order (keys must be unique). Rows already shown stay the same
        rows to the view: they are moved and their changed cells repainted, never re-created."""
        wanted = {row.key for row in rows}
        for i in range(len(self._rows) - 1, -1, -1):
            if self._rows[i].key not in wanted:
                self.beginRemoveRows(QModelIndex(), i, i)
                del self._rows[i]
                self.endRemoveRows()
        for i, row in enumerate(rows):
            if i < len(self._rows) and self._rows[i].key == row.key:
                self._replace(i, row)
                continue
            at = next(
                (j for j in range(i + 1, len(self._rows)) if self._rows[j].key == row.key), -1
            )
            if at < 0:
                self.beginInsertRows(QModelIndex(), i, i)
                self._rows.insert(i, row)
                self.endInsertRows()
            else:
                self.beginMoveRows(QModelIndex(), at, at, QModelIndex(), i)
                self._rows.insert(i, self._rows.pop(at))
                self.endMoveRows()
                self._replace(i, row)

    def _replace(self, i: int, row: Row) -> None:
        if self._rows[i] != row:
            self._rows[i] = row
            self.dataChanged.emit(self.index(i, 0), self.index(i, len(self.columns) - 1))

    def row_keys(self) -> list[str]:
        return [row.key for row in self._rows]

    def key(self, row: int) -> str:
        return self._rows[row].key

    def row_of(self, key: str) -> int:
        return next((i for i, row in enumerate(self._rows) if row.key == key), -1)

    def cell(self, row: int, column: str) -> str:
        return self._rows[row].cells[self.columns.index(column)]

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return row.cells[col] if col < len(row.cells) else ""
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return self._alignment(col)
        if role == Qt.ItemDataRole.ForegroundRole:
            tone = row.tones[col] if col < len(row.tones) else ""
            return self._colors.get(tone)
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.tooltip or None
        if role == KEY_ROLE:
            return row.key
        return None

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return self._alignment(section)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._header_tips.get(self.columns[section])
        return None

    def _alignment(self, col: int) -> Qt.AlignmentFlag:
        h = Qt.AlignmentFlag.AlignLeft
        if col in self._numeric:
            h = Qt.AlignmentFlag.AlignRight
        elif col in self._centered:
            h = Qt.AlignmentFlag.AlignHCenter
        return h | Qt.AlignmentFlag.AlignVCenter


def read_only_table(table: QTableView, min_row_height: int = 0) -> None:
    """The dashboard's tables alike: whole rows selected one at a time, no editing, no grid or
    wrapping, no row numbers, rows a line high (or `min_row_height`, for a button), headers
    that do not light up with the selection."""
    table.setAlternatingRowColors(True)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setShowGrid(False)
    table.setWordWrap(False)
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setDefaultSectionSize(
        max(table.fontMetrics().height() + 6, min_row_height)
    )
    table.horizontalHeader().setHighlightSections(False)
