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
        self._notes: dict[int, list[str]] = {}  # section key → finished parts' notes, for the running document
        self._merging: dict[int, str] = {}  # section key → the connected account being written
        self._progress: tuple[int, int, float | None] | None = None  # parts done, parts in all, seconds left
        self._stopped: dict[int, str] = {}  # doc_id → what Stop kept
        self._estimates: dict = {}  # (doc_id, key) → summaries.Estimate

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
        if running_here and (key in self._stream or key in self._notes):
            shown = "\n\n".join(self._notes.get(key, []) + ([self._stream[key]] if self._stream.get(key) else []))
            if key in self._merging:
                shown += "\n\n---\n\n*Connecting the parts into one account:* " + self._merging[key]
            self.text.setHtml(markdown_html(shown + " ▍"))
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
            self.state.setText((self._status or "Writing…") + self._progress_words())
        elif self.busy:  # another book's summary is being written: its progress is not this book's
            self.state.setText(f"Writing the summary of “{self._running_title}”; Stop ends it.")
        elif self.row is not None and self.row.status != "ready":
            self.state.setText("Summaries can be written once the document is read.")
        elif self.row is not None and self.row.doc_id in self._stopped:
            self.state.setText(self._stopped[self.row.doc_id])
        elif ready and key is not None and not exists and self.row.doc_id in self.stored:
            e = self._estimates.get((self.row.doc_id, key))
            if e is None:
                self._estimate(self.row.doc_id, key)
                self.state.setText("")
            elif e.parts:
                self.state.setText(f"{e.parts} part{'s' if e.parts != 1 else ''} to write, {e.words()}.")
            else:
                self.state.setText("")
        else:
            self.state.setText("")

    def _progress_words(self) -> str:
        if not self._progress:
            return ""
        done, total, eta = self._progress
        left = "" if eta is None else (f", about {round(eta / 60)} min left" if eta >= 90
                                       else f", about {max(int(eta), 1)} s left")
        return f" {done} of {total} parts done{left}"

    def _read(self) -> None:
        key = self.selected_key()
        if self.row is not None and key is not None and key != WHOLE:
            self.chapter_requested.emit(self.row.doc_id, key)

    # ---- writing ----

    def _estimate(self, doc_id: int, key: int) -> None:
        """The time the summary will take, shown before it starts (the whole book's can be long)."""
        library, engine = self.library, self.engine
        section = None if key == WHOLE else key

        def est():
            return summaries.estimate(library, engine, doc_id, section)

        def shown(e) -> None:
            self._estimates[(doc_id, key)] = e
            self._update()

        if (doc_id, key) not in self._estimates and (doc_id, key, "asked") not in self._estimates:
            self._estimates[(doc_id, key, "asked")] = True
            self._tasks.call(est, shown, lambda m: None)

    def summarize(self) -> None:
        key = self.selected_key()
        if key is None or not self.make.isEnabled():
            return
        doc_id, library, engine = self.row.doc_id, self.library, self.engine
        redo = key in self.stored[doc_id]
        cancel = self._cancel = threading.Event()
        section = None if key == WHOLE else key
        self._stopped.pop(doc_id, None)
        for k in list(self._estimates):
            if k[0] == doc_id:
                del self._estimates[k]

        def work():
            yield from summaries.summarize(library, engine, doc_id, section, redo=redo, cancel=cancel)

        self._running, self._stream, self._status = doc_id, {}, "Writing…"
        self._notes, self._merging, self._progress = {}, {}, None
        self._running_title = self.row.title

        def event(ev: summaries.SummaryEvent) -> None:
            k = _key(ev.section_idx)
            here = self.row is not None and self.row.doc_id == doc_id
            if ev.kind == "status":
                self._status = f"Writing: {ev.text}…"
                if ev.text.startswith("connecting"):
                    self._merging[k] = ""
                if here and self.selected_key() != k:
                    self.select(ev.section_idx)  # follow the part being written
                self._update()
            elif ev.kind == "progress":
                self._progress = (ev.done, ev.total, ev.eta)
                self._update()
            elif ev.kind == "part":
                notes = self._notes.setdefault(k, [])
                notes[ev.part:] = [ev.text]
                self._stream[k] = ""
                if here:
                    self._render_timer.start()
            elif ev.kind == "token":
                if ev.part is None and k in self._merging:
                    self._merging[k] += ev.text
                else:
                    self._stream[k] = self._stream.get(k, "") + ev.text
                if not self._render_timer.isActive() and here:
                    self._render_timer.start()
            elif ev.kind == "done":
                for d in (self._stream, self._notes, self._merging):
                    d.pop(k, None)
                self.stored.setdefault(doc_id, {})[k] = ev.text
                if here:
                    self._mark()
                    self.show_selected()
            elif ev.kind == "error":
                self.message.emit(f"The summary could not be written: {ev.text}")

        def end() -> None:
            stopped = cancel.is_set()
            progress = self._progress
            self._running, self._cancel, self._stream, self._status = None, None, {}, ""
            self._notes, self._merging, self._progress = {}, {}, None
            if stopped:
                done, total = (progress[0], progress[1]) if progress else (0, 0)
                self._stopped[doc_id] = f"Stopped: {done} of {total} parts kept; Summarize continues."
                self.message.emit(self._stopped[doc_id])
            self.show_selected()

        def failed(message: str) -> None:
            end()
            self.message.emit(f"The summary could not be written: {message}")

        self._tasks.run(work, event, end, failed)
        self._update()

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
