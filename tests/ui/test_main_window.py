"""The window with real widgets (offscreen), a tiny random model and real files dropped on it."""

import threading
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QTextCursor
from PySide6.QtWidgets import QApplication

from infini_reader.app.core import ingest
from infini_reader.app.ui.main_window import MainWindow

from .conftest import add_window, make_epub

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


def open_window(qtbot, tmp_path, engine_, **kw) -> MainWindow:
    window = MainWindow(lambda choice: engine_, data_dir=tmp_path / "data", **kw)
    add_window(qtbot, window)
    window.show()
    qtbot.waitUntil(lambda: window.engine is not None and window.library is not None, timeout=WAIT)
    return window


def rows(window) -> dict[str, object]:
    return {r.title: r for r in window.library_pane.model.rows}


def wait_ready(qtbot, window, title: str) -> None:
    qtbot.waitUntil(lambda: title in rows(window) and rows(window)[title].status == "ready"
                    and not window.queue.running, timeout=WAIT)


def wait_open(qtbot, window, title: str) -> None:
    """The document is selected and its chat is loaded, ready to ask."""
    qtbot.waitUntil(lambda: window.library_pane.current() is not None
                    and window.library_pane.current().title == title and window.chat.send.isEnabled(), timeout=WAIT)


ANSWER = "The keeper's cat was called **Marmalade**; it slept on the lamp room stairs, " * 3


def scripted_generation(monkeypatch, e, pause: float = 0.01, text: str = ANSWER) -> None:
    """The tiny random model's words are noise (sometimes only spaces): for tests that look at the
    words, it says a known text, piece by piece, at a model's pace. Reading, passages, memory and
    storage stay real."""

    def generate(messages, memory=None, max_new_tokens=256, **kw):
        e.prompt_ids(messages)  # the prompt is built and tokenized as for real
        for i, word in enumerate(text.split(" ")[:max_new_tokens]):
            time.sleep(pause)
            yield word if i == 0 else " " + word

    monkeypatch.setattr(e, "generate", generate)


def ask(qtbot, window, question: str) -> None:
    window.tabs.setCurrentWidget(window.chat)
    window.chat.question.setFocus()
    window.chat.question.setPlainText(question)
    window.chat.question.moveCursor(QTextCursor.End)
    qtbot.keyClick(window.chat.question, Qt.Key_Return)  # Enter sends
    assert window.chat.busy and window.chat.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=WAIT)


def text_of(browser) -> str:
    return browser.toPlainText()


def click_text(qtbot, browser, text: str) -> None:
    """A mouse click on the first place `text` is shown in a QTextBrowser (a link)."""
    found = browser.document().find(text)
    assert not found.isNull(), f"{text!r} is not shown"
    at = QTextCursor(browser.document())
    at.setPosition(found.selectionStart() + 1)
    browser.setTextCursor(at)
    browser.ensureCursorVisible()
    qtbot.mouseClick(browser.viewport(), Qt.LeftButton, pos=browser.cursorRect(at).center())


