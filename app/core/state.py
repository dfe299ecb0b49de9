"""The application's state, without Qt: what the window shows and binds its widgets to.

Following napari's `ViewerModel`: plain Python data (the library, the document open in the panes,
the model and its loading, the reading queue, the questions waiting for the model) with events that
the widgets connect to. Testable without a screen; the window only binds widgets and runs the work.

The document open in the panes is chosen by id, not by the library's selection: a search, a filter
or a click on nothing never takes a document out of the panes, and work that was started for a
document (an answer, a summary) keeps writing to that document whatever is selected afterwards.
"""

from __future__ import annotations

import enum
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models import ModelChoice, load_engine, remember_fingerprint

if TYPE_CHECKING:
    from infini_reader.engine import Engine

    from .ingest import Progress
    from .library import Library

Loader = Callable[[ModelChoice], "Engine"]

QUEUE_FILE = "queue.json"  # in the data folder: the files left to read, restored at the next start
SUFFIXES = {".epub", ".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".xhtml"}


def expand(paths: list[str]) -> list[str]:
    """Files given to the application, to queue: files as they are (the reader says why one is not a
    book); folders: the books inside, walked."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(str(f.resolve()) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        else:
            out.append(str(p.resolve()) if p.exists() else str(p))
    return out


MAX_BYTES = 1 << 30  # a book larger than this (1 GiB) is refused: it is not text a person reads


def check_file(path: str) -> str | None:
    """Why a file cannot be read, in plain words, before it is queued (None: it looks readable).
    Cheap: the format, the size, a PDF's encryption and text layer, an EPUB's archive; the reader
    itself still says what it finds later."""
    p = Path(path)
    name = p.name or str(p)
    if not p.exists():
        return f"{name}: there is no such file"
    if p.is_dir():
        return f"{name}: this folder holds no books"
    if p.suffix.lower() not in SUFFIXES:
        return f"{name}: this kind of file cannot be read (books are EPUB, PDF, TXT, Markdown or HTML)"
    try:
        size = p.stat().st_size
        if size == 0:
            return f"{name}: this file is empty"
        if size > MAX_BYTES:
            return f"{name}: this file is too large to be a book ({size / (1 << 30):.1f} GB)"
        suffix = p.suffix.lower()
        if suffix == ".pdf":
            return _check_pdf(p, name)
        if suffix == ".epub":
            return _check_epub(p, name)
    except OSError as exc:
        return f"{name}: this file cannot be opened ({exc.strerror or 'not readable'})"
    return None


def _check_pdf(p: Path, name: str) -> str | None:
    import pymupdf

    try:
        doc = pymupdf.open(p)
    except Exception:  # noqa: BLE001 (PyMuPDF raises several kinds for a damaged file)
        return f"{name}: this PDF is damaged and cannot be opened"
    with doc:
        if doc.needs_pass or doc.is_encrypted:
            return f"{name}: this PDF is protected by a password"
        try:
            if doc.page_count == 0:
                return f"{name}: this PDF has no pages"
            pages = range(min(doc.page_count, 20))
            if not any(doc[i].get_text().strip() for i in pages):
                return f"{name}: this PDF has no text layer (scanned pages); run it through OCR first"
        except Exception:  # noqa: BLE001
            return f"{name}: this PDF is damaged and cannot be opened"
    return None


def _check_epub(p: Path, name: str) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            if any(i.flag_bits & 0x1 for i in z.infolist()):
                return f"{name}: this EPUB is encrypted"
            if "META-INF/encryption.xml" in names and b"EncryptedData" in z.read("META-INF/encryption.xml") \
                    and not all(n.endswith((".ttf", ".otf", ".woff")) for n in names if "font" in n.lower()):
                return f"{name}: this EPUB is protected (DRM) and cannot be read"
            if not any(n.lower().endswith((".xhtml", ".html", ".htm")) for n in names):
                return f"{name}: this EPUB holds no text"
    except zipfile.BadZipFile:
        return f"{name}: this EPUB is damaged and cannot be opened"
    return None


class Event:
    """A list of callbacks, each called with the event's arguments (a Qt signal without Qt).
    Emitted on the thread that changed the state: the window changes it on the GUI thread only."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, fn: Callable[..., Any]) -> None:
        self._callbacks.append(fn)

    def disconnect(self, fn: Callable[..., Any]) -> None:
        if fn in self._callbacks:
            self._callbacks.remove(fn)

    def emit(self, *args: Any) -> None:
        for fn in list(self._callbacks):
            fn(*args)


@dataclass
class Events:
    library: Event = field(default_factory=Event)  # (library): a library was opened
    current: Event = field(default_factory=Event)  # (doc_id | None): the document in the panes changed
    model: Event = field(default_factory=Event)  # (ModelStatus): the model's loading moved on
    queue: Event = field(default_factory=Event)  # (): files were added to, removed from or moved in the queue
    questions: Event = field(default_factory=Event)  # (): a question was put aside for the model, or taken


class ModelState(str, enum.Enum):
    NOT_LOADED = "not loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelStatus:
    choice: ModelChoice | None = None
    state: ModelState = ModelState.NOT_LOADED
    engine: Engine | None = None  # set when ready
    error: str = ""  # why it failed
    generation: int = 0  # counts loadings: the result of an older one that finishes late is ignored


@dataclass
class PendingQuestion:
    """A question asked while the model loads: answered, in order, once it is ready."""

    doc_id: int
    text: str


@dataclass
class ReadingList:
    """Files waiting to be read, in order, and the one being read.

    The reading worker takes the next path from its own thread (`take`), so every change holds the
    lock. `stopped` is the book that Stop interrupted, with its last progress event; `paused` is set
    by Stop and cleared when files are added or the queue resumes."""

    waiting: list[str] = field(default_factory=list)
    current: str | None = None  # the path being read
    current_doc: int | None = None  # its document, once it is in the library
    stopped: tuple[str, Progress] | None = None
    paused: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, paths: list[str], front: bool = False) -> list[str]:
        """Queue files not already waiting or being read; `front`: before the others. Returns those added."""
        with self._lock:
            new = []
            for p in paths:
                if p not in self.waiting and p != self.current and p not in new:
                    new.append(p)
            if front:
                self.waiting[:0] = new
            else:
                self.waiting.extend(new)
        self.paused = False
        return new

    def remove(self, path: str) -> bool:
        with self._lock:
            if path in self.waiting:
                self.waiting.remove(path)
                return True
            return False

    def move(self, path: str, index: int) -> bool:
        """Put a waiting file at `index` in the order (0: next to be read)."""
        with self._lock:
            if path not in self.waiting:
                return False
            self.waiting.remove(path)
            self.waiting.insert(max(0, min(index, len(self.waiting))), path)
            return True

    def take(self) -> str | None:
        """The next file, which becomes the current one (None when nothing waits)."""
        with self._lock:
            self.current = self.waiting.pop(0) if self.waiting else None
            self.current_doc = None
            return self.current

    def reading(self, doc_id: int) -> None:
        """The current file is in the library now, as this document."""
        self.current_doc = doc_id

    def finish(self) -> tuple[str | None, int | None]:
        """Nothing is being read any more; returns what was (path, document)."""
        with self._lock:
            was = self.current, self.current_doc
            self.current = self.current_doc = None
            return was

    def pending(self) -> list[str]:
        """Paths not yet in the library: the one being opened, then those waiting."""
        with self._lock:
            out = list(self.waiting)
            if self.current is not None and self.current_doc is None:
                out.insert(0, self.current)
            return out

    def __len__(self) -> int:
        with self._lock:
            return len(self.waiting)

    # ---- kept across restarts ----

    def unfinished(self) -> list[str]:
        """What is left to read, in order: the book Stop interrupted and the one being read (each
        resumes from its stored memory), then those waiting."""
        with self._lock:
            out = [p for p in (self.stopped[0] if self.stopped else None, self.current) if p is not None]
            return list(dict.fromkeys(out + list(self.waiting)))

    def save(self, path: Path) -> None:
        """Written to a new file, then renamed: a crash while saving leaves the last whole list."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "files": self.unfinished()}, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    @staticmethod
    def saved(path: Path) -> list[str]:
        """The files a list saved at `path` still had to read (none when the file is missing or damaged)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [str(f) for f in data.get("files", []) if isinstance(f, str)]
        except (OSError, ValueError, AttributeError):
            return []


