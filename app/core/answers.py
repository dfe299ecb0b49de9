"""Questions and answers about a document, with citations, over its stored memory.

`find_passages` ranks the document's passages for a question by fusing lexical BM25 (SQLite FTS5)
with the model's own memory attribution (reciprocal-rank fusion). `ask` re-reads the best passages
into the local window, on top of the document's memory, and streams the answer; question, answer
and citations are stored in the document's chat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from infini_reader import engine as eng
from infini_reader.engine.attribution import query_features, segment_scores

from .db import ChatRow, CitationRow, MessageRow, SegmentRow, SnapshotRow
from .library import Library, LibraryError

log = logging.getLogger(__name__)

RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al., 2009)


@dataclass
class Citation:
    rank: int
    segment_idx: int | None
    section_idx: int | None
    chapter: str | None
    page: int | None
    char_start: int
    char_end: int
    score: float
    passage: str

    def where(self) -> str:
        parts = [self.chapter or "", f"p. {self.page}" if self.page else ""]
        return ", ".join(p for p in parts if p) or "passage"


@dataclass
class AnswerEvent:
    kind: str  # "citations" | "token" | "done" | "error"
    text: str = ""
    citations: list[Citation] = field(default_factory=list)
    message_id: int | None = None


@dataclass
class ChatMessage:
    id: int
    role: str
    content: str
    citations: list[Citation] = field(default_factory=list)


@dataclass
class RetrievalSettings:
    # bm25 | memory | fused. The untrained memory's attribution ranks the right segment no better
    # than chance (docs/quality.md, needle): fusing it at weight 0.5 moved the fact's passage out
    # of first place in 5 of 10 direct questions that BM25 alone put first. Hence BM25 by default,
    # and a small weight when fused (0.1 and 0.02 kept every BM25 hit).
    mode: str = "bm25"
    memory_weight: float = 0.1  # weight of the memory's ranking in the fusion
    passages: int = 3  # how many passages are cited and re-read
    window_tokens: int = 400  # the re-read text around each passage


# ---- finding the passages ----


def load_memory(library: Library, engine: eng.Engine, doc_id: int) -> eng.Memory:
    info = library.info(doc_id)
    snap = library.snapshot_id(doc_id, engine.fingerprint)
    if snap is None:
        others = info.model_fingerprint
        if others:
            raise LibraryError(f"“{info.title}” was read by a different model; read it again with the current "
                               "model (or switch back to the model that read it)")
        raise LibraryError(f"“{info.title}” has not been read yet")
    reading = library.reading(snap)
    if reading.status != "ready":
        raise LibraryError(f"“{info.title}” is not fully read yet ({reading.segments_done} of "
                           f"{reading.segments_total} segments); finish reading it first")
    return eng.Memory.from_bytes(library.memory_bytes(doc_id, engine.fingerprint), engine.fingerprint)


def _segment_attribution(library: Library, engine: eng.Engine, doc_id: int, question: str):
    """(segment char starts, scores) from the memory's key summaries, or None if missing."""
    with library.Session() as s:
        snap = s.scalar(select(SnapshotRow.id).where(SnapshotRow.document_id == doc_id,
                                                     SnapshotRow.model_fingerprint == engine.fingerprint))
        rows = s.execute(select(SegmentRow.char_start, SegmentRow.token_ids, SegmentRow.key_summary)
                         .where(SegmentRow.snapshot_id == snap).order_by(SegmentRow.idx)).all()
    if not rows or any(r[2] is None for r in rows):
        return None
    L = engine.config.num_hidden_layers
    summaries = np.stack([np.frombuffer(r[2], "<f2").reshape(L, -1) for r in rows])
    tokens = np.array([len(r[1]) // 4 for r in rows])
    scores = segment_scores(query_features(engine, question), summaries, tokens)
    return np.array([r[0] for r in rows]), scores


def find_passages(library: Library, engine: eng.Engine, doc_id: int, question: str,
                  settings: RetrievalSettings | None = None) -> list[Citation]:
    st = settings or RetrievalSettings()
    passages = library.passages(doc_id)
    if not passages:
        return []
    fused = np.zeros(len(passages))
    if st.mode in ("bm25", "fused"):
        for rank, (idx, _score) in enumerate(library.search(doc_id, question)):
            fused[idx] += 1.0 / (RRF_K + rank)
    seg_of = None
    if st.mode in ("memory", "fused"):
        attr = _segment_attribution(library, engine, doc_id, question)
        if attr is not None:
            starts, scores = attr
            seg_rank = np.empty(len(scores), dtype=int)
            seg_rank[np.argsort(-scores)] = np.arange(len(scores))
            # a passage may overlap several segments: it takes the best-ranked of them
            first = np.searchsorted(starts, [p.char_start for p in passages], side="right") - 1
            last = np.searchsorted(starts, [max(p.char_start, p.char_end - 1) for p in passages], side="right") - 1
            seg_of = np.array([a + int(np.argmin(seg_rank[a : b + 1])) for a, b in zip(first, last)])
            w = 1.0 if st.mode == "memory" else st.memory_weight
            fused += w / (RRF_K + seg_rank[seg_of])
    best = [i for i in np.argsort(-fused, kind="stable") if fused[i] > 0][: st.passages]
    doc = library.document(doc_id)
    chapters = [s.title for s in doc.sections]
    out = []
    for rank, i in enumerate(best):
        p = passages[i]
        out.append(Citation(
            rank=rank, segment_idx=int(seg_of[i]) if seg_of is not None else None, section_idx=p.section_idx,
            chapter=chapters[p.section_idx] if p.section_idx is not None else None, page=p.page,
            char_start=p.char_start, char_end=p.char_end, score=float(fused[i]),
            passage=doc.text[p.char_start:p.char_end],
        ))
    return out


def _windows(text: str, cites: list[Citation], chars: int) -> list[tuple[int, int, Citation]]:
    """The re-read text: a window of about `chars` characters centred on each passage, merged
    where they overlap, in book order."""
    spans = []
    for c in sorted(cites, key=lambda c: c.char_start):
        mid = (c.char_start + c.char_end) // 2
        a = max(0, min(c.char_start, mid - chars // 2))
        b = min(len(text), max(c.char_end, mid + chars // 2))
        a = text.rfind("\n", 0, a) + 1 if text.rfind("\n", max(0, a - 300), a) != -1 else a  # start at a line
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(b, spans[-1][1]), spans[-1][2])
        else:
            spans.append((a, b, c))
    return spans


# The prompt's own headings: an answer that starts a line with one is the model writing the next
# turn itself ("… sweet tea.\n\nQuestion: What is the name of the book …", the built-in model with a
# book in its memory), so the answer ends there.
ANSWER_STOP = ["\nQuestion:", "\nExcerpts from the book:"]


def build_prompt(info, doc_text: str, question: str, cites: list[Citation], history: list[ChatMessage],
                 window_chars: int) -> list[dict]:
    by = f" by {info.author}" if info.author else ""
    system = (f"You answer questions about the book “{info.title}”{by}. Answer from the excerpts, "
              "briefly and plainly.")
    messages = [{"role": "system", "content": system}]
    for m in history[-4:]:  # the last two exchanges, for follow-up questions
        messages.append({"role": m.role, "content": m.content})
    if cites:
        parts = []
        for a, b, c in _windows(doc_text, cites, window_chars):
            head = ", ".join(x for x in (c.chapter, f"page {c.page}" if c.page else None) if x)
            parts.append((f"[{head}]\n" if head else "") + doc_text[a:b].strip())
        content = "Excerpts from the book:\n\n" + "\n\n".join(parts) + f"\n\nQuestion: {question}"
    else:
        content = question
    messages.append({"role": "user", "content": content})
    return messages


# ---- the chat ----


def _chat_id(session, doc_id: int) -> int:
    chat = session.scalar(select(ChatRow).where(ChatRow.document_id == doc_id).order_by(ChatRow.id))
    if chat is None:
        chat = ChatRow(document_id=doc_id)
        session.add(chat)
        session.flush()
    return chat.id


def chat_history(library: Library, doc_id: int) -> list[ChatMessage]:
    with library.Session() as s:
        chat = s.scalar(select(ChatRow.id).where(ChatRow.document_id == doc_id).order_by(ChatRow.id))
        if chat is None:
            return []
        msgs = s.scalars(select(MessageRow).where(MessageRow.chat_id == chat).order_by(MessageRow.id)).all()
        cites: dict[int, list[Citation]] = {}
        rows = s.scalars(select(CitationRow).where(CitationRow.message_id.in_([m.id for m in msgs]))
                         .order_by(CitationRow.message_id, CitationRow.rank)).all()
    text = library.document(doc_id).text if rows else ""
    for c in rows:
        cites.setdefault(c.message_id, []).append(Citation(
            c.rank, None, c.section_idx, c.chapter, c.page, c.char_start, c.char_end, c.score,
            text[c.char_start:c.char_end]))
    return [ChatMessage(m.id, m.role, m.content, cites.get(m.id, [])) for m in msgs]


def clear_chat(library: Library, doc_id: int) -> None:
    with library.Session.begin() as s:
        for chat in s.scalars(select(ChatRow).where(ChatRow.document_id == doc_id)):
            s.delete(chat)


def _store_turn(library: Library, doc_id: int, question: str, answer: str, cites: list[Citation],
                fingerprint: str) -> int:
    with library.Session.begin() as s:
        chat = _chat_id(s, doc_id)
        s.add(MessageRow(chat_id=chat, role="user", content=question))
        msg = MessageRow(chat_id=chat, role="assistant", content=answer, model_fingerprint=fingerprint)
        s.add(msg)
        s.flush()
        s.add_all(CitationRow(message_id=msg.id, rank=c.rank, section_idx=c.section_idx, chapter=c.chapter,
                              page=c.page, char_start=c.char_start, char_end=c.char_end, score=c.score)
                  for c in cites)
        return msg.id


def ask(library: Library, engine: eng.Engine, doc_id: int, question: str, reread: bool = True,
        max_new_tokens: int = 300, cancel: threading.Event | None = None,
        settings: RetrievalSettings | None = None) -> Iterator[AnswerEvent]:
    """Answer a question about a document; events: citations, tokens, done (or error)."""
    st = settings or RetrievalSettings()
    try:
        memory = load_memory(library, engine, doc_id)
        cites = find_passages(library, engine, doc_id, question, st)
    except (LibraryError, eng.SnapshotError) as exc:
        yield AnswerEvent("error", str(exc))
        return
    yield AnswerEvent("citations", citations=cites)
    history = chat_history(library, doc_id)
    info = library.info(doc_id)
    doc_text = library.document(doc_id).text if reread else ""
    messages = build_prompt(info, doc_text, question, cites if reread else [], history, st.window_tokens * 4)
    answer = []
    try:
        for piece in engine.generate(messages, memory, max_new_tokens=max_new_tokens, stop=ANSWER_STOP,
                                     repetition_penalty=1.15):
            if cancel is not None and cancel.is_set():
                break
            answer.append(piece)
            yield AnswerEvent("token", piece)
    except Exception as exc:
        log.exception("answering failed")
        yield AnswerEvent("error", f"the model failed while answering: {exc}")
        return
    text = "".join(answer).strip()
    msg_id = _store_turn(library, doc_id, question, text, cites, engine.fingerprint)
    yield AnswerEvent("done", text, cites, msg_id)
