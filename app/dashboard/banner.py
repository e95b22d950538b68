"""The state banner at the top of the dashboard: a coloured stripe, a state word and a message."""

from __future__ import annotations

import logging

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QFont, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QWidget

from app.dashboard.colors import blend, state_color

log = logging.getLogger("chatbot.ui")

STATE_LABELS: dict[str, str] = {
    "serving": "Serving",
    "ollama_down": "Ollama unreachable",
    "starting": "Starting",
    "stopped": "Stopped",
    "failed": "Failed",
}


class StateBanner(QWidget):
    """Tinted strongly for problems, barely for "serving" (it then just shows the API URL)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._state = "stopped"
        self._state_label = QLabel()
        bold = QFont(self.font())
        bold.setWeight(QFont.Weight.Bold)
        self._state_label.setFont(bold)
        self._message = QLabel()
        self._message.setWordWrap(True)
        # Selectable: the message may hold a config path or URL the user wants to copy.
        self._message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._message.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(16, 8, 12, 8)
        layout.setSpacing(10)
        layout.addWidget(self._state_label, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self._message, 1)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.set_state("stopped", "")

    def set_state(self, state: str, message: str) -> None:
        if state not in STATE_LABELS:
            log.warning("dashboard: unknown server state %r", state)
        self._state = state
        self._state_label.setText(STATE_LABELS.get(state, state))
        self._message.setText(message)
        self.setAccessibleDescription(f"{self._state_label.text()}: {message}")
        self.update()

    def state(self) -> str:
        return self._state

    def text(self) -> str:
        return self._message.text()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        accent = state_color(self._state)
        base = palette.color(QPalette.ColorRole.Window)
        strength = 0.08 if self._state == "serving" else 0.22
        box = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(blend(accent, base, 0.5))
        painter.setBrush(blend(accent, base, strength))
        painter.drawRoundedRect(box, 6, 6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(accent)
        painter.drawRoundedRect(QRectF(box.left(), box.top(), 6, box.height()), 3, 3)
