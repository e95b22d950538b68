"""An editable list of strings: a QListWidget with editable rows and Add / Remove buttons."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QLocale, QObject, Qt, Signal
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QStyledItemDelegate,
    QVBoxLayout,
    QWidget,
)

from app.settings import tones

ItemCheck = Callable[[str], str | None]  # the problem with one entry, or None
Display = Callable[[str], str]  # how an entry reads in the list (editing shows the entry itself)


class _DisplayDelegate(QStyledItemDelegate):
    """Paints each row as `display` words it; the editor still opens on the stored text."""

    def __init__(self, display: Display, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._display = display

    def displayText(self, value: Any, locale: QLocale | QLocale.Language) -> str:
        return self._display(str(value).strip())


class ListEditor(QWidget):
    """Blank rows are ignored and entries are stripped; entries `item_check` rejects are shown in
    the error colour with the reason as their tooltip."""

    edited = Signal()

    def __init__(
        self,
        item_check: ItemCheck | None = None,
        parent: QWidget | None = None,
        *,
        display: Display | None = None,
    ) -> None:
        super().__init__(parent)
        self._item_check = item_check
        self._display = display
        self._marking = False
        self.list_widget = QListWidget()
        if display is not None:
            self.list_widget.setItemDelegate(_DisplayDelegate(display, self.list_widget))
        self.list_widget.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.SelectedClicked
        )
        self.list_widget.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        rows = self.list_widget.fontMetrics().height() + 8
        self.list_widget.setMinimumHeight(rows * 3 + 6)
        self.list_widget.setMaximumHeight(rows * 5 + 6)
        self.add_button, self.remove_button, self.buttons = beside_add_remove(
            self,
            self.list_widget,
            "Add an entry and start editing it",
            "Remove the selected entries",
        )

        self.add_button.clicked.connect(self.add_entry)
        self.remove_button.clicked.connect(self.remove_selected)
        self.list_widget.itemSelectionChanged.connect(self._update_buttons)
        model = self.list_widget.model()
        model.rowsInserted.connect(self._on_changed)
        model.rowsRemoved.connect(self._on_changed)
        model.dataChanged.connect(self._on_changed)

    # -- the editor interface shared with the other field editors ---------------------------

    def raw(self) -> list[str]:
        return [text for text in self.entries() if text]

    def set_value(self, value: Sequence[str]) -> None:
        self.list_widget.clear()
        for text in value:
            self._append(str(text))

    # -- list operations --------------------------------------------------------------------

    def entries(self) -> list[str]:
        """Every row's text, stripped, blanks included."""
        return [self.list_widget.item(i).text().strip() for i in range(self.list_widget.count())]

    def add_entry(self) -> QListWidgetItem:
        item = self._append("")
        self.list_widget.setCurrentItem(item)
        self.list_widget.editItem(item)
        return item

    def append_entry(self, text: str) -> QListWidgetItem:
        """Add a finished entry at the end and select it (an edit, like any other)."""
        item = self._append(text)
        self.list_widget.setCurrentItem(item)
        self.list_widget.scrollToItem(item)
        return item

    def shown_texts(self) -> list[str]:
        """Every row as the list shows it."""
        return [
            self._display(text) if self._display else text
            for text in (
                self.list_widget.item(i).text().strip() for i in range(self.list_widget.count())
            )
        ]

    def remove_selected(self) -> None:
        for item in self.list_widget.selectedItems():
            self.list_widget.takeItem(self.list_widget.row(item))

    def _append(self, text: str) -> QListWidgetItem:
        item = QListWidgetItem(text)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        self.list_widget.addItem(item)
        return item

    def _update_buttons(self) -> None:
        self.remove_button.setEnabled(bool(self.list_widget.selectedItems()))

    def _on_changed(self) -> None:
        if self._marking:
            return
        self._mark_problems()
        self.edited.emit()

    def _mark_problems(self, background: QPalette | None = None) -> None:
        # Setting colours changes item data, which would land here again: hence the guard.
        self._marking = True
        try:
            bad = QBrush(tones.text_color("error", background or self.palette()))
            for i in range(self.list_widget.count()):
                item = self.list_widget.item(i)
                text = item.text().strip()
                problem = self._item_check(text) if self._item_check and text else None
                item.setForeground(bad if problem else QBrush())
                # A row shown in other words than its entry has the entry in its tooltip.
                shown = self._display(text) if self._display and text else text
                item.setToolTip(problem or (text if shown != text else ""))
        finally:
            self._marking = False

    def refresh_colors(self, background: QPalette) -> None:
        """Re-tone the marks for a new palette."""
        self._mark_problems(background)


def beside_add_remove(
    owner: QWidget, view: QWidget, add_tip: str, remove_tip: str
) -> tuple[QPushButton, QPushButton, QVBoxLayout]:
    """Lay out `owner` as `view` with a column of Add and Remove (disabled until something is
    selected) beside it; the column is returned too, for editors that add buttons of their own."""
    add = QPushButton("Add")
    add.setToolTip(add_tip)
    remove = QPushButton("Remove")
    remove.setToolTip(remove_tip)
    remove.setEnabled(False)
    buttons = QVBoxLayout()
    buttons.setSpacing(4)
    buttons.addWidget(add)
    buttons.addWidget(remove)
    buttons.addStretch(1)
    layout = QHBoxLayout(owner)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(6)
    layout.addWidget(view, 1)
    layout.addLayout(buttons)
    return add, remove, buttons
