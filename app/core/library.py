"""The library: documents, their readings by models, and what was said about them.

One short session per unit of work; ids, not ORM objects, cross thread boundaries. Per-segment data
is written and read in bulk.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import defer, sessionmaker

from sqlalchemy import text as sql

from .db import DocumentRow, PassageRow, SectionRow, SegmentRow, SnapshotRow, open_database
from .document import Document, Section
from .errors import clean_line
from .locks import Reader
from .passages import split_passages

if TYPE_CHECKING:  # numpy and the segment plan only where used: `infini list` and `info` start faster
    import numpy as np

    from .segments import SegmentPlan

# Words too common to tell passages apart; dropped from lexical queries.
STOPWORDS = frozenset("""a an and are as at be been but by did do does for from had has have he her hers him his
how i if in into is it its me my no not of on or our she so than that the their them then there these they this
to up was we were what when where which who whom why will with would you your""".split())


# PostgreSQL: a passage's lexemes, cut from its document's text on the server (substr counts from 1).
FILL_TSV = ("UPDATE passages AS p SET tsv = to_tsvector('english', substr(d.text, p.char_start + 1, "
            "p.char_end - p.char_start)) FROM documents AS d WHERE d.id = p.document_id")


class LibraryError(ValueError):
    """A request the library cannot satisfy (unknown or ambiguous document, ...)."""


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _advisory_key(key: str) -> int:
    """PostgreSQL's advisory lock id (a signed bigint) of a library-wide lock `key`."""
    return (zlib.crc32(b"infini-reader") << 32 | zlib.crc32(key.encode())) - (1 << 63)


def _where(path: str | None) -> str:
    """Where a file was added from, as information: an absolute path (no file is opened from it)."""
    return os.path.abspath(path) if path else ""


@dataclass
class DocInfo:
    """What lists and status lines show about a document (plain data, safe across threads)."""

    id: int
    title: str
    author: str | None
    format: str
    path: str
    pages: int | None
    chars: int
    status: str
    error: str | None
    warnings: list[str]
    chapters: list[str]
    tokens: int = 0
    segments_total: int = 0
    segments_done: int = 0
    memory_bytes: int = 0
    model_fingerprint: str | None = None
    seconds: float = 0.0


def for_model(info: DocInfo) -> DocInfo:
    """`info` from `Library.infos(fingerprint=…)` with the status "other-model" where the document was
    read (or is being read) only by models other than that one."""
    if info.model_fingerprint is None and info.status in ("ready", "reading", "cancelled"):
        return replace(info, status="other-model")
    return info


