"""The application state without Qt (app/core/state.py): the open document, the model's loading,
the reading queue and the questions that wait for the model."""

import subprocess
import sys
import threading

import pytest

from infini_reader.app.core.models import ModelChoice
from infini_reader.app.core.state import AppState, ModelState, ReadingList, expand


class FakeEngine:
    fingerprint = "f" * 64


def recorder(event):
    seen = []
    event.connect(lambda *a: seen.append(a[0] if len(a) == 1 else a))
    return seen


def test_the_state_does_not_import_qt():
    code = ("import sys, infini_reader.app.core.state as s; s.AppState(); "
            "assert not any(m.startswith('PySide6') for m in sys.modules), 'PySide6 imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_open_document_changes_only_when_asked():
    state = AppState(lambda c: FakeEngine())
    seen = recorder(state.events.current)
    assert state.current is None
    state.open(3)
    state.open(3)  # the same: no event
    state.open(5)
    assert state.current == 5 and seen == [3, 5]
    state.forget([3])  # another document removed: the open one stays
    assert state.current == 5
    state.forget([5])
    assert state.current is None and seen == [3, 5, None]


def test_the_library_is_the_states():
    state = AppState()
    seen = recorder(state.events.library)
    lib = object()
    state.set_library(lib)
    assert state.library is lib and seen == [lib]


def test_model_loading_states():
    made = []

    def loader(choice):
        made.append(choice)
        return FakeEngine()

    state = AppState(loader)
    seen = recorder(state.events.model)
    assert state.model.state == ModelState.NOT_LOADED and state.engine is None and not state.loading
    choice = ModelChoice("builtin", "cpu")
    token = state.start_loading(choice)
    assert state.loading and state.model.choice == choice and state.engine is None
    e = state.load(choice)  # the worker's part: changes nothing
    assert made == [choice] and state.loading
    assert state.loaded(token, e)
    assert state.model.state == ModelState.READY and state.engine is e and not state.loading
    assert [s.state for s in seen] == [ModelState.LOADING, ModelState.READY]


def test_a_failed_loading_keeps_its_error_and_a_late_result_is_ignored():
    state = AppState(lambda c: FakeEngine())
    first = state.start_loading(ModelChoice("a.gguf"))
    second = state.start_loading(ModelChoice("b.gguf"))  # the user chose again before the first ended
    assert not state.loaded(first, FakeEngine()) and state.loading  # too late: ignored
    assert not state.failed(first, "old") and state.loading
    assert state.failed(second, "b.gguf: not a GGUF file")
    assert state.model.state == ModelState.FAILED and state.model.error == "b.gguf: not a GGUF file"
    assert state.model.choice.spec == "b.gguf" and state.engine is None


def test_the_loader_error_reaches_the_caller():
    def broken(choice):
        raise ValueError("no such model")

    state = AppState(broken)
    state.start_loading(ModelChoice())
    with pytest.raises(ValueError, match="no such model"):
        state.load(ModelChoice())


def test_queue_order_add_front_remove_and_reorder():
    state = AppState()
    changes = recorder(state.events.queue)
    assert state.enqueue(["a", "b", "c"]) == ["a", "b", "c"]
    assert state.enqueue(["b", "d", "d"]) == ["d"]  # already waiting or twice: once
    assert state.queue.waiting == ["a", "b", "c", "d"]
    state.enqueue(["x", "y"], front=True)
    assert state.queue.waiting == ["x", "y", "a", "b", "c", "d"]
    assert state.dequeue("a") and not state.dequeue("nope")
    assert state.reorder("d", 0) and state.reorder("x", 99) and not state.reorder("nope", 0)
    assert state.queue.waiting == ["d", "y", "b", "c", "x"]
    assert len(changes) == 6  # every change but the ones that changed nothing
    assert len(state.queue) == 5


def test_the_queue_reads_in_order_and_knows_what_is_not_in_the_library_yet():
    q = ReadingList()
    q.add(["a", "b"])
    assert q.take() == "a" and q.current == "a"
    assert q.pending() == ["a", "b"]  # being opened: not in the library yet
    assert q.add(["a"]) == []  # the one being read is not queued again
    q.reading(7)
    assert q.pending() == ["b"] and q.current_doc == 7
    assert q.finish() == ("a", 7) and q.current is None
    assert q.take() == "b" and q.take() is None and q.pending() == []


def test_stop_pauses_and_adding_unpauses():
    q = ReadingList()
    q.paused = True
    q.add(["a"])
    assert not q.paused


def test_the_queue_is_safe_to_take_from_another_thread():
    q = ReadingList()
    q.add([f"f{i}" for i in range(2000)])
    taken = []

    def worker():
        while (p := q.take()) is not None:
            taken.append(p)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        q.add([f"g{i}"])
    for t in threads:
        t.join()
    rest = q.waiting
    assert sorted(taken + rest) == sorted([f"f{i}" for i in range(2000)] + [f"g{i}" for i in range(200)])


def test_questions_wait_for_the_model_and_are_answered_in_order():
    state = AppState(lambda c: FakeEngine())
    seen = recorder(state.events.questions)
    token = state.start_loading(ModelChoice())
    state.ask_later(1, "Who is the keeper?")
    state.ask_later(2, "What was the cat called?")
    state.ask_later(1, "How many ships?")
    assert [q.text for q in state.waiting_questions(1)] == ["Who is the keeper?", "How many ships?"]
    assert state.next_question() is None  # not before the model is ready
    state.loaded(token, FakeEngine())
    order = []
    while (q := state.next_question()) is not None:
        order.append((q.doc_id, q.text))
    assert order == [(1, "Who is the keeper?"), (2, "What was the cat called?"), (1, "How many ships?")]
    assert len(seen) == 6 and state.questions == []


def test_questions_are_dropped_when_the_model_fails_or_their_document_goes():
    state = AppState()
    token = state.start_loading(ModelChoice())
    state.ask_later(1, "a")
    state.ask_later(2, "b")
    state.forget([2])
    assert [q.text for q in state.questions] == ["a"]
    state.failed(token, "broken")
    assert [q.text for q in state.drop_questions()] == ["a"] and state.questions == []
    assert state.next_question() is None


def test_folders_given_are_walked_for_books(tmp_path):
    (tmp_path / "shelf" / "deep").mkdir(parents=True)
    for name in ("shelf/b.epub", "shelf/deep/a.md", "shelf/notes.docx", "loose.pdf"):
        (tmp_path / name).write_text("x")
    got = expand([str(tmp_path / "shelf"), str(tmp_path / "loose.pdf"), str(tmp_path / "gone.txt")])
    assert got == [str(tmp_path / "shelf" / "b.epub"), str(tmp_path / "shelf" / "deep" / "a.md"),
                   str(tmp_path / "loose.pdf"), str(tmp_path / "gone.txt")]


# ---- find in a document, a library by URL (Qt-free parts of the window's features) ----


def test_find_in_a_document_names_chapter_and_page_and_marks_the_words(tmp_path):
    from infini_reader.app.core.library import Library, file_hash
    from infini_reader.app.core.readers import read_document
    from infini_reader.app.core.state import find_in_document

    book = tmp_path / "keeper.md"
    book.write_text("# The Keeper\n\n## The Rocks\n\nThe keeper climbed the tower to light the lamp.\n\n"
                    "## The Storm\n\nThe philosophers followed the keeper's cat, Marmalade, down the stairs.\n\n"
                    "A second storm passed.\n", encoding="utf-8")
    library = Library(f"sqlite:///{tmp_path / 'library.sqlite3'}")
    doc = read_document(book)
    doc_id = library.add_document(doc, file_hash(book), book.stat().st_size)
    found = find_in_document(library, doc_id, "philosopher followed Marmalade")
    assert found and found[0].chapter == "The Storm" and found[0].page is None
    assert found[0].where() == "The Storm"
    marked = [doc.text[a:b] for a, b in found[0].words]
    assert "Marmalade" in marked and "philosophers" in marked and "followed" in marked  # the stemmed forms too
    assert "Marmalade" in found[0].snippet and "\n" not in found[0].snippet
    assert "The philosophers followed" in doc.text[found[0].start:found[0].end]
    assert find_in_document(library, doc_id, "zeppelin") == []
    assert find_in_document(library, doc_id, "the of and") == []  # stop words only: nothing to look for


def test_database_urls_are_checked_in_plain_words_before_connecting(tmp_path):
    from infini_reader.app.core.library import LibraryError
    from infini_reader.app.core.state import check_database_url, open_library_url, shown_url

    assert "is not a database URL" in check_database_url("not a url")
    assert "not supported" in check_database_url("mysql://u@h/db")
    assert "not installed" in check_database_url("postgresql+pg8000://u@h/db")
    assert "no folder" in check_database_url(f"sqlite:///{tmp_path}/missing/x.sqlite3")
    assert check_database_url(f"sqlite:///{tmp_path}/x.sqlite3") is None
    assert check_database_url("postgresql+psycopg://u:pw@127.0.0.1:1/db") is None  # well formed: not tried here
    assert shown_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
    with pytest.raises(LibraryError, match="not a database URL"):
        open_library_url("not a url")
    lib = open_library_url(f"sqlite:///{tmp_path}/x.sqlite3")
    assert lib.infos() == []
