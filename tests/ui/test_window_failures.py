"""Failures in the window (issue 35): a reading of more than an hour is asked about first (Read /
Cancel), and database or file-system errors (a busy library, a full disk, a read-only folder) are one
plain message, never a traceback or SQL, with nothing half-written. Real widgets, a real SQLite
library, a real full or read-only disk (a tmpfs, where it can be mounted), a tiny random model."""

import sqlite3
import subprocess
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox

from infini_reader.app.core import estimate
from infini_reader.app.ui.worker import plain_text

from infini_reader.app.ui.main_window import MainWindow

from tests.conftest import fill

from .conftest import add_window, make_epub
from .test_main_window import WAIT, drop, open_window, rows, wait_ready


def plain(text: str) -> bool:
    return bool(text) and "Traceback" not in text and "[SQL" not in text and "sqlite3." not in text \
        and "OperationalError" not in text and "\n" not in text.strip()


def integrity_ok(data: Path) -> bool:
    with sqlite3.connect(data / "library.sqlite3") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def stored(data: Path) -> list[tuple]:
    with sqlite3.connect(data / "library.sqlite3") as db:
        return db.execute("SELECT d.title, s.status, s.segments_done FROM documents d "
                          "LEFT JOIN memory_snapshots s ON s.document_id = d.id ORDER BY d.id").fetchall()


def test_a_reading_of_more_than_an_hour_is_asked_about(qtbot, tmp_path, tiny_reader, monkeypatch):
    # no reading measured yet with this model: the assumed rate, made so slow that any book takes hours
    monkeypatch.setitem(estimate.ASSUMED_RATE, "cpu", 0.01)
    window = open_window(qtbot, tmp_path, tiny_reader)
    asked = []
    window.queue.long_reading.connect(asked.append)
    drop(window, make_epub(tmp_path / "keeper.epub"))
    qtbot.waitUntil(lambda: window.long_reading_box is not None and window.long_reading_box.isVisible(), timeout=WAIT)
    box = window.long_reading_box
    text = box.text()
    assert "“The Lighthouse Keeper”: reading" in text and " tokens will take about " in text
    assert ("hours" in text or "days" in text) and "assumed" in text
    assert [b.text().replace("&", "") for b in box.buttons()] == ["Read", "Cancel"] or \
        sorted(b.text().replace("&", "") for b in box.buttons()) == ["Cancel", "Read"]
    assert window.queue.running  # the reading waits for the answer; the window does not
    box.button(QMessageBox.Cancel).click()
    qtbot.waitUntil(lambda: not window.queue.running and "The Lighthouse Keeper" in rows(window)
                    and rows(window)["The Lighthouse Keeper"].status == "cancelled", timeout=WAIT)
    assert stored(tmp_path / "data") == [("The Lighthouse Keeper", "cancelled", 0)]  # not started, kept
    assert "was not read" in window.statusBar().currentMessage()

    # the next file is asked about too; Read reads it
    drop(window, make_epub(tmp_path / "harbour.epub", title="The Harbour"))
    qtbot.waitUntil(lambda: len(asked) == 2 and window.long_reading_box.isVisible(), timeout=WAIT)
    read = next(b for b in window.long_reading_box.buttons() if b.text().replace("&", "") == "Read")
    read.click()
    wait_ready(qtbot, window, "The Harbour")
    # Resume on the declined book is the user asking for it: read without a second question
    window.resume([rows(window)["The Lighthouse Keeper"]])
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    assert len(asked) == 2


