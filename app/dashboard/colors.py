"""State colours and palette-aware colour helpers, so the dashboard reads in any theme."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette

# Mid-tone bases: readable as a stripe or tint on light and dark backgrounds alike.
STATE_COLORS: dict[str, str] = {
    "serving": "#2e9d4f",
    "ollama_down": "#d08a00",
    "starting": "#d08a00",
    "failed": "#d64541",
    "stopped": "#8a8f98",
}
GOOD, WARN, BAD, NEUTRAL = (
    STATE_COLORS["serving"],
    STATE_COLORS["ollama_down"],
    STATE_COLORS["failed"],
    STATE_COLORS["stopped"],
)


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightnessF() < 0.5


def blend(a: QColor, b: QColor, t: float) -> QColor:
    """Mix `t` of `a` into `b` (t=0 gives b, t=1 gives a)."""
    return QColor.fromRgbF(
        a.redF() * t + b.redF() * (1 - t),
        a.greenF() * t + b.greenF() * (1 - t),
        a.blueF() * t + b.blueF() * (1 - t),
    )


def text_tone(color: str, palette: QPalette) -> QColor:
    """A state colour adjusted to be legible as text on this palette's background."""
    c = QColor(color)
    return c.lighter(135) if is_dark(palette) else c.darker(125)


def state_color(state: str) -> QColor:
    return QColor(STATE_COLORS.get(state, NEUTRAL))


def relative_luminance(color: QColor) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (0 black .. 1 white)."""

    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return (
        0.2126 * channel(color.redF())
        + 0.7152 * channel(color.greenF())
        + 0.0722 * channel(color.blueF())
    )


def contrast_ratio(a: QColor, b: QColor) -> float:
    """WCAG contrast ratio between two colours, 1 (none) .. 21 (black on white)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


# WCAG's minimum for graphical objects (1.4.11 non-text contrast); charts aim a little higher.
CHART_CONTRAST = 3.5


def chart_line_color(palette: QPalette) -> QColor:
    """The theme's highlight colour, lightened (on a dark base) or darkened (on a light one)
    until the chart line stands out from the base it is drawn on. Themes often pick a highlight
    meant for white text on top of it, which on a dark base is nearly invisible."""
    base = palette.color(QPalette.ColorRole.Base)
    color = QColor(palette.color(QPalette.ColorRole.Highlight))
    dark_base = relative_luminance(base) < 0.18
    for _ in range(24):
        if contrast_ratio(color, base) >= CHART_CONTRAST:
            return color
        if dark_base:
            # lighter() cannot lift a black or nearly grey colour much: blend towards white too.
            color = blend(QColor("#ffffff"), color.lighter(115), 0.12)
        else:
            color = blend(QColor("#000000"), color.darker(115), 0.12)
    return color
