"""A library by database URL (Settings → Library database) and who else is reading a book (issue 33).
Real widgets, real SQLite files, a real PostgreSQL server (started by the test session, skipped where
none can be), a real second process holding a book's reading lock, a tiny random model."""

import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

from PySide6.QtWidgets import QDialog

from infini_reader.app.core.library import Library, file_hash
from infini_reader.app.ui.settings import Settings
from infini_reader.app.ui.settings_dialog import SettingsDialog

from ..app.conftest import postgres_server, postgres_url  # noqa: F401 (fixtures)
from .conftest import make_epub
from .test_main_window import WAIT, drop, open_window, rows, wait_ready

UNREACHABLE = "postgresql+psycopg://reader:secret@127.0.0.1:1/library"


def test_settings_check_a_database_url_before_accepting_it(qtbot, tmp_path):
    dialog = SettingsDialog(Settings(), "tiny", False, str(tmp_path))
    qtbot.addWidget(dialog)
    dialog.show()
    for bad, said in [("not a url", "is not a database URL"), ("mysql://u@h/db", "not supported"),
                      ("postgresql+pg8000://u@h/db", "is not installed"),
                      (f"sqlite:///{tmp_path}/missing/lib.sqlite3", "o folder")]:
        dialog.database.setText(bad)
        dialog.accept()
        assert dialog.isVisible() and dialog.result() != QDialog.Accepted  # stays open
        assert dialog.database_error.isVisible() and said in dialog.database_error.text()
        assert "\n" not in dialog.database_error.text() and "Traceback" not in dialog.database_error.text()
    dialog.database.setText(UNREACHABLE)  # well formed: whether it answers is for the window to find out
    dialog.accept()
    assert dialog.result() == QDialog.Accepted and dialog.result_settings().library_url == UNREACHABLE


def test_a_bad_or_unreachable_database_keeps_the_library_open(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader, settings=Settings())
    window._data_dir = None  # as started without --data-dir: the settings choose the library
    window.settings.library_dir = str(tmp_path / "data")
    drop(window, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    library = window.library
    for url, said in [(UNREACHABLE, "Connection refused"), ("postgres ql://nope", "is not a database URL")]:
        window.last_error = ""
        window.apply_settings(replace(window.settings, library_url=url))
        qtbot.waitUntil(lambda: window.last_error != "", timeout=WAIT)
        error = window.last_error
        assert error.startswith("The library at ") and "could not be opened" in error and said in error, error
        assert "secret" not in error and "\n" not in error and "[SQL" not in error  # one plain line, no password
        assert "stays open" in error
        assert window.library is library and "The Lighthouse Keeper" in rows(window)  # the current one stays
        assert window.settings.library_url == ""  # and the settings keep it
        assert Settings.load().library_url == ""


def test_open_a_library_by_url_sqlite_and_postgresql(qtbot, tmp_path, tiny_reader, postgres_url):  # noqa: F811
    window = open_window(qtbot, tmp_path, tiny_reader, settings=Settings())
    window._data_dir = None
    drop(window, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, window, "The Lighthouse Keeper")

    # another SQLite library, by URL, holding another book
    other = tmp_path / "elsewhere" / "shared.sqlite3"
    other.parent.mkdir()
    Library(f"sqlite:///{other}")  # made
    window.apply_settings(replace(window.settings, library_url=f"sqlite:///{other}"))
    qtbot.waitUntil(lambda: window.library is not None and window.library.url.endswith("shared.sqlite3"), timeout=WAIT)
    qtbot.waitUntil(lambda: window.library_pane.model.rows == [] or "The Lighthouse Keeper" not in rows(window),
                    timeout=WAIT)
    assert Settings.load().library_url == f"sqlite:///{other}"

    # a PostgreSQL library: a book read into it from the window is there for any other process
    window.apply_settings(replace(window.settings, library_url=postgres_url))
    qtbot.waitUntil(lambda: window.library is not None and window.library.dialect == "postgresql", timeout=WAIT)
    drop(window, make_epub(tmp_path / "harbour.epub", title="The Harbour"))
    wait_ready(qtbot, window, "The Harbour")
    assert [i.title for i in Library(postgres_url).infos()] == ["The Harbour"]
    assert "The Lighthouse Keeper" not in rows(window)


def hold_reading_lock(library_url: str, key: str) -> subprocess.Popen:
    """Another process reading the book: it holds the book's lock as `infini ingest` does."""
    code = textwrap.dedent(f"""
        import time
        from infini_reader.app.core.library import Library
        lib = Library({library_url!r})
        with lib.exclusive({key!r}) as mine:
            print("held" if mine else "refused", flush=True)
            time.sleep(120)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_library_shows_who_else_is_reading_a_book(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader)
    window._readers_timer.setInterval(300)
    book = make_epub(tmp_path / "keeper.epub")
    drop(window, book)
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    assert rows(window)["The Lighthouse Keeper"].readers == ()  # the window's own reading is not "else"

    other = hold_reading_lock(window.library.url, file_hash(book))
    try:
        who = f"process {other.pid} on {socket.gethostname()}"
        qtbot.waitUntil(lambda: rows(window)["The Lighthouse Keeper"].readers == (who,), timeout=WAIT)
        row = rows(window)["The Lighthouse Keeper"]
        assert row.status_text == "read elsewhere"
        window.library_pane.select(row.doc_id)
        qtbot.waitUntil(lambda: f"Being read now by {who}" in window.library_pane.details.text(), timeout=WAIT)
        index = window.library_pane.model.index(window.library_pane.model.rows.index(row), 0)
        assert f"Being read now by {who}" in window.library_pane.model.data(index, 3)  # the tooltip
        # the same book added meanwhile: said in one line, nothing stored twice
        said = []
        window.statusBar().messageChanged.connect(lambda m: m and said.append(m))
        window.open_files([str(book)])
        qtbot.waitUntil(lambda: any("being read by another process" in m for m in said), timeout=WAIT)
        assert len(Library(window.library.url).infos()) == 1
    finally:
        other.kill()
        other.wait()
    qtbot.waitUntil(lambda: rows(window)["The Lighthouse Keeper"].readers == (), timeout=WAIT)
    assert rows(window)["The Lighthouse Keeper"].status_text == "ready"
    assert os.getpid() != other.pid
