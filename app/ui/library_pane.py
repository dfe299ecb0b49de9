"""The library pane: every document with its state, search and filter, and the reading in progress."""

from __future__ import annotations

import html

from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from infini_reader.app.core.ingest import Progress

from .library_model import (
    ROW_ROLE,
    STATUS_FILTERS,
    LibraryFilter,
    LibraryModel,
    Row,
    StatusDelegate,
    format_duration,
    format_eta,
)

FORMATS = "EPUB, PDF, TXT, Markdown or HTML"


def details_html(r: Row) -> str:
    """What the line under the list says about the selected document."""
    path = html.escape(r.path)
    if r.status == "failed":
        return f"<span style='color:#c0392b'><b>Could not be read:</b> {html.escape(r.error or 'unknown reason')}</span>" \
               f"<br><span style='color:gray'>{path}</span>"
    facts = [f"{r.chapters} chapters" if r.chapters else "no chapters found"]
    if r.pages:
        facts.append(f"{r.pages:,} pages")
    if r.tokens:
        facts.append(f"{r.tokens:,} tokens")
    if r.status == "ready" and r.seconds:
        facts.append(f"read in {format_duration(r.seconds)}")
    if r.memory_bytes:
        facts.append(f"memory {r.memory_bytes / 2**20:.1f} MiB")
    out = " · ".join(facts) + f"<br><span style='color:gray'>{path}</span>"
    if r.readers:
        out += f"<br><span style='color:#2e86c1'>Being read now by {html.escape(', '.join(r.readers))}</span>"
    for w in r.warnings[:2]:
        out += f"<br><span style='color:#b9770e'>⚠ {html.escape(w)}</span>"
    return out


class ReadingBar(QFrame):
    """The reading in progress: which book, how far, how fast, how long; stop and resume."""

    stop_clicked = Signal()
    resume_clicked = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        self.title = QLabel()
        self.title.setTextFormat(Qt.PlainText)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.rate = QLabel()
        self.rate.setTextFormat(Qt.PlainText)
        self.stop = QPushButton("Stop")
        self.stop.setToolTip("Stop reading; what was read is kept, and Resume continues from there")
        self.resume = QPushButton("Resume")
        self.stop.clicked.connect(self._stopping)
        self.resume.clicked.connect(self.resume_clicked)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.stop)
        top.addWidget(self.resume)
        box = QVBoxLayout(self)
        box.setContentsMargins(8, 6, 8, 6)
        box.addLayout(top)
        box.addWidget(self.bar)
        box.addWidget(self.rate)
        self.hide()

    def _stopping(self) -> None:
        self.stop.setEnabled(False)
        self.stop.setText("Stopping…")  # the segment being read is finished and stored first
        self.stop_clicked.emit()

    def show_progress(self, ev: Progress, waiting: int) -> None:
        self.show()
        self.stop.show()
        self.resume.hide()
        self.title.setText({"reading": f"Reading “{ev.title}”", "ready": f"Read “{ev.title}”"}.get(
            ev.phase, f"Opening “{ev.title}”…"))
        self.bar.setValue(int(100 * ev.fraction))
        facts = []
        if ev.segments_total:
            facts.append(f"{ev.tokens_done:,} of {ev.tokens_total:,} tokens")
        if ev.tokens_per_s:
            facts.append(f"{ev.tokens_per_s:,.0f} tokens/s")
        if ev.eta_s is not None and ev.phase == "reading":
            facts.append(format_eta(ev.eta_s))
        if waiting:
            facts.append(f"{waiting} more waiting")
        self.rate.setText(" · ".join(facts))

    def reset(self) -> None:
        self.stop.setEnabled(True)
        self.stop.setText("Stop")

    def show_stopped(self, title: str, fraction: float, waiting: int) -> None:
        self.reset()
        self.show()
        self.stop.hide()
        self.resume.show()
        self.title.setText(f"Stopped “{title}”")
        self.bar.setValue(int(100 * fraction))
        self.rate.setText("What was read is kept; Resume continues from there"
                          + (f" · {waiting} more waiting" if waiting else ""))


