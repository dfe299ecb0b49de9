"""Reading documents into the library: parse, plan segments, stream them through the engine.

`ingest_file` is a generator of `Progress` events, so that the command line prints them and the
window turns them into signals. Every few segments (or seconds) the memory and the position reached
are stored in one transaction; a cancelled, crashed or killed reading resumes from there, and the
final memory is the one an uninterrupted reading would have made.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infini_reader import engine as eng

from sqlalchemy.exc import IntegrityError

from .document import ReaderError
from .errors import clean_line, database_message, os_message
from .library import Library, file_hash
from .locks import exclusive, lock_folder
from .passages import sentences
from .segments import plan_segments

log = logging.getLogger(__name__)


@dataclass
class Progress:
    document_id: int | None
    title: str
    phase: str  # parsing | reading | ready | failed | cancelled; requeued: a worker died, another goes on
    segments_done: int = 0
    segments_total: int = 0
    tokens_done: int = 0
    tokens_total: int = 0
    tokens_per_s: float = 0.0
    eta_s: float | None = None
    message: str = ""
    reused: bool = False  # the library already held this file read by this model
    saved: bool = False  # the memory and position reached were stored with this event (a resumable point)
    worker: str = ""  # many books at once (app/core/batch.py, cluster.py): "process PID on HOST" that read it
    model_fingerprint: str | None = None  # on a worker's last event: the model it read with

    @property
    def fraction(self) -> float:
        return self.segments_done / self.segments_total if self.segments_total else 0.0


def _read(path: Path):
    from .readers import read_document  # the readers pull in pymupdf/ebooklib: import when needed

    return read_document(path)


def model_name(e: eng.Engine) -> str:
    return "builtin" if e.source == "builtin" else str(e.source)


BEING_READ = "being read by another process (another infini or the window); run the command again when it is done"
CHARS_PER_TOKEN = 4  # English prose with the built-in tokenizer: about 4.1 characters a token


def ingest_file(
    library: Library,
    engine: eng.Engine,
    path: str | Path,
    cancel: threading.Event | None = None,
    checkpoint_segments: int = 8,
    checkpoint_seconds: float = 20.0,
    max_tokens: int | None = None,
    origin: str | None = None,
) -> Iterator[Progress]:
    """Read one file into the library. One process reads a book at a time: another asked for the same
    book meanwhile says so at once ("failed", BEING_READ) and stores nothing. A book longer than about
    `max_tokens` tokens is refused before it is split. `origin`: where the file came from, stored
    instead of `path` (a reading cluster's worker reads a copy of the caller's file)."""
    path = Path(path)
    title = clean_line(Path(origin).name if origin else path.name)
    if not path.is_file():
        yield Progress(None, title, "failed", message=f"{clean_line(str(path))}: no such file")
        return
    digest = file_hash(path)
    # a lock file beside an SQLite library; on PostgreSQL an advisory lock shared by every machine
    lock = library.exclusive(digest) if library.dialect == "postgresql" else exclusive(lock_folder(library.url), digest)
    with lock as mine:
        if not mine:
            yield Progress(None, title, "failed", message=BEING_READ)
            return
        try:
            yield from _ingest_file(library, engine, path, title, digest, cancel, checkpoint_segments,
                                    checkpoint_seconds, max_tokens, origin)
        except IntegrityError:  # the same book added by another process where no lock file is shared
            log.warning("%s: a unique conflict with another process", title, exc_info=True)
            yield Progress(None, title, "failed", message=BEING_READ)


def failed_key(digest: str, path: Path) -> str:
    """The key of a file that could not be read: its contents and its name, so that identical files
    that fail (five empty ones, say) are each listed under their own name."""
    return hashlib.sha256(f"{digest}\0{path.name}".encode()).hexdigest()


def _ingest_file(library, engine, path: Path, title: str, digest: str, cancel, checkpoint_segments,
                 checkpoint_seconds, max_tokens, origin=None) -> Iterator[Progress]:
    size = path.stat().st_size
    shown = Path(origin) if origin else path  # what the library records as the file's place
    doc_id = library.find_by_hash(digest)
    snap_id = library.snapshot_id(doc_id, engine.fingerprint) if doc_id is not None else None
    if snap_id is None:
        yield Progress(doc_id, title, "parsing")
        if doc_id is None or library.info(doc_id).status == "failed":
            try:
                doc = _read(path)
            except ReaderError as exc:
                doc_id = library.add_failed(shown, failed_key(digest, shown), size, str(exc))
                yield Progress(doc_id, title, "failed", message=str(exc))
                return
            except Exception as exc:  # a reader bug must not take the queue down
                log.exception("reading %s failed", title)
                message = clean_line(f"could not read the file ({exc})")
                doc_id = library.add_failed(shown, failed_key(digest, shown), size, message)
                yield Progress(doc_id, title, "failed", message=message)
                return
            if max_tokens and (estimate := len(doc.text) // CHARS_PER_TOKEN) > max_tokens:
                message = (f"too long to read: about {estimate:,} tokens, above the limit of {max_tokens:,} "
                           "(raise it with --max-tokens, or in the settings)")
                doc_id = library.add_failed(shown, failed_key(digest, shown), size, message)
                yield Progress(doc_id, title, "failed", message=message)
                return
            if origin:
                doc.source_path = origin
            doc_id = library.add_document(doc, digest, size)
        else:  # the file is known, read by another model: its text is in the library
            doc = library.document(doc_id)
        yield from index_passages(library, doc_id, title)
        if engine.tokenizer is None:
            raise ValueError("the model has no tokenizer")
        plans = plan_segments(doc, engine.tokenizer, engine.config.segment_length)
        snap_id = library.create_reading(doc_id, engine.fingerprint, model_name(engine),
                                         engine.config.segment_length, plans)
    else:  # read before: a library indexed before sentences had vectors gets them now
        yield from index_passages(library, doc_id, title)
    yield from _read_segments(library, engine, doc_id, snap_id, cancel, checkpoint_segments, checkpoint_seconds)


def index_passages(library: Library, doc_id: int, title: str, embedder=None) -> Iterator[Progress]:
    """The passages' embeddings and their sentences', computed in bulk and stored in one statement:
    with them (and the full-text index, written with the passages) the document is askable before
    its memory pass. A library indexed before sentences had vectors gets those only. Without an
    embedding model the document is searched by its words only. Closing the generator before its
    end (a cancel) stores nothing."""
    first = True
    for _done, _total in embed_index(library, doc_id, embedder):
        if first:
            first = False
            yield Progress(doc_id, title, "parsing", message="indexing the passages")


EMBED_CHUNK = 512  # texts embedded between two chances to stop (about a second on one core)


def embed_index(library: Library, doc_id: int, embedder=None) -> Iterator[tuple[int, int]]:
    """What `index_passages` stores, computed in chunks: yields (texts embedded, texts in all)
    before each chunk, so that a consumer may stop between them; stores when all are done."""
    from . import embeddings

    have_passages = library.passage_embeddings(doc_id) is not None
    if have_passages and library.sentence_embeddings(doc_id) is not None:
        return
    embedder = embedder or embeddings.default_embedder()
    if embedder is None:
        return
    doc = library.document(doc_id)
    rows = library.passages(doc_id)
    bounds = [sentences(doc.text, p.char_start, p.char_end) for p in rows]
    # passages and sentences together: similar lengths are batched together across both
    texts = ([] if have_passages else [doc.text[p.char_start:p.char_end] for p in rows]) + \
        [doc.text[a:b] for sb in bounds for a, b in sb]
    # the embedder batches by length: each chunk is sorted so that a chunk's batches stay even
    order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
    vectors = np.zeros((len(texts), embeddings.DIM), np.float32)
    for c in range(0, len(texts), EMBED_CHUNK):
        yield c, len(texts)
        part = order[c : c + EMBED_CHUNK]
        vectors[part] = embedder([texts[k] for k in part])
    k = 0 if have_passages else len(rows)
    packed = []
    for p, sb in zip(rows, bounds):
        packed.append(embeddings.pack_sentences([(a - p.char_start, b - p.char_start) for a, b in sb],
                                                vectors[k : k + len(sb)]))
        k += len(sb)
    library.set_passage_embeddings(doc_id, None if have_passages else embeddings.to_bytes(vectors[: len(rows)]),
                                   packed)


def index_library(library: Library, embedder=None) -> Iterator[tuple[str, int, int]]:
    """The books of a library indexed before sentences had vectors (or without an embedding model
    then), indexed now: yields (title, texts embedded, texts in all) between chunks; a book is
    stored when it is done, so a stop loses at most the book under way."""
    from . import embeddings

    embedder = embedder or embeddings.default_embedder()
    if embedder is None:
        return
    for doc_id in library.unindexed():
        title = library.info(doc_id).title
        for done, total in embed_index(library, doc_id, embedder):
            yield title, done, total


def _read_segments(library, engine, doc_id, snap_id, cancel, every, seconds) -> Iterator[Progress]:
    reading = library.reading(snap_id)
    title = library.info(doc_id).title
    total, done = reading.segments_total, reading.segments_done

    def event(phase, tps=0.0, eta=None, message="", reused=False, saved=False) -> Progress:
        return Progress(doc_id, title, phase, done, total, tokens_done, reading.tokens_total, tps, eta, message, reused,
                        saved)

    tokens_done = reading.tokens_done
    if reading.status == "ready":
        yield event("ready", reused=True)
        return
    if reading.memory is not None:
        memory = eng.Memory.from_bytes(reading.memory, expected_fingerprint=engine.fingerprint)
    else:
        memory = engine.new_memory()
    segments = library.segment_tokens(snap_id, done)
    library.set_reading_status(snap_id, "reading")
    yield event("reading")

    spent, t_start = reading.seconds, time.perf_counter()
    session_tokens, last_save, pending = 0, time.perf_counter(), {}
    try:
        for ids in segments:
            if cancel is not None and cancel.is_set():
                break

            def keep(_i, summary, j=done):
                pending[j] = summary.to("cpu").half().numpy().astype("<f2").tobytes()

            memory = engine.ingest(ids.astype(np.int64), memory, on_segment=keep)
            done += 1
            tokens_done += len(ids)
            session_tokens += len(ids)
            elapsed = time.perf_counter() - t_start
            tps = session_tokens / elapsed if elapsed > 0 else 0.0
            eta = (reading.tokens_total - tokens_done) / tps if tps > 0 else None
            saved = done == total or len(pending) >= every or time.perf_counter() - last_save >= seconds
            if saved:
                library.save_progress(snap_id, memory.to_bytes(), done, tokens_done, spent + elapsed, pending,
                                      "ready" if done == total else "reading")
                pending, last_save = {}, time.perf_counter()
            yield event("reading" if done < total else "ready", tps, eta, saved=saved)
    except Exception as exc:
        log.exception("reading document %s failed", doc_id)
        message = (database_message(exc) or (os_message(exc) if isinstance(exc, OSError) else None)
                   or f"the model failed while reading: {clean_line(str(exc), 300) or type(exc).__name__}")
        try:  # the library itself may be what failed (a full disk): the reading stays resumable either way
            library.set_reading_status(snap_id, "failed", message)
        except Exception:
            log.exception("could not record the failure of document %s", doc_id)
        yield event("failed", message=message)
        return
    if done < total:  # cancelled: keep what was read, resume later
        library.save_progress(snap_id, memory.to_bytes(), done, tokens_done,
                              spent + time.perf_counter() - t_start, pending, "cancelled")
        yield event("cancelled", message="stopped; reading again resumes where it stopped")
    elif total == 0:
        library.save_progress(snap_id, memory.to_bytes(), 0, 0, spent, {}, "ready")
        yield event("ready")


def ingest_files(library: Library, engine: eng.Engine, paths, cancel: threading.Event | None = None,
                 **kw) -> Iterator[Progress]:
    """Several files, one at a time; a file that fails does not stop the others."""
    for p in paths:
        if cancel is not None and cancel.is_set():
            return
        yield from ingest_file(library, engine, p, cancel, **kw)
