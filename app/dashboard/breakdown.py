"""Requests and cache hits per endpoint, per model and per user: a strip of lines, busiest
first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QFont, QFontMetricsF, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QWidget

from app.dashboard import formatting as fmt

# The gateway's bucket for names past the first 50 it has seen (models, users).
OTHER = "(other)"
SLOTS = 4  # cells per line; when more entries than that, the last cell sums up the rest


class Kind(NamedTuple):
    """One line of the strip: the snapshot's key, its caption and tooltip, what the gateway's
    "(other)" bucket stands for, and names shown muted (the usual case, not news)."""

    key: str
    title: str
    tooltip: str
    other: str = "others"
    muted: frozenset[str] = frozenset()


KINDS = (
    Kind(
        "endpoints",
        "Endpoints",
        "Requests per endpoint since the server started, busiest first, "
        "and the share answered from the cache",
    ),
    Kind(
        "models",
        "Models",
        "Requests per model since the server started, busiest first, and the "
        "share answered from the cache (the Models tab below adds each model's generation "
        "time and whether Ollama has it installed and loaded)",
        other="models past the first 50",
    ),
    Kind(
        "users",
        "Users",
        "Requests per user since the server started (an API key's name, never the key, or the "
        "user header's value), busiest first, and the share answered from the cache",
        other="users past the first 50",
        muted=frozenset({"anonymous"}),
    ),
)
TOOLTIP_LINES = 12


class Share(NamedTuple):
    name: str
    requests: int
    hits: int

    def figures(self) -> str:
        """'1,204 · 45 % hits'."""
        rate = fmt.percent(self.hits / self.requests) if self.requests else fmt.DASH
        return f"{self.requests:,} · {rate} hits"

    def describe(self, other: str = "others") -> str:
        """The tooltip line: 'chat: 310 requests, 31 answered from the cache (10 %)'; `other`
        says what the gateway's "(other)" bucket holds."""
        name = other if self.name == OTHER else self.name
        rate = f" ({fmt.percent(self.hits / self.requests)})" if self.requests else ""
        return (
            f"{name}: {fmt.count(self.requests, 'request')}, "
            f"{self.hits:,} answered from the cache{rate}"
        )


class Cell(NamedTuple):
    """What one cell shows: a name (elided if need be), its figures, and a tooltip."""

    name: str
    figures: str
    tooltip: str
    muted: bool = False


def shares(counts: Mapping[str, Any]) -> list[Share]:
    """The snapshot's {name: {"requests": n, "hits": h}}, busiest first, ties by name (so
    equal entries do not swap places from one second to the next)."""
    items = [
        Share(str(name), int(c.get("requests", 0)), int(c.get("hits", 0)))
        for name, c in counts.items()
        if isinstance(c, Mapping)
    ]
    return sorted(items, key=lambda s: (-s.requests, s.name))


def cells(
    counts: Mapping[str, Any] | None, slots: int = SLOTS, kind: Kind | None = None
) -> list[Cell]:
    """At most `slots` cells: the busiest entries, then one that sums up the rest."""
    other, muted = (kind.other, kind.muted) if kind else ("others", frozenset[str]())
    if counts is None:  # a server from before these figures
        return [Cell(fmt.DASH, "", "Not reported by this server", muted=True)]
    ranked = shares(counts)
    if not ranked:
        return [Cell("No requests yet", "", "", muted=True)]
    # The gateway's "(other)" bucket is no name to rank: it always goes with the rest.
    named = [s for s in ranked if s.name != OTHER]
    if len(ranked) <= slots and len(named) == len(ranked):
        shown, rest = named, []
    else:
        shown = named[: slots - 1]
        rest = [s for s in ranked if s not in shown]
    out = [Cell(s.name, s.figures(), s.describe(other), muted=s.name in muted) for s in shown]
    if rest:
        total = Share(
            "others" if any(s.name == OTHER for s in rest) else f"{len(rest)} more",
            sum(s.requests for s in rest),
            sum(s.hits for s in rest),
        )
        lines = [s.describe(other) for s in rest[:TOOLTIP_LINES]]
        if len(rest) > TOOLTIP_LINES:
            lines.append(f"… and {len(rest) - TOOLTIP_LINES} more")
        out.append(Cell(total.name, total.figures(), "\n".join(lines)))
    return out


