"""The library's schema, round trips, lookups and search, on a real SQLite file and on a real
PostgreSQL server started by the test session (tests/app/conftest.py: `postgres_server`)."""

import numpy as np
import pytest
from sqlalchemy import inspect, text

from infini_reader.app.core.db import create_db_engine
from infini_reader.app.core.document import Document, Section
from infini_reader.app.core.library import Library, LibraryError
from infini_reader.app.core.segments import SegmentPlan

HEAD = "0005"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """An empty library's URL on each backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'library.sqlite3'}"


@pytest.fixture
def library(url):
    return Library(url)


def sql(library: Library, query: str, **params):
    """A statement straight on the library's database (to look behind the library's back)."""
    with library.Session.kw["bind"].begin() as c:
        result = c.execute(text(query), params)
        return result.fetchall() if result.returns_rows else None


def test_migration_from_an_empty_database(url):
    Library(url)
    eng = create_db_engine(url)
    insp = inspect(eng)
    assert {"documents", "sections", "memory_snapshots", "segments", "passages", "chats", "messages", "citations",
            "summaries", "alembic_version"} <= set(insp.get_table_names())
    with eng.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar() == HEAD
        if eng.dialect.name == "sqlite":
            assert c.execute(text("pragma journal_mode")).scalar() == "wal"
            assert "passage_fts" in insp.get_table_names()
        else:  # PostgreSQL's own full-text search: a tsvector with a GIN index
            assert "tsv" in {col["name"] for col in insp.get_columns("passages")}
            assert c.execute(text("select indexdef from pg_indexes where indexname = 'ix_passages_tsv'")
                             ).scalar().lower().count("gin") == 1
    Library(url)  # opening again upgrades nothing and loses nothing
    with eng.connect() as c:
        assert c.execute(text("select count(*) from alembic_version")).scalar() == 1
    eng.dispose()


def sample_doc(title="Persuasion") -> Document:
    text = "Front matter.\n\nChapter 1\n\nSir Walter Elliot.\n\nChapter 2\n\nMr Shepherd."
    return Document(title, "Jane Austen", "en", "txt", text,
                    [Section("Chapter 1", 15, 45, 1, 1), Section("Chapter 2", 45, len(text), 2, 2)],
                    page_starts=[0, 45], warnings=["page 3 has no text"], source_path="/books/p.txt")


def test_document_round_trip_and_lookup(library):
    did = library.add_document(sample_doc(), "ab" * 32, 1234)
    back = library.document(did)
    assert back == sample_doc()
    info = library.info(did)
    assert (info.title, info.author, info.format, info.pages, info.status) == (
        "Persuasion", "Jane Austen", "txt", 2, "queued")
    assert info.chapters == ["Chapter 1", "Chapter 2"] and info.warnings == ["page 3 has no text"]
    assert library.find_by_hash("ab" * 32) == did
    assert library.resolve(str(did)) == did and library.resolve("persu") == did
    other = library.add_document(sample_doc("Persuasion, annotated"), "cd" * 32, 10)
    with pytest.raises(LibraryError, match="several documents"):
        library.resolve("Persuasion")
    assert library.resolve(str(other)) == other
    with pytest.raises(LibraryError, match="no document matches"):
        library.resolve("Emma")


def test_readings_store_segments_in_bulk_and_removal_cascades(library):
    did = library.add_document(sample_doc(), "ab" * 32, 1234)
    plans = [SegmentPlan(i, i * 10, i * 10 + 10, np.arange(i, i + 5, dtype=np.int32), i % 2, 1, 1) for i in range(7)]
    sid = library.create_reading(did, "f" * 64, "tiny", 5, plans)
    assert library.snapshot_id(did, "f" * 64) == sid and library.snapshot_id(did, "0" * 64) is None
    toks = library.segment_tokens(sid, 3)
    assert [t.tolist() for t in toks] == [list(range(i, i + 5)) for i in range(3, 7)]
    library.save_progress(sid, b"memory-bytes", 4, 20, 1.5, {0: b"s0", 3: b"s3"})
    info = library.info(did)
    assert (info.segments_done, info.segments_total, info.tokens, info.memory_bytes, info.status) == (4, 7, 35, 12, "reading")
    assert library.memory_bytes(did, "f" * 64) == b"memory-bytes"
    library.remove(did)
    for table in ("documents", "sections", "memory_snapshots", "segments", "passages"):
        assert sql(library, f"select count(*) from {table}")[0][0] == 0, table
    with pytest.raises(LibraryError):
        library.info(did)


def test_damaged_memory_is_reported(library):
    did = library.add_document(sample_doc(), "ab" * 32, 1234)
    sid = library.create_reading(did, "f" * 64, "tiny", 5, [])
    library.save_progress(sid, b"good", 0, 0, 0.0, {})
    sql(library, "update memory_snapshots set memory = :m", m=b"evil")
    with pytest.raises(LibraryError, match="damaged"):
        library.memory_bytes(did, "f" * 64)


def test_a_models_fingerprint_record_counts_only_while_its_files_are_unchanged(tmp_path):
    from infini_reader.app.core import fingerprints as fps

    weights, adapter = tmp_path / "model.gguf", tmp_path / "adapter.safetensors"
    weights.write_bytes(b"w" * 10)
    adapter.write_bytes(b"a" * 10)
    key = fps.choice_key("builtin", "auto", "auto", "auto")
    assert fps.recall(tmp_path, key) is None  # nothing recorded yet
    fps.remember(tmp_path, key, [weights, adapter], "f" * 64)
    fps.remember(tmp_path, fps.choice_key("builtin", "auto", "auto", "none"), [weights], "e" * 64)
    assert fps.recall(tmp_path, key) == "f" * 64
    assert fps.recall(tmp_path, fps.choice_key("builtin", "auto", "auto", "none")) == "e" * 64
    assert fps.recall(tmp_path, fps.choice_key("builtin", "cuda", "auto", "auto")) is None
    adapter.write_bytes(b"b" * 11)  # another adapter in its place
    assert fps.recall(tmp_path, key) is None
    assert fps.recall(tmp_path, fps.choice_key("builtin", "auto", "auto", "none")) == "e" * 64
    weights.unlink()
    assert fps.recall(tmp_path, fps.choice_key("builtin", "auto", "auto", "none")) is None
    (tmp_path / fps.FILE).write_text("{ not json")  # a damaged record is no record, and is rewritten
    assert fps.recall(tmp_path, key) is None
    fps.remember(tmp_path, key, [adapter], "d" * 64)
    assert fps.recall(tmp_path, key) == "d" * 64


def philosophy_doc() -> Document:
    paras = ["The old philosopher follows the river every morning.",
             "A cat sat on the mat and watched the birds.",
             "Philosophers were followed by their pupils through the market.",
             "Nothing here but rain, rain and more rain on the roof."]
    text = "\n\n".join(paras)
    return Document("Walks", None, "en", "txt", text, [Section("One", 0, len(text), None, None)],
                    source_path="walks.txt")


def test_search_stems_and_ranks_on_the_databases_own_index(library):
    did = library.add_document(philosophy_doc(), "ee" * 32, 10)
    idx = {p.idx: library.document(did).text[p.char_start:p.char_end] for p in library.passages(did)}
    hits = library.search(did, "philosophers followed")
    assert hits and "Philosophers were followed" in idx[hits[0][0]]  # stemmed: both words in one passage
    assert {i for i, _ in hits} == {i for i, t in idx.items() if "hilosopher" in t}
    assert all(a[1] >= b[1] > 0 for a, b in zip(hits, hits[1:]))  # best first, higher is better
    assert library.search(did, "the of and") == []  # stop words only
    assert library.search(did, "zeppelin") == []
    assert library.search(did, 'rain" OR cat*') and library.search(did, "it's (rain)")  # no query syntax leaks
    other = library.add_document(sample_doc(), "ab" * 32, 10)
    assert library.search(other, "philosophers") == []  # one document's passages only
    library.add_document(philosophy_doc(), "ee" * 32, 10)  # the same file again: passages replaced
    assert len(library.search(did, "rain")) == 1
    if library.has_tsv:  # the index is the one searched: the planner can use the GIN index
        assert sql(library, "select count(*) from passages where tsv is null")[0][0] == 0


def test_source_path_is_information_and_absolute(library):
    did = library.add_document(philosophy_doc(), "ee" * 32, 10)
    import os

    assert library.info(did).path == os.path.abspath("walks.txt")
    assert library.find_by_hash("ee" * 32) == did  # a document is found by its contents, not its path


def test_passage_embeddings_round_trip(library):
    did = library.add_document(philosophy_doc(), "ee" * 32, 10)
    n = len(library.passages(did))
    assert library.passage_embeddings(did) is None
    assert library.unindexed() == [did]
    blobs = [np.full(384, i, dtype="<f2").tobytes() for i in range(n)]
    library.set_passage_embeddings(did, blobs)
    assert library.passage_embeddings(did) == blobs
    assert library.unindexed() == [did]  # its sentences have no vectors yet
    with pytest.raises(LibraryError):
        library.set_passage_embeddings(did, blobs[:-1])
    # the sentences' vectors (migration 0005), stored beside the passages' without touching them
    assert library.sentence_embeddings(did) is None
    sentences = [np.arange(3 + i, dtype="<i4").tobytes() for i in range(n)]
    library.set_passage_embeddings(did, None, sentences)
    assert library.sentence_embeddings(did) == sentences and library.passage_embeddings(did) == blobs
    assert library.unindexed() == []
    with pytest.raises(LibraryError):
        library.set_passage_embeddings(did, None, sentences[1:])
    from sqlalchemy import inspect

    assert all({"embedding", "sentence_embeddings"} <= inspect(p).unloaded
               for p in library.passages(did))  # not loaded with the passages


def test_one_reader_of_a_book_at_a_time(url):
    """Two processes' libraries (here two Library objects, each with its own connections): the lock
    of a book is held by one of them; the other is told at once, without waiting."""
    a, b = Library(url), Library(url)
    with a.exclusive("cd" * 32) as first:
        with b.exclusive("cd" * 32) as second:
            assert first and not second
        with b.exclusive("ef" * 32) as third:
            assert third  # another book
    with b.exclusive("cd" * 32) as again:
        assert again  # let go at the end


def test_readers_names_the_process_that_holds_a_book(url):
    """`readers` (the window's "who else is reading"): the machine and process id of whoever holds a
    book's lock, another process here; nobody once it has let go, even when it was killed."""
    import os
    import socket
    import subprocess
    import sys
    import time

    library = Library(url)
    doc_id = library.add_document(sample_doc(), "ab" * 32, 10)
    assert library.readers(doc_id) == []
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom infini_reader.app.core.library import Library\n"
         f"with Library({url!r}).exclusive({'ab' * 32!r}) as mine:\n"
         "    print(mine, flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        (who,) = library.readers(doc_id)
        assert (who.host, who.pid) == (socket.gethostname(), holder.pid)
        assert str(who) == f"process {holder.pid} on {socket.gethostname()}"
        with library.exclusive("ab" * 32) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    for _ in range(50):  # the server notices the closed connection at once, give it a moment
        if library.readers(doc_id) == []:
            break
        time.sleep(0.1)
    assert library.readers(doc_id) == []
    with library.exclusive("ab" * 32) as mine:
        assert mine
        assert [r.pid for r in library.readers(doc_id)] == [os.getpid()]


def test_the_same_book_read_twice_at_once(url, tiny_reader, tmp_path):
    """Two ingests of one file at the same time (two threads, two Library objects as two processes
    would have): one reads it, the other says so in one line; one document, one reading, nothing lost."""
    import threading

    from infini_reader.app.core.ingest import BEING_READ, ingest_file

    from .conftest import write_book

    book = write_book(tmp_path / "book.txt", chapters=4, paragraphs=8)
    libs, last = [Library(url), Library(url)], [None, None]
    barrier = threading.Barrier(2)

    def ingest(i):
        barrier.wait()
        last[i] = list(ingest_file(libs[i], tiny_reader, book, checkpoint_segments=1))[-1]

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    phases = sorted(p.phase for p in last)
    assert phases in (["failed", "ready"], ["ready", "ready"]), [(p.phase, p.message) for p in last]
    for p in last:
        if p.phase == "failed":
            assert p.message == BEING_READ and "\n" not in p.message
    winner = next(p for p in last if p.phase == "ready")
    assert sql(libs[0], "select count(*) from documents")[0][0] == 1
    assert sql(libs[0], "select count(*), min(status) from memory_snapshots")[0] == (1, "ready")
    info = libs[0].info(winner.document_id)
    assert info.segments_done == info.segments_total > 0
    again = list(ingest_file(libs[1], tiny_reader, book))[-1]
    assert again.phase == "ready" and again.reused


def test_a_unique_conflict_is_one_line(url):
    """Where the lock is not shared (two machines with lock files, say), the database's constraint
    keeps one reading per book and model; the loser's error is a single plain line."""
    import threading

    from sqlalchemy.exc import IntegrityError

    from infini_reader.app.core.errors import database_message

    a, b = Library(url), Library(url)
    did = a.add_document(sample_doc(), "ab" * 32, 10)
    barrier, errors = threading.Barrier(2), []

    def create(lib):
        barrier.wait()
        try:
            lib.create_reading(did, "f" * 64, "tiny", 5, [])
        except IntegrityError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(lib,)) for lib in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == 1
    message = database_message(errors[0])
    assert message and "\n" not in message and "same time" in message
    assert sql(a, "select count(*) from memory_snapshots")[0][0] == 1