def test_drop_an_epub_read_it_ask_and_open_a_citation(qtbot, tmp_path, tiny_reader, monkeypatch):
    book = make_epub(tmp_path / "keeper.epub")
    window = open_window(qtbot, tmp_path, tiny_reader)
    events, bar_values = [], []
    window.queue.progress.connect(events.append)
    window.library_pane.reading.bar.valueChanged.connect(bar_values.append)
    drop(window, book)
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    phases = [p for i, p in enumerate(e.phase for e in events) if i == 0 or p != events[i - 1].phase]
    assert phases[:2] == ["parsing", "reading"] and events[-1].phase == "ready"
    assert events[-1].fraction == 1.0 and max(bar_values) == 100
    row = rows(window)["The Lighthouse Keeper"]
    assert (row.author, row.format, row.status_text) == ("Ann Author", "epub", "ready")
    assert row.size.endswith("tokens")
    wait_open(qtbot, window, "The Lighthouse Keeper")  # the dropped book opens by itself

    scripted_generation(monkeypatch, tiny_reader)
    shown = []
    window.chat.transcript.textChanged.connect(lambda: shown.append(window.chat.transcript.toPlainText()))
    ask(qtbot, window, "Describe the keeper's cat.")
    you, answer = window.chat.turns
    assert you.content == "Describe the keeper's cat." and answer.content and not answer.error
    assert answer.message_id is not None
    # streamed: the transcript showed the answer growing, piece by piece
    partial = [s for s in shown if "▍" in s]
    assert len(partial) >= 3 and len({len(s) for s in partial}) >= 3
    assert window.chat.question.toPlainText() == ""
    assert answer.content == ANSWER.strip() and "Marmalade" in text_of(window.chat.transcript)
    assert answer.citations and "Marmalade" in answer.citations[0].passage
    text = text_of(window.chat.transcript)
    assert "Sources:" in text and "[1] Chapter 2" in text
    first = answer.citations[0]  # each source labelled with its chapter and the sentence it cites
    assert f"[1] Chapter 2 — “{' '.join((first.sentence or first.passage).split())[:40]}" in text

    click_text(qtbot, window.chat.transcript, "[1] Chapter 2")
    qtbot.waitUntil(lambda: window.reading.passage is not None, timeout=WAIT)
    assert window.reading.isVisible()
    assert window.reading.highlighted_text() == answer.citations[0].passage
    assert window.reading.chapters.currentText() == "2. Chapter 2"
    assert answer.citations[0].passage in window.reading.text.toPlainText()

    click_text(qtbot, window.chat.transcript, "Copy answer")
    assert QApplication.clipboard().text() == answer.content


def test_reopen_shows_the_chat_and_answers_without_reading_again(qtbot, tmp_path, tiny_reader, monkeypatch):
    book = make_epub(tmp_path / "keeper.epub")
    first = open_window(qtbot, tmp_path, tiny_reader)
    drop(first, book)
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    wait_open(qtbot, first, "The Lighthouse Keeper")
    ask(qtbot, first, "Who counted the ships?")  # the tiny model's own (random) words
    answer = first.chat.turns[-1].content
    assert first.chat.turns[-1].message_id is not None and not first.chat.turns[-1].error
    first.close()

    def no_reading(*a, **k):
        raise AssertionError("the book was read again")

    monkeypatch.setattr(ingest, "ingest_file", no_reading)
    monkeypatch.setattr(ingest, "ingest_files", no_reading)
    second = open_window(qtbot, tmp_path, tiny_reader)
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(second), timeout=WAIT)
    assert rows(second)["The Lighthouse Keeper"].status == "ready"
    second.library_pane.select(rows(second)["The Lighthouse Keeper"].doc_id)
    wait_open(qtbot, second, "The Lighthouse Keeper")
    assert [t.role for t in second.chat.turns] == ["user", "assistant"]
    assert second.chat.turns[1].content == answer and second.chat.turns[1].citations
    assert "Who counted the ships?" in second.chat.transcript.toPlainText()
    t0 = time.perf_counter()
    ask(qtbot, second, "How many ships passed in chapter 3?")
    assert time.perf_counter() - t0 < 20
    assert len(second.chat.turns) == 4 and second.chat.turns[-1].message_id is not None
    assert not second.chat.turns[-1].error


def test_stop_a_reading_midway_and_resume_it(qtbot, tmp_path, tiny_reader, monkeypatch):
    book = make_epub(tmp_path / "long.epub", title="A Long Book", chapters=8, paragraphs=30)
    read = tiny_reader.ingest

    def slow_ingest(*a, **k):
        time.sleep(0.15)
        return read(*a, **k)

    monkeypatch.setattr(tiny_reader, "ingest", slow_ingest)
    window = open_window(qtbot, tmp_path, tiny_reader)
    events = []
    window.queue.progress.connect(events.append)
    drop(window, book)
    qtbot.waitUntil(lambda: any(e.phase == "reading" and e.segments_done >= 2 for e in events), timeout=WAIT)
    bar = window.library_pane.reading
    assert bar.stop.isVisible() and "tokens/s" in bar.rate.text() and "left" in bar.rate.text()
    qtbot.mouseClick(bar.stop, Qt.LeftButton)
    qtbot.waitUntil(lambda: not window.queue.running, timeout=WAIT)
    stopped = [e for e in events if e.phase == "cancelled"]
    assert stopped and 0 < stopped[0].segments_done < stopped[0].segments_total
    qtbot.waitUntil(lambda: rows(window)["A Long Book"].status == "cancelled", timeout=WAIT)
    row = rows(window)["A Long Book"]
    assert row.status_text == f"stopped at {row.percent}%" and 0 < row.percent < 100
    assert bar.resume.isVisible() and not bar.stop.isVisible()
    assert "Resume" in window.chat.banner.button.text() and not window.chat.send.isEnabled()

    events.clear()
    qtbot.mouseClick(bar.resume, Qt.LeftButton)
    wait_ready(qtbot, window, "A Long Book")
    reading = [e for e in events if e.phase == "reading"]
    assert reading[0].segments_done == stopped[0].segments_done  # it went on from there
    assert events[-1].phase == "ready" and events[-1].segments_done == events[-1].segments_total


