"""The tray icon: state drawn in the icon, live figures in the tooltip, and the menu."""

from __future__ import annotations

from collections import deque
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app import autostart
from app.dashboard.quit_banner import quitting_text
from app.icons import state_icon

TITLE = "Chatbot Companion"
# How long a notification shows before the next one may take its place.
MESSAGE_MS = 8000
# Notifications waiting their turn; older ones are dropped past this.
MESSAGE_BACKLOG = 4
# States with a server whose cache can be flushed (not starting, failed or stopped).
FLUSHABLE_STATES = frozenset({"serving", "ollama_down"})


def tooltip_text(snap: dict[str, Any]) -> str:
    """`Chatbot Companion · hit 73% · queue 2 · 84 MB`"""
    hit = round(100 * snap["response_cache"]["hit_rate"])
    queue = snap["queue"]["waiting"] + snap["queue"]["active"]
    rss = round(snap["memory"]["rss_mb"])
    return f"{TITLE} · hit {hit}% · queue {queue} · {rss} MB"


class Tray(QObject):
    open_dashboard = Signal()
    flush_cache = Signal()
    restart_server = Signal()
    copy_api_url = Signal()
    open_config = Signal()
    quit = Signal()
    quit_now = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.icon = QSystemTrayIcon(state_icon("starting"), self)
        self.icon.setToolTip(TITLE)
        self.menu = QMenu()
        self.actions: dict[str, QAction] = {}
        self._state_action = self.menu.addAction("Starting…")
        self._state_action.setEnabled(False)
        self.menu.addSeparator()
        for key, text, signal in (
            ("dashboard", "Open Dashboard", self.open_dashboard),
            ("flush", "Flush Cache", self.flush_cache),
            ("restart", "Restart Server", self.restart_server),
            ("copy_url", "Copy API URL", self.copy_api_url),
            ("config", "Open Config", self.open_config),
        ):
            action = self.menu.addAction(text)
            action.triggered.connect(signal.emit)
            self.actions[key] = action
        self.menu.addSeparator()
        login = self.menu.addAction("Start at Login")
        login.setCheckable(True)
        login.setChecked(autostart.is_enabled())
        login.toggled.connect(autostart.set_enabled)
        self.actions["login"] = login
        self.menu.addSeparator()
        quit_action = self.menu.addAction("Quit")
        quit_action.triggered.connect(self.quit.emit)
        self.actions["quit"] = quit_action
        # Shown only while Quit waits for answers in progress: end them and quit at once.
        quit_now = self.menu.addAction("Quit Now")
        quit_now.triggered.connect(self.quit_now.emit)
        quit_now.setVisible(False)
        self.actions["quit_now"] = quit_now
        self.quitting = 0
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._on_activated)
        self.state = "starting"
        self.actions["flush"].setEnabled(False)  # no server to flush until it serves
        # A tray shows one message at a time and a new one replaces it at once: queue them, so
        # "Configuration problem" is not wiped a second later by "Ollama unreachable".
        self._showing: tuple[str, str] | None = None
        self._waiting: deque[tuple[str, str]] = deque(maxlen=MESSAGE_BACKLOG)
        self._message_timer = QTimer(self)
        self._message_timer.setSingleShot(True)
        self._message_timer.timeout.connect(self._show_next)

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def set_state(self, state: str, message: str) -> None:
        self.state = state
        self.actions["flush"].setEnabled(state in FLUSHABLE_STATES and not self.quitting)
        if self.quitting:
            return  # the quitting line and icon stay until the answers are finished
        self.icon.setIcon(state_icon(state))
        # The menu's first line: short, the dashboard has the whole message.
        headline = {
            "ollama_down": "Ollama unreachable: chats fail until it is back",
            "failed": "Server not running: open the dashboard",
            "stopped": "Stopped",
        }.get(state, message)
        self._state_action.setText(_short(headline))

    def update_snapshot(self, snap: dict[str, Any]) -> None:
        if not self.quitting:
            self.icon.setToolTip(tooltip_text(snap))

    def set_quitting(self, answers: int) -> None:
        """Quit is waiting for `answers` answers to finish (0: it no longer waits): say so in
        the icon (amber, as while starting), the tooltip and the menu, and offer Quit Now."""
        was, self.quitting = self.quitting, answers
        self.actions["quit_now"].setVisible(answers > 0)
        for key in ("flush", "restart"):
            self.actions[key].setEnabled(
                answers == 0 and (key != "flush" or self.state in FLUSHABLE_STATES)
            )
        if answers:
            text = quitting_text(answers)
            self.icon.setIcon(state_icon("starting"))
            self.icon.setToolTip(f"{TITLE} · {text}")
            self._state_action.setText(text)
        elif was:
            self.icon.setIcon(state_icon(self.state))
            self.icon.setToolTip(TITLE)

    def show_message(self, title: str, message: str) -> None:
        """Show it now, or after the one on screen has had its time."""
        if (title, message) == self._showing or (title, message) in self._waiting:
            return
        if self._showing is None:
            self._display(title, message)
        else:
            self._waiting.append((title, message))

    def showing(self) -> tuple[str, str] | None:
        """The notification on screen (title, message), if any."""
        return self._showing

    def _display(self, title: str, message: str) -> None:
        critical = self.state == "failed"
        kind = (
            QSystemTrayIcon.MessageIcon.Critical
            if critical
            else QSystemTrayIcon.MessageIcon.Information
        )
        self._showing = (title, message)
        self.icon.showMessage(title, message, kind, MESSAGE_MS)
        self._message_timer.start(MESSAGE_MS)

    def _show_next(self) -> None:
        self._showing = None
        if self._waiting:
            self._display(*self._waiting.popleft())

    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.open_dashboard.emit()


def _short(message: str, limit: int = 60) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"
