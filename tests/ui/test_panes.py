"""Panes bound to their document (the state's, not the library's selection), and questions asked
while the model loads, answered once it is ready. Real widgets, a tiny random model."""

import threading

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from infini_reader.app.core.state import ModelState
from infini_reader.app.ui.main_window import MainWindow

from .conftest import add_window, make_epub
from .test_main_window import ANSWER, WAIT, drop, open_window, rows, scripted_generation, wait_open, wait_ready


def type_question(qtbot, window, text: str) -> None:
    window.tabs.setCurrentWidget(window.chat)
    window.chat.question.setFocus()
    window.chat.question.setPlainText(text)
    window.chat.question.moveCursor(QTextCursor.End)
    qtbot.keyClick(window.chat.question, Qt.Key_Return)


def test_a_question_asked_while_the_model_loads_is_answered_once_it_is_ready(qtbot, tmp_path, tiny_reader,
                                                                              monkeypatch):
    first = open_window(qtbot, tmp_path, tiny_reader)
    drop(first, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    first.close()

    release = threading.Event()

    def slow(choice):  # the model takes its time to load (31 s in the report)
        release.wait(WAIT / 1000)
        return tiny_reader

    scripted_generation(monkeypatch, tiny_reader)
    window = MainWindow(slow, data_dir=tmp_path / "data")
    add_window(qtbot, window)
    window.show()
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window), timeout=WAIT)
    assert window.state.model.state == ModelState.LOADING and window.engine is None
    window.library_pane.select(rows(window)["The Lighthouse Keeper"].doc_id)
    qtbot.waitUntil(window.chat.send.isEnabled, timeout=WAIT)  # one can ask while the model loads

    type_question(qtbot, window, "Describe the keeper's cat.")
    assert window.chat.question.toPlainText() == ""
    assert [q.text for q in window.state.questions] == ["Describe the keeper's cat."]
    you, waiting = window.chat.turns
    assert you.content == "Describe the keeper's cat." and waiting.waiting
    shown = window.chat.transcript.toPlainText()
    assert "Describe the keeper's cat." in shown and "Waiting for the model" in shown
    assert window.chat.banner.isVisible() and "Waiting for the model" in window.chat.banner.text.text()
    assert window.model_label.text() == "Loading the model…"
    type_question(qtbot, window, "Describe who counted the ships.")  # a second one waits its turn
    assert len(window.state.questions) == 2

    release.set()
    qtbot.waitUntil(lambda: window.engine is not None, timeout=WAIT)
    qtbot.waitUntil(lambda: not window.chat.busy and not window.state.questions
                    and all(t.message_id is not None for t in window.chat.turns[1::2]), timeout=WAIT)
    turns = window.chat.turns
    assert [t.role for t in turns] == ["user", "assistant"] * 2
    assert turns[0].content == "Describe the keeper's cat." and turns[2].content == "Describe who counted the ships."
    assert all(t.content == ANSWER.strip() and not t.error and not t.waiting for t in turns[1::2])
    assert "Waiting for the model" not in window.chat.transcript.toPlainText()
    assert not window.chat.banner.isVisible() and window.chat.send.isEnabled()


def test_questions_waiting_for_a_model_that_fails_say_so(qtbot, tmp_path, tiny_reader):
    first = open_window(qtbot, tmp_path, tiny_reader)
    drop(first, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    first.close()

    release = threading.Event()

    def broken(choice):
        release.wait(WAIT / 1000)
        raise ValueError("model.gguf: not a GGUF file")

    window = MainWindow(broken, data_dir=tmp_path / "data")
    add_window(qtbot, window)
    window.show()
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window), timeout=WAIT)
    window.library_pane.select(rows(window)["The Lighthouse Keeper"].doc_id)
    qtbot.waitUntil(window.chat.send.isEnabled, timeout=WAIT)
    type_question(qtbot, window, "Describe who counted the ships.")
    release.set()
    qtbot.waitUntil(lambda: "not a GGUF file" in window.last_error, timeout=WAIT)
    answer = window.chat.turns[-1]
    assert not answer.waiting and "could not be loaded" in answer.error and not window.state.questions
    assert "could not be loaded" in window.chat.transcript.toPlainText()
    assert not window.chat.send.isEnabled()


