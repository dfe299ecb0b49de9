"""The reading pane: a cited passage shown, highlighted, in its chapter; any chapter can be read."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QTextBrowser,
    QTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from infini_reader.app.core.answers import Citation
from infini_reader.app.core.document import Document

from .worker import Tasks

CONTEXT_CHARS = 6000  # shown around a passage that lies outside every chapter


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
        self._want: tuple[int, Citation | None, int | None] | None = None

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
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(top)
        box.addWidget(self.chapters)
        box.addWidget(self.where)
        box.addWidget(self.text, 1)
        self.chapters.activated.connect(lambda i: self.doc_id is not None and self.show_chapter(self.doc_id, i))
        self.chapters.hide()

    def bind(self, library) -> None:
        self.library, self.doc_id, self.doc = library, None, None
        self.clear()

    def clear(self) -> None:
        self.doc_id, self.doc, self.passage = None, None, None
        self.chapters.clear()
        self.chapters.hide()
        self.where.clear()
        self.text.clear()

    # ---- what to show ----

    def show_citation(self, doc_id: int, c: Citation) -> None:
        self._open(doc_id, c, None)

    def show_chapter(self, doc_id: int, section_idx: int) -> None:
        self._open(doc_id, None, section_idx)

    def _open(self, doc_id: int, c: Citation | None, section_idx: int | None) -> None:
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
            self.doc_id, self.doc = doc_id, doc
            self.chapters.clear()
            self.chapters.addItems([f"{i + 1}. {s.title}" for i, s in enumerate(doc.sections)])
            self.chapters.setVisible(bool(doc.sections))
            self._show(c, section_idx)

        self._tasks.call(lambda: library.document(doc_id), loaded,
                         lambda m: (self.where.setText(""), self.message.emit(f"The document could not be opened: {m}")))

    def _show(self, c: Citation | None, section_idx: int | None) -> None:
        doc = self.doc
        if c is not None:
            section_idx = c.section_idx
            if section_idx is None:  # e.g. a preface: its surroundings
                sec = doc.section_at(c.char_start)
                section_idx = doc.sections.index(sec) if sec is not None else None
        if section_idx is not None and 0 <= section_idx < len(doc.sections):
            sec = doc.sections[section_idx]
            a, b, name = sec.start, sec.end, sec.title
            self.chapters.setCurrentIndex(section_idx)
        else:
            mid = c.char_start if c is not None else 0
            a, b = max(0, mid - CONTEXT_CHARS // 2), min(len(doc.text), mid + CONTEXT_CHARS // 2)
            name = "Outside the chapters"
            self.chapters.setCurrentIndex(-1)
        if c is not None:  # a passage is always shown whole, even where it crosses a chapter's end
            a, b = min(a, c.char_start), max(b, c.char_end)
        self.span = (a, b)
        self.text.setPlainText(doc.text[a:b])
        self.text.setExtraSelections([])
        if c is not None:
            where = [f"Source [{c.rank + 1}]", name if section_idx is None else "", f"page {c.page}" if c.page else ""]
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
        self.passage = (c.char_start, c.char_end)
        shown = doc.text[a:b]
        p0, p1 = _qt_pos(shown, c.char_start - a), _qt_pos(shown, c.char_end - a)
        cur = QTextCursor(self.text.document())
        cur.setPosition(p0)
        cur.setPosition(p1, QTextCursor.KeepAnchor)
        sel = QTextEdit.ExtraSelection()
        sel.cursor = cur
        fmt = QTextCharFormat()
        fmt.setBackground(QColor(255, 214, 10, 110))
        sel.format = fmt
        self.text.setExtraSelections([sel])
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
