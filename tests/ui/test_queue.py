"""The reading queue: kept across a restart (with a note saying so), skip, reorder."""

import threading

from PySide6.QtCore import Qt

from infini_reader.app.core.state import QUEUE_FILE, ReadingList
from infini_reader.app.ui.main_window import MainWindow

from .conftest import add_window, make_epub
from .test_main_window import WAIT, drop, open_window, rows, wait_ready


def test_a_queue_is_restored_after_a_restart(qtbot, tmp_path, tiny_reader):
    books = [make_epub(tmp_path / f"{n}.epub", title=t, chapters=1, paragraphs=3)
             for n, t in (("a", "Queued One"), ("b", "Queued Two"))]
    gate = threading.Event()  # the model is still loading: dropped files wait in the queue
    window = MainWindow(lambda choice: (gate.wait(30), tiny_reader)[1], data_dir=tmp_path / "data")
    add_window(qtbot, window)
    window.show()
    qtbot.waitUntil(lambda: window.library is not None, timeout=WAIT)
    drop(window, *books)
    assert window.state.queue.waiting == [str(b.resolve()) for b in books]
    saved = tmp_path / "data" / QUEUE_FILE
    assert ReadingList.saved(saved) == [str(b.resolve()) for b in books]  # written as they were added
    window.close()  # quit while the model is still loading: nothing has been read
    assert ReadingList.saved(saved) == [str(b.resolve()) for b in books]
    gate.set()  # the model ends loading after the window has closed: it reads nothing then
    qtbot.waitUntil(lambda: not window.tasks.busy, timeout=WAIT)
    assert ReadingList.saved(saved) == [str(b.resolve()) for b in books]

    again = MainWindow(lambda choice: tiny_reader, data_dir=tmp_path / "data")
    add_window(qtbot, again)
    said = []
    again.statusBar().messageChanged.connect(said.append)
    again.show()
    qtbot.waitUntil(lambda: any("2 files left to read last time are queued again" in m for m in said), timeout=WAIT)
    for t in ("Queued One", "Queued Two"):
        wait_ready(qtbot, again, t)
    qtbot.waitUntil(lambda: ReadingList.saved(saved) == [], timeout=WAIT)


def test_the_queue_is_reordered_and_a_book_skipped_from_the_window(qtbot, tmp_path, tiny_reader, monkeypatch):
    books = [make_epub(tmp_path / f"{n}.epub", title=t, chapters=2, paragraphs=40)
             for n, t in (("a", "First Book"), ("b", "Second Book"), ("c", "Third Book"))]
    window = open_window(qtbot, tmp_path, tiny_reader)
    real = tiny_reader.ingest

    def slow(*a, **k):  # a reading long enough to act on while it goes on
        import time
        time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(tiny_reader, "ingest", slow)
    drop(window, *books)
    qtbot.waitUntil(lambda: window.queue.current_doc is not None, timeout=WAIT)
    b, c = (str(x.resolve()) for x in books[1:])
    assert window.state.queue.waiting == [b, c]
    window.library_pane.select_path = None
    window.state.reorder(c, 0)  # the third is read next
    assert window.state.queue.waiting == [c, b]
    window.queue.skip()  # the first stops (kept, resumable); the queue goes on, not paused
    qtbot.waitUntil(lambda: "Third Book" in rows(window) and rows(window)["Third Book"].status != "queued",
                    timeout=WAIT)
    assert not window.queue.paused and window.queue.stopped is None
    monkeypatch.setattr(tiny_reader, "ingest", real)
    for t in ("Second Book", "Third Book"):
        wait_ready(qtbot, window, t)
    assert rows(window)["First Book"].status != "ready"


def test_bad_files_are_refused_on_drop_in_plain_words(qtbot, tmp_path, tiny_reader):
    import pymupdf

    window = open_window(qtbot, tmp_path, tiny_reader)
    good = make_epub(tmp_path / "good.epub", title="Good Book", chapters=1, paragraphs=3)
    bad = tmp_path / "bad.pdf"
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Some text on a page.")
    data = doc.tobytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated
    empty = tmp_path / "empty.epub"
    empty.write_bytes(b"")
    scanned = tmp_path / "scanned.pdf"
    doc = pymupdf.open()
    doc.new_page()
    doc.save(scanned)
    locked = tmp_path / "locked.pdf"
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Secret text.")
    doc.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="pw")
    drop(window, bad, empty, scanned, locked, good)
    assert "bad.pdf: this PDF is damaged and cannot be opened" in window.refused
    assert "empty.epub: this file is empty" in window.refused
    assert any(r.startswith("scanned.pdf: this PDF has no text layer") for r in window.refused)
    assert "locked.pdf: this PDF is protected by a password" in window.refused
    assert "bad.pdf" in window.last_error and "Error" not in window.last_error
    assert window.queue.waiting() == [] or window.queue.waiting() == [str(good.resolve())]
    wait_ready(qtbot, window, "Good Book")
    assert set(rows(window)) == {"Good Book"}  # the bad ones never entered the library
