"""The reading pane: a cited passage shown, highlighted, in its chapter; any chapter can be read;
Ctrl+F finds passages in the document through the library's full-text index."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QTextBrowser,
    QTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from infini_reader.app.core.answers import Citation
from infini_reader.app.core.document import Document
from infini_reader.app.core.state import Found, find_in_document

from .worker import Tasks

CONTEXT_CHARS = 6000  # shown around a passage that lies outside every chapter


@dataclass
class Mark:
    """A passage to show highlighted: a citation's, or one found by Ctrl+F."""

    start: int
    end: int
    section_idx: int | None
    label: str  # "Source [2]", "Found “cat”"
    page: int | None = None
    words: tuple[tuple[int, int], ...] = ()  # words within it to mark more strongly (found words)


def _mark_of(c: Citation) -> Mark:
    return Mark(c.char_start, c.char_end, c.section_idx, f"Source [{c.rank + 1}]", c.page)


class FindBar(QWidget):
    """Find in the document: the words, then the passages found, each with its chapter and page."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("Find in this document  (Enter)")
        self.edit.setClearButtonEnabled(True)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Close the search")
        close.clicked.connect(self.hide)
        self.count = QLabel()
        self.count.setTextFormat(Qt.PlainText)
        self.results = QListWidget()
        self.results.setWordWrap(True)
        self.results.setMaximumHeight(180)
        self.results.hide()
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(close)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(row)
        box.addWidget(self.count)
        box.addWidget(self.results)
        self.count.hide()


def _qt_pos(text: str, i: int) -> int:
    """Qt counts UTF-16 code units; Python counts code points (they differ beyond the BMP)."""
    return len(text[:i].encode("utf-16-le")) // 2


class ReadingPane(QWidget):
    message = Signal(str)
    opened = Signal()  # something is to be shown: the window makes room for the pane

    def __init__(self, tasks: Tasks, parent=None):
        super().__init__(parent)
        self._tasks = tasks
        self.library = None
        self.doc_id: int | None = None
        self.doc: Document | None = None
        self.span: tuple[int, int] = (0, 0)  # the characters of the document on show
        self.passage: tuple[int, int] | None = None  # the highlighted passage, in document offsets
        self._want: tuple[int, Mark | None, int | None] | None = None
        self.found: list[Found] = []
        self._find_gen = 0

        heading = QLabel("<b>Reading</b>")
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Close the reading pane")
        close.clicked.connect(self.hide)
        top = QHBoxLayout()
        top.addWidget(heading, 1)
        top.addWidget(close)
        self.chapters = QComboBox()
        self.chapters.setToolTip("Read a chapter")
        self.where = QLabel()
        self.where.setTextFormat(Qt.PlainText)
        self.where.setWordWrap(True)
        self.text = QTextBrowser()
        self.text.setOpenLinks(False)
        self.text.setPlaceholderText("Click a source under an answer to read the passage here, in its chapter.")
        self.find = FindBar()
        self.find.hide()
        self.find.edit.returnPressed.connect(self.run_find)
        self.find.results.currentRowChanged.connect(self._found_chosen)
        self.find.results.itemActivated.connect(lambda item: self._found_chosen(self.find.results.row(item)))
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(top)
        box.addWidget(self.find)
        box.addWidget(self.chapters)
        box.addWidget(self.where)
        box.addWidget(self.text, 1)
        self.chapters.activated.connect(lambda i: self.doc_id is not None and self.show_chapter(self.doc_id, i))
        self.chapters.hide()

    def bind(self, library) -> None:
        self.library, self.doc_id, self.doc = library, None, None
        self.clear()

    def clear(self) -> None:
        self.doc_id, self.doc, self.passage, self._want = None, None, None, None
        self.found = []
        self.find.results.clear()
        self.find.results.hide()
        self.find.count.hide()
        self.find.hide()
        self.chapters.clear()
        self.chapters.hide()
        self.where.clear()
        self.text.clear()

    # ---- what to show ----

    def show_citation(self, doc_id: int, c: Citation) -> None:
        self._open(doc_id, _mark_of(c), None)

    def show_chapter(self, doc_id: int, section_idx: int) -> None:
        self._open(doc_id, None, section_idx)

    def show_passage(self, doc_id: int, mark: Mark) -> None:
        self._open(doc_id, mark, None)

    # ---- find in the document ----

    def start_find(self, doc_id: int | None = None) -> bool:
        """Open the find bar on the document on show (or `doc_id`, opened at its start). False when
        there is no document to search."""
        doc_id = doc_id if doc_id is not None else self.doc_id
        if doc_id is None or self.library is None:
            return False
        if doc_id != self.doc_id:
            self.show_chapter(doc_id, 0)
        self.opened.emit()
        self.find.show()
        self.find.edit.setFocus()
        self.find.edit.selectAll()
        return True

    def run_find(self) -> None:
        """The passages holding the words, from the library's full-text index (in a worker)."""
        query, doc_id, library = self.find.edit.text().strip(), self._target(), self.library
        if not query or doc_id is None or library is None:
            return
        self._find_gen += 1
        gen = self._find_gen
        self.find.count.setText("Searching…")
        self.find.count.show()
        doc = self.doc if self.doc_id == doc_id else None

        def done(found: list[Found]) -> None:
            if gen != self._find_gen:
                return  # a newer search was asked for
            self.found = found
            lst = self.find.results
            lst.blockSignals(True)
            lst.clear()
            for f in found:
                item = QListWidgetItem(f"{f.where()}\n{f.snippet}")
                item.setToolTip(f.where())
                lst.addItem(item)
            lst.blockSignals(False)
            lst.setVisible(bool(found))
            n = len(found)
            self.find.count.setText(f"{n} passage{'s' if n != 1 else ''} found" if n else
                                    f"Nothing found for “{query}”")

        self._tasks.call(lambda: find_in_document(library, doc_id, query, doc=doc), done,
                         lambda m: self.find.count.setText(f"The search failed: {m}"))

    def _found_chosen(self, i: int) -> None:
        doc_id = self._target()
        if not (0 <= i < len(self.found)) or doc_id is None:
            return
        f = self.found[i]
        self.show_passage(doc_id, Mark(f.start, f.end, f.section_idx, f"Found “{self.find.edit.text().strip()}”",
                                       f.page, tuple(f.words)))

    def _target(self) -> int | None:
        """The document on show, or the one being opened."""
        return self._want[0] if self._want is not None else self.doc_id

    def _open(self, doc_id: int, c: Mark | None, section_idx: int | None) -> None:
        self.opened.emit()
        if self.doc is not None and self.doc_id == doc_id:
            self._show(c, section_idx)
            return
        self._want = (doc_id, c, section_idx)
        library = self.library
        self.where.setText("Opening…")

        def loaded(doc: Document) -> None:
            if self._want is None or self._want[0] != doc_id:
                return  # another passage was asked for meanwhile
            if doc_id != self.doc_id:  # what was found was found in another document
                self.found = []
                self.find.results.clear()
                self.find.results.hide()
                self.find.count.hide()
            self.doc_id, self.doc = doc_id, doc
            self.chapters.clear()
            self.chapters.addItems([f"{i + 1}. {s.title}" for i, s in enumerate(doc.sections)])
            self.chapters.setVisible(bool(doc.sections))
            self._show(c, section_idx)

        self._tasks.call(lambda: library.document(doc_id), loaded,
                         lambda m: (self.where.setText(""), self.message.emit(f"The document could not be opened: {m}")))

    def _show(self, c: Mark | None, section_idx: int | None) -> None:
        doc = self.doc
        if c is not None:
            section_idx = c.section_idx
            if section_idx is None:  # e.g. a preface: its surroundings
                sec = doc.section_at(c.start)
                section_idx = doc.sections.index(sec) if sec is not None else None
        if section_idx is not None and 0 <= section_idx < len(doc.sections):
            sec = doc.sections[section_idx]
            a, b, name = sec.start, sec.end, sec.title
            self.chapters.setCurrentIndex(section_idx)
        else:
            mid = c.start if c is not None else 0
            a, b = max(0, mid - CONTEXT_CHARS // 2), min(len(doc.text), mid + CONTEXT_CHARS // 2)
            name = "Outside the chapters"
            self.chapters.setCurrentIndex(-1)
        if c is not None:  # a passage is always shown whole, even where it crosses a chapter's end
            a, b = min(a, c.start), max(b, c.end)
        self.span = (a, b)
        self.text.setPlainText(doc.text[a:b])
        self.text.setExtraSelections([])
        if c is not None:
            where = [c.label, name if section_idx is None else "", f"page {c.page}" if c.page else ""]
        else:
            sec = doc.sections[section_idx] if section_idx is not None else None
            pages = (f"pages {sec.page_start}–{sec.page_end}" if sec and sec.page_start and sec.page_end
                     and sec.page_end != sec.page_start else f"page {sec.page_start}" if sec and sec.page_start else "")
            where = [pages]
        self.where.setText(" · ".join(x for x in where if x))
        self.where.setVisible(bool(self.where.text()))
        if c is None:
            self.passage = None
            self.text.moveCursor(QTextCursor.Start)
            return
        self.passage = (c.start, c.end)
        shown = doc.text[a:b]
        p0 = _qt_pos(shown, c.start - a)

        def mark(x: int, y: int, color: QColor) -> QTextEdit.ExtraSelection:
            cur = QTextCursor(self.text.document())
            cur.setPosition(_qt_pos(shown, x - a))
            cur.setPosition(_qt_pos(shown, y - a), QTextCursor.KeepAnchor)
            sel = QTextEdit.ExtraSelection()
            sel.cursor = cur
            fmt = QTextCharFormat()
            fmt.setBackground(color)
            sel.format = fmt
            return sel

        self.text.setExtraSelections([mark(c.start, c.end, QColor(255, 214, 10, 110))]
                                     + [mark(x, y, QColor(255, 150, 0, 190)) for x, y in c.words if a <= x < y <= b])
        # Scroll so that the passage starts near the top, with a few lines before it.
        self.text.moveCursor(QTextCursor.End)
        start = QTextCursor(self.text.document())
        start.setPosition(p0)
        self.text.setTextCursor(start)
        rect = self.text.cursorRect()
        bar = self.text.verticalScrollBar()
        bar.setValue(bar.value() + rect.top() - self.text.viewport().height() // 6)

    def highlighted_text(self) -> str:
        """The passage on show (tests, and copying)."""
        if self.doc is None or self.passage is None:
            return ""
        return self.doc.text[self.passage[0]:self.passage[1]]
