"""One instance per user: a lock file, and a local socket the second launch knocks on."""

from __future__ import annotations

import getpass
import logging
import os
import sys
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, QStandardPaths, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger("chatbot.ui")


def instance_name(base: str = "chatbot-companion") -> str:
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return f"{base}-{user}"


def runtime_dir() -> Path:
    """The per-user runtime directory: $XDG_RUNTIME_DIR where set (Qt checks it is the user's
    own, mode 0700), the platform's equivalent elsewhere. Not /tmp: a lock there is shared by
    every session of the user, and a test (or a second login) with its own runtime directory
    must get its own instance."""
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.RuntimeLocation)
    path = Path(location) if location else Path.home()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class SingleInstance(QObject):
    """acquire() in the first instance; the second calls notify_first() and exits."""

    activated = Signal()  # another launch asked us to show ourselves

    def __init__(self, name: str | None = None, directory: Path | None = None) -> None:
        super().__init__()
        self.name = name or instance_name()
        where = directory or runtime_dir()
        self.lock_path = where / f"{self.name}.lock"
        # On Unix a server name without a slash would land in /tmp: give a path in the same
        # directory. Windows names a pipe, which is per session already.
        self.address = self.name if sys.platform == "win32" else str(where / f"{self.name}.sock")
        self._lock = QLockFile(str(self.lock_path))
        # A lock whose owner died (kill -9) is taken over at once, not after a timeout.
        self._lock.setStaleLockTime(0)
        self._server: QLocalServer | None = None

    def acquire(self) -> bool:
        if not self._lock.tryLock(100):
            return False
        QLocalServer.removeServer(self.address)  # a socket left behind by a crash
        self._server = QLocalServer(self)
        self._server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self._server.newConnection.connect(self._on_connection)
        if not self._server.listen(self.address):
            log.warning("single-instance socket failed: %s", self._server.errorString())
        return True

    def notify_first(self, timeout_ms: int = 1000) -> bool:
        """Ask the running instance to show its dashboard (before this one's loop runs)."""
        sock = QLocalSocket()
        sock.connectToServer(self.address)
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
