"""A painted line chart of one time series over a chosen span, with a y-axis (min and max with
units), a time axis (how long ago, "now") and the current value."""

from __future__ import annotations

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

from app.dashboard import formatting as fmt
from app.dashboard.colors import chart_line_color


class Sparkline(QWidget):
    """Renders what `set_series` last gave it; `set_series` only schedules a repaint.

    The y-axis is `fixed_range` when given, otherwise the samples' min..max widened to at least
    `min_span` (so noise of a fraction of a MB does not look like a cliff); `floor` pins the
    bottom (queue depth starts at 0). The x-axis spans `span` seconds up to the newest sample:
    a young series grows in from the right, so the axis always means "the last N minutes".
    """

    def __init__(
        self,
        title: str,
        fmt: Callable[[float], str],
        *,
        fixed_range: tuple[float, float] | None = None,
        floor: float | None = None,
        min_span: float = 1.0,
        tooltip: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._title = title
        self._fmt = fmt
        self._fixed = fixed_range
        self._floor = floor
        self._min_span = min_span
        self._points: list[tuple[float, float]] = []
        self._span = 300.0
        self._tooltip = tooltip
        self.setAccessibleName(title)
        self.setToolTip(tooltip)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(180, 110)

    def set_series(self, points: list[tuple[float, float]], span: float | None) -> None:
        """Plot (time, value) points over the last `span` seconds; None: from the first point."""
        self._points = points
        if span is None:
            span = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
        self._span = max(float(span), 1.0)
        self.setAccessibleDescription(f"{self.current_text()}; {self.range_text()}")
        self.update()

    def values(self) -> list[float]:
        return [v for _, v in self._points]

    def times(self) -> list[float]:
        return [t for t, _ in self._points]

    def span_seconds(self) -> float:
        """How many seconds the time axis spans."""
        return self._span

    def title(self) -> str:
        return self._title

    def current_text(self) -> str:
        return self._fmt(self._points[-1][1]) if self._points else "—"

    def range_text(self) -> str:
        if not self._points:
            return "no data yet"
        values = self.values()
        return f"min {self._fmt(min(values))} · max {self._fmt(max(values))}"

    def axis_texts(self) -> tuple[str, str, str, str]:
        """The axis labels as drawn: y bottom, y top, time left, time right."""
        lo, hi = self._y_range() if self._points else (0.0, 0.0)
        return self._fmt(lo), self._fmt(hi), f"−{fmt.span(self._span)}", "now"

    def line_color(self) -> QColor:
        return chart_line_color(self.palette())

    def sizeHint(self) -> QSize:
        return QSize(300, 130)

    def _y_range(self) -> tuple[float, float]:
        if self._fixed is not None:
            return self._fixed
        values = self.values()
        lo, hi = min(values), max(values)
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
        small_metrics = QFontMetricsF(small)
        small_h = small_metrics.height()
        y_lo, y_hi, t_left, t_right = self.axis_texts()
        gutter = max(small_metrics.horizontalAdvance(y_lo), small_metrics.horizontalAdvance(y_hi))
        inner = box.adjusted(10, 6, -10, -4)
        header = QRectF(inner.left(), inner.top(), inner.width(), line_h)
        footer = QRectF(inner.left() + gutter + 6, inner.bottom() - small_h, 0, small_h)
        footer.setRight(inner.right())
        plot = QRectF(
            footer.left(), header.bottom() + 4, footer.width(), footer.top() - header.bottom() - 6
        )

        left_v = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        right_v = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        painter.setFont(small)
        painter.setPen(muted)
        painter.drawText(header, left_v, self._title.upper())
        if plot.height() > 4:
            self._draw_axes(painter, plot, footer, (y_lo, y_hi, t_left, t_right))
        painter.setFont(bold)
        painter.setPen(palette.color(QPalette.ColorRole.Text))
        painter.drawText(header, right_v, self.current_text())

        if self._points and plot.height() > 4:
            self._draw_line(painter, plot, self.line_color())

    def _draw_axes(
        self, painter: QPainter, plot: QRectF, footer: QRectF, texts: tuple[str, str, str, str]
    ) -> None:
        y_lo, y_hi, t_left, t_right = texts
        right_v = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        h = footer.height()
        gutter = QRectF(self.rect().left(), 0, plot.left() - 4 - self.rect().left(), h)
        if self._points:
            painter.drawText(gutter.translated(0, plot.top() - h / 2), right_v, y_hi)
            painter.drawText(gutter.translated(0, plot.bottom() - h / 2), right_v, y_lo)
        painter.drawText(footer, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, t_left)
        painter.drawText(footer, right_v, t_right)
        if self._points:
            middle = Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter
            room = footer.width() - 2 * QFontMetricsF(painter.font()).horizontalAdvance(t_left)
            if QFontMetricsF(painter.font()).horizontalAdvance(self.range_text()) < room - 16:
                painter.drawText(footer, middle, self.range_text())
        grid = QColor(self.palette().color(QPalette.ColorRole.Mid))
        grid.setAlphaF(0.6)
        painter.setPen(QPen(grid, 1, Qt.PenStyle.DotLine))
        for y in (plot.top(), plot.bottom()):
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))

    def _draw_line(self, painter: QPainter, plot: QRectF, color: QColor) -> None:
        lo, hi = self._y_range()
        y_span = (hi - lo) or 1.0
        newest = self._points[-1][0]
        start = newest - self._span
        bottom, height = plot.bottom(), plot.height()
        points = [
            QPointF(
                plot.left() + max(t - start, 0.0) / self._span * plot.width(),
                bottom - (min(max(v, lo), hi) - lo) / y_span * height,
            )
            for t, v in self._points
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
