"""The main window: the library on the left, the open document's Chat and Summary in the middle,
the reading pane on the right. It binds the widgets to the application state (`AppState`: the
library, the open document, the model and its loading, the reading queue) and runs the slow work
in workers; the state, not the window, holds what the application is doing."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QByteArray, QEvent, QObject, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTabWidget,
)

from infini_reader.app.core import ingest, paths
from infini_reader.app.core.export import export_markdown
from infini_reader.app.core.fingerprints import recall
from infini_reader.app.core.ingest import Progress
from infini_reader.app.core.library import Library
from infini_reader.app.core.models import ModelChoice, describe
from infini_reader.app.core.state import (
    AppState,
    Loader,
    ModelState,
    ModelStatus,
    check_file,
    expand,
    open_library_url,
    shown_url,
)

from .chat_pane import ChatPane
from .library_model import Row
from .library_pane import FORMATS, LibraryPane
from .reading_pane import ReadingPane
from .reading_queue import ReadingQueue
from .settings import Settings, apply_theme
from .settings_dialog import ModelDialog, SettingsDialog
from .summary_pane import SummaryPane
from .worker import Tasks

log = logging.getLogger(__name__)

OPEN_FILTER = "Books (*.epub *.pdf *.txt *.md *.markdown *.html *.htm *.xhtml);;All files (*)"

SHORTCUTS = [("Ctrl+O", "Open books"), ("Ctrl+N", "New question"), ("Esc", "Stop the answer or summary"),
             ("Ctrl+F", "Search the library; in the reading pane, find in the document"), ("Ctrl+Shift+F", "Find in the open document"),
             ("Ctrl+E", "Export chat and summaries to Markdown"),
             ("Ctrl+1 / Ctrl+2", "Chat / Summary"), ("Ctrl+,", "Settings"), ("Delete", "Remove from the library")]


def local_files(mime) -> list[str]:
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []


class _FileDrops(QObject):
    """Files dropped on a text box go to the window (the library), not into the text."""

    def __init__(self, window: MainWindow):
        super().__init__(window)
        self.window = window

    def eventFilter(self, obj, event):
        if event.type() in (QEvent.DragEnter, QEvent.DragMove) and local_files(event.mimeData()):
            event.acceptProposedAction()
            return True
        if event.type() == QEvent.Drop and local_files(event.mimeData()):
            self.window.dropEvent(event)
            return True
        return False


class MainWindow(QMainWindow):
    READERS_EVERY_MS = 3000  # how often the library asks who else is reading its books
    def __init__(self, load: Loader | None = None, data_dir: str | Path | None = None,
                 settings: Settings | None = None, settings_file: Path | None = None, files: list[str] = (),
                 db_url: str | None = None):
        super().__init__()
        self.settings_file = settings_file
        self.settings = settings if settings is not None else Settings.load(settings_file)
        self.state = AppState(load)
        self._data_dir = data_dir  # given on the command line or by a test: wins over the settings
        self._db_url = db_url  # --db URL on the command line: wins over everything
        self.readers: dict[int, list[str]] = {}  # documents being read by other processes now: who
        self.last_error = ""
        self.long_reading_box: QMessageBox | None = None  # the last "a long reading" question
        self.restored_note = ""
        self.refused: list[str] = []  # the files last refused when added, and why  # the files of last time queued again, said once the library is open
        self._refresh_gen = 0
        self._seen: set[int] = set()  # documents whose reading events have been seen
        self._select_when_listed: int | None = None
        self._after_idle: list[Callable[[], None]] = []
        self._boxes: list[QMessageBox] = []
        self._closing = self._close_when_idle = False
        self._indexing = False  # books of an older version being indexed (index_library)

        self.tasks = Tasks(self)
        self.queue = ReadingQueue(self.tasks, self.state.queue, self)
        self.library_pane = LibraryPane()
        self.chat = ChatPane(self.tasks, self.state)
        self.summary = SummaryPane(self.tasks)
        self.reading = ReadingPane(self.tasks)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.chat, "Chat")
        self.tabs.addTab(self.summary, "Summary")
        self.splitter = QSplitter()
        self.splitter.addWidget(self.library_pane)
        self.splitter.addWidget(self.tabs)
        self.splitter.addWidget(self.reading)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)
        self.splitter.setContentsMargins(8, 8, 8, 0)
        self.resize(1400, 860)
        self.reading.hide()  # until a passage or a chapter is opened
        self._sized = False
        if self.settings.geometry:
            self.restoreGeometry(QByteArray.fromHex(self.settings.geometry.encode()))
        self.setWindowTitle("Infini Reader")

        self.model_label = QLabel("Loading the model…")
        self.model_label.setTextFormat(Qt.PlainText)
        self.statusBar().addPermanentWidget(self.model_label)
        self._menus()
        self._connect()
        self.setAcceptDrops(True)
        drops = _FileDrops(self)
        for w in (self.chat.transcript, self.chat.question, self.summary.text, self.reading.text):
            w.viewport().installEventFilter(drops)
        self.library_pane.search.installEventFilter(drops)
        apply_theme(self.settings.theme)

        self._readers_timer = QTimer(self)
        self._readers_timer.setInterval(self.READERS_EVERY_MS)
        self._readers_timer.timeout.connect(self.poll_readers)
        self._readers_timer.start()
        self._polling_readers = False

        self.open_library()
        self.load_model()
        if files:
            self.open_files(list(files))

    # ---- building ----

    def _menus(self) -> None:
        def act(menu, text, slot, shortcut=None, tip=None) -> QAction:
            a = QAction(text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            if tip:
                a.setStatusTip(tip)
            a.triggered.connect(slot)
            menu.addAction(a)
            return a

        f = self.menuBar().addMenu("&File")
        self.open_action = act(f, "&Open…", self.choose_files, "Ctrl+O", f"Add books: {FORMATS}")
        self.export_action = act(f, "&Export chat and summaries…", self.export_current, "Ctrl+E")
        f.addSeparator()
        act(f, "&Settings…", self.open_settings, "Ctrl+,")
        f.addSeparator()
        act(f, "&Quit", self.close, "Ctrl+Q")
        lib = self.menuBar().addMenu("&Library")
        act(lib, "&Search", self.find, "Ctrl+F")
        act(lib, "&Resume reading", lambda: self.resume(self.library_pane.selected()))
        act(lib, "S&top reading", self.queue.stop, tip="Stop the book being read and pause the queue")
        act(lib, "S&kip this book", self.queue.skip, tip="Stop the book being read (kept) and read the next one")
        act(lib, "Move &up in the queue", lambda: self.move_in_queue(-1), "Ctrl+Up")
        act(lib, "Move do&wn in the queue", lambda: self.move_in_queue(1), "Ctrl+Down")
        act(lib, "Read with &another model…", lambda: self.read_with_other_model(self.library_pane.selected()))
        lib.addSeparator()
        self.remove_action = act(lib, "Re&move", lambda: self.remove(self.library_pane.selected()), "Delete")
        self.remove_action.setShortcutContext(Qt.WidgetWithChildrenShortcut)
        self.library_pane.table.addAction(self.remove_action)
        doc = self.menuBar().addMenu("&Document")
        act(doc, "&New question", self.new_question, "Ctrl+N")
        self.stop_action = act(doc, "&Stop", self.stop_work, "Esc", "Stop the answer or the summary being written")
        act(doc, "&Find in the document…", self.find_in_document, "Ctrl+Shift+F",
            "Find words in the open document: the passages, with chapter and page")
        act(doc, "&Chat", lambda: self.tabs.setCurrentWidget(self.chat), "Ctrl+1")
        act(doc, "S&ummary", lambda: self.tabs.setCurrentWidget(self.summary), "Ctrl+2")
        h = self.menuBar().addMenu("&Help")
        self.guide_action = act(h, "&User guide", self.open_guide, "F1")
        act(h, "&Keyboard shortcuts", self.show_shortcuts)
        act(h, "Open the &log folder", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(paths.log_dir()))))
        act(h, "&About Infini Reader", self.show_about)

    def open_guide(self) -> None:
        guide = paths.user_guide()
        if guide is None:
            self.show_error("User guide", "The user guide is not part of this installation.")
            return
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(guide)))

    def _connect(self) -> None:
        lp = self.library_pane
        lp.current_changed.connect(self._current_changed)
        lp.add_clicked.connect(self.choose_files)
        lp.remove_clicked.connect(self.remove)
        lp.resume_clicked.connect(self.resume)
        lp.reread_clicked.connect(self.read_with_other_model)
        lp.stop_clicked.connect(self.queue.stop)
        lp.resume_queue_clicked.connect(self.queue.resume)
        self.queue.progress.connect(self._progress)
        self.queue.failed.connect(self._reading_failed)
        self.queue.idle.connect(self._idle)
        self.queue.summarizing.connect(self._summarizing)
        self.queue.long_reading.connect(self._ask_long_reading)
        self.queue.declined.connect(lambda ev: self.say(f"“{ev.title}” was not read; Resume reads it when you wish"))
        self.queue.summarize_after = self.settings.summarize_after_reading
        self.chat.citation_clicked.connect(self.reading.show_citation)
        self.reading.opened.connect(self._show_reading)
        self.chat.reread_requested.connect(lambda doc_id: self.resume([self.library_pane.model.row_of(doc_id)]))
        self.summary.chapter_requested.connect(self.reading.show_chapter)
        self.summary.export_requested.connect(self.export)
        for pane in (self.chat, self.summary, self.reading):
            pane.message.connect(self.say)
        ev = self.state.events
        ev.library.connect(self._library_ready)
        ev.model.connect(self._model_changed)
        ev.current.connect(lambda _: self._show_current())
        ev.queue.connect(lambda: self.library_pane.model.set_pending(self.queue.waiting()))
        ev.queue.connect(self.save_queue)

    @property
    def library(self) -> Library | None:
        return self.state.library

    @property
    def engine(self):
        """The model in use once it has loaded, else None."""
        return self.state.engine

    # ---- messages ----

    def say(self, text: str) -> None:
        self.statusBar().showMessage(text, 10000)

    def show_error(self, title: str, text: str, details: str = "") -> None:
        """A plain message in the window (never blocking the work going on); details go to the log."""
        log.error("%s%s", text, f"\n{details}" if details else "")
        self.last_error = text
        self.say(text)
        box = QMessageBox(QMessageBox.Warning, title, text, QMessageBox.Ok, self)
        box.setInformativeText(f"Details are in the log: {paths.log_dir() / 'infini-reader.log'}")
        box.finished.connect(lambda _: self._boxes.remove(box) if box in self._boxes else None)
        self._boxes.append(box)
        box.open()

    # ---- the library and the model ----

    def data_dir(self) -> str | Path | None:
        return self._data_dir or self.settings.library_dir or None

    def library_url(self) -> str:
        """The library's database URL when one is chosen (--db, or Settings unless --data-dir), else ""."""
        if self._db_url:
            return self._db_url
        return self.settings.library_url.strip() if self._data_dir is None else ""

    def open_library(self, on_failed: Callable[[], None] | None = None) -> None:
        """Open the library (a folder's, or a database URL's) off the GUI thread. Until it opens the
        current library stays; when it cannot be opened, one plain line says why."""
        chosen, url = self.data_dir(), self.library_url()

        def make():
            if url:
                return open_library_url(url)
            return Library(paths.default_db_url(paths.data_dir(chosen)))

        def failed(m: str) -> None:
            keep = " The library open until now stays open." if self.library is not None else ""
            if url:
                self.show_error("The library could not be opened", f"The library at {shown_url(url)} could not "
                                f"be opened: {m}.{keep or ' Choose another in Settings.'}")
            else:
                self.show_error("The library could not be opened", f"The library could not be opened: "
                                f"{m.removeprefix('the library cannot be opened: ')}."
                                f"{keep or ' Choose another folder in Settings.'}")
            if on_failed is not None:
                on_failed()

        self.say("Opening the library…")
        self.tasks.call(make, self.state.set_library, failed)

    def save_queue(self) -> None:
        """The files left to read, in the data folder: a restart (or a crash) does not lose them."""
        if self.library is None:
            return
        try:
            self.state.save_queue(paths.data_dir(self.data_dir()))
        except OSError as exc:
            log.warning("the reading queue could not be saved: %s", exc)

    def move_in_queue(self, step: int) -> None:
        """Move the selected waiting files up (-1) or down (1) in the order they will be read."""
        waiting = self.state.queue.waiting
        chosen = [r.path for r in self.library_pane.selected() if r is not None and r.path in waiting]
        for path in (chosen if step < 0 else reversed(chosen)):
            self.state.reorder(path, waiting.index(path) + step)

    def _library_ready(self, library: Library) -> None:
        self.state.open(None)  # another library's document ids mean nothing here
        restored = self.state.restore_queue(paths.data_dir(self.data_dir()))
        if restored:
            n = len(restored)
            self.restored_note = (f"{n} file{'s' if n > 1 else ''} left to read last time "
                                  f"{'are' if n > 1 else 'is'} queued again")
            self.queue.start()
        self.chat.bind(library, self.engine)
        self.summary.bind(library, self.engine)
        self.reading.bind(library)
        self.queue.bind(library, self.engine)
        self.say(self.restored_note)
        self.refresh()
        self.index_library()

    def load_model(self) -> None:
        """Load the model in the settings, off the GUI thread; the state says how it goes."""
        choice = ModelChoice(self.settings.model, self.settings.device)
        token = self.state.start_loading(choice)
        folder = paths.data_dir(self.data_dir())
        self.tasks.call(lambda: self.state.load(choice, folder), lambda e: self.state.loaded(token, e),
                        lambda m: self.state.failed(token, m))

    def _model_changed(self, m: ModelStatus) -> None:
        e = m.engine
        if m.state == ModelState.LOADING:
            self.model_label.setText("Loading the model…")
            self.model_label.setToolTip("")
        elif m.state == ModelState.READY:
            self.model_label.setText(describe(e))
            self.model_label.setToolTip(f"The model in use, the device it runs on and its precision\n{e.source}")
        elif m.state == ModelState.FAILED:
            self.model_label.setText("No model")
        self.chat.bind(self.library, e)
        self.summary.bind(self.library, e)
        self.queue.bind(self.library, e)
        if m.state == ModelState.READY:
            self.say("The model is ready")
            self.refresh()
            # the int8 decoder for answers (a second or two, once per model), made now rather than
            # at the first answer; a question asked meanwhile waits for it, not for a second one
            self.tasks.call(e.prepare_decode, lambda _done: None, lambda m: log.warning("int8 decoder: %s", m))
            self.index_library()
        elif m.state == ModelState.FAILED:
            self.show_error("The model could not be loaded", f"The model could not be loaded: {m.error}\n\n"
                            "Choose another model in Settings (File → Settings).")

    def index_library(self) -> None:
        """Books indexed by an older version (no sentence vectors, found by their words only) are
        indexed now, in the background, a chunk at a time: closing the window stops it within a
        second, and the book under way is indexed again next time."""
        if self.library is None or self.engine is None or self._indexing:
            return  # after the model is ready: its loading is what the window waits for first
        library, self._indexing = self.library, True

        def step(item):
            title, done, total = item
            self.statusBar().showMessage(f"Indexing “{title}” for questions in other words: "
                                         f"{100 * done // max(total, 1)}%", 5000)

        def ended():
            self._indexing = False

        def failed(message):
            ended()
            log.warning("indexing the library: %s", message)

        self.tasks.run(lambda: ingest.index_library(library), step, ended, failed)

    def refresh(self) -> None:
        """The library's list, read in a worker; a newer request wins over an older one."""
        if self.library is None:
            return
        self._refresh_gen += 1
        gen, library = self._refresh_gen, self.library
        # Until the model has loaded, its fingerprint as last loaded (if its files are unchanged): the
        # list shows "read by another model" from the start rather than once the model is there.
        fp = self.engine.fingerprint if self.engine is not None else recall(
            paths.data_dir(self.data_dir()), ModelChoice(self.settings.model, self.settings.device).key)

        def listed(infos):
            if gen != self._refresh_gen:
                return
            self.library_pane.model.set_documents(infos, self.queue.current_doc)
            self.library_pane.model.set_pending(self.queue.waiting())
            if self._select_when_listed is not None and self.library_pane.select(self._select_when_listed):
                self._select_when_listed = None
            self._show_current()

        self.tasks.call(lambda: library.infos(fingerprint=fp), listed,
                        lambda m: self.show_error("The library could not be read", f"The library could not be "
                                                  f"read: {m}"))

    def poll_readers(self) -> None:
        """Who else is reading the library's books now (another window, an `infini ingest`, a reading
        cluster's worker): their lock's holders, asked in a worker; shown in the list."""
        library = self.library
        if library is None or self._polling_readers or self._closing or not self.isVisible():
            return
        ids = [r.doc_id for r in self.library_pane.model.rows if r.doc_id is not None]
        if not ids:
            return
        self._polling_readers = True

        def who() -> dict[int, list[str]]:
            from infini_reader.app.core.locks import me

            mine, out = me(), {}
            for i in ids:
                others = [str(r) for r in library.readers(i) if r != mine]
                if others:
                    out[i] = others
            return out

        def got(readers: dict[int, list[str]]) -> None:
            self._polling_readers = False
            if library is self.library:
                self.readers = readers
                self.library_pane.model.set_readers(readers)
                self.library_pane._update_buttons()

        def failed(m: str) -> None:
            self._polling_readers = False
            log.warning("who else is reading could not be asked: %s", m)

        self.tasks.call(who, got, failed)

    def showEvent(self, event):
        super().showEvent(event)
        if not self._sized:  # the panes' widths: last time's, or the library at about 40 %
            self._sized = True
            if not (self.settings.splitter and self.splitter.restoreState(
                    QByteArray.fromHex(self.settings.splitter.encode()))):
                w = self.splitter.width()
                self.splitter.setSizes([max(520, w * 2 // 5), w - max(520, w * 2 // 5), 0])

    def _show_reading(self) -> None:
        """Make room for the reading pane, mostly from the chat, keeping the library usable."""
        if self.reading.isVisible():
            return
        self.reading.show()
        a, b, _ = self.splitter.sizes()
        width = 420
        from_chat = min(width, max(0, b - 480))
        from_library = min(width - from_chat, max(0, a - 400))
        self.splitter.setSizes([a - from_library, b - from_chat, from_chat + from_library])

    def _current_changed(self, row: Row | None) -> None:
        """The library's selection changed. A document selected alone opens in the panes; a
        selection emptied (by a search, a filter, a click beside the rows) or of several rows leaves
        the panes with their document."""
        if row is not None and row.doc_id is not None:
            self.state.open(row.doc_id)

    def _show_current(self) -> None:
        """The panes show the state's document, with its row as the library last listed it."""
        doc_id = self.state.current
        row = self.library_pane.model.row_of(doc_id) if doc_id is not None else None
        if doc_id is not None and row is None and self.library_pane.model.rows:
            self.state.open(None)  # listed without it: it left the library (before the first listing: wait)
            return
        self.chat.set_document(row)
        self.summary.set_document(row)
        self.setWindowTitle(f"{row.title} — Infini Reader" if row is not None else "Infini Reader")

    # ---- adding and reading books ----

    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add books", str(Path.home()), OPEN_FILTER)
        if files:
            self.open_files(files)

    def open_files(self, files: list[str]) -> None:
        """Files dropped or opened: each checked now (format, size, encryption, text layer) and
        refused at once in plain words; the others queued."""
        found = expand(files)
        refused = [f"{Path(p).name}: this folder holds no books" for p in files
                   if Path(p).is_dir() and not any(f.startswith(str(Path(p).resolve())) for f in found)]
        good = []
        for f in found:
            why = check_file(f)
            if why is None:
                good.append(f)
            else:
                refused.append(why)
        self.refused = refused
        if refused:
            self.show_error("Not added" if not good else "Some files were not added", "\n".join(refused))
        files = good
        if not files:
            if not refused:
                self.say(f"Nothing to read there: drop {FORMATS} files")
            return
        if self.state.current is None and self._select_when_listed is None:
            self._select_when_listed = -1  # the document the first file becomes: open it
        self.state.enqueue(files)
        self.queue.start()
        self.say(f"Added {len(files)} file{'s' if len(files) > 1 else ''} to read")

    def _progress(self, ev: Progress) -> None:
        model, bar = self.library_pane.model, self.library_pane.reading
        model.update_progress(ev)
        waiting = len(self.queue.waiting()) - (1 if ev.document_id is None and ev.phase == "parsing" else 0)
        if ev.phase in ("parsing", "reading") or (ev.phase == "ready" and not ev.reused):
            bar.show_progress(ev, max(0, waiting))
        new_doc = ev.document_id is not None and ev.document_id not in self._seen
        if new_doc:
            self._seen.add(ev.document_id)
            if self._select_when_listed == -1:
                self._select_when_listed = ev.document_id
        if ev.phase in ("ready", "failed", "cancelled") or new_doc or ev.phase == "parsing":
            self.refresh()
        if ev.phase in ("ready", "failed"):
            self.save_queue()
        if ev.phase == "failed":
            self.say(f"“{ev.title}” could not be read: {ev.message}")
            log.warning("%s could not be read: %s", ev.title, ev.message)
            if ev.document_id is None:  # not even in the library (e.g. the file is gone): say it aloud
                self.show_error("A file could not be read", f"“{ev.title}” could not be read: {ev.message}")
        elif ev.phase == "ready":
            self.say(f"“{ev.title}” is " + ("already in the library" if ev.reused else "read and ready"))
        elif ev.phase == "cancelled":
            bar.show_stopped(ev.title, ev.fraction, len(self.queue.waiting()))
        if self.state.current is not None and self.state.current == ev.document_id:
            self._show_current()

    def _summarizing(self, doc_id: int, title: str, kind: str, text: str) -> None:
        """Summaries written after a reading (the setting): progress in the status bar. The title comes
        with the event: the library's list may not have been read again yet when the first arrive."""
        if kind == "status":
            self.say(f"Summarising “{title}”: {text}")
        elif kind == "error":
            self.say(f"“{title}” could not be summarised: {text}")
            log.warning("summaries after reading %s: %s", title, text)
        else:
            self.say(f"The summaries of “{title}” are ready")
            if self.state.current == doc_id:
                self.summary.set_document(self.library_pane.model.row_of(doc_id))

    def _ask_long_reading(self, q) -> None:
        """A reading of more than an hour at the measured rate: say how long, and ask (Read / Cancel).
        The reading waits for the answer; the window does not."""
        box = QMessageBox(QMessageBox.Question, "A long reading", q.estimate.text(f"“{q.ev.title}”") + ".",
                          QMessageBox.NoButton, self)
        box.setInformativeText("Read it now? It can be stopped at any time: what was read is kept, and Resume "
                               "continues from there.")
        read = box.addButton("Read", QMessageBox.AcceptRole)
        box.addButton(QMessageBox.Cancel)
        box.setDefaultButton(read)
        self.long_reading_box = box

        def answered(_):
            q.answer(box.clickedButton() is read)
            if box in self._boxes:
                self._boxes.remove(box)

        box.finished.connect(answered)
        self._boxes.append(box)
        box.open()

    def _reading_failed(self, path: str, message: str) -> None:
        self.show_error("Reading failed", f"“{Path(path).name}” could not be read: {message}")
        self.refresh()

    def _idle(self) -> None:
        bar = self.library_pane.reading
        bar.reset()
        if self.queue.stopped is None:
            bar.hide()
        elif self.queue.waiting():
            bar.show_stopped(self.queue.stopped[1].title, self.queue.stopped[1].fraction, len(self.queue.waiting()))
        self.library_pane.model.set_pending(self.queue.waiting())
        if not self._closing:
            self.save_queue()
        todo, self._after_idle = self._after_idle, []
        for fn in todo:
            fn()

    def resume(self, rows: list[Row]) -> None:
        """Read again (resume a stopped reading, retry a failed one, read with the model in use)."""
        paths_ = [r.path for r in rows if r is not None and r.doc_id is not None]
        self.queue.confirmed.update(paths_)  # asked for: read however long it takes
        if paths_:
            if self.state.queue.stopped is not None and self.state.queue.stopped[0] in paths_:
                self.state.queue.stopped = None
            self.state.enqueue(paths_, front=True)
            self.queue.start()

    def read_with_other_model(self, rows: list[Row]) -> None:
        rows = [r for r in rows if r is not None and r.doc_id is not None]
        if not rows:
            return
        dialog = ModelDialog(self.settings.model, [r.title for r in rows], self)
        if dialog.exec() != ModelDialog.Accepted:
            return
        spec = dialog.model.spec()
        if spec != self.settings.model:
            self.settings.model = spec
            self.save_settings()
            self.switch_model(lambda: self.resume(rows))
        else:
            self.resume(rows)

    def switch_model(self, then: Callable[[], None] | None = None) -> None:
        """Load the model in the settings; a reading in progress stops first (it is kept)."""
        def go():
            self.load_model()
            if then is not None:
                then()

        if self.queue.running:
            self.queue.stop()
            self._after_idle.append(go)
        else:
            go()

    def remove(self, rows: list[Row]) -> None:
        rows = [r for r in rows if r is not None]
        if not rows:
            return
        names = rows[0].title if len(rows) == 1 else f"{len(rows)} documents"
        if QMessageBox.question(self, "Remove", f"Remove {names} from the library, with everything read, asked "
                                "and summarised about it? The files themselves stay where they are.",
                                QMessageBox.Yes | QMessageBox.No) != QMessageBox.Yes:
            return
        for r in rows:
            if r.doc_id is None:
                self.state.dequeue(r.path)
        ids = [r.doc_id for r in rows if r.doc_id is not None]
        if not ids:
            return
        library = self.library

        def gone(_):
            self.state.forget(ids)
            for i in ids:
                self.chat.chats.pop(i, None)
                self.summary.stored.pop(i, None)
                if self.reading.doc_id == i:
                    self.reading.clear()
            self.say(f"Removed {names}")
            self.refresh()

        def go():
            self.tasks.call(lambda: [library.remove(i) for i in ids], gone,
                            lambda m: self.show_error("Remove", f"{names} could not be removed: {m}"))

        if self.queue.current_doc in ids:
            self.queue.stop()
            self._after_idle.append(go)
        else:
            go()

    # ---- documents ----

    def new_question(self) -> None:
        self.tabs.setCurrentWidget(self.chat)
        self.chat.focus_question()

    def stop_work(self) -> None:
        self.chat.stop()
        self.summary.stop()

    def find(self) -> None:
        """Ctrl+F: in the reading pane, find in its document; elsewhere, search the library."""
        focus = QApplication.focusWidget()
        if self.reading.isVisible() and focus is not None and self.reading.isAncestorOf(focus) \
                and self.reading.start_find():
            return
        self.focus_search()

    def find_in_document(self) -> None:
        """Find in the document in the panes (shown in the reading pane)."""
        doc_id = self.reading.doc_id if self.reading.isVisible() and self.reading.doc_id is not None else self.state.current
        if doc_id is None or not self.reading.start_find(doc_id):
            self.say("Choose a document in the library to search in it")

    def focus_search(self) -> None:
        self.library_pane.search.setFocus()
        self.library_pane.search.selectAll()

    def export_current(self) -> None:
        if self.state.current is None:
            self.say("Choose a document in the library to export")
            return
        self.export(self.state.current)

    def export(self, doc_id: int) -> None:
        row = self.library_pane.model.row_of(doc_id)
        stem = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in (row.title if row else "document"))
        target, _ = QFileDialog.getSaveFileName(self, "Export to Markdown", str(Path.home() / f"{stem.strip()}.md"),
                                                "Markdown (*.md)")
        if not target:
            return
        library = self.library

        def write():
            Path(target).write_text(export_markdown(library, doc_id), encoding="utf-8")
            return target

        self.tasks.call(write, lambda t: self.say(f"Exported to {t}"),
                        lambda m: self.show_error("Export", f"The export could not be written: {m}"))

    # ---- settings ----

    def open_settings(self) -> None:
        import torch

        in_use = describe(self.engine) if self.engine is not None else "no model loaded"
        current_dir = str(paths.data_dir(self.data_dir()))
        dialog = SettingsDialog(self.settings, in_use, torch.cuda.is_available(), current_dir, self)
        if dialog.exec() != SettingsDialog.Accepted:
            return
        self.apply_settings(dialog.result_settings())

    def apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        self.save_settings()
        self.queue.summarize_after = new.summarize_after_reading
        if new.theme != old.theme:
            apply_theme(new.theme)
        if (new.library_dir, new.library_url) != (old.library_dir, old.library_url) and self._data_dir is None \
                and not self._db_url:
            def revert() -> None:  # the library could not be opened: the settings keep the one open
                self.settings.library_dir, self.settings.library_url = old.library_dir, old.library_url
                self.save_settings()

            if self.queue.running:
                self.queue.stop()
                self._after_idle.append(lambda: self.open_library(revert))
            else:
                self.open_library(revert)
        if (new.model, new.device) != (old.model, old.device):
            self.switch_model()

    def save_settings(self) -> None:
        self.settings.geometry = bytes(self.saveGeometry().toHex()).decode()
        self.settings.splitter = bytes(self.splitter.saveState().toHex()).decode()
        try:
            self.settings.save(self.settings_file)
        except OSError as exc:
            self.show_error("Settings", f"The settings could not be saved: {exc}")

    # ---- help ----

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v}</td></tr>" for k, v in SHORTCUTS)
        rows += "<tr><td><b>Enter / Shift+Enter</b>&nbsp;&nbsp;</td><td>Ask / a new line in the question</td></tr>"
        QMessageBox.information(self, "Keyboard shortcuts", f"<table>{rows}</table>")

    def show_about(self) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("infini-reader")
        except PackageNotFoundError:
            v = "unknown"
        QMessageBox.about(self, "Infini Reader", f"<b>Infini Reader</b> {v}<p>Reads whole books with a local "
                          "Infini-Transformer: a compressive memory per book, saved with it, for questions with "
                          f"citations and summaries.</p><p>Library: "
                          f"{html.escape(shown_url(self.library_url())) or paths.data_dir(self.data_dir())}<br>"
                          f"Log: {paths.log_dir()}</p>")

    # ---- drops and closing ----

    def dragEnterEvent(self, event):
        if local_files(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event):
        if local_files(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event):
        files = local_files(event.mimeData())
        if files:
            event.acceptProposedAction()
            self.open_files(files)

    def closeEvent(self, event):
        if not self._closing:
            self._closing = True
            self.save_settings()
            self.save_queue()
            self.queue.stop()  # the reading so far is stored; it continues next time
            self.stop_work()
            self.tasks.cancel_all()
            for box in list(self._boxes):
                box.close()
        if self.tasks.busy:
            # The segment being read (a second or two) is finished and stored before the end:
            # out of sight, without freezing the window.
            event.ignore()
            self.hide()
            if not self._close_when_idle:
                self._close_when_idle = True
                self.tasks.idle.connect(self.close)
            return
        super().closeEvent(event)