def test_a_broken_file_shows_its_reason_while_another_is_read(qtbot, tmp_path, tiny_reader):
    import zipfile

    broken = tmp_path / "broken.epub"  # passes the check when added (a zip with a page), fails when read
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("chapter.xhtml", "<html><body><p>No container, no package.</p></body></html>")
    good = make_epub(tmp_path / "good.epub", title="A Good Book")
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, broken)
    drop(window.chat.question.viewport(), good)  # on the question box: a book to read, not text to type
    assert window.chat.question.toPlainText() == ""
    wait_ready(qtbot, window, "A Good Book")
    failed = rows(window)["broken.epub"]
    assert failed.status == "failed" and failed.error
    index = next(window.library_pane.proxy.index(r, 4) for r in range(window.library_pane.proxy.rowCount())
                 if window.library_pane.proxy.index(r, 0).data() == "broken.epub")
    assert index.data().startswith("failed: ") and failed.error in index.data()
    assert failed.error in index.data(Qt.ToolTipRole)
    window.library_pane.select(failed.doc_id)
    qtbot.waitUntil(lambda: window.chat.banner.isVisible() and failed.error in window.chat.banner.text.text())
    assert not window.chat.send.isEnabled()


def test_summaries_stream_are_stored_and_shown_at_once_later(qtbot, tmp_path, tiny_reader, monkeypatch):
    book = make_epub(tmp_path / "keeper.epub")
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, book)
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    wait_open(qtbot, window, "The Lighthouse Keeper")
    pane = window.summary
    window.tabs.setCurrentWidget(pane)
    qtbot.waitUntil(lambda: pane.parts.count() == 4 and pane.make.isEnabled(), timeout=WAIT)
    assert [pane.parts.item(i).text() for i in range(4)] == [
        "The whole book", "1. Chapter 1", "2. Chapter 2", "3. Chapter 3"]

    scripted_generation(monkeypatch, tiny_reader, 0.01)
    pane.parts.setCurrentRow(2)
    shown = []
    pane.text.textChanged.connect(lambda: shown.append(pane.text.toPlainText()))
    qtbot.mouseClick(pane.make, Qt.LeftButton)
    assert pane.busy and pane.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not pane.busy, timeout=WAIT)
    chapter2 = pane.summary_text(1)
    assert chapter2 and pane.text.toPlainText().strip() == chapter2.replace("**", "").strip()  # Markdown shown
    assert len([s for s in shown if "▍" in s]) >= 3  # streamed
    assert pane.parts.item(2).font().bold() and not pane.parts.item(1).font().bold()
    assert pane.make.text() == "Summarize again"

    pane.parts.setCurrentRow(0)  # the whole book: the other chapters first, then the book
    qtbot.mouseClick(pane.make, Qt.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=60000)
    assert all(pane.summary_text(i) for i in (0, 1, 2)) and pane.summary_text(None)
    assert pane.summary_text(1) == chapter2  # kept, not written again
    whole = pane.summary_text(None)
    window.close()

    from infini_reader.app.core import summaries

    monkeypatch.setattr(summaries, "summarize", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rewritten")))
    again = open_window(qtbot, tmp_path, tiny_reader)
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(again), timeout=WAIT)
    again.library_pane.select(rows(again)["The Lighthouse Keeper"].doc_id)
    again.tabs.setCurrentWidget(again.summary)
    qtbot.waitUntil(lambda: again.summary.text.toPlainText().strip() == whole.replace("**", "").strip(),
                    timeout=WAIT)