def test_panes_keep_their_document_while_the_selection_changes(qtbot, tmp_path, tiny_reader, monkeypatch):
    books = [make_epub(tmp_path / f"{n}.epub", title=t, chapters=2, paragraphs=4)
             for n, t in (("a", "Zebra Tales"), ("b", "Apple Orchards"))]
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, *books)
    for t in ("Zebra Tales", "Apple Orchards"):
        wait_ready(qtbot, window, t)
    zebra, apple = rows(window)["Zebra Tales"].doc_id, rows(window)["Apple Orchards"].doc_id
    pane, lib = window.summary, window.library_pane
    lib.select(zebra)
    wait_open(qtbot, window, "Zebra Tales")
    window.tabs.setCurrentWidget(pane)
    qtbot.waitUntil(lambda: pane.parts.count() == 3 and pane.make.isEnabled(), timeout=WAIT)

    scripted_generation(monkeypatch, tiny_reader, 0.05)  # slow enough to change the selection meanwhile
    pane.parts.setCurrentRow(1)
    qtbot.mouseClick(pane.make, Qt.LeftButton)
    assert pane.busy
    qtbot.waitUntil(lambda: pane.state.text().startswith("Writing"), timeout=WAIT)

    # the library search filters the book out: the selection empties, the panes keep their book
    qtbot.keyClicks(lib.search, "apple")
    assert lib.current() is None and lib.proxy.rowCount() == 1
    assert window.state.current == zebra
    assert pane.row.doc_id == zebra and pane.title.text() != "No document open"
    assert window.chat.row.doc_id == zebra and window.chat.title.text() == "Zebra Tales"
    assert pane.busy and pane.stop_button.isEnabled()
    assert window.windowTitle().startswith("Zebra Tales")

    # another book selected: the panes show it, and not the first book's progress under its title
    lib.select(apple)
    qtbot.waitUntil(lambda: pane.row is not None and pane.row.doc_id == apple, timeout=WAIT)
    assert window.state.current == apple and window.chat.title.text() == "Apple Orchards"
    assert pane.busy and "Zebra Tales" in pane.state.text()  # named as the other book's
    assert not pane.make.isEnabled()
    assert "▍" not in pane.text.toPlainText()  # the stream is not shown under Apple Orchards

    qtbot.waitUntil(lambda: not pane.busy, timeout=60000)
    assert pane.stored.get(zebra, {}).get(0)  # the summary went to its own book
    assert not pane.stored.get(apple)
    assert "Writing" not in pane.state.text() and "Zebra" not in pane.state.text()

    lib.search.clear()
    lib.select(zebra)
    qtbot.waitUntil(lambda: pane.row is not None and pane.row.doc_id == zebra, timeout=WAIT)
    pane.parts.setCurrentRow(1)
    assert pane.summary_text(0) and pane.text.toPlainText().strip()

    # a chat answer keeps writing to its book while another is shown
    window.tabs.setCurrentWidget(window.chat)
    qtbot.waitUntil(window.chat.send.isEnabled, timeout=WAIT)
    type_question(qtbot, window, "Describe who counted the ships.")
    assert window.chat.busy
    lib.select(apple)
    qtbot.waitUntil(lambda: window.chat.row.doc_id == apple, timeout=WAIT)
    assert window.chat.turns == [] and not window.chat.send.isEnabled()  # one answer at a time
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=WAIT)
    assert window.chat.turns == []
    zebra_chat = window.chat.chats[zebra]
    assert [t.role for t in zebra_chat] == ["user", "assistant"] and zebra_chat[1].content == ANSWER.strip()
