"""The Summary pane: parts appear as they are written with the time left; Stop keeps the finished
parts and says so; Summarize continues from there. Real widgets, a tiny model whose words are scripted."""

from PySide6.QtCore import Qt

from infini_reader.app.core import summaries

from .conftest import make_epub
from .test_main_window import WAIT, drop, open_window, rows, scripted_generation, wait_open, wait_ready

NOTE = "The keeper counted ships passing the rocks. The storm came in from the west. The keeper watched."


def test_a_summary_stopped_half_way_keeps_its_parts_and_continues(qtbot, tmp_path, tiny_reader, monkeypatch):
    book = make_epub(tmp_path / "long.epub", title="The Long Watch", chapters=1, paragraphs=60)
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, book)
    wait_ready(qtbot, window, "The Long Watch")
    wait_open(qtbot, window, "The Long Watch")
    pane = window.summary
    window.tabs.setCurrentWidget(pane)
    qtbot.waitUntil(lambda: pane.parts.count() == 2 and pane.make.isEnabled(), timeout=WAIT)
    pane.parts.setCurrentRow(1)
    # the time it will take, before it starts
    qtbot.waitUntil(lambda: "parts to write" in pane.state.text(), timeout=WAIT)
    total = int(pane.state.text().split()[0])
    assert total >= 3

    scripted_generation(monkeypatch, tiny_reader, 0.02, NOTE)
    qtbot.mouseClick(pane.make, Qt.LeftButton)
    assert pane.busy
    # the first part shows while the second is written, with the progress and the time left
    qtbot.waitUntil(lambda: "1 of" in pane.state.text() and "left" in pane.state.text(), timeout=WAIT)
    qtbot.waitUntil(lambda: "The keeper counted ships" in pane.text.toPlainText(), timeout=WAIT)
    qtbot.waitUntil(lambda: pane.state.text().count(f"2 of {total} parts done") == 1, timeout=WAIT)
    qtbot.keyClick(window, Qt.Key_Escape)  # Stop
    qtbot.waitUntil(lambda: not pane.busy, timeout=WAIT)
    doc_id = rows(window)["The Long Watch"].doc_id
    kept = len(summaries.stored_notes(window.library, doc_id, tiny_reader.fingerprint, 0))
    assert 2 <= kept < total
    assert pane.state.text() == f"Stopped: {kept} of {total} parts kept; Summarize continues."
    assert not pane.summary_text(0)

    written = []
    real = tiny_reader.generate
    monkeypatch.setattr(tiny_reader, "generate", lambda *a, **k: (written.append(1), real(*a, **k))[1])
    qtbot.mouseClick(pane.make, Qt.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=WAIT)
    assert pane.summary_text(0) and "Stopped" not in pane.state.text()
    assert len(written) <= total - kept + 2  # the kept parts were not written again (merges on top)
    assert "Summarise" not in pane.summary_text(0)