def test_export_writes_the_summaries_and_the_chat(qtbot, tmp_path, tiny_reader, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    book = make_epub(tmp_path / "keeper.epub")
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, book)
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    wait_open(qtbot, window, "The Lighthouse Keeper")
    ask(qtbot, window, "Who slept on the stairs?")
    target = tmp_path / "out" / "keeper.md"
    target.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), "Markdown (*.md)"))
    window.export_action.trigger()
    qtbot.waitUntil(lambda: target.exists() and bool(target.read_text()), timeout=WAIT)  # written, not just created
    text = target.read_text()
    assert text.startswith("# The Lighthouse Keeper") and "Who slept on the stairs?" in text
    assert "- Chapter 2" in text  # the citations, each quoting its sentence
    quotes = [line.split("“", 1)[1].rstrip("”") for line in text.splitlines() if line.startswith("- ") and "“" in line]
    assert quotes and any("stairs" in q for q in quotes), text


def test_the_list_names_another_models_reading_before_the_model_has_loaded(qtbot, tmp_path, tiny_reader):
    from infini_reader.app.core.fingerprints import remember
    from infini_reader.app.core.models import ModelChoice

    book = make_epub(tmp_path / "keeper.epub")
    first = open_window(qtbot, tmp_path, tiny_reader)
    drop(first, book)
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    key = ModelChoice(first.settings.model, first.settings.device).key
    first.close()
    # since then the model in use has changed (an update's new adapter, say), as its record says
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w")
    remember(tmp_path / "data", key, [weights], "0" * 64)

    release = threading.Event()

    def slow(choice):
        release.wait(WAIT / 1000)
        return tiny_reader

    window = MainWindow(slow, data_dir=tmp_path / "data")
    add_window(qtbot, window)
    window.show()
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window), timeout=WAIT)
    assert window.engine is None and rows(window)["The Lighthouse Keeper"].status == "other-model"
    release.set()
    qtbot.waitUntil(lambda: window.engine is not None, timeout=WAIT)
    wait_ready(qtbot, window, "The Lighthouse Keeper")  # the model that loaded is the one that read it


def test_a_book_read_by_another_model_is_offered_a_new_reading(qtbot, tmp_path, tiny_reader, builtin_engine):
    from .conftest import tiny_engine

    book = make_epub(tmp_path / "keeper.epub")
    first = open_window(qtbot, tmp_path, tiny_reader)
    drop(first, book)
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    first.close()

    other = tiny_engine(builtin_engine, seed=1, name="tiny-2")
    window = open_window(qtbot, tmp_path, other)
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window)
                    and rows(window)["The Lighthouse Keeper"].status == "other-model", timeout=WAIT)
    row = rows(window)["The Lighthouse Keeper"]
    assert row.status_text == "read by another model"
    window.library_pane.select(row.doc_id)
    qtbot.waitUntil(lambda: window.chat.banner.isVisible(), timeout=WAIT)
    assert "another model" in window.chat.banner.text.text() and not window.chat.send.isEnabled()
    qtbot.mouseClick(window.chat.banner.button, Qt.LeftButton)
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    wait_open(qtbot, window, "The Lighthouse Keeper")
    assert not window.chat.banner.isVisible()


def test_files_given_on_the_command_line_are_read(qtbot, tmp_path, tiny_reader):
    book = make_epub(tmp_path / "keeper.epub")
    window = open_window(qtbot, tmp_path, tiny_reader, files=[str(book)])
    wait_ready(qtbot, window, "The Lighthouse Keeper")