ALICE_QUERIES = [
    "Why did Alice follow the White Rabbit?", "What did the bottle labelled DRINK ME do?", "the pool of tears",
    "Who is the Mad Hatter?", "the Queen of Hearts said off with her head", "the Cheshire Cat grinning",
    "the caterpillar smoking a hookah on the mushroom", "the mock turtle's story", "the lobster quadrille dance",
    "who stole the tarts", "the Duchess and the baby that turned into a pig",
    "the croquet game with flamingos and hedgehogs", "Alice grew very tall", "the Dormouse asleep in the teapot",
    "the trial and the jury", "Bill the lizard down the chimney", "the Gryphon", "a caucus race to get dry",
    "the March Hare's tea party", "Alice wakes up and her sister", "How old is Father William?",
    "the golden key and the little door"]


def test_postgresql_search_agrees_with_sqlite_fts5_on_a_real_book(postgres_url, tmp_path):
    """The same book on both backends, the same queries: PostgreSQL's top 5 share most passages with
    FTS5's (docs/scale.md: 0.79 of the top-5 on these 22 queries, with 256 passages)."""
    from infini_reader.app.core.library import file_hash
    from infini_reader.app.core.readers import read_document

    from .conftest import FIXTURES

    book = FIXTURES / "omni-alice-in-wonderland.epub"
    if not book.exists():
        pytest.skip(f"{book} is missing")
    doc = read_document(book)
    libs = [Library(f"sqlite:///{tmp_path / 'library.sqlite3'}"), Library(postgres_url)]
    ids = [lib.add_document(doc, file_hash(book), book.stat().st_size) for lib in libs]
    shared = 0
    for q in ALICE_QUERIES:
        fts5, pg = ({i for i, _ in lib.search(d, q, 5)} for lib, d in zip(libs, ids))
        shared += len(fts5 & pg)
    assert shared / (5 * len(ALICE_QUERIES)) >= 0.75