class Library:
    def __init__(self, url: str):
        self.url = url
        self.Session: sessionmaker = open_database(url)

    # ---- documents ----

    def find_by_hash(self, content_hash: str) -> int | None:
        with self.Session() as s:
            return s.scalar(select(DocumentRow.id).where(DocumentRow.content_hash == content_hash))

    def add_document(self, doc: Document, content_hash: str, file_size: int) -> int:
        import numpy as np

        with self.Session.begin() as s:
            row = s.scalar(select(DocumentRow).where(DocumentRow.content_hash == content_hash))
            if row is None:
                row = DocumentRow(content_hash=content_hash)
                s.add(row)
            row.title, row.author, row.language, row.format = doc.title, doc.author, doc.language, doc.format
            # the document is its contents (content_hash); where it was added from is information only,
            # stored absolute so that it still says something to another process or machine
            row.path, row.file_size, row.pages, row.chars = _where(doc.source_path), file_size, doc.pages, len(doc.text)
            row.text = doc.text
            row.page_starts = np.asarray(doc.page_starts, "<i8").tobytes() if doc.page_starts is not None else None
            row.warnings = "\n".join(doc.warnings)
            row.status, row.error = "queued", None
            s.flush()
            s.execute(delete(SectionRow).where(SectionRow.document_id == row.id))
            self._drop_passages(s, row.id)
            self._add_passages(s, row.id, doc)
            if doc.sections:
                s.execute(insert(SectionRow), [
                    dict(document_id=row.id, idx=i, title=sec.title, start=sec.start, end=sec.end,
                         page_start=sec.page_start, page_end=sec.page_end)
                    for i, sec in enumerate(doc.sections)
                ])
            return row.id

    @property
    def dialect(self) -> str:
        return self.Session.kw["bind"].dialect.name

    @property
    def has_fts(self) -> bool:
        """SQLite: passages searched through the FTS5 table `passage_fts`."""
        return self.dialect == "sqlite"

    @property
    def has_tsv(self) -> bool:
        """PostgreSQL: passages searched through their `tsv` column (migration 0004, GIN index)."""
        return self.dialect == "postgresql"

    @contextmanager
    def exclusive(self, key: str) -> Iterator[bool]:
        """True while this process holds the library-wide lock `key` (a book's content hash: one reader
        of a book at a time), False at once when another process holds it. SQLite: a lock file beside
        the library (app/core/locks.py). PostgreSQL: a session advisory lock on a connection of its own,
        shared by every machine using the server and let go by the server when the holder's connection
        ends, even by `kill -9`. Other databases: always True (their unique constraints still guard)."""
        if self.dialect != "postgresql":
            from .locks import exclusive, lock_folder

            with exclusive(lock_folder(self.url), key) as mine:
                yield mine
            return
        lock_id = _advisory_key(key)
        with self.Session.kw["bind"].connect() as conn:
            mine = bool(conn.execute(sql("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar())
            conn.commit()
            try:
                yield mine
            finally:
                if mine:
                    conn.execute(sql("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                    conn.commit()

    def readers(self, doc_id: int) -> list[Reader]:
        """Who is reading the book `doc_id` now (holds its lock, `exclusive`): each process's machine
        name and process id, this process included; [] when nobody is. Qt-free, for the window's
        "who else is reading" and for the reading cluster."""
        with self.Session() as s:
            key = s.scalar(select(DocumentRow.content_hash).where(DocumentRow.id == doc_id))
        return [] if key is None else self.readers_of(key)

    def readers_of(self, key: str) -> list[Reader]:
        """`readers` by the lock's key (a book's content hash)."""
        from .locks import holders, lock_folder, parse_application_name

        if self.dialect != "postgresql":
            return holders(lock_folder(self.url), key)
        unsigned = _advisory_key(key) & ((1 << 64) - 1)  # a bigint key is held as (classid, objid)
        with self.Session() as s:
            names = s.execute(sql(
                "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid = CAST(:hi AS oid) AND l.objid = CAST(:lo AS oid)"),
                {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).all()
        return [parse_application_name(n) or Reader(str(addr or "?"), 0) for n, addr in names]

    def _drop_passages(self, s, doc_id: int) -> None:
        if self.has_fts:  # a virtual table knows no foreign keys: its rows go by hand
            s.execute(sql("DELETE FROM passage_fts WHERE rowid IN (SELECT id FROM passages WHERE document_id = :d)"),
                      {"d": doc_id})
        s.execute(delete(PassageRow).where(PassageRow.document_id == doc_id))

    def _add_passages(self, s, doc_id: int, doc: Document) -> None:
        spans = split_passages(doc)
        if not spans:
            return
        ids = s.scalars(insert(PassageRow).returning(PassageRow.id, sort_by_parameter_order=True), [
            dict(document_id=doc_id, idx=p.idx, char_start=p.start, char_end=p.end, section_idx=p.section_idx,
                 page=p.page) for p in spans]).all()
        if self.has_fts:
            s.execute(sql("INSERT INTO passage_fts(rowid, text) VALUES (:id, :text)"),
                      [{"id": i, "text": doc.text[p.start:p.end]} for i, p in zip(ids, spans)])
        elif self.has_tsv:  # the lexemes made on the server from the document's text, in one statement
            s.execute(sql(FILL_TSV + " AND p.document_id = :d"), {"d": doc_id})

    def search(self, doc_id: int, query: str, limit: int = 50) -> list[tuple[int, float]]:
        """Passages of a document ranked by BM25 for `query`: [(passage idx, score)], best first,
        higher is better. SQLite's FTS5 on SQLite; PostgreSQL's full-text search (english stemming,
        GIN index, ts_rank_cd weighted by each word's rarity in the document) on PostgreSQL; on other
        databases BM25 over the document's passages in Python (rank-bm25)."""
        words = [w for w in re.findall(r"\w+", query.lower()) if w not in STOPWORDS]
        if not words:
            return []
        with self.Session() as s:
            if self.has_fts:
                match = " OR ".join('"' + w.replace('"', "") + '"' for w in dict.fromkeys(words))
                rows = s.execute(sql(
                    "SELECT p.idx, bm25(passage_fts) FROM passage_fts JOIN passages p ON p.id = passage_fts.rowid "
                    "WHERE passage_fts MATCH :q AND p.document_id = :d ORDER BY bm25(passage_fts) LIMIT :k"),
                    {"q": match, "d": doc_id, "k": limit}).all()
                return [(int(i), -float(score)) for i, score in rows]  # FTS5's bm25 is lower-is-better
            if self.has_tsv:
                return self._search_tsv(s, doc_id, list(dict.fromkeys(words)), limit)
            import numpy as np
            from rank_bm25 import BM25Okapi

            doc_text = s.scalar(select(DocumentRow.text).where(DocumentRow.id == doc_id)) or ""
            spans = s.execute(select(PassageRow.idx, PassageRow.char_start, PassageRow.char_end)
                              .where(PassageRow.document_id == doc_id).order_by(PassageRow.idx)).all()
        if not spans:
            return []
        bm = BM25Okapi([re.findall(r"\w+", doc_text[a:b].lower()) for _, a, b in spans])
        scores = bm.get_scores(words)
        best = np.argsort(-scores)[:limit]
        return [(int(spans[i][0]), float(scores[i])) for i in best if scores[i] > 0]

    @staticmethod
    def _search_tsv(s, doc_id: int, words: list[str], limit: int) -> list[tuple[int, float]]:
        """PostgreSQL: the passages holding any of the words (through the GIN index), each scored by
        Σ idf(word) · ts_rank_cd(tsv, word, 1), idf as in BM25 over the document's passages, so that a
        rare word counts more than a common one as it does in FTS5's bm25."""
        params: dict = {"d": doc_id, "k": limit}
        terms = []
        for i, w in enumerate(words):
            params[f"w{i}"] = w
            terms.append(f"({i}, plainto_tsquery('english', :w{i}))")
        rows = s.execute(sql(
            f"WITH t(k, q) AS (VALUES {', '.join(terms)}), "
            "t2 AS (SELECT k, q FROM t WHERE numnode(q) > 0), "  # words english drops (stop words)
            "c AS (SELECT p.idx, p.tsv FROM passages p WHERE p.document_id = :d "
            "      AND p.tsv @@ (SELECT coalesce(tsquery_or_agg, ''::tsquery) FROM "
            "           (SELECT string_agg(q::text, ' | ')::tsquery AS tsquery_or_agg FROM t2) u)), "
            "n AS (SELECT count(*)::float8 AS n FROM passages WHERE document_id = :d), "
            "df AS (SELECT t2.k, t2.q, count(c.idx)::float8 AS df FROM t2 JOIN c ON c.tsv @@ t2.q GROUP BY t2.k, t2.q) "
            "SELECT c.idx, sum(ln((n.n - df.df + 0.5) / (df.df + 0.5) + 1) * ts_rank_cd(c.tsv, df.q, 1)) AS score "
            "FROM c JOIN df ON c.tsv @@ df.q CROSS JOIN n GROUP BY c.idx ORDER BY score DESC, c.idx LIMIT :k"),
            params).all()
        return [(int(i), float(score)) for i, score in rows]

    def set_passage_embeddings(self, doc_id: int, blobs: list[bytes] | None,
                               sentence_blobs: list[bytes] | None = None) -> None:
        """The passages' vectors (and their sentences', embeddings.pack_sentences), in passage order,
        in one statement; None leaves those as they are."""
        with self.Session.begin() as s:
            ids = s.scalars(select(PassageRow.id).where(PassageRow.document_id == doc_id).order_by(PassageRow.idx)).all()
            rows = [{"id": i} for i in ids]
            for key, values in (("embedding", blobs), ("sentence_embeddings", sentence_blobs)):
                if values is None:
                    continue
                if len(ids) != len(values):
                    raise LibraryError(f"{len(values)} embeddings for {len(ids)} passages of document {doc_id}")
                for r, v in zip(rows, values):
                    r[key] = v
            if ids and len(rows[0]) > 1:
                s.execute(update(PassageRow), rows)

    def passage_embeddings(self, doc_id: int) -> list[bytes] | None:
        """The passages' vectors in passage order, or None unless every passage has one."""
        return self._complete_column(doc_id, PassageRow.embedding)

    def sentence_embeddings(self, doc_id: int) -> list[bytes] | None:
        """Each passage's packed sentence vectors in passage order, or None unless every passage has them."""
        return self._complete_column(doc_id, PassageRow.sentence_embeddings)

    def unindexed(self) -> list[int]:
        """The documents some of whose passages have no vector or no sentence vectors (indexed
        before there were any), oldest first."""
        with self.Session() as s:
            return list(s.scalars(select(PassageRow.document_id).where(
                (PassageRow.embedding.is_(None)) | (PassageRow.sentence_embeddings.is_(None)))
                .distinct().order_by(PassageRow.document_id)).all())

    def _complete_column(self, doc_id: int, column) -> list[bytes] | None:
        with self.Session() as s:
            blobs = s.scalars(select(column).where(PassageRow.document_id == doc_id).order_by(PassageRow.idx)).all()
        return None if not blobs or any(b is None for b in blobs) else list(blobs)

    def passages(self, doc_id: int) -> list[PassageRow]:
        with self.Session() as s:
            rows = s.scalars(select(PassageRow).where(PassageRow.document_id == doc_id).order_by(PassageRow.idx)
                             .options(defer(PassageRow.embedding), defer(PassageRow.sentence_embeddings))).all()
            s.expunge_all()
            return list(rows)

    def add_failed(self, path: Path, content_hash: str, file_size: int, error: str) -> int:
        """A file that could not be read still shows in the library, with the reason."""
        with self.Session.begin() as s:
            row = s.scalar(select(DocumentRow).where(DocumentRow.content_hash == content_hash))
            if row is None:
                row = DocumentRow(content_hash=content_hash, title=clean_line(path.name),
                                  format=clean_line(path.suffix.lstrip(".").lower())[:16], path=_where(clean_line(str(path))),
                                  file_size=file_size)
                s.add(row)
            row.status, row.error = "failed", error
            s.flush()
            return row.id

    def document(self, doc_id: int) -> Document:
        import numpy as np

        with self.Session() as s:
            row = s.get(DocumentRow, doc_id)
            if row is None:
                raise LibraryError(f"no document with id {doc_id}")
            return Document(
                title=row.title, author=row.author, language=row.language, format=row.format, text=row.text,
                sections=[Section(x.title, x.start, x.end, x.page_start, x.page_end) for x in row.sections],
                page_starts=np.frombuffer(row.page_starts, "<i8").tolist() if row.page_starts is not None else None,
                warnings=[w for w in row.warnings.split("\n") if w], source_path=row.path,
            )

    def set_status(self, doc_id: int, status: str, error: str | None = None) -> None:
        with self.Session.begin() as s:
            s.execute(update(DocumentRow).where(DocumentRow.id == doc_id).values(status=status, error=error))

    def remove(self, doc_id: int) -> None:
        with self.Session.begin() as s:
            row = s.get(DocumentRow, doc_id)
            if row is None:
                raise LibraryError(f"no document with id {doc_id}")
            self._drop_passages(s, doc_id)
            s.delete(row)  # sections, readings, segments, chats and summaries go with it (cascade)

    def info(self, doc_id: int, fingerprint: str | None = None) -> DocInfo:
        return self.infos([doc_id], fingerprint)[0]

    def infos(self, ids: list[int] | None = None, fingerprint: str | None = None) -> list[DocInfo]:
        """Documents (all, or the given ids) with the state of their reading by `fingerprint`
        (or their latest reading when None)."""
        with self.Session() as s:
            q = select(DocumentRow).order_by(DocumentRow.added_at, DocumentRow.id)
            if ids is not None:
                q = q.where(DocumentRow.id.in_(ids))
            rows = s.scalars(q).all()
            if ids is not None and len(rows) != len(set(ids)):
                raise LibraryError(f"no document with id {sorted(set(ids) - {r.id for r in rows})[0]}")
            snaps = {}
            for snap in s.scalars(select(SnapshotRow).where(SnapshotRow.document_id.in_([r.id for r in rows]))
                                  .order_by(SnapshotRow.updated_at)):
                if fingerprint is None or snap.model_fingerprint == fingerprint:
                    snaps[snap.document_id] = snap
            chapters: dict[int, list[str]] = {}
            for did, title in s.execute(select(SectionRow.document_id, SectionRow.title)
                                        .where(SectionRow.document_id.in_([r.id for r in rows]))
                                        .order_by(SectionRow.document_id, SectionRow.idx)):
                chapters.setdefault(did, []).append(title)
            out = []
            for r in rows:
                snap = snaps.get(r.id)
                info = DocInfo(r.id, r.title, r.author, r.format, r.path, r.pages, r.chars, r.status, r.error,
                               [w for w in r.warnings.split("\n") if w], chapters.get(r.id, []))
                if snap is not None:
                    info.tokens, info.segments_total, info.segments_done = (
                        snap.tokens_total, snap.segments_total, snap.segments_done)
                    info.memory_bytes = len(snap.memory or b"")
                    info.model_fingerprint, info.seconds = snap.model_fingerprint, snap.seconds
                    if snap.status in ("reading", "queued", "cancelled", "failed", "ready") and r.status != "failed":
                        info.status = snap.status
                        info.error = snap.error or r.error
                out.append(info)
            return out

    def resolve(self, ref: str) -> int:
        """A document from an id or an unambiguous title prefix (case-insensitive)."""
        with self.Session() as s:
            if ref.isdigit() and s.get(DocumentRow, int(ref)) is not None:
                return int(ref)
            hits = s.execute(select(DocumentRow.id, DocumentRow.title)
                             .where(func.lower(DocumentRow.title).startswith(ref.lower()))).all()
        if not hits:
            raise LibraryError(f"no document matches {ref!r}")
        if len(hits) > 1:
            names = ", ".join(f"{i} ({t})" for i, t in hits[:5])
            raise LibraryError(f"{ref!r} matches several documents: {names}; use the id")
        return hits[0][0]

    # ---- readings ----

    def snapshot_id(self, doc_id: int, fingerprint: str) -> int | None:
        with self.Session() as s:
            return s.scalar(select(SnapshotRow.id).where(SnapshotRow.document_id == doc_id,
                                                         SnapshotRow.model_fingerprint == fingerprint))

    def create_reading(self, doc_id: int, fingerprint: str, model_name: str, segment_length: int,
                       plans: list[SegmentPlan]) -> int:
        """A new reading with all its segments planned, in one transaction."""
        with self.Session.begin() as s:
            snap = SnapshotRow(document_id=doc_id, model_fingerprint=fingerprint, model_name=model_name,
                               segment_length=segment_length, status="queued",
                               tokens_total=int(sum(len(p.token_ids) for p in plans)), segments_total=len(plans))
            s.add(snap)
            s.flush()
            if plans:
                s.execute(insert(SegmentRow), [
                    dict(snapshot_id=snap.id, idx=p.idx, char_start=p.char_start, char_end=p.char_end,
                         token_ids=p.token_ids.astype("<i4").tobytes(), section_idx=p.section_idx,
                         page_start=p.page_start, page_end=p.page_end)
                    for p in plans
                ])
            return snap.id

    def reading(self, snapshot_id: int) -> SnapshotRow:
        with self.Session() as s:
            row = s.get(SnapshotRow, snapshot_id)
            s.expunge(row)
            return row

    def segment_tokens(self, snapshot_id: int, start: int) -> list[np.ndarray]:
        import numpy as np

        with self.Session() as s:
            blobs = s.scalars(select(SegmentRow.token_ids).where(SegmentRow.snapshot_id == snapshot_id,
                                                                 SegmentRow.idx >= start).order_by(SegmentRow.idx))
            return [np.frombuffer(b, "<i4") for b in blobs]

    def save_progress(self, snapshot_id: int, memory: bytes, segments_done: int, tokens_done: int,
                      seconds: float, summaries: dict[int, bytes], status: str = "reading") -> None:
        """The memory, the position reached and the new segments' key summaries, in one transaction:
        after a crash the reading resumes from exactly this point."""
        with self.Session.begin() as s:
            snap = s.get(SnapshotRow, snapshot_id)
            snap.memory, snap.memory_checksum = memory, hashlib.sha256(memory).hexdigest()
            snap.segments_done, snap.tokens_done, snap.seconds, snap.status = segments_done, tokens_done, seconds, status
            snap.error = None
            if summaries:
                ids = dict(s.execute(select(SegmentRow.idx, SegmentRow.id).where(
                    SegmentRow.snapshot_id == snapshot_id, SegmentRow.idx.in_(list(summaries)))).all())
                s.execute(update(SegmentRow), [{"id": ids[i], "key_summary": b} for i, b in summaries.items()])
            s.execute(update(DocumentRow).where(DocumentRow.id == snap.document_id).values(status=status, error=None))

    def set_reading_status(self, snapshot_id: int, status: str, error: str | None = None) -> None:
        with self.Session.begin() as s:
            snap = s.get(SnapshotRow, snapshot_id)
            snap.status, snap.error = status, error
            s.execute(update(DocumentRow).where(DocumentRow.id == snap.document_id).values(status=status, error=error))

    def memory_bytes(self, doc_id: int, fingerprint: str) -> bytes | None:
        """The stored memory after a complete reading, checked against its checksum."""
        with self.Session() as s:
            snap = s.scalar(select(SnapshotRow).where(SnapshotRow.document_id == doc_id,
                                                      SnapshotRow.model_fingerprint == fingerprint))
            if snap is None or snap.memory is None:
                return None
            if hashlib.sha256(snap.memory).hexdigest() != snap.memory_checksum:
                raise LibraryError(f"the stored memory of document {doc_id} is damaged; read the document again")
            return snap.memory
