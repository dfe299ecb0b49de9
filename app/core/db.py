"""The library's tables (SQLAlchemy 2.0 typed ORM) and opening a database.

SQLite under the user data folder by default; any SQLAlchemy URL works (PostgreSQL for a shared
library). The schema is created and upgraded by Alembic (app/core/migrations), never by
`create_all`, so that every database follows the same migration history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class DocumentRow(Base):
    """A file the user added. Its text and chapters do not depend on the model."""

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the file's bytes
    title: Mapped[str] = mapped_column(String(500))
    author: Mapped[str | None] = mapped_column(String(500))
    language: Mapped[str | None] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)  # where it was added from
    file_size: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int | None] = mapped_column(Integer)
    chars: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text, default="")
    page_starts: Mapped[bytes | None] = mapped_column(LargeBinary)  # int64 offsets, little endian
    warnings: Mapped[str] = mapped_column(Text, default="")  # one per line
    # queued | reading | ready | failed | cancelled: the state of the latest reading
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    sections: Mapped[list[SectionRow]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True, order_by="SectionRow.idx"
    )


class SectionRow(Base):
    __tablename__ = "sections"

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # chapter number - 1, in reading order
    title: Mapped[str] = mapped_column(Text)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    page_start: Mapped[int | None] = mapped_column(Integer)
    page_end: Mapped[int | None] = mapped_column(Integer)

    document: Mapped[DocumentRow] = relationship(back_populates="sections")


class SnapshotRow(Base):
    """One reading of a document by one model: progress, and the memory reached so far."""

    __tablename__ = "memory_snapshots"
    __table_args__ = (UniqueConstraint("document_id", "model_fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(Text, default="")
    segment_length: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    tokens_total: Mapped[int] = mapped_column(Integer, default=0)
    segments_total: Mapped[int] = mapped_column(Integer, default=0)
    segments_done: Mapped[int] = mapped_column(Integer, default=0)
    tokens_done: Mapped[int] = mapped_column(Integer, default=0)
    memory: Mapped[bytes | None] = mapped_column(LargeBinary)  # engine.Memory.to_bytes()
    memory_checksum: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of `memory`
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # reading time spent so far
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class SegmentRow(Base):
    """A segment of a reading: the tokens that went through the model together."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("snapshot_id", "idx"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("memory_snapshots.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)  # int32 little endian
    section_idx: Mapped[int | None] = mapped_column(Integer)  # the chapter holding most of it
    page_start: Mapped[int | None] = mapped_column(Integer)
    page_end: Mapped[int | None] = mapped_column(Integer)
    # Compact key summary for attribution: per layer, this segment's own Σσ(K) averaged over kv
    # heads, float16 (layers × d_key). Written when the segment has been read.
    key_summary: Mapped[bytes | None] = mapped_column(LargeBinary)


class PassageRow(Base):
    """A paragraph-sized piece of a document's text: the unit of lexical search and of citations.
    On SQLite its text is indexed in the FTS5 table `passage_fts` (rowid = id)."""

    __tablename__ = "passages"

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    section_idx: Mapped[int | None] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    # the passage's meaning: all-MiniLM-L6-v2 vector, float16 little endian (app/core/embeddings.py)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    # its sentences' offsets and vectors (embeddings.pack_sentences): a fact is one sentence, which a
    # whole passage's vector dilutes
    sentence_embeddings: Mapped[bytes | None] = mapped_column(LargeBinary)


class ChatRow(Base):
    __tablename__ = "chats"

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    model_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CitationRow(Base):
    __tablename__ = "citations"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    section_idx: Mapped[int | None] = mapped_column(Integer)
    chapter: Mapped[str | None] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    sentence_start: Mapped[int | None] = mapped_column(Integer)  # the sentence the answer came from
    sentence_end: Mapped[int | None] = mapped_column(Integer)


class SummaryRow(Base):
    __tablename__ = "summaries"
    __table_args__ = (UniqueConstraint("document_id", "model_fingerprint", "section_idx"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    section_idx: Mapped[int | None] = mapped_column(Integer)  # None: the whole book
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


Index("ix_segments_snapshot_idx", SegmentRow.snapshot_id, SegmentRow.idx)


MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
    cur.close()


def create_db_engine(url: str) -> SqlEngine:
    kw = {}
    if url.startswith("postgresql"):  # each connection names its process: Library.readers tells who reads a book
        from .locks import application_name

        kw["connect_args"] = {"application_name": application_name()}
    eng = create_engine(url, **kw)
    if eng.dialect.name == "sqlite":
        event.listen(eng, "connect", _sqlite_pragmas)
    return eng


def upgrade(eng: SqlEngine) -> None:
    """Bring the schema to the newest migration (creates it in an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> sessionmaker:
    eng = create_db_engine(url)
    upgrade(eng)
    return sessionmaker(eng, expire_on_commit=False)


def sqlite_url(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
