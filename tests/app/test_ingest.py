"""Ingestion into the library: progress, reuse, cancel and resume, a SIGKILL mid-reading."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from infini_reader import engine
from infini_reader.app.core.ingest import ingest_file, ingest_files
from infini_reader.app.core.library import Library

from .conftest import write_book

ROOT = Path(__file__).resolve().parents[2]


def whole_book_memory(tiny_reader, library, doc_id):
    """The memory an uninterrupted, independent reading of the stored segments gives."""
    sid = library.snapshot_id(doc_id, tiny_reader.fingerprint)
    ids = np.concatenate(library.segment_tokens(sid, 0)).astype(np.int64)
    return tiny_reader.ingest(ids, tiny_reader.new_memory())


def stored_memory(tiny_reader, library, doc_id):
    return engine.Memory.from_bytes(library.memory_bytes(doc_id, tiny_reader.fingerprint), tiny_reader.fingerprint)


def max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a.M + a.z, b.M + b.z))


def test_ingest_reports_progress_and_stores_the_memory(tiny_reader, library, tmp_path):
    book = write_book(tmp_path / "book.txt", chapters=4)
    events = list(ingest_file(library, tiny_reader, book, checkpoint_segments=2))
    assert events[0].phase == "parsing" and events[-1].phase == "ready"
    reading = [e for e in events if e.phase in ("reading", "ready") and e.segments_done]
    total = events[-1].segments_total
    assert total >= 5 and [e.segments_done for e in reading] == list(range(1, total + 1))
    assert reading[-1].tokens_per_s > 0 and reading[-2].eta_s is not None
    doc_id = events[-1].document_id
    info = library.info(doc_id, tiny_reader.fingerprint)
    assert info.status == "ready" and len(info.chapters) == 4
    assert all(t.upper().startswith(f"CHAPTER {i}") for i, t in enumerate(info.chapters, 1))
    assert info.segments_done == total and info.tokens == events[-1].tokens_total
    mem = stored_memory(tiny_reader, library, doc_id)
    assert mem.tokens == info.tokens
    assert max_diff(mem, whole_book_memory(tiny_reader, library, doc_id)) <= 1e-5
    # the segments tile the text and carry their chapter
    con = sqlite3.connect(library.url.removeprefix("sqlite:///"))
    spans = con.execute("select char_start, char_end, section_idx, key_summary is not null from segments order by idx").fetchall()
    assert spans[0][0] == 0 and spans[-1][1] == info.chars
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(s[3] for s in spans)  # every segment has its key summary
    assert [s[2] for s in spans][-1] == 3

    # the same file again: reused at once, nothing re-read
    t0 = time.perf_counter()
    again = list(ingest_file(library, tiny_reader, book))
    assert [e.phase for e in again] == ["ready"] and again[0].reused and time.perf_counter() - t0 < 2


def test_cancel_then_resume_equals_an_uninterrupted_reading(tiny_reader, library, tmp_path):
    book = write_book(tmp_path / "long.txt", chapters=8)
    cancel = threading.Event()
    events = []
    for e in ingest_file(library, tiny_reader, book, cancel=cancel, checkpoint_segments=3):
        events.append(e)
        if e.segments_done == 5:
            cancel.set()
    assert events[-1].phase == "cancelled" and events[-1].segments_done == 5
    doc_id = events[-1].document_id
    assert library.info(doc_id).status == "cancelled" and library.info(doc_id).segments_done == 5
    rest = list(ingest_file(library, tiny_reader, book, checkpoint_segments=3))
    assert rest[0].phase == "reading" and rest[0].segments_done == 5 and rest[-1].phase == "ready"
    assert max_diff(stored_memory(tiny_reader, library, doc_id), whole_book_memory(tiny_reader, library, doc_id)) <= 1e-5


KILL_SCRIPT = """
import sys, engine
from infini_reader.app.core.ingest import ingest_file
from infini_reader.app.core.library import Library
model_dir, url, book = sys.argv[1:]
e = engine.load_model(model_dir, device="cpu", dtype="float32")
for ev in ingest_file(Library(url), e, book, checkpoint_segments=2):
    print(ev.phase, ev.segments_done, flush=True)
"""


def test_sigkill_mid_reading_resumes_from_the_last_stored_position(tiny_reader, tmp_path):
    model_dir = tmp_path / "model"
    tiny_reader.export_hf(model_dir)
    reader = engine.load_model(model_dir, device="cpu", dtype="float32")
    assert reader.fingerprint == tiny_reader.fingerprint
    book = write_book(tmp_path / "book.txt", chapters=40)
    db = tmp_path / "library.sqlite3"
    url = f"sqlite:///{db}"
    Library(url)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(model_dir), url, str(book)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for line in proc.stdout:  # wait until a few checkpoints are stored, then kill -9
            phase, done = line.split()
            if phase == "reading" and int(done) >= 7:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    library = Library(url)
    (doc_id, done, total, status), = sqlite3.connect(db).execute(
        "select document_id, segments_done, segments_total, status from memory_snapshots").fetchall()
    assert status == "reading" and 6 <= done < total
    rest = list(ingest_file(library, reader, book))
    assert rest[0].segments_done == done and rest[-1].phase == "ready"
    assert max_diff(stored_memory(reader, library, doc_id), whole_book_memory(reader, library, doc_id)) <= 1e-5


def test_a_bad_file_fails_alone_and_the_library_stays_intact(tiny_reader, library, tmp_path):
    good = write_book(tmp_path / "good.txt")
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n this is not really a pdf")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    events = list(ingest_files(library, tiny_reader, [good, bad, empty, tmp_path / "missing.epub"]))
    finals = [e for e in events if e.phase in ("ready", "failed")]
    assert [e.phase for e in finals] == ["ready", "failed", "failed", "failed"]
    assert all(e.message for e in finals[1:])
    infos = {i.title: i for i in library.infos()}
    assert infos["broken.pdf"].status == "failed" and infos["broken.pdf"].error
    good_info = [i for i in infos.values() if i.status == "ready"][0]
    mem = stored_memory(tiny_reader, library, good_info.id)
    assert max_diff(mem, whole_book_memory(tiny_reader, library, good_info.id)) <= 1e-5
    assert torch.isfinite(torch.stack(mem.M)).all()
