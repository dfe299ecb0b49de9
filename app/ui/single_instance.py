"""One window per user: a second `infini-reader FILE…` hands its files to the running window and ends.

The running window listens on a local socket (QLocalServer: a Unix socket, or a named pipe on
Windows) whose name is per user (and per settings folder, so that tests and separate profiles do not
meet). A second start connects, sends its files as one JSON line of absolute paths, waits for the
window's "ok" and exits; the window queues the files and comes to the front. A socket left behind by
a window that crashed is noticed (nobody answers) and replaced.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

TIMEOUT_MS = 10000  # a busy window on a loaded machine may take a while to answer; better than a second window


def server_name() -> str:
    """`infini-reader-<user>-<hash of the settings folder>`: one running window per user and profile."""
    from .settings import settings_path

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the uid
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    profile = hashlib.sha1(str(settings_path().parent.resolve()).encode()).hexdigest()[:10]
    safe = "".join(ch if ch.isalnum() else "_" for ch in user)[:32]
    return f"infini-reader-{safe}-{profile}"


def hand_over(files: list[str], name: str | None = None, timeout_ms: int = TIMEOUT_MS) -> bool:
    """Give `files` to the window already running; True when it took them (this process may end),
    False when no window answers (this process becomes the window)."""
    sock = QLocalSocket()
    sock.connectToServer(name or server_name())
    if not sock.waitForConnected(timeout_ms):
        return False
    paths = [str(Path(f).expanduser().resolve()) for f in files]
    sock.write((json.dumps({"files": paths}) + "\n").encode())
    if not sock.waitForBytesWritten(timeout_ms):
        return False
    ok = b""
    while not ok.endswith(b"\n"):
        if not sock.waitForReadyRead(timeout_ms):
            break
        ok += bytes(sock.readAll())
    sock.disconnectFromServer()
    return ok.strip() == b"ok"


class InstanceServer(QObject):
    """The running window's end: `files(list[str])` for each second start (an empty list: just come
    to the front)."""

    files = Signal(list)

    def __init__(self, name: str | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.name = name or server_name()
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.UserAccessOption)  # only this user may connect
        self.server.newConnection.connect(self._connection)
        self._buffers: dict[QLocalSocket, bytes] = {}

    def listen(self) -> bool:
        """Start listening; a socket left by a crashed window is removed first. False when another
        window answers on the name (the caller should hand over instead) or the socket cannot be made.
        (Asked first: with access options Qt makes the socket aside and renames it into place, which
        would silently take the name from a live window.)"""
        probe = QLocalSocket()
        probe.connectToServer(self.name)
        if probe.waitForConnected(500):
            probe.disconnectFromServer()
            return False
        QLocalServer.removeServer(self.name)  # nobody answers: a socket left behind, if any
        ok = self.server.listen(self.name)
        if not ok:
            log.warning("no single-instance socket %s: %s", self.name, self.server.errorString())
        return ok

    def close(self) -> None:
        self.server.close()

    def _connection(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            self._buffers[sock] = b""
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(lambda s=sock: self._gone(s))

    def _gone(self, sock: QLocalSocket) -> None:
        self._buffers.pop(sock, None)
        sock.deleteLater()

    def _read(self, sock: QLocalSocket) -> None:
        data = self._buffers.get(sock, b"") + bytes(sock.readAll())
        if len(data) > 1 << 20:  # nobody sends a megabyte of paths
            sock.abort()
            return
        if not data.endswith(b"\n"):
            self._buffers[sock] = data
            return
        self._buffers[sock] = b""
        try:
            msg = json.loads(data.decode("utf-8"))
            files = [f for f in msg.get("files", []) if isinstance(f, str)]
        except (ValueError, AttributeError, UnicodeDecodeError):
            log.warning("ignored a malformed message on %s", self.name)
            sock.abort()
            return
        sock.write(b"ok\n")
        sock.flush()
        self.files.emit(files)

