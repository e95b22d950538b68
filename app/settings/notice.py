"""A tinted message box with a coloured stripe: the page's status line and the file-problems box."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QFont, QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from app.settings import tones


class Notice(QWidget):
    """Hidden while it has no text. Text is plain (messages may quote `<`) and selectable."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._kind = "info"
        self._title = QLabel()
        bold = QFont(self.font())
        bold.setWeight(QFont.Weight.DemiBold)
        self._title.setFont(bold)
        self._body = QLabel()
        for label in (self._title, self._body):
            label.setTextFormat(Qt.TextFormat.PlainText)
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 7, 12, 7)
        layout.setSpacing(3)
        layout.addWidget(self._title)
        layout.addWidget(self._body)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        self.set_message("", "info")

    def set_message(self, text: str, kind: str, title: str = "") -> None:
        self._kind = kind
        self._title.setText(title)
        self._title.setVisible(bool(title))
        self._body.setText(text)
        self._body.setVisible(bool(text))
        self.setVisible(bool(text or title))
        self.setAccessibleDescription(f"{title} {text}".strip())
        self.update()

    def kind(self) -> str:
        return self._kind

    def text(self) -> str:
        """Title and body as shown, one paragraph each."""
        return "\n".join(t for t in (self._title.text(), self._body.text()) if t)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        box = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(tones.tint(self._kind, palette, 0.5))
        painter.setBrush(tones.tint(self._kind, palette, 0.14))
        painter.drawRoundedRect(box, 6, 6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(tones.accent(self._kind))
        painter.drawRoundedRect(QRectF(box.left(), box.top(), 6, box.height()), 3, 3)
