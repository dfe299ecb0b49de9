"""The library as a Qt table: a thin adapter over plain rows made from `DocInfo` and reading progress."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QSortFilterProxyModel, Qt
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionProgressBar

from infini_reader.app.core.ingest import Progress
from infini_reader.app.core.library import DocInfo, for_model

COLUMNS = ("Title", "Author", "Format", "Size", "Status")
SORT_ROLE = Qt.UserRole + 1
ROW_ROLE = Qt.UserRole + 2

# What each status means to a person; "other-model": read, but by a model other than the one in use.
STATUS_FILTERS = {"All": None, "Ready": {"ready"}, "Reading": {"reading", "queued", "parsing"},
                  "Stopped": {"cancelled"}, "Failed": {"failed"}, "Other model": {"other-model"}}


@dataclass
class Row:
    doc_id: int | None  # None: a file waiting in the queue, not in the library yet
    title: str
    author: str
    format: str
    path: str
    pages: int | None = None
    tokens: int = 0
    status: str = "queued"  # queued | parsing | reading | ready | cancelled | failed | other-model
    percent: int = 0
    error: str = ""
    tokens_per_s: float = 0.0
    eta_s: float | None = None
    chapters: int = 0
    seconds: float = 0.0  # reading time so far
    memory_bytes: int = 0
    warnings: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()  # other processes reading it now ("process 123 on host")

    @property
    def size(self) -> str:
        if self.pages:
            return f"{self.pages:,} pages"
        if self.tokens:
            return f"{self.tokens:,} tokens"
        return "–"

    @property
    def status_text(self) -> str:
        if self.readers and self.status not in ("reading", "parsing"):  # read by another process, not here
            return f"read elsewhere {self.percent}%" if self.status in ("cancelled", "queued") and self.percent \
                else "read elsewhere"
        return {
            "queued": "queued",
            "parsing": "opening…",
            "reading": f"reading {self.percent}%",
            "ready": "ready",
            "cancelled": f"stopped at {self.percent}%",
            "failed": f"failed: {self.error}" if self.error else "failed",
            "other-model": "read by another model",
        }.get(self.status, self.status)


def row_from_info(info: DocInfo) -> Row:
    status = for_model(info).status
    percent = 100 * info.segments_done // info.segments_total if info.segments_total else 0
    from .worker import plain_text

    return Row(info.id, info.title, info.author or "", info.format, info.path, info.pages, info.tokens, status,
               percent, plain_text(info.error) if info.error else "", chapters=len(info.chapters), seconds=info.seconds,
               memory_bytes=info.memory_bytes, warnings=tuple(info.warnings))


def pending_row(path: str) -> Row:
    p = Path(path)
    return Row(None, p.name, "", p.suffix.lstrip(".").lower(), str(p))


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_eta(seconds: float | None) -> str:
    return "" if seconds is None else f"{format_duration(seconds)} left"


class LibraryModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[Row] = []
        self._docs: list[Row] = []
        self._pending: list[Row] = []
        self._live: dict[int, Progress] = {}  # the reading in progress, newer than the database
        self._readers: dict[int, tuple[str, ...]] = {}  # documents other processes are reading now

    # ---- feeding ----

    def set_documents(self, infos: list[DocInfo], reading: int | None = None) -> None:
        """`reading`: the document being read now; any other one the library calls "reading" was
        interrupted (the application was closed or killed) and is shown as stopped."""
        self._docs = [row_from_info(i) for i in infos]
        for r in self._docs:
            if r.status == "reading" and r.doc_id != reading and r.doc_id not in self._live:
                r.status = "cancelled"
        self._rebuild()

    def set_pending(self, paths: list[str]) -> None:
        self._pending = [pending_row(p) for p in paths]
        self._rebuild()

    def set_readers(self, readers: dict[int, list[str]]) -> None:
        """Who else (another process, another machine) is reading which document now."""
        self._readers = {i: tuple(w) for i, w in readers.items() if w}
        for i, r in enumerate(self.rows):
            if r.doc_id is None:
                continue
            who = self._readers.get(r.doc_id, ())
            if who != r.readers:
                r.readers = who
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    def update_progress(self, ev: Progress) -> None:
        """A reading event: shown at once, without asking the database."""
        if ev.document_id is None:
            return
        if ev.phase in ("parsing", "reading"):
            self._live[ev.document_id] = ev
        else:
            self._live.pop(ev.document_id, None)
        for i, r in enumerate(self.rows):
            if r.doc_id == ev.document_id:
                self._apply(r, ev)
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))
                return
        self._rebuild()  # a new document: shown when the next list from the database arrives

    @staticmethod
    def _apply(r: Row, ev: Progress) -> None:
        r.status = ev.phase
        if ev.segments_total:
            r.percent = 100 * ev.segments_done // ev.segments_total
        if ev.tokens_total:
            r.tokens = ev.tokens_total
        r.tokens_per_s, r.eta_s = ev.tokens_per_s, ev.eta_s
        r.error = ev.message if ev.phase == "failed" else ""

    def _rebuild(self) -> None:
        self.beginResetModel()
        for r in self._docs:
            if r.doc_id in self._live:
                self._apply(r, self._live[r.doc_id])
            r.readers = self._readers.get(r.doc_id, ())
        self.rows = self._docs + self._pending
        self.endResetModel()

    def row_of(self, doc_id: int) -> Row | None:
        return next((r for r in self.rows if r.doc_id == doc_id), None)

    # ---- Qt ----

    def rowCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else len(self.rows)

    def columnCount(self, parent=None):
        return 0 if parent is not None and parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        r, col = self.rows[index.row()], index.column()
        if role == Qt.DisplayRole:
            return (r.title, r.author, r.format.upper(), r.size, r.status_text)[col]
        if role == SORT_ROLE:
            return (r.title.lower(), r.author.lower(), r.format, r.pages or r.tokens, r.status_text)[col]
        if role == ROW_ROLE:
            return r
        if role == Qt.ToolTipRole:
            tip = f"{r.title}\n{r.path}"
            if r.status == "failed" and r.error:
                tip += f"\n\nCould not be read: {r.error}"
            elif r.status == "other-model":
                tip += "\n\nRead by another model: read it again with the model in use to ask questions."
            elif r.status == "cancelled":
                tip += "\n\nStopped: Resume continues where the reading stopped."
            if r.readers:
                tip += "\n\nBeing read now by " + ", ".join(r.readers)
            return tip
        if role == Qt.ForegroundRole and col == 4 and r.status == "failed":
            from PySide6.QtGui import QColor

            return QColor(200, 40, 40)
        return None


class LibraryFilter(QSortFilterProxyModel):
    """Search by title or author, and show only one kind of status."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseInsensitive)
        self.statuses: set[str] | None = None
        self.text = ""

    def set_text(self, text: str) -> None:
        self.beginFilterChange()
        self.text = text.strip().lower()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_statuses(self, statuses: set[str] | None) -> None:
        self.beginFilterChange()
        self.statuses = statuses
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row, source_parent):
        r: Row = self.sourceModel().rows[source_row]
        if self.statuses is not None and r.status not in self.statuses:
            return False
        return not self.text or self.text in f"{r.title} {r.author} {r.format}".lower()


class StatusDelegate(QStyledItemDelegate):
    """A progress bar in the status cell while a document is being read."""

    def paint(self, painter, option, index):
        r: Row = index.data(ROW_ROLE)
        if r is None or r.status not in ("reading", "cancelled"):
            return super().paint(painter, option, index)
        if option.state & QStyle.State_Selected:
            painter.fillRect(option.rect, option.palette.highlight())
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(2, 3, -2, -3)
        bar.minimum, bar.maximum, bar.progress = 0, 100, r.percent
        bar.text, bar.textVisible = r.status_text, True
        bar.state = option.state | QStyle.State_Horizontal
        bar.palette = option.palette
        style = option.widget.style() if option.widget else QApplication.style()
        style.drawControl(QStyle.CE_ProgressBar, bar, painter, option.widget)