def test_a_busy_library_is_one_plain_message_and_nothing_is_lost(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    holder = sqlite3.connect(tmp_path / "data" / "library.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, past the busy timeout
    try:
        window.remove([rows(window)["The Lighthouse Keeper"]])
        qtbot.waitUntil(lambda: window.last_error != "", timeout=WAIT)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "could not be removed" in window.last_error and "the library is busy" in window.last_error
    assert plain(window.last_error), window.last_error
    assert window._boxes and window._boxes[-1].isVisible()  # a message in the window
    assert stored(tmp_path / "data") == [("The Lighthouse Keeper", "ready", 1)] or \
        stored(tmp_path / "data")[0][:2] == ("The Lighthouse Keeper", "ready")
    assert integrity_ok(tmp_path / "data")


def test_raw_database_messages_become_plain_lines():
    raw = ("the model failed while reading: (sqlite3.OperationalError) database or disk is full\n"
           "[SQL: UPDATE memory_snapshots SET memory=? WHERE id = ?]\n(Background on this error at: https://sqlalche.me)")
    assert plain_text(raw).startswith("the disk is full") and "try again" in plain_text(raw)
    assert "read-only" in plain_text("(sqlite3.OperationalError) attempt to write a readonly database [SQL: INSERT]")
    assert "being read by another process" in plain_text(
        "(sqlite3.IntegrityError) UNIQUE constraint failed: memory_snapshots.document_id [SQL: INSERT …]")
    odd = plain_text("(sqlite3.OperationalError) something new [SQL: SELECT 1]")
    assert odd == "(sqlite3.OperationalError) something new"  # at least never the statement
    assert plain_text("bad.pdf: not a PDF") == "bad.pdf: not a PDF"




def failed_message(window, title_start: str) -> str:
    row = next((r for t, r in rows(window).items() if t.startswith(title_start)), None)
    return row.error if row is not None and row.status == "failed" else ""


def test_a_full_disk_is_one_plain_message_and_leaves_the_library_intact(qtbot, small_disk, tmp_path, tiny_reader):
    data = small_disk / "data"
    window = open_window(qtbot, small_disk, tiny_reader)
    drop(window, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    filler = fill(small_disk)
    drop(window, make_epub(tmp_path / "harbour.epub", title="The Harbour", chapters=12, paragraphs=40))
    said = []
    window.statusBar().messageChanged.connect(lambda m: m and said.append(m))
    qtbot.waitUntil(lambda: not window.queue.running and window.queue.waiting() == []
                    and any("disk is full" in m for m in said + [window.last_error]), timeout=WAIT)
    shown = [m for m in said + [window.last_error] if "disk is full" in m]
    assert all(plain(m) for m in shown), shown
    assert "Traceback" not in "".join(said)
    filler.unlink()
    assert integrity_ok(data)
    assert stored(data)[0] == ("The Lighthouse Keeper", "ready", stored(data)[0][2])
    assert all(s[1] != "ready" for s in stored(data)[1:])  # the second: not there, or not read
    # the space back, the second book is read
    window.open_files([str(tmp_path / "harbour.epub")])
    wait_ready(qtbot, window, "The Harbour")


def ro(message: str) -> bool:
    return "read-only" in message or "not writable" in message


def test_a_read_only_library_is_one_plain_message(qtbot, small_disk, tmp_path, tiny_reader):
    first = open_window(qtbot, small_disk, tiny_reader)
    drop(first, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    library = first.library
    first.close()
    qtbot.waitUntil(lambda: not first.tasks.busy, timeout=WAIT)
    library.Session.kw["bind"].dispose()  # the library's file closed: the disk can be made read-only
    del library
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode == 0
    window = MainWindow(lambda choice: tiny_reader, data_dir=small_disk / "data")
    add_window(qtbot, window)
    said = []
    window.statusBar().messageChanged.connect(lambda m: m and said.append(m))
    window.show()
    qtbot.waitUntil(lambda: window.engine is not None, timeout=WAIT)
    if window.library is not None:  # opened (reading is allowed): adding a book is what fails
        drop(window, make_epub(tmp_path / "harbour.epub", title="The Harbour"))
    qtbot.waitUntil(lambda: not window.queue.running and window.queue.waiting() == []
                    and any(ro(m) for m in said + [window.last_error]), timeout=WAIT)
    shown = [m for m in said + [window.last_error] if ro(m)]
    assert all(plain(m) for m in shown), shown
    assert window.state.model.error == ""  # the model loads all the same
    if window.library is not None:
        window.refresh()
        qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window), timeout=WAIT)
        assert rows(window)["The Lighthouse Keeper"].status == "ready"  # what was there still is
