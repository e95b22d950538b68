"""The charts row of the Overview: a range picker (5 min, 1 h, since start) above the hit-rate,
queue-depth and memory charts, drawn from the controller's chart history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from app.chart_history import RANGES, SERIES, ChartHistory, chart_values
from app.dashboard import formatting as fmt
from app.dashboard.sparkline import Sparkline

DEFAULT_RANGE = "5min"


class RangePicker(QWidget):
    """A small segmented control: one checkable button per range, exactly one checked."""

    changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self.buttons: dict[str, QToolButton] = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        caption = QLabel("Range")
        caption.setContentsMargins(0, 0, 6, 0)
        layout.addWidget(caption)
        for key, (label, _span) in RANGES.items():
            button = QToolButton()
            button.setText(label)
            button.setCheckable(True)
            button.setAutoRaise(False)
            button.setAccessibleName(f"Chart range: {label}")
            button.toggled.connect(lambda on, k=key: self._on_toggled(k, on))
            self._group.addButton(button)
            self.buttons[key] = button
            layout.addWidget(button)
        layout.addStretch(1)
        self.buttons[DEFAULT_RANGE].setChecked(True)

    def _on_toggled(self, key: str, on: bool) -> None:
        # Bold as well as pressed: some themes draw a checked tool button barely differently.
        font = self.buttons[key].font()
        font.setBold(on)
        self.buttons[key].setFont(font)
        if on:
            self.changed.emit(key)

    def current(self) -> str:
        return next(k for k, b in self.buttons.items() if b.isChecked())

    def set_current(self, key: str) -> None:
        if key not in self.buttons:
            raise ValueError(f"chart range {key!r} unknown (known: {', '.join(self.buttons)})")
        self.buttons[key].setChecked(True)


class ChartPanel(QWidget):
    """Plots the history a snapshot carries under "history" (the controller's). A snapshot
    without one (an older controller, tests) is recorded here, one sample per snapshot: the
    snapshots come once a second, so the n-th counts as second n."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.picker = RangePicker()
        self.charts: dict[str, Sparkline] = {
            # Each point is the hit rate of the minute before it (the tile: since start).
            "hit_rate": Sparkline(
                "Hit rate, 1-min rolling",
                fmt.percent,
                fixed_range=(0.0, 1.0),
                tooltip="Each point: the share of cache lookups answered from RAM during the "
                "minute before it",
            ),
            "queue": Sparkline(
                "Queue depth",
                lambda v: f"{v:,.0f}",
                floor=0.0,
                min_span=4.0,
                tooltip="Requests waiting plus being answered",
            ),
            "memory": Sparkline(
                "Memory",
                lambda v: f"{fmt.megabytes(v)} MB",
                min_span=16.0,
                tooltip="Resident memory (RSS) of this process",
            ),
        }
        self._own = ChartHistory()
        self._ticks = 0
        self._history: ChartHistory | None = None
        row = QHBoxLayout()
        row.setSpacing(8)
        for chart in self.charts.values():
            chart.setMaximumHeight(170)
            row.addWidget(chart)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.picker)
        layout.addLayout(row, 1)
        self.picker.changed.connect(lambda _key: self.redraw())

    def update_snapshot(self, snap: Mapping[str, Any]) -> None:
        history = snap.get("history")
        if not isinstance(history, ChartHistory):
            self._ticks += 1
            self._own.add(float(self._ticks), chart_values(snap))
            history = self._own
        self._history = history
        self.redraw()

    def redraw(self) -> None:
        if self._history is None:
            return
        span = RANGES[self.picker.current()][1]
        points = self._history.points(span)
        for i, key in enumerate(SERIES, start=1):
            self.charts[key].set_series([(p[0], p[i]) for p in points], span)
