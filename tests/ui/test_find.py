"""Find in the document: Ctrl+F in the reading pane, passages from the library's full-text index
listed with chapter and page, the one chosen shown highlighted. Real widgets, a real PDF (pages and
an outline), a tiny random model."""

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from .test_main_window import WAIT, drop, open_window, rows, wait_ready


def make_pdf(path: Path) -> Path:
    """Three chapters on five pages, with an outline; the cat appears on page 4 only."""
    import pymupdf

    pages = [
        ("Chapter One: The Rocks", "The keeper climbed the tower every evening to light the great lamp."),
        ("", "Ships passed the rocks in the night and the keeper counted them in his book."),
        ("Chapter Two: The Storm", "A storm came in from the west and the waves broke over the rocks."),
        ("", "The keeper's cat was called Marmalade and slept on the lamp room stairs."),
        ("Chapter Three: Morning", "In the morning the sea was calm and the gulls came back to the harbour."),
    ]
    doc = pymupdf.open()
    toc = []
    for i, (heading, body) in enumerate(pages, start=1):
        page = doc.new_page()
        y = 72
        if heading:
            page.insert_text((72, y), heading, fontsize=16)
            toc.append([1, heading, i])
            y += 36
        for k in range(12):  # a page of prose: the sentence, and others around it
            line = body if k == 5 else f"Line {k} of page {i} tells of the sea, the wind and the long watch."
            page.insert_text((72, y), line, fontsize=10)
            y += 24
    doc.set_toc(toc)
    doc.save(str(path))
    return path


def test_ctrl_f_in_the_reading_pane_finds_passages_with_chapter_and_page(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, make_pdf(tmp_path / "keeper.pdf"))
    qtbot.waitUntil(lambda: rows(window) and all(r.status == "ready" for r in rows(window).values())
                    and not window.queue.running, timeout=WAIT)
    (row,) = rows(window).values()
    window.library_pane.select(row.doc_id)
    window.reading.show_chapter(row.doc_id, 0)  # the first chapter, in the reading pane
    qtbot.waitUntil(lambda: window.reading.doc is not None, timeout=WAIT)
    assert window.reading.isVisible() and not window.reading.find.isVisible()

    window.reading.text.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is window.reading.text)
    qtbot.keyClick(window.reading.text, Qt.Key_F, Qt.ControlModifier)
    assert window.reading.find.isVisible() and window.reading.find.edit.hasFocus()
    assert not window.library_pane.search.hasFocus()  # Ctrl+F here is not the library's search

    qtbot.keyClicks(window.reading.find.edit, "Marmalade")
    qtbot.keyClick(window.reading.find.edit, Qt.Key_Return)
    lst = window.reading.find.results
    qtbot.waitUntil(lambda: lst.count() > 0, timeout=WAIT)
    first = lst.item(0).text()
    assert first.startswith("The Storm · p. 4"), first
    assert "Marmalade" in first
    assert window.reading.find.count.text() == f"{lst.count()} passage{'s' if lst.count() > 1 else ''} found"

    # choosing a result shows its passage, highlighted, in its chapter, with the word marked
    rect = lst.visualItemRect(lst.item(0))
    qtbot.mouseClick(lst.viewport(), Qt.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: "Marmalade" in window.reading.highlighted_text(), timeout=WAIT)
    assert window.reading.chapters.currentText().endswith("The Storm")
    assert window.reading.where.text() == "Found “Marmalade” · page 4"
    sels = window.reading.text.extraSelections()
    assert sels[0].cursor.selectedText().replace("\u2029", "\n") in window.reading.highlighted_text()
    assert any(s.cursor.selectedText() == "Marmalade" for s in sels[1:])
    shown = window.reading.text.toPlainText()
    assert "Marmalade" in shown and "A storm came in from the west" in shown

    # nothing found: said so, no stale results
    window.reading.find.edit.setText("zeppelin")
    qtbot.keyClick(window.reading.find.edit, Qt.Key_Return)
    qtbot.waitUntil(lambda: "Nothing found" in window.reading.find.count.text(), timeout=WAIT)
    assert lst.count() == 0 and not lst.isVisible()

    # outside the reading pane, Ctrl+F is still the library's search
    window.chat.question.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is window.chat.question)
    qtbot.keyClick(window.chat.question, Qt.Key_F, Qt.ControlModifier)
    assert window.library_pane.search.hasFocus()


def test_find_in_the_document_from_the_menu_opens_the_reading_pane(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, make_pdf(tmp_path / "keeper.pdf"))
    qtbot.waitUntil(lambda: rows(window) and all(r.status == "ready" for r in rows(window).values())
                    and not window.queue.running, timeout=WAIT)
    (row,) = rows(window).values()
    window.library_pane.select(row.doc_id)
    qtbot.waitUntil(lambda: window.state.current == row.doc_id, timeout=WAIT)
    assert not window.reading.isVisible()
    window.find_in_document()
    assert window.reading.isVisible() and window.reading.find.isVisible()
    window.reading.find.edit.setText("gulls harbour")
    qtbot.keyClick(window.reading.find.edit, Qt.Key_Return)
    qtbot.waitUntil(lambda: window.reading.find.results.count() > 0, timeout=WAIT)
    assert window.reading.find.results.item(0).text().startswith("Morning · p. 5")
