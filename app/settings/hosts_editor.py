"""The `[ollama].hosts` field: a table of Ollama servers, one row per `[[ollama.hosts]]` table
(url, max concurrent, weight, models), with Add / Remove.

Cells hold text; `raw()` turns each non-blank row into the table the file would hold (numbers
where they parse, the text as typed where not), and the server's own validation judges it: its
messages name `ollama.hosts[N].field`, the row headers show the same N, and the cells they name
are tinted with the message as their tooltip. A blank row is not saved (as in the list editors);
an empty cell is left out of the table, so the server's default applies (shown greyed).

With no rows the gateway sends everything to `[ollama].api_url`. The table then says so, and the
first Add starts a row with that URL: someone adding a second server nearly always keeps the one
they have, so the list is that host plus the new one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.settings import tones
from app.settings.list_editor import beside_add_remove
from server.config import HostSpec

HostsCheck = Callable[[list[dict[str, Any]]], list[str]]  # the server's problems, [] when valid

# (field of [[ollama.hosts]], column title, what an empty cell means)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("url", "URL", "http://host:11434"),
    ("max_concurrent", "Max concurrent", "[queue]'s"),
    ("weight", "Weight", "1"),
    ("models", "Models (comma-separated)", "all it has"),
)
FIELDS = [c[0] for c in COLUMNS]
_PROBLEM = re.compile(r"^ollama\.hosts\[(\d+)\](?:\.(\w+))?")
EMPTY_HINT = (
    "No hosts: every request goes to api_url above.\n"
    "Add one row per Ollama server (the first Add starts with api_url)."
)


class _PlaceholderDelegate(QStyledItemDelegate):
    """An empty cell shows, greyed, what the server uses in its place."""

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        if not option.text.strip():
            option.text = COLUMNS[index.column()][2]
            palette = option.palette
            grey = palette.color(QPalette.ColorRole.PlaceholderText)
            palette.setColor(QPalette.ColorRole.Text, grey)
            palette.setColor(QPalette.ColorRole.HighlightedText, grey)


def _cell_value(name: str, text: str) -> Any:
    """The TOML value a cell's text stands for; text that is not one is kept for the message."""
    if name == "max_concurrent" and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if name == "weight":
        try:
            return float(text)
        except ValueError:
            return text
    if name == "models":
        # Blank pieces ("a, b," as typed) are dropped, as blank rows of a list are.
        return [m.strip() for m in text.split(",") if m.strip()]
    return text


def _cell_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "weight":
        return "" if value == 1 else f"{value:g}" if isinstance(value, float) else str(value)
    if name == "models":
        return ", ".join(str(m) for m in value)
    return str(value)


def _as_table(entry: Any) -> dict[str, Any]:
    if isinstance(entry, HostSpec):
        return entry.to_dict()
    if isinstance(entry, dict):
        return dict(entry)
    return {"url": str(entry)}  # a bare URL, as the environment may give


