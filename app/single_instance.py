"""One instance per user: a lock file, and a local socket the second launch knocks on."""

from __future__ import annotations

import getpass
import logging
import os

from PySide6.QtCore import QDir, QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger("chatbot.ui")


def instance_name(base: str = "chatbot-companion") -> str:
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return f"{base}-{user}"


class SingleInstance(QObject):
    """acquire() in the first instance; the second calls notify_first() and exits."""

    activated = Signal()  # another launch asked us to show ourselves

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or instance_name()
        self._lock = QLockFile(os.path.join(QDir.tempPath(), f"{self.name}.lock"))
        # A lock whose owner died (kill -9) is taken over at once, not after a timeout.
        self._lock.setStaleLockTime(0)
        self._server: QLocalServer | None = None

    def acquire(self) -> bool:
        if not self._lock.tryLock(100):
            return False
        QLocalServer.removeServer(self.name)  # a socket left behind by a crash
        self._server = QLocalServer(self)
        self._server.newConnection.connect(self._on_connection)
        if not self._server.listen(self.name):
            log.warning("single-instance socket failed: %s", self._server.errorString())
        return True

    def notify_first(self, timeout_ms: int = 1000) -> bool:
        """Ask the running instance to show its dashboard (before this one's loop runs)."""
        sock = QLocalSocket()
        sock.connectToServer(self.name)
        if not sock.waitForConnected(timeout_ms):
            return False
        sock.write(b"show\n")
        sock.flush()
        sock.waitForBytesWritten(timeout_ms)
        sock.disconnectFromServer()
        return True

    def release(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server.deleteLater()
            self._server = None
        self._lock.unlock()

    def _on_connection(self) -> None:
        assert self._server is not None
        while (conn := self._server.nextPendingConnection()) is not None:
            # Owned by the server (its parent); read through sender(), so no Python closure
            # keeps a socket alive that Qt deletes.
            conn.readyRead.connect(self._on_message)

    def _on_message(self) -> None:
        conn = self.sender()
        if isinstance(conn, QLocalSocket) and b"show" in bytes(conn.readAll().data()):
            self.activated.emit()
