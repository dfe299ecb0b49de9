"""Books waiting to be read, and the one being read: `ingest_files` in a worker thread.

The list of files is the application state's (`ReadingList`); this reads it. The worker pulls paths
from that list, which the window can still add to, so that files dropped
while a book is being read wait their turn. Stop keeps what was read (the reading is stored as
cancelled) and pauses the queue; resume continues with the stopped book, then the others.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from PySide6.QtCore import QObject, Signal

from infini_reader.app.core import ingest, summaries
from infini_reader.app.core.estimate import CONFIRM_ABOVE_S, Estimate, reading_estimate
from infini_reader.app.core.ingest import Progress
from infini_reader.app.core.state import ReadingList

from .worker import Tasks, plain_text

log = logging.getLogger(__name__)


class LongReading:
    """A reading that would take more than an hour: the window asks, the worker waits for `answer`."""

    def __init__(self, path: str, ev: Progress, estimate: Estimate):
        self.path, self.ev, self.estimate = path, ev, estimate
        self.read: bool | None = None  # the answer: read it, or not
        self._answered = threading.Event()

    def answer(self, read: bool) -> None:
        self.read = bool(read)
        self._answered.set()

    def wait(self, *stops: threading.Event) -> bool:
        """In the worker: the answer (False when the queue is stopped meanwhile)."""
        while not self._answered.wait(0.1):
            if any(e.is_set() for e in stops):
                return False
        return bool(self.read)


class ReadingQueue(QObject):
    """Reads the files of the state's `ReadingList` one after the other, in a worker."""

    progress = Signal(object)  # Progress, on the GUI thread
    failed = Signal(str, str)  # path, message: the reading service itself failed
    idle = Signal()  # nothing is being read any more (done, stopped or failed)
    summarizing = Signal(int, str, str, str)  # doc id, title, "status" | "done" | "error", text: summaries after reading
    long_reading = Signal(object)  # LongReading: ask whether to read it; the reading waits for the answer
    declined = Signal(object)  # Progress: a long reading not started (kept as stopped at 0 %)

    def __init__(self, tasks: Tasks, files: ReadingList | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._tasks = tasks
        self.files = files if files is not None else ReadingList()
        self._cancel: threading.Event | None = None
        self._worker = None
        self.library = None
        self.engine = None
        self.summarize_after = False  # write every chapter's summary once a book is read
        self._skipping = False
        self._file_cancel: threading.Event | None = None  # the book being read now, alone
        self.confirm_above_s = CONFIRM_ABOVE_S  # a reading longer than this (at the measured rate) is asked about
        self.confirmed: set[str] = set()  # files the user chose to read however long (asked, or Resume)
        self._declined: set[str] = set()

    # ---- what the window asks ----

    def bind(self, library, engine) -> None:
        """The library and model to read with (None while they load). Call when nothing is read."""
        self.library, self.engine = library, engine
        self._start()

    def add(self, paths: list[str], front: bool = False) -> None:
        self.files.add(paths, front=front)
        self._start()

    def start(self) -> None:
        """Files were added to the list: read them, unless paused or a reading goes on."""
        self._start()

    def discard(self, path: str) -> None:
        self.files.remove(path)

    def waiting(self) -> list[str]:
        """Paths not yet in the library: the one being opened, and those waiting."""
        return self.files.pending()

    @property
    def paused(self) -> bool:
        return self.files.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.files.paused = value

    @property
    def stopped(self):
        """The book Stop interrupted: (path, its last event), or None."""
        return self.files.stopped

    @stopped.setter
    def stopped(self, value) -> None:
        self.files.stopped = value

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def current_doc(self) -> int | None:
        return self.files.current_doc

    def stop(self) -> None:
        """Stop the book being read (kept, resumable) and pause the queue."""
        if self._cancel is not None:
            self._cancel.set()
            self.paused = True
            if self._file_cancel is not None:
                self._file_cancel.set()

    def skip(self) -> None:
        """Stop the book being read (kept: Resume continues it) and go on with the next one."""
        if self._cancel is not None:
            self._skipping = True
            self._cancel.set()
            if self._file_cancel is not None:
                self._file_cancel.set()

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
        if not len(self.files):
            return
        cancel = self._cancel = threading.Event()
        library, engine = self.library, self.engine

        def work():  # one file at a time, so that each event comes with its file
            for path in self._paths(cancel):
                ready, asked = None, path in self.confirmed
                this = self._file_cancel = threading.Event()  # this book alone (a long reading declined)
                if cancel.is_set():
                    this.set()
                for ev in ingest.ingest_files(library, engine, [path], cancel=this):
                    if ev.phase == "ready" and not ev.reused:
                        ready = ev
                    if ev.phase == "reading" and not asked:
                        asked = True
                        if ev.segments_done < ev.segments_total:
                            est = reading_estimate(library, engine, ev.tokens_total - ev.tokens_done)
                            if est.too_long(self.confirm_above_s):
                                question = LongReading(path, ev, est)
                                yield path, question
                                if not question.wait(cancel, this):
                                    if not cancel.is_set():  # declined (a Stop meanwhile is a Stop)
                                        self._declined.add(path)
                                    this.set()  # stops before its first new segment; stored as stopped
                                    continue
                                self.confirmed.add(path)
                    yield path, ev
                self._file_cancel = None
                if ready is not None and self.summarize_after and not cancel.is_set():
                    for sev in summaries.summarize(library, engine, ready.document_id, None, cancel=cancel):
                        if sev.kind in ("status", "error") or (sev.kind == "done" and sev.section_idx is None):
                            yield path, (ready.document_id, ready.title, sev.kind, sev.text)

        self._worker = self._tasks.run(work, on_item=self._event, on_done=self._ended, on_error=self._error)

    def _paths(self, cancel: threading.Event):
        """Runs in the worker: the next path, until the queue is empty or Stop was pressed."""
        while not cancel.is_set():
            path = self.files.take()
            if path is None:
                return
            yield path

    def _event(self, item: tuple[str, Progress | tuple]) -> None:
        path, ev = item
        if isinstance(ev, tuple):  # a summary after reading
            self.summarizing.emit(*ev)
            return
        if isinstance(ev, LongReading):
            self.long_reading.emit(ev)
            return
        if ev.phase == "failed" and ev.message:
            ev = replace(ev, message=plain_text(ev.message))  # no SQL or raw database text in the window
        if ev.document_id is not None and ev.phase in ("parsing", "reading"):
            self.files.reading(ev.document_id)
        if ev.phase == "cancelled" and path in self._declined:
            self._declined.discard(path)  # not started on purpose: the others go on
            self.progress.emit(ev)
            self.declined.emit(ev)
            return
        if ev.phase == "cancelled" and not self._skipping:
            self.stopped = (path, ev)
        self.progress.emit(ev)

    def _ended(self) -> None:
        self._worker, self._cancel, self._skipping = None, None, False
        self.files.finish()
        if self.paused:
            self.idle.emit()
            return
        self._start()
        if self._worker is None:
            self.idle.emit()

    def _error(self, message: str) -> None:
        path, doc_id = self.files.finish()
        self._worker, self._cancel = None, None
        log.error("reading %s failed: %s", path, message)
        if doc_id is not None and self.library is not None:
            library = self.library
            self._tasks.call(lambda: library.set_status(doc_id, "failed", message))
        self.failed.emit(path or "", message)
        self._start()  # the other files go on
        if self._worker is None:
            self.idle.emit()
