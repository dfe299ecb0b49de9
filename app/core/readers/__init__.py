"""Document readers: any supported file to a `Document`, or a `ReaderError` saying why not.

The file's first bytes decide before its extension does: a PDF named .txt is still a PDF. Files are
only ever opened for reading.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from infini_reader.app.core.document import Document, ReaderError
from infini_reader.app.core.errors import clean_line, os_message
from infini_reader.app.core.readers.epub import read_epub
from infini_reader.app.core.readers.html import read_html
from infini_reader.app.core.readers.pdf import read_pdf
from infini_reader.app.core.readers.text import looks_binary, read_text

SUPPORTED = (".epub", ".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".xhtml")
_TEXT = {".txt", ".text", ".md", ".markdown", ".mdown", ".mkd"}
_HTML = {".html", ".htm", ".xhtml", ".xht"}
# Zipped office formats, told apart by a member only they have.
_OFFICE = {"word/document.xml": ".docx", "xl/workbook.xml": ".xlsx", "ppt/presentation.xml": ".pptx"}

__all__ = ["SUPPORTED", "Document", "ReaderError", "read_document"]

log = logging.getLogger(__name__)


def read_document(path: str | os.PathLike) -> Document:
    """Read a book: EPUB, PDF, plain text, Markdown or HTML. Every failure is a one-line ReaderError."""
    path = Path(path)
    try:
        return _read(path).clean()  # readers may have set fields after building it
    except ReaderError as e:
        raise ReaderError(str(e)) from None
    except MemoryError:
        raise ReaderError(f"{path.name} is too large to read in the memory this computer has") from None
    except OSError as e:  # the disk, not the file's contents: say so plainly
        raise ReaderError(f"{path.name} cannot be read ({os_message(e)})") from None
    except Exception as e:  # a file no rule foresaw must still give the user a message, not a crash
        # The traceback goes to the log file only (the window's and the command line's), never the terminal.
        log.error("reading %s failed", clean_line(str(path)), exc_info=True)
        raise ReaderError(f"{path.name} could not be read: {_unexpected(path, e)}") from e


def _unexpected(path: Path, e: Exception) -> str:
    detail = clean_line(str(e), 160)
    if isinstance(e, NotImplementedError | zipfile.BadZipFile | zipfile.LargeZipFile) or "zip" in type(e).__module__:
        what = "it uses a ZIP feature that is not supported" if isinstance(e, NotImplementedError) else "it is damaged"
        return f"{what} ({detail})" if detail else what
    return f"it is damaged or unusual ({type(e).__name__}{': ' + detail if detail else ''})"


def _read(path: Path) -> Document:
    name = path.name
    if not path.exists():
        raise ReaderError(f"{name} does not exist")
    if path.is_dir():
        raise ReaderError(f"{name} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise ReaderError(f"{name} cannot be opened ({e.strerror or e})") from None
    if not head:
        raise ReaderError(f"{name} is empty")
    kind = _kind(path, head)
    if kind == "pdf":
        return read_pdf(path)
    if kind == "epub":
        return read_epub(path)
    if kind == "html":
        return read_html(path)
    if kind == "text":
        return read_text(path)
    supported = ", ".join(SUPPORTED)
    if kind == "extensionless":
        raise ReaderError(f"cannot read {name}: it has no extension and is not text; supported: {supported}")
    raise ReaderError(f"cannot read {kind} files; supported: {supported}")


def _kind(path: Path, head: bytes) -> str:
    suffix = path.suffix.lower()
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if b"mimetypeapplication/epub+zip" in head[:100] or suffix == ".epub":
            return "epub"
        return _zipped_office(path) or suffix
    if suffix == ".epub":
        return "epub"  # not a ZIP at all: the EPUB reader says it is damaged
    if suffix == ".pdf":
        return "pdf"
    if suffix in _HTML:
        return "html"
    if suffix in _TEXT or (not suffix and not looks_binary(head)):
        return "text"
    return suffix or "extensionless"


def _zipped_office(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return None
    return next((ext for member, ext in _OFFICE.items() if member in names), None)
