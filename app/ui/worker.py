"""Long work off the GUI thread: a generator runs in a QThread and its yields become signals."""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable, Iterator

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal, Slot

log = logging.getLogger(__name__)

_RAW_DB = ("[sql:", "sqlite3.", "psycopg", "sqlalchemy", "(background on this error")


def _for_window(message: str) -> str:
    """The core's lines speak to a command line; in the window the same advice reads differently."""
    return (message.replace("run the command again", "try again")
            .replace("(use --data-dir with a writable folder)", "(choose a writable folder in Settings)")
            .replace("another infini or the window", "another infini or another window"))


def plain_error(exc: BaseException) -> str:
    """One plain line for an error of background work: a database or file-system failure in words a
    person can act on (disk full, read-only folder, busy library, unique conflict), never a traceback
    or an SQL statement; other errors by their message."""
    from infini_reader.app.core.errors import clean_line, database_message, os_message

    if isinstance(exc, OSError):
        return _for_window(os_message(exc))
    message = database_message(exc)
    if message is not None:
        return _for_window(message)
    return plain_text(str(exc)) or type(exc).__name__


def plain_text(message: str) -> str:
    """A message that may quote a database error raw (as "…: (sqlite3.OperationalError) database or
    disk is full [SQL: …]"): the plain line for it; other messages made one clean line."""
    from infini_reader.app.core import errors

    text = errors.clean_line(message) or ""
    low = text.lower()
    if any(k in low for k in _RAW_DB):
        if "unique constraint" in low or "uniqueviolation" in low or "duplicate key" in low:
            return _for_window("this book is being read by another process at the same time; run the command again "
                               "when it is done")
        for needle, plain in errors._DB_MESSAGES:
            if needle in low:
                return _for_window(plain)
        for cut in ("[SQL:", "(Background on this error"):  # at least not the statement
            text = text.split(cut)[0].strip()
    return text[:500]


class GeneratorWorker(QObject):
    """Runs `make()` (which returns an iterator) in its own thread.

    yielded(item) for each item, finished() at the end (also after a cancel), failed(message) on an
    exception. cancel() stops at the next yield; pass a threading.Event to the generator as well
    when it should stop sooner.
    """

    yielded = Signal(object)
    finished = Signal()
    failed = Signal(str)

    def __init__(self, make: Callable[[], Iterator]):
        super().__init__()
        self._make = make
        self._cancelled = False
        self.thread = QThread()
        self.moveToThread(self.thread)
        self.thread.started.connect(self._run)

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        self._cancelled = True

    def wait(self, ms: int = 30000) -> bool:
        return self.thread.wait(ms)

    @Slot()
    def _run(self) -> None:
        try:
            for item in self._make():
                if self._cancelled:
                    break
                self.yielded.emit(item)
        except Exception as exc:  # noqa: BLE001 (shown to the user; the details go to the log)
            log.error("background work failed:\n%s", traceback.format_exc())
            self.failed.emit(plain_error(exc))
        else:
            self.finished.emit()
        finally:
            # Quit from here, not through a queued signal: the GUI thread may be waiting for us.
            self.thread.quit()


class _Relay(QObject):
    """Lives on the GUI thread, so the worker's signals reach the callbacks there (queued), whatever
    kind of callable they are."""

    def __init__(self, on_item, on_done, on_error, on_end):
        super().__init__()
        self.on_item, self.on_done, self.on_error, self.on_end = on_item, on_done, on_error, on_end

    @Slot(object)
    def item(self, x) -> None:
        if self.on_item is not None:
            self.on_item(x)

    @Slot()
    def done(self) -> None:
        if self.on_done is not None:
            self.on_done()

    @Slot(str)
    def error(self, message: str) -> None:
        if self.on_error is not None:
            self.on_error(message)

    @Slot()
    def end(self) -> None:
        self.on_end()


class GuiThreadCollector(QObject):
    """Python's cycle collector runs in whichever thread happens to allocate. When that is a worker
    thread and the garbage holds Qt objects made on the GUI thread, they are destroyed off it, which
    can crash the process (seen once in the tests: a segfault while a worker opened the database).
    This turns automatic collection off and collects on the GUI thread instead, on a timer, with the
    collector's own thresholds. Reference counting, which frees almost everything, is unaffected."""

    INTERVAL_MS = 250

    def __init__(self, parent: QObject):
        super().__init__(parent)
        self.threshold = gc.get_threshold()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.check)
        self.timer.start(self.INTERVAL_MS)
        gc.disable()

    @Slot()
    def check(self) -> None:
        counts = gc.get_count()
        if counts[0] > self.threshold[0]:
            gen = 2 if counts[2] > self.threshold[2] else 1 if counts[1] > self.threshold[1] else 0
            gc.collect(gen)


def collect_garbage_on_gui_thread() -> GuiThreadCollector | None:
    """Install the application's one GuiThreadCollector (idempotent); None without a Qt application."""
    app = QCoreApplication.instance()
    if app is None:
        return None
    found = app.findChild(GuiThreadCollector)
    return found if found is not None else GuiThreadCollector(app)


class Tasks(QObject):
    """The window's background work: keeps each worker alive until its thread has ended.

    `run(make, ...)` streams a generator; `call(fn, ...)` runs one function and hands its result
    back. Callbacks always run on the GUI thread, in the order the worker produced them. `idle` is
    emitted when the last worker has ended.
    """

    idle = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._live: dict[GeneratorWorker, _Relay] = {}
        collect_garbage_on_gui_thread()  # worker threads must not destroy the GUI thread's objects

    def run(
        self,
        make: Callable[[], Iterator],
        on_item: Callable[[object], None] | None = None,
        on_done: Callable[[], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> GeneratorWorker:
        w = GeneratorWorker(make)
        relay = _Relay(on_item, on_done, on_error, lambda: self._forget(w))
        w.yielded.connect(relay.item)
        w.finished.connect(relay.done)
        w.failed.connect(relay.error)
        w.thread.finished.connect(relay.end)
        self._live[w] = relay
        w.start()
        return w

    def call(
        self,
        fn: Callable[[], object],
        on_result: Callable[[object], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> GeneratorWorker:
        return self.run(lambda: iter([fn()]), on_result, None, on_error)

    def _forget(self, w: GeneratorWorker) -> None:
        w.wait()
        self._live.pop(w, None)
        if not self._live:
            self.idle.emit()

    def cancel_all(self) -> None:
        for w in list(self._live):
            w.cancel()

    @property
    def busy(self) -> bool:
        return bool(self._live)

    def wait_all(self, ms: int = 120000) -> None:
        """Block until every worker has ended (at exit, after asking them to stop)."""
        for w in list(self._live):
            if not w.wait(ms):
                log.warning("a background task did not end within %d ms", ms)