def test_library_search_filter_sort_and_remove(qtbot, tmp_path, tiny_reader):
    books = [make_epub(tmp_path / f"{n}.epub", title=t, chapters=1, paragraphs=2)
             for n, t in (("a", "Zebra Tales"), ("b", "Apple Orchards"), ("c", "Moon Songs"))]
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, *books)
    for t in ("Zebra Tales", "Apple Orchards", "Moon Songs"):
        wait_ready(qtbot, window, t)
    pane = window.library_pane

    def shown():
        return [pane.proxy.index(r, 0).data() for r in range(pane.proxy.rowCount())]

    assert shown() == ["Apple Orchards", "Moon Songs", "Zebra Tales"]  # sorted by title
    pane.table.sortByColumn(0, Qt.DescendingOrder)
    assert shown() == ["Zebra Tales", "Moon Songs", "Apple Orchards"]
    qtbot.keyClick(window, Qt.Key_F, Qt.ControlModifier)
    assert pane.search.hasFocus()
    qtbot.keyClicks(pane.search, "moon")
    assert shown() == ["Moon Songs"]
    pane.search.clear()
    pane.status_filter.setCurrentText("Failed")
    assert shown() == []
    pane.status_filter.setCurrentText("Ready")
    assert len(shown()) == 3

    pane.select(rows(window)["Moon Songs"].doc_id)
    qtbot.mouseClick(pane.remove, Qt.LeftButton)  # the confirmation answers yes (conftest)
    qtbot.waitUntil(lambda: "Moon Songs" not in rows(window), timeout=WAIT)
    assert sorted(i.title for i in window.library.infos()) == ["Apple Orchards", "Zebra Tales"]


def test_keyboard_enter_shift_enter_new_question_and_stop(qtbot, tmp_path, tiny_reader, monkeypatch):
    book = make_epub(tmp_path / "keeper.epub")
    window = open_window(qtbot, tmp_path, tiny_reader)
    drop(window, book)
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    wait_open(qtbot, window, "The Lighthouse Keeper")
    window.tabs.setCurrentWidget(window.summary)
    window.library_pane.search.setFocus()
    qtbot.keyClick(window, Qt.Key_N, Qt.ControlModifier)  # new question
    assert window.tabs.currentWidget() is window.chat and window.chat.question.hasFocus()
    window.chat.question.setPlainText("Tell me about the storm.")
    window.chat.question.moveCursor(QTextCursor.End)
    qtbot.keyClick(window.chat.question, Qt.Key_Return, Qt.ShiftModifier)
    assert not window.chat.busy and window.chat.question.toPlainText().endswith("\n")

    scripted_generation(monkeypatch, tiny_reader, 0.05)
    qtbot.keyClick(window.chat.question, Qt.Key_Return)
    assert window.chat.busy
    qtbot.waitUntil(lambda: len(window.chat.turns[-1].content) > 10, timeout=WAIT)
    qtbot.keyClick(window, Qt.Key_Escape)  # stop
    qtbot.waitUntil(lambda: not window.chat.busy, timeout=WAIT)
    answer = window.chat.turns[-1]
    assert answer.content and answer.message_id is not None  # what was said is kept
    assert len(answer.content.split()) < len(ANSWER.split())  # it stopped early
    assert window.chat.send.isEnabled()


def test_settings_are_kept_and_applied(qtbot, tmp_path, tiny_reader):
    from infini_reader.app.ui.settings import Settings
    from infini_reader.app.ui.settings_dialog import SettingsDialog

    asked = []

    def load(choice):
        asked.append((choice.spec, choice.device))
        return tiny_reader

    window = MainWindow(load, data_dir=tmp_path / "data")
    add_window(qtbot, window)
    qtbot.waitUntil(lambda: window.engine is not None, timeout=WAIT)
    assert asked == [("builtin", "auto")] and window.model_label.text().startswith("tiny · CPU")

    dialog = SettingsDialog(window.settings, "tiny · CPU · float32", False, str(tmp_path / "data"), window)
    dialog.model.other.setChecked(True)
    dialog.model.path.setText(str(tmp_path / "model.gguf"))
    dialog.device.setCurrentIndex(1)
    dialog.theme.setCurrentIndex(2)
    assert not dialog.device.model().item(2).isEnabled()  # no GPU here
    new = dialog.result_settings()
    assert (new.model, new.device, new.theme) == (str(tmp_path / "model.gguf"), "cpu", "dark")
    window.apply_settings(new)
    qtbot.waitUntil(lambda: len(asked) == 2 and window.engine is not None, timeout=WAIT)
    assert asked[1] == (str(tmp_path / "model.gguf"), "cpu")
    assert QApplication.palette().window().color().lightness() < 100  # dark
    kept = Settings.load()
    assert (kept.model, kept.device, kept.theme) == (str(tmp_path / "model.gguf"), "cpu", "dark")
    window.apply_settings(Settings(**{**kept.__dict__, "theme": "light"}))
    assert QApplication.palette().window().color().lightness() > 150