class HostsEditor(QWidget):
    edited = Signal()

    def __init__(self, check: HostsCheck | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._check = check
        self._marking = False
        self._fallback_url = ""
        self._problems: list[str] = []
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[1] for c in COLUMNS])
        self.table.setItemDelegate(_PlaceholderDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.AnyKeyPressed
            | QAbstractItemView.EditTrigger.SelectedClicked
        )
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        for i, (name, _title, empty) in enumerate(COLUMNS):
            head = self.table.horizontalHeaderItem(i)
            if head is not None:  # set by setHorizontalHeaderLabels
                head.setToolTip(f"{name} of [[ollama.hosts]]; empty: {empty}")
        self.table.verticalHeader().setDefaultAlignment(Qt.AlignmentFlag.AlignCenter)
        rows = self.table.verticalHeader().defaultSectionSize()
        frame = 2 * self.table.frameWidth() + header.sizeHint().height()
        self.table.setMinimumHeight(rows * 3 + frame)
        self.table.setMaximumHeight(rows * 5 + frame)

        # Said inside the empty table, where the rows would be.
        self.empty_hint = QLabel(EMPTY_HINT)
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.empty_hint.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        overlay = QVBoxLayout(self.table.viewport())
        overlay.addWidget(self.empty_hint)

        self.add_button, self.remove_button, self.buttons = beside_add_remove(
            self, self.table, "Add a host and start editing its URL", "Remove the selected hosts"
        )

        self.add_button.clicked.connect(lambda: self.add_host())
        self.remove_button.clicked.connect(self.remove_selected)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        model = self.table.model()
        model.rowsInserted.connect(self._on_changed)
        model.rowsRemoved.connect(self._on_changed)
        model.dataChanged.connect(self._on_changed)
        self._on_changed()

    # -- the editor interface shared with the other field editors ---------------------------

    def raw(self) -> list[dict[str, Any]]:
        """One table per non-blank row, with the cells that are not empty."""
        out = []
        for row in self._filled_rows():
            table = {}
            for column, name in enumerate(FIELDS):
                text = self.cell_text(row, column)
                if text:
                    table[name] = _cell_value(name, text)
            out.append(table)
        return out

    def set_value(self, value: Sequence[Any]) -> None:
        self.table.setRowCount(0)
        for entry in value:
            table = _as_table(entry)
            self._append_row([_cell_text(name, table.get(name)) for name in FIELDS])

    # -- table operations -------------------------------------------------------------------

    def set_fallback_url(self, url: str) -> None:
        """The URL the first Add starts with: the form's api_url."""
        self._fallback_url = url.strip()

    def add_host(self, url: str | None = None) -> int:
        """Append a row and start editing its URL (or, given one, the next cell); its index."""
        if url is None:
            url = self._fallback_url if self.table.rowCount() == 0 else ""
        row = self._append_row([url, "", "", ""])
        item = self._item(row, 1 if url else 0)
        self.table.setCurrentItem(item)
        self.table.scrollToItem(item)
        self.table.editItem(item)
        return row

    def set_cell(self, row: int, name: str, text: str) -> None:
        """Set one cell's text, as typing it would."""
        self._item(row, FIELDS.index(name)).setText(text)

    def cell_text(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text().strip() if item is not None else ""

    def cell_problem(self, row: int, name: str) -> str:
        """The server's message about this cell, as its tooltip says it; "" when none."""
        item = self.table.item(row, FIELDS.index(name))
        return item.toolTip() if item is not None and item.data(Qt.ItemDataRole.UserRole) else ""

    def row_labels(self) -> list[str]:
        return [
            self.table.verticalHeaderItem(r).text() if self.table.verticalHeaderItem(r) else ""
            for r in range(self.table.rowCount())
        ]

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True)
        for row in rows:
            self.table.removeRow(row)

    def refresh_colors(self, background: QPalette) -> None:
        """Re-tone the marks for a new palette."""
        self._mark(background)

    # -- internals --------------------------------------------------------------------------

    def _append_row(self, texts: list[str]) -> int:
        self._marking = True  # one edited signal for the whole row, from rowsInserted
        try:
            row = self.table.rowCount()
            self.table.insertRow(row)
            for column, text in enumerate(texts):
                self.table.setItem(row, column, QTableWidgetItem(text))
        finally:
            self._marking = False
        self._on_changed()
        return row

    def _item(self, row: int, column: int) -> QTableWidgetItem:
        item = self.table.item(row, column)
        if item is None:  # every cell gets an item in _append_row
            raise IndexError(f"no cell at row {row}, column {column}")
        return item

    def _filled_rows(self) -> list[int]:
        return [
            r
            for r in range(self.table.rowCount())
            if any(self.cell_text(r, c) for c in range(len(COLUMNS)))
        ]

    def _update_buttons(self) -> None:
        self.remove_button.setEnabled(bool(self.table.selectedIndexes()))

    def _on_changed(self) -> None:
        if self._marking:
            return
        self.empty_hint.setVisible(self.table.rowCount() == 0)
        self._problems = self._check(self.raw()) if self._check else []
        self._mark()
        self.edited.emit()

    def _mark(self, background: QPalette | None = None) -> None:
        # Item data changes land in _on_changed again: hence the guard.
        self._marking = True
        try:
            filled = self._filled_rows()
            index_of = {row: i for i, row in enumerate(filled)}
            bad: dict[tuple[int, int], list[str]] = {}
            for problem in self._problems:
                found = _PROBLEM.match(problem)
                if found is None or int(found[1]) >= len(filled):
                    continue
                name = found[2] if found[2] in FIELDS else "url"
                bad.setdefault((filled[int(found[1])], FIELDS.index(name)), []).append(problem)
            tint = QBrush(tones.tint("error", background or self.palette(), 0.3))
            for row in range(self.table.rowCount()):
                # The index the server's messages use: blank rows are not saved, so not counted.
                label = str(index_of[row]) if row in index_of else ""
                head = self.table.verticalHeaderItem(row)
                if head is None or head.text() != label:
                    head = QTableWidgetItem(label)
                    head.setToolTip(f"ollama.hosts[{label}]" if label else "Blank: not saved")
                    self.table.setVerticalHeaderItem(row, head)
                for column in range(len(COLUMNS)):
                    item = self.table.item(row, column)
                    if item is None:
                        continue
                    problems = bad.get((row, column))
                    item.setBackground(tint if problems else QBrush())
                    item.setToolTip("\n".join(problems) if problems else "")
                    item.setData(Qt.ItemDataRole.UserRole, bool(problems))
        finally:
            self._marking = False
