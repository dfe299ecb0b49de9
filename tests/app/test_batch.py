"""Many books on one machine: folders searched for books, several worker processes reading at once
into one SQLite library (real spawned processes, the real tiny model), bad files each in one line."""

import json
import os
import signal
from pathlib import Path

import pytest

from infini_reader.app.cli import main
from infini_reader.app.core.batch import WORKER_MEMORY, WorkerSpec, default_workers, find_books, summary
from infini_reader.app.core.library import Library

from .conftest import write_book


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_reader, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_reader.export_hf(d)
    return d


def folder_of_books(root: Path) -> Path:
    """Three books (one in a subfolder), an empty one, a damaged PDF, and what is not a book."""
    root.mkdir()
    write_book(root / "one.txt", chapters=2, paragraphs=3)
    write_book(root / "two.md", chapters=1, paragraphs=4)
    (root / "nested" / "deeper").mkdir(parents=True)
    write_book(root / "nested" / "deeper" / "three.txt", chapters=3, paragraphs=2)
    (root / "empty.txt").write_bytes(b"")
    (root / "damaged.pdf").write_bytes(b"%PDF-1.7\nnot really a pdf")
    (root / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a book")
    (root / ".hidden").mkdir()
    write_book(root / ".hidden" / "secret.txt")
    (root / ".notes.txt").write_text("hidden file")
    return root


def test_find_books_searches_folders_for_the_known_formats(tmp_path):
    root = folder_of_books(tmp_path / "books")
    single = write_book(tmp_path / "single.txt")
    files, problems = find_books([root, single, root / "one.txt", tmp_path / "missing.epub", tmp_path / "void"])
    (tmp_path / "void").mkdir()
    names = [f.relative_to(tmp_path).as_posix() for f in files]
    assert names == ["books/damaged.pdf", "books/empty.txt", "books/nested/deeper/three.txt", "books/one.txt",
                     "books/two.md", "single.txt"]  # sorted, recursive, hidden skipped, each file once
    assert problems == [f"{tmp_path / 'missing.epub'}: no such file or folder", f"{tmp_path / 'void'}: no such file or folder"]
    _, problems = find_books([tmp_path / "void"])
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'void'}: no books in this folder")


def test_default_workers_follow_the_cores_the_memory_and_the_books():
    assert default_workers(1, "cpu", cores=64, memory=1 << 40) == 1  # one book: one reader
    assert default_workers(100, "cpu", cores=16, memory=1 << 40) == 8  # two threads a worker
    assert default_workers(3, "cpu", cores=16, memory=1 << 40) == 3  # never more than the books
    assert default_workers(100, "cpu", cores=16, memory=3 * WORKER_MEMORY) == 3  # as many as the memory holds
    assert default_workers(100, "cpu", cores=2, memory=1 << 40) == 1  # this machine: one reader
    assert default_workers(100, "cuda:1", cores=16, memory=1 << 40) == 1  # one GPU named: one worker


def test_ingest_a_folder_with_two_workers(capsys, tmp_path, tiny_model_dir):
    root = folder_of_books(tmp_path / "books")
    common = ["--data-dir", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--device", "cpu"]
    code = main([*common, "ingest", "--workers", "2", "--json", str(root), str(tmp_path / "nothing-here")])
    out, err = capsys.readouterr()
    assert code == 1  # two bad files and a missing path
    results = json.loads(out)
    assert len(results) == 5
    by_title = {r["title"]: r for r in results}
    assert {r["phase"] for r in results} == {"ready", "failed"}
    ready = [r for r in results if r["phase"] == "ready"]
    assert len(ready) == 3 and all(r["segments_done"] == r["segments_total"] > 0 for r in ready)
    pids = {int(r["worker"].split()[1]) for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # read by the worker processes, not this one
    lines = err.splitlines()
    assert "Reading 5 books with 2 processes (1 thread each)…" in lines
    said = [ln for ln in lines if ln.startswith("infini: ")]  # each bad path in one line, no more
    assert len(said) == 3 and said[0] == f"infini: {tmp_path / 'nothing-here'}: no such file or folder"
    for name in ("damaged.pdf", "empty.txt"):
        assert len([ln for ln in said if name in ln]) == 1 and by_title[name]["message"] in "".join(said)
    assert lines[-1] == f"5 books: 3 read ({sum(r['tokens_done'] for r in ready):,} tokens), 2 failed"
    assert "Traceback" not in err

    # the library: three books read whole, the two bad files listed with their reasons
    infos = Library(f"sqlite:///{tmp_path / 'data' / 'library.sqlite3'}").infos()
    assert sorted(i.status for i in infos) == ["failed", "failed", "ready", "ready", "ready"]

    # again, one at a time in this process: nothing is read twice
    code = main([*common, "ingest", "--workers", "1", str(root / "one.txt"), str(root / "two.md")])
    out, err = capsys.readouterr()
    assert code == 0 and err.splitlines()[-1] == "2 books: 0 read, 2 already in the library"


def test_a_killed_worker_process_is_replaced_and_the_book_resumed(tmp_path, tiny_model_dir):
    """kill -9 of the worker reading a book after its first snapshot: the pool is started again and
    the book goes on from that snapshot, in another process."""
    from infini_reader.app.core.batch import read_in_parallel

    long_book = write_book(tmp_path / "long.txt", chapters=30, paragraphs=20)
    url = f"sqlite:///{tmp_path / 'library.sqlite3'}"
    Library(url)
    seen, killed = [], None
    for i, ev in read_in_parallel(WorkerSpec(url, str(tiny_model_dir), "cpu", checkpoint_segments=2), [long_book], 1):
        seen.append(ev)
        if killed is None and ev.phase == "reading" and ev.saved and 0 < ev.segments_done < ev.segments_total:
            killed = (int(ev.worker.split()[1]), ev.segments_done)
            os.kill(killed[0], signal.SIGKILL)
    assert killed is not None
    phases = [ev.phase for ev in seen]
    assert "requeued" in phases and phases[-1] == "ready"
    resumed = next(ev for ev in seen[phases.index("requeued"):] if ev.phase == "reading")
    assert resumed.segments_done >= killed[1]
    assert int(seen[-1].worker.split()[1]) != killed[0]
    (info,) = Library(url).infos()
    assert info.status == "ready" and info.segments_done == info.segments_total


def test_summary_line():
    from infini_reader.app.core.ingest import Progress

    outcomes = {0: Progress(1, "a", "ready", tokens_done=1200), 1: Progress(2, "b", "ready", reused=True),
                2: Progress(None, "c", "failed", message="c is empty"), 3: Progress(3, "d", "cancelled")}
    assert summary(outcomes, 5) == ("5 books: 1 read (1,200 tokens), 1 already in the library, 1 failed, "
                                    "1 stopped (run again to resume), 1 not started")
