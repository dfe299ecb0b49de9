"""Text from files made safe to store, log and show; failures of the database or the disk as one line.

Anything a file says (its name, title, author, chapter titles, member names, the messages that quote
them) may hold terminal escape sequences or bidirectional overrides: shown raw they clear a screen,
set a terminal's title or make "evil‮txt.exe" read as "evilexe.txt". `clean_line` makes such a string
one plain line; `clean_text` does the same to a body of text one character for one, so that the
offsets of chapters, pages and passages into it stay true.
"""

from __future__ import annotations

import errno
import re

# ESC sequences whole: CSI (ESC [ … final), OSC and the other string commands (ESC ] … BEL or ST),
# and two-character escapes (ESC x).
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -~]?)|\x9b[0-?]*[ -/]*[@-~]?")
# C0 controls, DEL, C1 controls; bidirectional embeddings, overrides, isolates and marks.
_BIDI = "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
_CONTROL_OR_BIDI = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_TEXT_BAD = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")  # keeps \t and \n


def clean_line(value: str | None, limit: int | None = None) -> str | None:
    """One plain line: escape sequences dropped, other control and bidi characters gone, runs of
    white space one space. None stays None."""
    if value is None:
        return None
    value = _ESCAPE.sub(" ", str(value))
    value = _CONTROL_OR_BIDI.sub(lambda m: " " if m.group() in "\t\n\r\x0b\x0c" else "", value)
    value = " ".join(value.split())
    return value[:limit] if limit is not None else value


def clean_text(text: str) -> str:
    """A document's text with every control character except tab and newline, and every bidi
    control, replaced by a space: the same length, so offsets into it still hold."""
    if not _TEXT_BAD.search(text) and "\x1b" not in text:
        return text
    return _TEXT_BAD.sub(" ", text)


# ---- the database and the disk ----

DISK_FULL = ("the disk is full: the library could not be written (nothing was half-written; "
             "free some space and run the command again)")
_DB_MESSAGES = (
    ("database or disk is full", DISK_FULL),
    ("readonly database", "the library's folder is read-only: nothing can be stored there "
                          "(use --data-dir with a writable folder)"),
    ("read-only", "the library's folder is read-only: nothing can be stored there (use --data-dir with a writable folder)"),
    ("database is locked", "the library is busy: another infini or the window is writing to it; try again in a moment"),
    ("database table is locked", "the library is busy: another infini or the window is writing to it; "
                                 "try again in a moment"),
    ("unable to open database file", "the library cannot be opened: its folder is missing or not writable"),
    ("disk i/o error", "the library could not be read or written (a disk input/output error)"),
    ("file is not a database", "the library file is damaged or is not an Infini Reader library"),
    ("database disk image is malformed", "the library file is damaged"),
)


def database_message(exc: BaseException) -> str | None:
    """A plain line for a database error a person can act on, or None when it is not one of those."""
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return None
    if not isinstance(exc, sa_exc.SQLAlchemyError):
        return None
    text = str(getattr(exc, "orig", None) or exc).lower()
    if isinstance(exc, sa_exc.IntegrityError) and "unique" in text:
        if "memory_snapshots" in text or "documents.content_hash" in text:
            return "this book is being read by another process at the same time; run the command again when it is done"
        return "another process changed the library at the same time; run the command again"
    for needle, message in _DB_MESSAGES:
        if needle in text:
            return message
    if isinstance(exc, sa_exc.OperationalError):
        return f"the library could not be used ({clean_line(str(getattr(exc, 'orig', exc)), 200)})"
    return None


def os_message(exc: OSError) -> str:
    """A plain line for a file-system error: what failed, on which file, without a traceback."""
    where = f" ({clean_line(str(exc.filename), 200)})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full{where}: free some space and run the command again"
    if exc.errno == errno.EROFS:
        return f"the folder is read-only{where}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}"
    if exc.errno == errno.EDQUOT:
        return f"the disk quota is exhausted{where}"
    if exc.errno == errno.ENOENT:
        return f"no such file or folder{where}"
    return clean_line(f"{exc.strerror or exc}{where}") or type(exc).__name__
