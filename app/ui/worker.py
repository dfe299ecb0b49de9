"""Long work off the GUI thread: a generator runs in a QThread and its yields become signals."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator

from PySide6.QtCore import QObject, QThread, Signal, Slot

log = logging.getLogger(__name__)


class GeneratorWorker(QObject):
    """Runs `make()` (which returns an iterator) in its own thread.

    yielded(item) for each item, finished() at the end (also after a cancel), failed(message) on an
    exception. cancel() stops at the next yield.
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
        self.finished.connect(self.thread.quit)
        self.failed.connect(self.thread.quit)

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
        except Exception as exc:  # shown to the user; the details go to the log
            log.error("background work failed:\n%s", traceback.format_exc())
            self.failed.emit(str(exc) or type(exc).__name__)
            return
        self.finished.emit()
