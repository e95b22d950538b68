"""The quitting strip above the dashboard: "Finishing N answers before quitting…" and Quit now."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from app.dashboard.colors import WARN


def quitting_text(answers: int) -> str:
    """`Finishing 2 answers before quitting…`"""
    return f"Finishing {answers} answer{'' if answers == 1 else 's'} before quitting…"


class QuitBanner(QFrame):
    """Hidden until Quit waits for answers in progress; Quit now ends them at once."""

    quit_now = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("quitBanner")
        self.setStyleSheet(
            f"#quitBanner {{ border: 1px solid {WARN}; border-left: 6px solid {WARN}; "
            "border-radius: 6px; }"
        )
        self.label = QLabel()
        self.button = QPushButton("Quit now")
        self.button.setToolTip("End the answers in progress (their clients are told) and quit")
        self.button.clicked.connect(self.quit_now.emit)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(16, 6, 8, 6)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.hide()

    def set_answers(self, answers: int) -> None:
        """Show how many answers Quit still waits for; 0 hides the strip."""
        self.label.setText(quitting_text(answers) if answers else "")
        self.setVisible(answers > 0)
