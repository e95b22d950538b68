"""A painted sparkline of the last N one-second samples, with current, min and max labels."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetricsF,
    QPainter,
    QPaintEvent,
    QPalette,
    QPen,
    QPolygonF,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

HISTORY = 300  # five minutes of one-second samples


class Sparkline(QWidget):
    """Keeps a bounded deque of samples; `add` is O(1) and only schedules a repaint.

    The y-axis is `fixed_range` when given, otherwise the samples' min..max widened to at least
    `min_span` (so noise of a fraction of a MB does not look like a cliff); `floor` pins the
    bottom (queue depth starts at 0).
    """

    def __init__(
        self,
        title: str,
        fmt: Callable[[float], str],
        *,
        fixed_range: tuple[float, float] | None = None,
        floor: float | None = None,
        min_span: float = 1.0,
        history: int = HISTORY,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._title = title
        self._fmt = fmt
        self._fixed = fixed_range
        self._floor = floor
        self._min_span = min_span
        self._samples: deque[float] = deque(maxlen=history)
        self.setAccessibleName(title)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(180, 96)

    def add(self, value: float) -> None:
        self._samples.append(float(value))
        self.update()

    def values(self) -> list[float]:
        return list(self._samples)

    def capacity(self) -> int:
        return self._samples.maxlen or 0

    def current_text(self) -> str:
        return self._fmt(self._samples[-1]) if self._samples else "—"

    def range_text(self) -> str:
        if not self._samples:
            return "no data yet"
        return f"min {self._fmt(min(self._samples))} · max {self._fmt(max(self._samples))}"

    def sizeHint(self) -> QSize:
        return QSize(300, 120)

    def _y_range(self) -> tuple[float, float]:
        if self._fixed is not None:
            return self._fixed
        lo, hi = min(self._samples), max(self._samples)
        if self._floor is not None:
            return self._floor, max(hi, self._floor + self._min_span)
        if hi - lo < self._min_span:
            mid = (hi + lo) / 2
            lo, hi = mid - self._min_span / 2, mid + self._min_span / 2
        return lo, hi

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        muted = palette.color(QPalette.ColorRole.PlaceholderText)
        box = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.setBrush(palette.color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(box, 6, 6)

        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        bold = QFont(self.font())
        bold.setWeight(QFont.Weight.DemiBold)
        line_h = QFontMetricsF(bold).height()
        inner = box.adjusted(10, 6, -10, -6)
        header = QRectF(inner.left(), inner.top(), inner.width(), line_h)
        footer = QRectF(inner.left(), inner.bottom() - line_h, inner.width(), line_h)
        plot = QRectF(
            inner.left(), header.bottom() + 4, inner.width(), footer.top() - header.bottom() - 8
        )

        left_v = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        right_v = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        painter.setFont(small)
        painter.setPen(muted)
        painter.drawText(header, left_v, self._title.upper())
        painter.drawText(footer, left_v, self.range_text())
        painter.drawText(footer, right_v, f"last {self.capacity() // 60} min")
        painter.setFont(bold)
        painter.setPen(palette.color(QPalette.ColorRole.Text))
        painter.drawText(header, right_v, self.current_text())

        if self._samples and plot.height() > 4:
            self._draw_line(painter, plot, palette.color(QPalette.ColorRole.Highlight))

    def _draw_line(self, painter: QPainter, plot: QRectF, color: QColor) -> None:
        lo, hi = self._y_range()
        span = (hi - lo) or 1.0
        cap = max(self.capacity() - 1, 1)
        # The newest sample sits at the right edge; a young series grows in from the right,
        # so the x-axis always means "the last five minutes".
        offset = self.capacity() - len(self._samples)
        x_step = plot.width() / cap
        bottom, height = plot.bottom(), plot.height()
        points = [
            QPointF(
                plot.left() + (offset + i) * x_step,
                bottom - (min(max(v, lo), hi) - lo) / span * height,
            )
            for i, v in enumerate(self._samples)
        ]
        if len(points) == 1:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(color)
            painter.drawEllipse(points[0], 2.5, 2.5)
            return
        fill = QColor(color)
        fill.setAlphaF(0.18)
        area = QPolygonF([QPointF(points[0].x(), bottom), *points, QPointF(points[-1].x(), bottom)])
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(fill)
        painter.drawPolygon(area)
        painter.setPen(QPen(color, 1.6))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPolyline(QPolygonF(points))
