"""A tile: one headline figure with a title and a sub-line, painted on the palette's base colour."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import QEvent, QRectF, Qt
from PySide6.QtGui import QFont, QFontMetrics, QPainter, QPaintEvent, QPalette, QResizeEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from app.dashboard.colors import WARN, text_tone

VALUE_SCALE = 1.55  # headline size relative to the body font


class Tile(QWidget):
    """Title, big value, small sub-line. Text too wide for the tile shrinks the value (down to
    the body size) and then elides, with the full text in the tooltip."""

    def __init__(self, title: str, tooltip: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._tooltip = tooltip
        self._description = tooltip
        self._sub_elide = Qt.TextElideMode.ElideRight
        self._tone: str | None = None
        self._value_full = "—"
        self._sub_full = " "
        self._title = QLabel(title.upper())
        self._value = QLabel()
        self._sub = QLabel()
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        title_font = QFont(small)
        title_font.setLetterSpacing(QFont.SpacingType.PercentageSpacing, 106)
        self._big = QFont(self.font())
        self._big.setPointSizeF(self._big.pointSizeF() * VALUE_SCALE)
        self._big.setWeight(QFont.Weight.DemiBold)
        self._title.setFont(title_font)
        self._sub.setFont(small)
        self._value.setFont(self._big)
        for label in (self._title, self._sub):
            label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        for label in (self._title, self._value, self._sub):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        # Reserve the headline's full height so shrinking a long value never moves the sub-line.
        self._value.setMinimumHeight(QFontMetrics(self._big).height())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(2)
        layout.addWidget(self._title)
        layout.addWidget(self._value)
        layout.addWidget(self._sub)
        self.setAccessibleName(title)
        self.setToolTip(tooltip)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(120)
        self._fit()

    def set_values(
        self, value: str, sub: str = " ", tone: str | None = None, *, detail: str = ""
    ) -> None:
        """Show `value` (tinted with colour `tone` if given) and the sub-line `sub`; `detail`
        goes first in the tooltip (e.g. a full URL), before the tile's description."""
        tooltip = f"{detail}\n\n{self._description}" if detail else self._description
        if (value, sub, tooltip) != (self._value_full, self._sub_full, self._tooltip):
            self._value_full, self._sub_full, self._tooltip = value, sub, tooltip
            self._fit()
        if tone != self._tone:
            self._tone = tone
            self._apply_tone()

    def keep_sub_tail(self) -> None:
        """Elide a too-long sub-line "a · b" in `a` first and keep its last part (a URL) whole;
        if even that is too wide, elide it in the middle, keeping scheme, host start and port."""
        self._sub_elide = Qt.TextElideMode.ElideMiddle
        self._fit()

    def value_text(self) -> str:
        return self._value_full

    def sub_text(self) -> str:
        return self._sub_full

    def tone(self) -> str | None:
        """The colour the value is tinted with (None: the palette's text colour)."""
        return self._tone

    def sub_shown(self) -> str:
        """The sub-line as drawn: elided when it does not fit."""
        return self._sub.text()

    def _fit(self) -> None:
        width = self.contentsRect().width() - 24  # minus the layout's side margins
        font = QFont(self._big)
        needed = QFontMetrics(font).horizontalAdvance(self._value_full)
        if needed > width > 0:
            base = self.font().pointSizeF()
            font.setPointSizeF(max(base, font.pointSizeF() * width / needed))
        metrics = QFontMetrics(font)
        value = metrics.elidedText(self._value_full, Qt.TextElideMode.ElideRight, max(width, 0))
        sub = self._elide_sub(QFontMetrics(self._sub.font()), max(width, 0))
        if self._value.font() != font:
            self._value.setFont(font)
        self._value.setText(value)
        self._sub.setText(sub)
        clipped = value != self._value_full or sub != self._sub_full
        full = f"{self._value_full}\n{self._sub_full}".strip()
        self.setToolTip(f"{full}\n\n{self._tooltip}" if clipped else self._tooltip)

    def _elide_sub(self, metrics: QFontMetrics, width: int) -> str:
        text = self._sub_full
        right = Qt.TextElideMode.ElideRight
        if (
            self._sub_elide != Qt.TextElideMode.ElideMiddle
            or metrics.horizontalAdvance(text) <= width
        ):
            return metrics.elidedText(text, right, width)
        head, sep, tail = text.rpartition(" · ")
        tail_width = metrics.horizontalAdvance(sep + tail)
        if head and tail_width < width * 0.8:
            return metrics.elidedText(head, right, width - tail_width) + sep + tail
        return metrics.elidedText(tail or text, Qt.TextElideMode.ElideMiddle, width)

    def _apply_tone(self) -> None:
        palette = self.palette()
        if self._tone is not None:
            palette.setColor(QPalette.ColorRole.WindowText, text_tone(self._tone, palette))
        self._value.setPalette(palette)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit()

    def changeEvent(self, event: QEvent) -> None:
        # Re-derive the tone when the theme changes (the label's own palette is not inherited).
        if event.type() == QEvent.Type.PaletteChange:
            self._apply_tone()
        super().changeEvent(event)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        painter.setPen(palette.color(QPalette.ColorRole.Mid))
        painter.setBrush(palette.color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 6, 6)


TIER_LABELS = {"memory": "RAM", "sqlite": "disk", "redis": "Redis"}


def tier_summary(tiers: Mapping[str, Any] | None) -> tuple[str, str, str | None]:
    """The cache tile's view of the cache tiers (`response_cache.tiers`): a sub-line suffix
    naming the tiers behind RAM (" · disk, Redis down"), a tooltip line per tier, and WARN
    when one is down. Nothing when RAM is the only tier (or the server sends no tiers)."""
    behind = {k: v for k, v in (tiers or {}).items() if k != "memory" and isinstance(v, Mapping)}
    if not behind:
        return "", "", None
    names = [
        TIER_LABELS.get(name, name) + ("" if t.get("state") == "up" else f" {t.get('state')}")
        for name, t in behind.items()
    ]
    lines = []
    for name, t in (tiers or {}).items():
        if not isinstance(t, Mapping):
            continue
        state = str(t.get("state", "?"))
        reason = f" ({t['reason']})" if t.get("reason") else ""
        lines.append(
            f"{TIER_LABELS.get(name, name)}: {state}{reason}, "
            f"{int(t.get('entries', 0)):,} entries, {int(t.get('hits', 0)):,} hits"
        )
    down = any(t.get("state") == "down" for t in behind.values())
    return " · " + ", ".join(names), "\n".join(lines), WARN if down else None