class LibraryTable(QTableView):
    """Columns that share the width: the title most, the author next, the rest as much as they need."""

    FIXED = ((2, 54), (3, 104), (4, 116))

    def resizeEvent(self, event):
        super().resizeEvent(event)
        free = max(120, self.viewport().width() - sum(w for _, w in self.FIXED))
        self.setColumnWidth(0, free * 62 // 100)
        self.setColumnWidth(1, free - free * 62 // 100)
        for col, width in self.FIXED:
            self.setColumnWidth(col, width)


class LibraryPane(QWidget):
    current_changed = Signal(object)  # Row | None
    add_clicked = Signal()
    remove_clicked = Signal(list)  # [Row]
    resume_clicked = Signal(list)  # [Row]
    reread_clicked = Signal(list)  # [Row]: read again with another model
    stop_clicked = Signal()
    resume_queue_clicked = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = LibraryModel(self)
        self.proxy = LibraryFilter(self)
        self.proxy.setSourceModel(self.model)

        self.search = QLineEdit()
        self.search.setPlaceholderText("Search the library  (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.status_filter = QComboBox()
        self.status_filter.addItems(list(STATUS_FILTERS))
        self.status_filter.setToolTip("Show only the documents in this state")

        self.table = LibraryTable()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.setItemDelegateForColumn(4, StatusDelegate(self.table))
        self.table.setContextMenuPolicy(Qt.CustomContextMenu)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setTextElideMode(Qt.ElideRight)
        self.table.horizontalHeader().setMinimumSectionSize(40)
        self.table.horizontalHeader().setHighlightSections(False)

        self.empty = QLabel(f"<p style='font-size:15px'><b>Drop books here</b></p><p>{FORMATS}</p>"
                            "<p>or use File → Open (Ctrl+O)</p>")
        self.empty.setAlignment(Qt.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setFrameShape(QFrame.StyledPanel)
        self.empty.setStyleSheet("QLabel { border: 2px dashed palette(mid); border-radius: 8px; color: palette(text); }")
        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.table)

        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.details.hide()
        self.reading = ReadingBar()
        self.add = QPushButton("Add books…")
        self.remove = QPushButton("Remove")
        self.resume = QPushButton("Resume")
        self.resume.setToolTip("Go on reading the selected documents where they stopped (or try a failed one again)")
        self.reread = QPushButton("Re-read…")
        self.reread.setToolTip("Read the selected documents again with another model")
        self.add.setToolTip("Add EPUB, PDF, TXT, Markdown or HTML files (Ctrl+O); or drop them on the window")
        self.remove.setToolTip("Remove the selected documents from the library (Delete)")

        filters = QHBoxLayout()
        filters.addWidget(self.search, 1)
        filters.addWidget(self.status_filter)
        buttons = QHBoxLayout()
        for b in (self.add, self.remove, self.resume):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.reread)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        heading = QLabel("<b>Library</b>")
        box.addWidget(heading)
        box.addLayout(filters)
        box.addWidget(self.stack, 1)
        box.addWidget(self.details)
        box.addWidget(self.reading)
        box.addLayout(buttons)

        self.search.textChanged.connect(self.proxy.set_text)
        self.status_filter.currentTextChanged.connect(lambda t: self.proxy.set_statuses(STATUS_FILTERS[t]))
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.table.customContextMenuRequested.connect(self._menu)
        self.model.modelAboutToBeReset.connect(self._remember_selection)
        self.model.modelReset.connect(self._restore_selection)
        self.model.dataChanged.connect(lambda *_: self._update_buttons())
        self.add.clicked.connect(self.add_clicked)
        self.remove.clicked.connect(lambda: self.remove_clicked.emit(self.selected()))
        self.resume.clicked.connect(lambda: self.resume_clicked.emit(self.selected()))
        self.reread.clicked.connect(lambda: self.reread_clicked.emit(self.selected()))
        self.reading.stop_clicked.connect(self.stop_clicked)
        self.reading.resume_clicked.connect(self.resume_queue_clicked)
        self._kept: list[int | None] = []
        self._update_buttons()

    # ---- selection ----

    def selected(self) -> list[Row]:
        rows = {i.row() for i in self.table.selectionModel().selectedRows()}
        return [self.proxy.index(r, 0).data(ROW_ROLE) for r in sorted(rows)]

    def current(self) -> Row | None:
        rows = self.selected()
        return rows[0] if len(rows) == 1 else None

    def select(self, doc_id: int) -> bool:
        for r in range(self.proxy.rowCount()):
            row = self.proxy.index(r, 0).data(ROW_ROLE)
            if row.doc_id == doc_id:
                self.table.selectionModel().select(
                    self.proxy.index(r, 0), QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
                self.table.scrollTo(self.proxy.index(r, 0))
                return True
        return False

    def _remember_selection(self) -> None:
        self._kept = [r.doc_id for r in self.selected()]

    def _restore_selection(self) -> None:
        self.stack.setCurrentWidget(self.table if self.model.rows else self.empty)
        sm = self.table.selectionModel()
        for r in range(self.proxy.rowCount()):
            doc_id = self.proxy.index(r, 0).data(ROW_ROLE).doc_id
            if doc_id is not None and doc_id in self._kept:
                sm.select(self.proxy.index(r, 0), QItemSelectionModel.Select | QItemSelectionModel.Rows)
        self._selection_changed()

    def _selection_changed(self, *_):
        self._update_buttons()
        self.current_changed.emit(self.current())

    def _update_buttons(self) -> None:
        rows = self.selected()
        one = rows[0] if len(rows) == 1 and rows[0].doc_id is not None else None
        self.details.setVisible(one is not None)
        if one is not None:
            self.details.setText(details_html(one))
        self.remove.setEnabled(bool(rows))
        self.resume.setEnabled(any(r.status in ("cancelled", "failed", "other-model") and r.doc_id is not None
                                   for r in rows))
        self.reread.setEnabled(any(r.doc_id is not None and r.status != "failed" for r in rows))

    def _menu(self, pos) -> None:
        rows = self.selected()
        if not rows:
            return
        menu = QMenu(self)
        if self.resume.isEnabled():
            menu.addAction("Resume reading", lambda: self.resume_clicked.emit(rows))
        if self.reread.isEnabled():
            menu.addAction("Read with another model…", lambda: self.reread_clicked.emit(rows))
        menu.addAction("Remove from the library", lambda: self.remove_clicked.emit(rows))
        menu.exec(self.table.viewport().mapToGlobal(pos))