class AppState:
    """The library, the document in the panes, the model and its loading, the reading queue, and the
    questions waiting for the model. `loader` turns a `ModelChoice` into an engine (tests give a
    tiny one)."""

    def __init__(self, loader: Loader | None = None):
        self.loader: Loader = loader or load_engine
        self.events = Events()
        self.library: Library | None = None
        self.current: int | None = None
        self.model = ModelStatus()
        self.queue = ReadingList()
        self.questions: list[PendingQuestion] = []

    # ---- the library and the document in the panes ----

    def set_library(self, library: Library | None) -> None:
        self.library = library
        self.events.library.emit(library)

    def open(self, doc_id: int | None) -> None:
        """Show this document in the panes (None: no document)."""
        if doc_id != self.current:
            self.current = doc_id
            self.events.current.emit(doc_id)

    def forget(self, doc_ids: list[int]) -> None:
        """Documents removed from the library: out of the panes, their questions dropped."""
        if self.current in doc_ids:
            self.open(None)
        kept = [q for q in self.questions if q.doc_id not in doc_ids]
        if len(kept) != len(self.questions):
            self.questions = kept
            self.events.questions.emit()

    # ---- the model ----

    @property
    def engine(self) -> Engine | None:
        return self.model.engine

    @property
    def loading(self) -> bool:
        return self.model.state == ModelState.LOADING

    def start_loading(self, choice: ModelChoice) -> int:
        """The model in use becomes `choice`, not loaded yet. Returns the loading's token, for
        `loaded` and `failed`; run `load(choice, folder)` off the GUI thread in between."""
        m = self.model
        self.model = ModelStatus(choice, ModelState.LOADING, None, "", m.generation + 1)
        self.events.model.emit(self.model)
        return self.model.generation

    def load(self, choice: ModelChoice, folder: Path | None = None) -> Engine:
        """The slow part (in a worker): load the weights; record their fingerprint in the library's
        folder (it hashes the weights once, here rather than on the GUI thread). Changes no state."""
        e = self.loader(choice)
        if folder is not None:
            try:
                remember_fingerprint(folder, choice, e)
            except OSError as exc:  # a read-only or full library folder: only a shortcut is lost
                import logging

                logging.getLogger(__name__).warning("the model's fingerprint could not be recorded: %s", exc)
        return e

    def loaded(self, token: int, engine: Engine) -> bool:
        """The loading `token` finished; False (and nothing changes) when a newer one has begun."""
        if token != self.model.generation:
            return False
        self.model = ModelStatus(self.model.choice, ModelState.READY, engine, "", token)
        self.events.model.emit(self.model)
        return True

    def failed(self, token: int, message: str) -> bool:
        if token != self.model.generation:
            return False
        self.model = ModelStatus(self.model.choice, ModelState.FAILED, None, message, token)
        self.events.model.emit(self.model)
        return True

    # ---- questions asked before the model is ready ----

    def ask_later(self, doc_id: int, text: str) -> PendingQuestion:
        q = PendingQuestion(doc_id, text)
        self.questions.append(q)
        self.events.questions.emit()
        return q

    def next_question(self) -> PendingQuestion | None:
        """The oldest question waiting, once the model is ready (None before, or when none waits)."""
        if self.model.state != ModelState.READY or not self.questions:
            return None
        q = self.questions.pop(0)
        self.events.questions.emit()
        return q

    def drop_questions(self) -> list[PendingQuestion]:
        """Questions that will not be answered (the model failed to load): taken out, returned."""
        out, self.questions = self.questions, []
        if out:
            self.events.questions.emit()
        return out

    def waiting_questions(self, doc_id: int) -> list[PendingQuestion]:
        return [q for q in self.questions if q.doc_id == doc_id]

    # ---- the reading queue ----

    def enqueue(self, paths: list[str], front: bool = False) -> list[str]:
        added = self.queue.add(paths, front=front)
        self.events.queue.emit()
        return added

    def dequeue(self, path: str) -> bool:
        gone = self.queue.remove(path)
        if gone:
            self.events.queue.emit()
        return gone

    def reorder(self, path: str, index: int) -> bool:
        moved = self.queue.move(path, index)
        if moved:
            self.events.queue.emit()
        return moved

    def queue_file(self, folder: Path) -> Path:
        return Path(folder) / QUEUE_FILE

    def save_queue(self, folder: Path) -> None:
        self.queue.save(self.queue_file(folder))

    def restore_queue(self, folder: Path) -> list[str]:
        """The files left to read when the application last ended, queued again (those that still
        exist); returns them."""
        files = [f for f in ReadingList.saved(self.queue_file(folder)) if Path(f).exists()]
        return self.enqueue(files) if files else []


