"""The window with real widgets (offscreen), a tiny random model and real files dropped on it."""

from pathlib import Path

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.ui.main_window import MainWindow

from .conftest import make_epub

WAIT = 30000


def drop(widget, *files: Path) -> None:
    """A real drop: the drag enters (Qt delivers a drop only where the drag was accepted), then
    QDropEvent with the files' URLs."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(f)) for f in files])
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    enter = QDragEnterEvent(pos, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    event = QDropEvent(pos, Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(widget, event)
    assert event.isAccepted()


def open_window(qtbot, tmp_path, engine_):
    window = MainWindow(lambda choice: engine_, data_dir=tmp_path / "data")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.engine is not None and window.library is not None, timeout=WAIT)
    return window


def test_drop_an_epub_read_it_and_ask(qtbot, tmp_path, tiny_reader):
    book = make_epub(tmp_path / "keeper.epub")
    window = open_window(qtbot, tmp_path, tiny_reader)
    events = []
    window.queue.progress.connect(events.append)
    drop(window, book)
    qtbot.waitUntil(lambda: bool(events) and events[-1].phase == "ready", timeout=WAIT)
    assert [e.phase for e in events][:2] == ["parsing", "reading"]
    assert events[-1].fraction == 1.0
    qtbot.waitUntil(lambda: window.library_pane.current() is not None
                    and window.library_pane.current().status == "ready", timeout=WAIT)
    row = window.library_pane.current()
    assert row.title == "The Lighthouse Keeper" and row.author == "Ann Author" and row.format == "epub"
    assert window.chat.send.isEnabled()