def test_summaries_written_after_reading_when_the_setting_is_on(qtbot, tmp_path, tiny_reader, monkeypatch):
    from infini_reader.app.core.summaries import stored_summaries
    from infini_reader.app.ui.settings import Settings
    from infini_reader.app.ui.settings_dialog import SettingsDialog

    window = open_window(qtbot, tmp_path, tiny_reader)
    dialog = SettingsDialog(window.settings, "tiny", False, str(tmp_path / "data"), window)
    assert not dialog.summarize_after.isChecked()
    dialog.summarize_after.setChecked(True)
    window.apply_settings(dialog.result_settings())
    assert Settings.load().summarize_after_reading is True and window.queue.summarize_after
    scripted_generation(monkeypatch, tiny_reader, 0.0, "The keeper counted ships.")
    infos, summarised = window.library.infos, threading.Event()

    def late_listing(ids=None, fingerprint=None):  # the window's list lags behind (as on a busy machine)
        if ids is None:
            summarised.wait(60)
        return infos(ids, fingerprint)

    monkeypatch.setattr(window.library, "infos", late_listing)
    said = []
    window.statusBar().messageChanged.connect(said.append)
    window.statusBar().messageChanged.connect(lambda m: "are ready" in m and summarised.set())
    drop(window, make_epub(tmp_path / "keeper.epub"))
    qtbot.waitUntil(lambda: any("summaries of “The Lighthouse Keeper” are ready" in m for m in said), timeout=60000)
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window), timeout=WAIT)
    doc_id = rows(window)["The Lighthouse Keeper"].doc_id
    stored = stored_summaries(window.library, doc_id, tiny_reader.fingerprint)
    assert set(stored) == {0, 1, 2, None} and stored[0] == "The keeper counted ships."
    assert "Summarising “The Lighthouse Keeper”: summarising chapter 2 of 3" in said, said
    assert all("The Lighthouse Keeper" in m for m in said if m.startswith("Summarising")), said


def test_a_model_that_fails_to_load_is_reported(qtbot, tmp_path):
    def broken(choice):
        raise ValueError("model.gguf: not a GGUF file")

    window = MainWindow(broken, data_dir=tmp_path / "data")
    add_window(qtbot, window)
    window.show()
    qtbot.waitUntil(lambda: "not a GGUF file" in window.last_error, timeout=WAIT)
    assert window.model_label.text() == "No model" and not window.chat.send.isEnabled()
    box = window._boxes[-1]
    assert box.isVisible() and "Settings" in box.text()
    log = (tmp_path / "logs").glob("*")  # the details go to the log (when the app set logging up)
    assert log is not None


@pytest.mark.parametrize("damaged", ["settings.json"])
def test_damaged_settings_do_not_stop_the_window(qtbot, tmp_path, tiny_reader, damaged):
    from infini_reader.app.ui.settings import settings_path

    settings_path().parent.mkdir(parents=True, exist_ok=True)
    settings_path().write_text("{ not json")
    window = open_window(qtbot, tmp_path, tiny_reader)
    assert window.settings.model == "builtin"


def test_a_reading_cut_short_by_a_crash_shows_as_stopped(qtbot, tmp_path, tiny_reader):
    book = make_epub(tmp_path / "keeper.epub")
    first = open_window(qtbot, tmp_path, tiny_reader)
    drop(first, book)
    wait_ready(qtbot, first, "The Lighthouse Keeper")
    doc_id = rows(first)["The Lighthouse Keeper"].doc_id
    snap = first.library.snapshot_id(doc_id, tiny_reader.fingerprint)
    first.close()
    first.library.set_reading_status(snap, "reading")  # as a killed process leaves it
    window = open_window(qtbot, tmp_path, tiny_reader)
    qtbot.waitUntil(lambda: "The Lighthouse Keeper" in rows(window), timeout=WAIT)
    assert rows(window)["The Lighthouse Keeper"].status == "cancelled"