# ---- find in a document ----


@dataclass
class Found:
    """A passage of a document holding the words looked for: where it is, and a line of it."""

    start: int  # document offsets of the passage
    end: int
    section_idx: int | None
    chapter: str  # "" where the passage lies outside every chapter
    page: int | None
    snippet: str  # the passage around the first word found, one line
    words: list[tuple[int, int]] = field(default_factory=list)  # the words found, document offsets

    def where(self) -> str:
        return " · ".join(x for x in (self.chapter, f"p. {self.page}" if self.page else "") if x) or "Outside the chapters"


def find_in_document(library: Library, doc_id: int, query: str, limit: int = 50,
                     doc: Any | None = None) -> list[Found]:
    """The passages of a document that the library's full-text index finds for `query`, best first,
    each with its chapter, page, a snippet and the places of the words found. `doc`: the document
    when the caller has it already (else read from the library)."""
    import re

    from .errors import clean_line
    from .library import STOPWORDS

    ranked = library.search(doc_id, query, limit=limit)
    if not ranked:
        return []
    doc = doc if doc is not None else library.document(doc_id)
    spans = {p.idx: p for p in library.passages(doc_id)}
    words = [w for w in re.findall(r"\w+", query.lower()) if w not in STOPWORDS]
    # the words as typed, or longer (the index stems: "philosophers" finds "philosopher's")
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w[:max(4, len(w) - 2)]) for w in words) + r")\w*",
                         re.IGNORECASE) if words else None
    out = []
    for idx, _score in ranked:
        p = spans.get(idx)
        if p is None:
            continue
        text = doc.text[p.char_start:p.char_end]
        hits = [(p.char_start + m.start(), p.char_start + m.end()) for m in pattern.finditer(text)] if pattern else []
        first = hits[0][0] - p.char_start if hits else 0
        a = max(0, first - 60)
        snippet = ("…" if a > 0 else "") + clean_line(text[a:a + 160]) + ("…" if a + 160 < len(text) else "")
        sec_idx = p.section_idx
        chapter = doc.sections[sec_idx].title if sec_idx is not None and 0 <= sec_idx < len(doc.sections) else ""
        out.append(Found(p.char_start, p.char_end, sec_idx, clean_line(chapter), p.page, snippet, hits))
    return out


