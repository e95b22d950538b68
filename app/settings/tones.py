"""Message colours of the settings page, adjusted to stay legible on light and dark palettes."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QWidget

# The dashboard's state colours (app.dashboard.colors). Importing that package from here would be
# an import cycle: the dashboard window imports this package for its Settings tab.
KIND_COLORS: dict[str, str] = {
    "info": "#3b7dd8",
    "ok": "#2e9d4f",
    "warning": "#d08a00",
    "error": "#d64541",
}
KINDS = frozenset(KIND_COLORS)


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightnessF() < 0.5


def accent(kind: str) -> QColor:
    return QColor(KIND_COLORS.get(kind, KIND_COLORS["info"]))


def text_color(kind: str, palette: QPalette) -> QColor:
    """The kind's colour as text on this palette's background."""
    c = accent(kind)
    return c.lighter(140) if is_dark(palette) else c.darker(125)


def tint(kind: str, palette: QPalette, strength: float) -> QColor:
    """`strength` of the kind's colour mixed into the window background."""
    a, b = accent(kind), palette.color(QPalette.ColorRole.Window)
    return QColor.fromRgbF(
        a.redF() * strength + b.redF() * (1 - strength),
        a.greenF() * strength + b.greenF() * (1 - strength),
        a.blueF() * strength + b.blueF() * (1 - strength),
    )


def color_text(widget: QWidget, kind: str | None, background: QPalette | None = None) -> None:
    """Colour a widget's text by kind for `background` (by default the widget's own palette),
    or let it inherit the palette's text colour again (kind None)."""
    palette = QPalette()  # resolves no role: everything not set here follows the parent
    if kind:
        color = text_color(kind, background or widget.palette())
        palette.setColor(QPalette.ColorRole.WindowText, color)
        palette.setColor(QPalette.ColorRole.Text, color)
    widget.setPalette(palette)
