"""Tray and window icons, drawn with QPainter: a chat bubble coloured by the server's state."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap, QPolygonF

from app import resources

STATE_COLORS = {
    "serving": "#2e9d5b",  # green
    "starting": "#d99a1e",  # amber
    "ollama_down": "#d99a1e",
    "failed": "#c8372d",  # red
    "stopped": "#7a7f87",  # grey
}

_cache: dict[tuple[str, int], QIcon] = {}
_app_icon: QIcon | None = None


def state_icon(state: str, size: int = 64) -> QIcon:
    key = (state, size)
    if key not in _cache:
        _cache[key] = QIcon(_draw(STATE_COLORS.get(state, STATE_COLORS["stopped"]), state, size))
    return _cache[key]


def app_icon() -> QIcon:
    """The application icon: the PNG set scripts/make_icons.py renders from resources/icon.svg,
    or the drawn "serving" bubble where those files are missing."""
    global _app_icon
    if _app_icon is None:
        _app_icon = _load_app_icon() or state_icon("serving")
    return _app_icon


def _load_app_icon() -> QIcon | None:
    pngs = resources.hicolor_icons()
    if not pngs:
        return None
    icon = QIcon()
    for side, png in pngs.items():
        icon.addFile(str(png), QSize(side, side))
    return icon


def _draw(color: str, state: str, size: int) -> QPixmap:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 64
    # The bubble: a rounded rectangle with a tail at the bottom left.
    bubble = QPainterPath()
    bubble.addRoundedRect(QRectF(4 * s, 6 * s, 56 * s, 40 * s), 12 * s, 12 * s)
    tail = QPolygonF([QPointF(14 * s, 42 * s), QPointF(10 * s, 58 * s), QPointF(28 * s, 44 * s)])
    bubble.addPolygon(tail)
    bubble = bubble.simplified()
    p.setPen(QPen(QColor(color).darker(140), 2 * s))
    p.setBrush(QColor(color))
    p.drawPath(bubble)
    # Inside: three dots while serving, a bar for stopped, an exclamation mark otherwise.
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("white"))
    if state == "serving":
        for x in (20, 32, 44):
            p.drawEllipse(QPointF(x * s, 26 * s), 4.5 * s, 4.5 * s)
    elif state == "stopped":
        p.drawRoundedRect(QRectF(18 * s, 23 * s, 28 * s, 6 * s), 3 * s, 3 * s)
    else:
        p.drawRoundedRect(QRectF(29 * s, 12 * s, 6 * s, 18 * s), 3 * s, 3 * s)
        p.drawEllipse(QPointF(32 * s, 37 * s), 3.5 * s, 3.5 * s)
    p.end()
    return pix