class CellWidget(QWidget):
    """A name and, right after it, its figures in a smaller muted font. Painted rather than
    two labels so that an elided name still has its figures right behind it."""

    GAP = 6

    def __init__(self, small: QFont) -> None:
        super().__init__()
        self._small = small
        self._shown = Cell("", "", "")
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def show_cell(self, cell: Cell) -> None:
        if cell == self._shown:
            return
        self._shown = cell
        self.setToolTip(cell.tooltip)
        self.setAccessibleName(f"{cell.name} {cell.figures}".strip())
        self.update()

    def cell(self) -> Cell:
        return self._shown

    def visible_name(self) -> str:
        """The name as painted: elided to leave room for the figures."""
        figures = self._shown.figures
        room = float(self.width())
        if figures:
            room -= QFontMetricsF(self._small).horizontalAdvance(figures) + self.GAP
        metrics = QFontMetricsF(self.font())
        return metrics.elidedText(self._shown.name, Qt.TextElideMode.ElideRight, max(room, 0.0))

    def sizeHint(self) -> QSize:
        # Not the text's width: the columns share the width evenly and never move with it.
        return QSize(160, self.fontMetrics().height())

    def minimumSizeHint(self) -> QSize:
        return QSize(0, self.fontMetrics().height())

    def paintEvent(self, event: QPaintEvent) -> None:
        cell = self._shown
        if not cell.name:
            return
        painter = QPainter(self)
        palette = self.palette()
        normal = QFontMetricsF(self.font())
        baseline = (self.height() + normal.ascent() - normal.descent()) / 2
        name = self.visible_name()
        muted = palette.color(QPalette.ColorRole.PlaceholderText)
        painter.setPen(muted if cell.muted else palette.color(QPalette.ColorRole.Text))
        painter.drawText(QPointF(0, baseline), name)
        if cell.figures:
            painter.setFont(self._small)
            painter.setPen(muted)
            x = normal.horizontalAdvance(name) + self.GAP
            painter.drawText(QPointF(x, baseline), cell.figures)


class Breakdown(QWidget):
    """One line per kind ("endpoints", "models", "users"), each a caption and `slots` cells.
    The cells are made once; a snapshot only repaints those whose text changed, so nothing
    flickers. A line can be hidden (the strip then shrinks by it)."""

    def __init__(
        self,
        kinds: Sequence[Kind] = KINDS,
        slots: int = SLOTS,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._slots = slots
        self._kinds = {kind.key: kind for kind in kinds}
        self._cells: dict[str, list[CellWidget]] = {}
        self._captions: dict[str, QLabel] = {}
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        caption_font = QFont(small)
        caption_font.setLetterSpacing(QFont.SpacingType.PercentageSpacing, 106)
        grid = QGridLayout(self)
        grid.setContentsMargins(12, 8, 12, 8)
        grid.setHorizontalSpacing(14)
        grid.setVerticalSpacing(4)
        for row, kind in enumerate(kinds):
            caption = QLabel(kind.title.upper())
            caption.setToolTip(kind.tooltip)
            caption.setFont(caption_font)
            caption.setForegroundRole(QPalette.ColorRole.PlaceholderText)
            grid.addWidget(caption, row, 0, Qt.AlignmentFlag.AlignVCenter)
            self._captions[kind.key] = caption
            self._cells[kind.key] = []
            for col in range(1, slots + 1):
                cell = CellWidget(small)
                grid.addWidget(cell, row, col)
                self._cells[kind.key].append(cell)
            self.set_counts(kind.key, {})
        for col in range(1, slots + 1):
            # Equal columns: the cells line up across the lines and never shift with text.
            grid.setColumnStretch(col, 1)
            grid.setColumnMinimumWidth(col, 60)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_counts(self, kind: str, counts: Mapping[str, Any] | None) -> None:
        """Show one kind's {name: {"requests", "hits"}}; None means the server sent none."""
        wanted = cells(counts, self._slots, self._kinds[kind])
        blank = Cell("", "", "")
        for i, widget in enumerate(self._cells[kind]):
            widget.show_cell(wanted[i] if i < len(wanted) else blank)

    def set_line_visible(self, kind: str, visible: bool) -> None:
        if self.line_visible(kind) == visible:
            return
        for widget in (self._captions[kind], *self._cells[kind]):
            widget.setVisible(visible)

    def line_visible(self, kind: str) -> bool:
        return not self._captions[kind].isHidden()

    def shown(self, kind: str) -> list[Cell]:
        """The cells in view, left to right (the empty ones left out)."""
        return [c for c in (w.cell() for w in self._cells[kind]) if c.name]

    def cell_widgets(self, kind: str) -> list[CellWidget]:
        return list(self._cells[kind])

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.setBrush(palette.color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 6, 6)
