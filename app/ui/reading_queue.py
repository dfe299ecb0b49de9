"""Books waiting to be read, and the one being read: `ingest_files` in a worker thread.

The worker pulls paths from a queue that the window can still add to, so that files dropped
while a book is being read wait their turn. Stop keeps what was read (the reading is stored as
cancelled) and pauses the queue; resume continues with the stopped book, then the others.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from PySide6.QtCore import QObject, Signal

from infini_reader.app.core import ingest, summaries
from infini_reader.app.core.ingest import Progress

from .worker import Tasks

log = logging.getLogger(__name__)


class ReadingQueue(QObject):
    progress = Signal(object)  # Progress, on the GUI thread
    failed = Signal(str, str)  # path, message: the reading service itself failed
    idle = Signal()  # nothing is being read any more (done, stopped or failed)
    summarizing = Signal(int, str, str, str)  # doc id, title, "status" | "done" | "error", text: summaries after reading

    def __init__(self, tasks: Tasks, parent: QObject | None = None):
        super().__init__(parent)
        self._tasks = tasks
        self._lock = threading.Lock()
        self._waiting: deque[str] = deque()
        self._current: str | None = None  # the path being read
        self._current_doc: int | None = None
        self._cancel: threading.Event | None = None
        self._worker = None
        self.paused = False
        self.stopped: tuple[str, Progress] | None = None  # the book Stop interrupted: (path, its last event)
        self.library = None
        self.engine = None
        self.summarize_after = False  # write every chapter's summary once a book is read

    # ---- what the window asks ----

    def bind(self, library, engine) -> None:
        """The library and model to read with (None while they load). Call when nothing is read."""
        self.library, self.engine = library, engine
        self._start()

    def add(self, paths: list[str], front: bool = False) -> None:
        with self._lock:
            new = [p for p in paths if p not in self._waiting and p != self._current]
            if front:
                self._waiting.extendleft(reversed(new))
            else:
                self._waiting.extend(new)
        self.paused = False
        self._start()

    def discard(self, path: str) -> None:
        with self._lock:
            if path in self._waiting:
                self._waiting.remove(path)

    def waiting(self) -> list[str]:
        """Paths not yet in the library: those waiting, and the one being opened."""
        with self._lock:
            out = list(self._waiting)
            if self._current is not None and self._current_doc is None:
                out.insert(0, self._current)
            return out

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def current_doc(self) -> int | None:
        return self._current_doc

    def stop(self) -> None:
        """Stop the book being read (kept, resumable) and pause the queue."""
        if self._cancel is not None:
            self._cancel.set()
            self.paused = True

    def resume(self) -> None:
        if self.stopped is not None:
            path = self.stopped[0]
            self.stopped = None
            self.add([path], front=True)
        else:
            self.paused = False
            self._start()

    def stop_and_wait(self, ms: int = 30000) -> None:
        """Stop now and wait for the reading to store its progress (closing, switching models)."""
        worker = self._worker
        self.stop()
        if worker is not None:
            worker.wait(ms)

    # ---- the worker ----

    def _start(self) -> None:
        if self._worker is not None or self.paused or self.library is None or self.engine is None:
            return
        with self._lock:
            if not self._waiting:
                return
        cancel = self._cancel = threading.Event()
        library, engine = self.library, self.engine

        def work():  # one file at a time, so that each event comes with its file
            for path in self._paths(cancel):
                ready = None
                for ev in ingest.ingest_files(library, engine, [path], cancel=cancel):
                    if ev.phase == "ready" and not ev.reused:
                        ready = ev
                    yield path, ev
                if ready is not None and self.summarize_after and not cancel.is_set():
                    for sev in summaries.summarize(library, engine, ready.document_id, None, cancel=cancel):
                        if sev.kind in ("status", "done", "error"):
                            yield path, (ready.document_id, ready.title, sev.kind, sev.text)

        self._worker = self._tasks.run(work, on_item=self._event, on_done=self._ended, on_error=self._error)

    def _paths(self, cancel: threading.Event):
        """Runs in the worker: the next path, until the queue is empty or Stop was pressed."""
        while True:
            with self._lock:
                if cancel.is_set() or not self._waiting:
                    return
                self._current, self._current_doc = self._waiting.popleft(), None
                path = self._current
            yield path

    def _event(self, item: tuple[str, Progress | tuple]) -> None:
        path, ev = item
        if isinstance(ev, tuple):  # a summary after reading
            self.summarizing.emit(*ev)
            return
        if ev.document_id is not None and ev.phase in ("parsing", "reading"):
            self._current_doc = ev.document_id
        if ev.phase == "cancelled":
            self.stopped = (path, ev)
        self.progress.emit(ev)

    def _ended(self) -> None:
        self._worker, self._cancel = None, None
        with self._lock:
            self._current = self._current_doc = None
        if self.paused:
            self.idle.emit()
            return
        self._start()
        if self._worker is None:
            self.idle.emit()

    def _error(self, message: str) -> None:
        with self._lock:
            path, doc_id = self._current, self._current_doc
        self._worker, self._cancel = None, None
        with self._lock:
            self._current = self._current_doc = None
        log.error("reading %s failed: %s", path, message)
        if doc_id is not None and self.library is not None:
            library = self.library
            self._tasks.call(lambda: library.set_status(doc_id, "failed", message))
        self.failed.emit(path or "", message)
        self._start()  # the other files go on
        if self._worker is None:
            self.idle.emit()