def test_read_a_book_again_with_another_model(qtbot, tmp_path, tiny_reader, builtin_engine, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from infini_reader.app.ui.main_window import ModelDialog

    from .conftest import tiny_engine

    other = tiny_engine(builtin_engine, seed=2, name="tiny-other")
    models = {"builtin": tiny_reader, str(tmp_path / "other.gguf"): other}
    window = MainWindow(lambda choice: models[choice.spec], data_dir=tmp_path / "data")
    add_window(qtbot, window)
    qtbot.waitUntil(lambda: window.engine is tiny_reader and window.library is not None, timeout=WAIT)
    drop(window, make_epub(tmp_path / "keeper.epub"))
    wait_ready(qtbot, window, "The Lighthouse Keeper")

    def choose(dialog):
        dialog.model.other.setChecked(True)
        dialog.model.path.setText(str(tmp_path / "other.gguf"))
        return QDialog.Accepted

    monkeypatch.setattr(ModelDialog, "exec", choose)
    window.library_pane.select(rows(window)["The Lighthouse Keeper"].doc_id)
    qtbot.mouseClick(window.library_pane.reread, Qt.LeftButton)
    qtbot.waitUntil(lambda: window.engine is other, timeout=WAIT)
    assert window.model_label.text().startswith("tiny-other")
    wait_ready(qtbot, window, "The Lighthouse Keeper")
    doc_id = rows(window)["The Lighthouse Keeper"].doc_id
    assert window.library.snapshot_id(doc_id, other.fingerprint) is not None  # read by the new model
    assert window.library.snapshot_id(doc_id, tiny_reader.fingerprint) is not None  # the first reading is kept
    assert window.settings.model == str(tmp_path / "other.gguf")


def test_help_opens_the_user_guide(qtbot, tmp_path, tiny_reader, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    window = open_window(qtbot, tmp_path, tiny_reader)
    assert window.guide_action.shortcut().toString() == "F1"
    window.guide_action.trigger()
    (url,) = opened
    guide = Path(url.toLocalFile())
    assert guide.name == "user-guide.md" and guide.read_text(encoding="utf-8").startswith("# Infini Reader")


def test_books_of_an_older_version_are_indexed_in_the_background_and_a_close_stops_it(qtbot, tmp_path, tiny_reader,
                                                                                         monkeypatch):
    from infini_reader.app.core import embeddings
    from infini_reader.app.core.document import Document
    from infini_reader.app.core.library import Library

    if embeddings.default_embedder() is None:
        pytest.skip("the embedding model could not be installed (offline)")
    monkeypatch.setattr(ingest, "EMBED_CHUNK", 16)
    (tmp_path / "data").mkdir()
    lib = Library(f"sqlite:///{tmp_path / 'data' / 'library.sqlite3'}")
    sentences = [f"The bell of tower {i} rang {i % 7 + 2} times at noon over the quiet square." for i in range(1500)]
    text = "\n\n".join(" ".join(sentences[i : i + 10]) for i in range(0, len(sentences), 10))
    doc_id = lib.add_document(Document(title="Bells", author=None, language="en", format="txt", text=text,
                                       sections=[]), "bells", len(text))  # as an older version left it
    assert lib.unindexed() == [doc_id]

    first = open_window(qtbot, tmp_path, tiny_reader)
    qtbot.waitUntil(lambda: "Indexing “Bells”" in first.statusBar().currentMessage(), timeout=WAIT)
    t0 = time.perf_counter()
    first.close()  # mid-book: the chunk under way ends, nothing is stored
    qtbot.waitUntil(lambda: not first.tasks.busy, timeout=WAIT)
    assert time.perf_counter() - t0 < 5
    assert lib.unindexed() == [doc_id] and lib.sentence_embeddings(doc_id) is None

    second = open_window(qtbot, tmp_path, tiny_reader)  # the next start indexes it to the end
    qtbot.waitUntil(lambda: lib.unindexed() == [], timeout=60000)
    assert len(lib.sentence_embeddings(doc_id)) == len(lib.passages(doc_id))
    qtbot.waitUntil(lambda: not second.tasks.busy, timeout=WAIT)