# ---- a library by database URL ----


def check_database_url(url: str) -> str | None:
    """A plain line saying what is wrong with a database URL (it cannot be parsed, its database or
    driver is unknown or not installed), or None when it can be tried. Nothing is connected to."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from .errors import clean_line

    url = url.strip()
    if not url:
        return "no database URL given"
    try:
        u = make_url(url)
    except ArgumentError:
        return (f"“{clean_line(url, 80)}” is not a database URL (for example postgresql+psycopg://user@host/library "
                "or sqlite:////path/to/library.sqlite3)")
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        return f"{clean_line(backend)} libraries are not supported: use PostgreSQL or SQLite"
    try:
        u.get_dialect().import_dbapi()
    except NoSuchModuleError:
        return f"no database driver called “{clean_line(u.drivername)}”"
    except ImportError:
        return (f"the driver for {clean_line(u.drivername)} is not installed "
                "(pip install 'infini-reader[postgres]' for PostgreSQL)")
    if backend == "sqlite" and u.database not in (None, "", ":memory:"):
        folder = Path(u.database).expanduser().parent
        if not folder.is_dir():
            return f"no folder {clean_line(str(folder))} for the library's file"
    return None


def shown_url(url: str) -> str:
    """A database URL as it may be shown: without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_library_url(url: str, timeout_s: int = 10) -> Library:
    """The library at a database URL, checked (a plain `LibraryError` when the URL is wrong), opened
    and asked once, so that an unreachable server fails here rather than later; a PostgreSQL server
    that does not answer gives up after `timeout_s`."""
    from sqlalchemy.engine import make_url

    from .library import Library, LibraryError

    why = check_database_url(url)
    if why is not None:
        raise LibraryError(why)
    u = make_url(url.strip())
    if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("psycopg", "psycopg2") \
            and "connect_timeout" not in u.query:
        u = u.update_query_dict({"connect_timeout": str(timeout_s)})
    library = Library(u.render_as_string(hide_password=False))
    library.infos([])  # a first question: the server answers, the tables are there
    return library
