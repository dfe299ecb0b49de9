"""The Summary tab: the whole book's and each chapter's summary, streamed while written, stored."""

from __future__ import annotations

import threading

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from infini_reader.app.core import summaries

from .library_model import Row
from .transcript import markdown_html
from .worker import Tasks

WHOLE = -1  # the list's key for the whole book (the services say None)


def _key(section_idx: int | None) -> int:
    return WHOLE if section_idx is None else section_idx


class SummaryPane(QWidget):
    message = Signal(str)
    export_requested = Signal(int)  # doc_id
    chapter_requested = Signal(int, int)  # doc_id, section_idx: read it in the reading pane

    def __init__(self, tasks: Tasks, parent=None):
        super().__init__(parent)
        self._tasks = tasks
        self.library = None
        self.engine = None
        self.row: Row | None = None
        self.chapters: dict[int, list[str]] = {}  # doc_id → chapter titles
        self.stored: dict[int, dict[int, str]] = {}  # doc_id → {section key: summary}
        self._running: int | None = None  # the document being summarised, whichever the pane shows
        self._running_title = ""
        self._stream: dict[int, str] = {}  # section key → text so far, for the running document
        self._cancel: threading.Event | None = None
        self._status = ""

        self.parts = QListWidget()
        self.parts.setMinimumWidth(150)
        self.parts.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.parts.setTextElideMode(Qt.ElideRight)
        self.title = QLabel()
        self.title.setTextFormat(Qt.PlainText)
        self.title.setWordWrap(True)
        self.title.setStyleSheet("font-weight: bold; font-size: 14px")
        self.state = QLabel()
        self.state.setTextFormat(Qt.PlainText)
        self.text = QTextBrowser()
        self.text.setOpenLinks(False)
        self.make = QPushButton("Summarize")
        self.stop_button = QPushButton("Stop")
        self.read = QPushButton("Read chapter")
        self.read.setToolTip("Open the chapter in the reading pane")
        self.export = QPushButton("Export…")
        self.export.setToolTip("Summaries and chats of this document, as one Markdown file (Ctrl+E)")

        right = QWidget()
        rbox = QVBoxLayout(right)
        rbox.setContentsMargins(0, 0, 0, 0)
        rbox.addWidget(self.title)
        rbox.addWidget(self.state)
        rbox.addWidget(self.text, 1)
        buttons = QHBoxLayout()
        for b in (self.make, self.stop_button, self.read):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.export)
        rbox.addLayout(buttons)
        split = QSplitter()
        split.addWidget(self.parts)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([220, 500])
        box = QVBoxLayout(self)
        box.addWidget(split)

        self._render_timer = QTimer(self, singleShot=True, interval=60)
        self._render_timer.timeout.connect(self.show_selected)
        self.parts.currentRowChanged.connect(lambda _: self.show_selected())
        self.make.clicked.connect(self.summarize)
        self.stop_button.clicked.connect(self.stop)
        self.read.clicked.connect(self._read)
        self.export.clicked.connect(lambda: self.row and self.export_requested.emit(self.row.doc_id))
        self.set_document(None)

    # ---- the open document ----

    def bind(self, library, engine) -> None:
        self.stored.clear()  # summaries belong to a model
        self.library, self.engine = library, engine
        self.set_document(self.row, force=True)

    def set_document(self, row: Row | None, force: bool = False) -> None:
        row = row if row is not None and row.doc_id is not None else None
        same = row is not None and self.row is not None and row.doc_id == self.row.doc_id
        self.row = row
        if not same or force:
            self._fill_list()
            if row is not None and row.doc_id not in self.stored and self.library is not None and self.engine:
                self._load(row.doc_id)
        self._update()

    def _load(self, doc_id: int) -> None:
        library, fp = self.library, self.engine.fingerprint

        def fetch():
            return library.info(doc_id).chapters, summaries.stored_summaries(library, doc_id, fp)

        def loaded(result):
            chapters, stored = result
            self.chapters[doc_id] = chapters
            self.stored[doc_id] = {_key(k): v for k, v in stored.items()}
            if self.row is not None and self.row.doc_id == doc_id:
                self._fill_list()
                self._update()

        self._tasks.call(fetch, loaded, lambda m: self.message.emit(f"The summaries could not be loaded: {m}"))

    def _fill_list(self) -> None:
        keep = self.parts.currentRow()
        self.parts.blockSignals(True)
        self.parts.clear()
        if self.row is not None:
            doc_id = self.row.doc_id
            names = ["The whole book"] + [f"{i + 1}. {t}" for i, t in enumerate(self.chapters.get(doc_id, []))]
            for n, name in enumerate(names):
                item = QListWidgetItem(name)
                item.setToolTip(name)
                item.setData(Qt.UserRole, WHOLE if n == 0 else n - 1)
                self.parts.addItem(item)
            self._mark()
        self.parts.setCurrentRow(keep if 0 <= keep < self.parts.count() else 0)
        self.parts.blockSignals(False)
        self.show_selected()

    def _mark(self) -> None:
        """Parts with a stored summary in bold, so that one sees what is done."""
        stored = self.stored.get(self.row.doc_id, {}) if self.row else {}
        for n in range(self.parts.count()):
            item = self.parts.item(n)
            f = QFont(item.font())
            f.setBold(item.data(Qt.UserRole) in stored)
            item.setFont(f)

    def selected_key(self) -> int | None:
        item = self.parts.currentItem()
        return item.data(Qt.UserRole) if item is not None else None

    def select(self, section_idx: int | None) -> None:
        key = _key(section_idx)
        for n in range(self.parts.count()):
            if self.parts.item(n).data(Qt.UserRole) == key:
                self.parts.setCurrentRow(n)
                return

    @property
    def busy(self) -> bool:
        return self._running is not None

    def summary_text(self, section_idx: int | None = None) -> str:
        if self.row is None:
            return ""
        return self.stored.get(self.row.doc_id, {}).get(_key(section_idx), "")

    # ---- showing ----

    def show_selected(self) -> None:
        key = self.selected_key()
        if self.row is None or key is None:
            self.title.setText("No document open" if self.row is None else self.row.title)
            self.text.clear()
            self._update()
            return
        self.title.setText(self.parts.currentItem().text().split(". ", 1)[-1] if key != WHOLE
                           else f"{self.row.title} — the whole book")
        running_here = self._running == self.row.doc_id
        if running_here and key in self._stream:
            self.text.setHtml(markdown_html(self._stream[key] + " ▍"))
        elif key in self.stored.get(self.row.doc_id, {}):
            self.text.setHtml(markdown_html(self.stored[self.row.doc_id][key]))
        else:
            self.text.setHtml("<p style='color:gray'>No summary yet. <b>Summarize</b> writes one"
                              + (" for every chapter, then the whole book." if key == WHOLE else ".") + "</p>")
        self._update()

    def _update(self) -> None:
        key = self.selected_key()
        ready = self.row is not None and self.row.status == "ready" and self.engine is not None
        exists = self.row is not None and key in self.stored.get(self.row.doc_id, {})
        self.make.setText("Summarize again" if exists else "Summarize")
        self.make.setEnabled(ready and not self.busy and self.row.doc_id in self.stored)
        self.stop_button.setEnabled(self.busy)
        self.read.setVisible(key is not None and key != WHOLE)
        self.export.setEnabled(self.row is not None)
        if self.busy and self.row is not None and self.row.doc_id == self._running:
            self.state.setText(self._status or "Writing…")
        elif self.busy:  # another book's summary is being written: its progress is not this book's
            self.state.setText(f"Writing the summary of “{self._running_title}”; Stop ends it.")
        elif self.row is not None and self.row.status != "ready":
            self.state.setText("Summaries can be written once the document is read.")
        else:
            self.state.setText("")

    def _read(self) -> None:
        key = self.selected_key()
        if self.row is not None and key is not None and key != WHOLE:
            self.chapter_requested.emit(self.row.doc_id, key)

    # ---- writing ----

    def summarize(self) -> None:
        key = self.selected_key()
        if key is None or not self.make.isEnabled():
            return
        doc_id, library, engine = self.row.doc_id, self.library, self.engine
        stored = dict(self.stored[doc_id])
        redo = key in stored
        cancel = self._cancel = threading.Event()
        n_chapters = len(self.chapters.get(doc_id, []))

        def work():
            if key != WHOLE:
                yield from summaries.summarize(library, engine, doc_id, key, redo=redo, cancel=cancel)
                return
            if not redo:  # each missing chapter first, streamed, so that one sees them come
                for i in range(n_chapters):
                    if i in stored:
                        continue
                    yield summaries.SummaryEvent("status", f"chapter {i + 1} of {n_chapters}", i)
                    for ev in summaries.summarize(library, engine, doc_id, i, cancel=cancel):
                        yield ev
                        if ev.kind == "error":
                            return
                    if cancel.is_set():
                        return
            yield summaries.SummaryEvent("status", "the whole book", None)
            yield from summaries.summarize(library, engine, doc_id, None, redo=redo, cancel=cancel)

        self._running, self._stream, self._status = doc_id, {}, "Writing…"
        self._running_title = self.row.title

        def event(ev: summaries.SummaryEvent) -> None:
            k = _key(ev.section_idx)
            if ev.kind == "status":
                self._status = f"Writing: {ev.text}…"
                if self.row is not None and self.row.doc_id == doc_id:
                    self.select(ev.section_idx)  # follow the part being written
                self._update()
            elif ev.kind == "token":
                self._stream[k] = self._stream.get(k, "") + ev.text
                if not self._render_timer.isActive() and self.row is not None and self.row.doc_id == doc_id:
                    self._render_timer.start()
            elif ev.kind == "done":
                self._stream.pop(k, None)
                self.stored.setdefault(doc_id, {})[k] = ev.text
                if self.row is not None and self.row.doc_id == doc_id:
                    self._mark()
                    self.show_selected()
            elif ev.kind == "error":
                self.message.emit(f"The summary could not be written: {ev.text}")

        def end() -> None:
            stopped = cancel.is_set()
            self._running, self._cancel, self._stream, self._status = None, None, {}, ""
            self.show_selected()
            if stopped:
                self.message.emit("Summary stopped; the parts finished so far are kept")

        def failed(message: str) -> None:
            end()
            self.message.emit(f"The summary could not be written: {message}")

        self._tasks.run(work, event, end, failed)
        self._update()

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
