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
