"""Coordinating processes that share one library: a book is read by one of them at a time.

A lock file per book (by the hash of its contents) in the library's folder, held with `flock` while
the book is read: the operating system lets it go when the process ends, even by `kill -9`, so a
crashed reading never leaves a stale lock behind. Where there is no such folder (a database server)
or no `flock`, the database's unique constraints still keep the library consistent, and the loser of
that race is told the book is being read.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def lock_folder(url: str) -> Path | None:
    """The folder beside an SQLite library's file, or None for other databases and in-memory ones."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).resolve().parent / "locks"


@contextmanager
def exclusive(folder: Path | None, key: str) -> Iterator[bool]:
    """True while this process holds the lock `key`; False (at once, without waiting) when another
    process holds it. Without a folder or `flock` everyone gets True."""
    try:
        import fcntl
    except ImportError:  # Windows: the database's constraints are the only guard
        yield True
        return
    fd = None
    if folder is not None:
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only library: writing will fail anyway, with its own message
            log.warning("no lock file in %s: %s", folder, exc)
    if fd is None:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:  # who holds it, for `readers` (the window's "who else is reading")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class Reader:
    """A process reading a book now: its machine's name and its process id there."""

    host: str
    pid: int

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}"


def me() -> Reader:
    return Reader(socket.gethostname(), os.getpid())


def application_name() -> str:
    """How this process names its PostgreSQL connections (pg_stat_activity.application_name, at most 63
    bytes): `readers` finds who holds a book's lock by it."""
    return f"infini {os.getpid()}@{socket.gethostname()}"[:63]


def parse_application_name(name: str | None) -> Reader | None:
    if not name or not name.startswith("infini "):
        return None
    pid, _, host = name[len("infini "):].partition("@")
    return Reader(host, int(pid)) if pid.isdigit() else None


def holders(folder: Path | None, key: str) -> list[Reader]:
    """Who holds the lock file `key` now: [] when nobody does (or without lock files)."""
    try:
        import fcntl
    except ImportError:
        return []
    if folder is None:
        return []
    try:
        fd = os.open(folder / f"{key}.lock", os.O_RDONLY)
    except OSError:
        return []
    try:
        held = _flocked(fd)
        if held is False:
            return []  # nobody holds it (seen without taking the lock, so a reader starting now is not refused)
        if held is None:  # no /proc/locks: ask the lock itself, for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return []  # nobody holds it
            except BlockingIOError:
                pass
        pid, _, host = os.pread(fd, 300, 0).decode("utf-8", "replace").strip().partition(" ")
        return [Reader(host or "?", int(pid))] if pid.isdigit() else [Reader("?", 0)]
    finally:
        os.close(fd)


def _flocked(fd: int) -> bool | None:
    """Linux: whether some process holds a `flock` on the file open as `fd`, read from /proc/locks
    (which asking with a shared lock would not tell without, for an instant, holding one: an
    `exclusive` starting then would be refused). None where /proc/locks cannot be read."""
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(f.split()[1] == "FLOCK" and ident in f.split() for f in table.splitlines() if len(f.split()) > 5)
