"""Chapter and whole-book summaries, written over the document's memory and stored once made.

A chapter is summarised from its own text in the local window (in parts when it does not fit, the
parts' summaries then joined in order, cut to their first sentences when together too long), on top
of the memory of everything before it: the stored segments that end before the chapter starts are
read again (exactly the memory the first reading had at that point), so names introduced earlier are known. The whole book is summarised from the chapter
summaries over the whole memory. What is stored is shown at once next time, unless a new one is
asked for.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select

from infini_reader import engine as eng

from .answers import load_memory
from .db import SegmentRow, SummaryRow
from .document import Document
from .library import Library, LibraryError

# Parts' summaries that together are no longer than this (a long paragraph) are the summary, joined in
# order: asking a small model to merge them loses parts (SmolLM2-135M with the adapter kept only the
# last of two, "In the end, …"). Longer ones are each cut to their first sentences, an equal share of
# this many words each (at least one sentence), and joined the same way; only when even that is more
# than twice as long (a chapter of many parts) does the model merge them.
JOIN_WORDS = 260
ANSWER_TOKENS = 220  # room left in the segment for the prompt's wording and the summary itself
REPETITION_PENALTY = 1.15  # SmolLM2-135M loops on phrases without it
SENTENCE_END = re.compile(r"[.!?][”\"’')]?(?=\s|$)")


@dataclass
class SummaryEvent:
    kind: str  # "status" (what is being done), "token", "done", "error"
    text: str = ""
    section_idx: int | None = None  # None: the whole book


class MemoryBefore:
    """The document's memory as it stood when the reading reached a place in the text: its stored
    segments read again, from the start, up to the last one that ends before that place. Asked for
    places in book order (as the whole-book summary does), each segment is read once in all."""

    def __init__(self, library: Library, engine: eng.Engine, doc_id: int):
        snap = library.snapshot_id(doc_id, engine.fingerprint)
        with library.Session() as s:
            rows = s.execute(select(SegmentRow.char_end, SegmentRow.token_ids).where(SegmentRow.snapshot_id == snap)
                             .order_by(SegmentRow.idx)).all()
        self.engine = engine
        self.ends = np.array([r[0] for r in rows])
        self.tokens = [r[1] for r in rows]
        self.read = 0
        self.memory = engine.new_memory()
        self.segments_read = 0  # segments read again so far (for tests and progress)

    def at(self, char_pos: int, cancel: threading.Event | None = None) -> eng.Memory | None:
        """The memory after every segment that ends at or before `char_pos` (None if cancelled)."""
        target = int(np.searchsorted(self.ends, char_pos, side="right"))
        if target < self.read:
            self.read, self.memory = 0, self.engine.new_memory()
        for j in range(self.read, target):
            if cancel is not None and cancel.is_set():
                return None
            self.memory = self.engine.ingest(np.frombuffer(self.tokens[j], "<i4").astype(np.int64), self.memory)
            self.segments_read += 1
        self.read = target
        return self.memory


def stored_summaries(library: Library, doc_id: int, fingerprint: str) -> dict[int | None, str]:
    with library.Session() as s:
        rows = s.scalars(select(SummaryRow).where(SummaryRow.document_id == doc_id,
                                                  SummaryRow.model_fingerprint == fingerprint)).all()
        return {r.section_idx: r.text for r in rows}


def _store(library: Library, doc_id: int, fingerprint: str, section_idx: int | None, text: str) -> None:
    with library.Session.begin() as s:
        s.execute(delete(SummaryRow).where(SummaryRow.document_id == doc_id, SummaryRow.model_fingerprint == fingerprint,
                                           SummaryRow.section_idx.is_(None) if section_idx is None
                                           else SummaryRow.section_idx == section_idx))
        s.add(SummaryRow(document_id=doc_id, model_fingerprint=fingerprint, section_idx=section_idx, text=text))


def _parts(engine: eng.Engine, text: str, budget: int) -> list[str]:
    """Cut text into pieces of at most `budget` tokens, at paragraph ends where possible."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    parts, cur, n = [], [], 0
    for p in paras:
        k = len(engine.tokenizer.encode(p, add_special_tokens=False).ids)
        if k > budget:  # a giant paragraph: cut by characters (about 4 per token)
            step = budget * 3
            pieces = [p[i : i + step] for i in range(0, len(p), step)]
        else:
            pieces = [p]
        for piece in pieces:
            k = min(k, budget)
            if cur and n + k > budget:
                parts.append("\n\n".join(cur))
                cur, n = [], 0
            cur.append(piece)
            n += k
    if cur:
        parts.append("\n\n".join(cur))
    return parts


def _whole_sentences(text: str) -> str:
    """The text up to its last sentence end (a summary cut by the token limit loses its stub)."""
    text = text.strip()
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def _lead_sentences(text: str, words: int) -> str:
    """The text's first whole sentences, as many as fit in `words` words (at least the first one)."""
    text = _whole_sentences(text)
    ends = [m.end() for m in SENTENCE_END.finditer(text)] or [len(text)]
    keep = ends[0]
    for e in ends[1:]:
        if len(text[:e].split()) > words:
            break
        keep = e
    return text[:keep]


def _generate(engine, memory, messages, cancel, stream: bool, section_idx, max_new,
              enough: Callable[[str], bool] | None = None) -> Iterator[SummaryEvent | str]:
    """Events for the answer's pieces (when `stream`); the last item is the answer. `enough`, asked
    after each piece with the text so far, ends the answer early when it says so."""
    out = []
    for piece in engine.generate(messages, memory, max_new_tokens=max_new, repetition_penalty=REPETITION_PENALTY):
        if cancel is not None and cancel.is_set():
            return
        out.append(piece)
        if stream:
            yield SummaryEvent("token", piece, section_idx)
        if enough is not None and enough("".join(out)):
            break
    yield "".join(out).strip()


def _written(events: Iterator) -> Iterator:
    """The events of a streamed summary, its final text kept to whole sentences: what the token limit
    cut off mid-sentence is shown while it streams, not stored."""
    for ev in events:
        yield _whole_sentences(ev) if isinstance(ev, str) else ev


def _past_its_share(before: list[str], share: int) -> Callable[[str], bool]:
    """For a part summary written after the parts' notes `before`: whether the join is now sure to
    cut it to its first sentences (the notes so far already hold more than JOIN_WORDS words of whole
    sentences) and those are settled (a sentence of it has ended past `share` words). Whatever the
    model would write after that point the join throws away, so it need not be written (a model that
    writes to the token limit, as one with a book-trained memory does, otherwise spends most of a
    chapter's summary on it)."""
    words_before = sum(len(_whole_sentences(n).split()) for n in before)

    def enough(text: str) -> bool:
        text = text.strip()
        # a sentence end that the next character confirms (one at the very end may be "Mr." or
        # lack its closing quote)
        for m in SENTENCE_END.finditer(text):
            if m.end() < len(text):
                words = len(text[: m.end()].split())
                if words > share and words_before + words > JOIN_WORDS:
                    return True
        return False

    return enough


def _summarize_text(engine, memory, title: str, what: str, text: str, cancel, section_idx, max_new: int,
                    depth: int = 0, stop_parts: bool = True) -> Iterator:
    """Events for the final text's tokens; the last item is the summary string. `stop_parts`: a part
    summary ends once the join is sure to cut the rest (`_past_its_share`); else it is written to its
    end, as the model would (the same summary, unless the model must merge the parts)."""
    # What fits in one segment beside the instructions and the answer (a floor for short-segment models,
    # whose prompt then spills over into the memory).
    budget = max(engine.config.segment_length - max_new - 150, 256)
    parts = _parts(engine, text, budget)
    if depth >= 2:  # summaries of summaries still too long: keep what fits
        parts = parts[:1]
    system = {"role": "system", "content": f"You summarise the book “{title}” for a reader."}
    if len(parts) == 1:
        msgs = [system, {"role": "user", "content": f"{what}:\n\n{parts[0]}\n\nSummarise {what.lower()} "
                                                    "in a few sentences: who does what, and what happens."}]
        yield from _written(_generate(engine, memory, msgs, cancel, True, section_idx, max_new))
        return
    notes = []
    for i, part in enumerate(parts, 1):
        yield SummaryEvent("status", f"reading part {i} of {len(parts)}", section_idx)
        msgs = [system, {"role": "user", "content": f"Part {i} of {what.lower()}:\n\n{part}\n\n"
                                                    "Summarise this part in three sentences."}]
        result = None
        enough = _past_its_share(notes, JOIN_WORDS // len(parts)) if stop_parts else None
        for ev in _generate(engine, memory, msgs, cancel, False, section_idx, max_new, enough):
            result = ev
        if result is None:  # cancelled
            return
        notes.append(result)
    kept = [_whole_sentences(n) for n in notes]
    if sum(len(n.split()) for n in kept) > JOIN_WORDS:
        kept = [_lead_sentences(n, JOIN_WORDS // len(notes)) for n in notes]
    if sum(len(n.split()) for n in kept) <= 2 * JOIN_WORDS:
        text = "\n\n".join(n for n in kept if n)
        yield SummaryEvent("token", text, section_idx)
        yield text
        return
    yield SummaryEvent("status", "merging the parts", section_idx)
    joined = "\n\n".join(f"Part {i}: {n}" for i, n in enumerate(notes, 1))
    if len(engine.tokenizer.encode(joined, add_special_tokens=False).ids) > budget:  # summarise the summaries
        yield from _summarize_text(engine, memory, title, what, joined, cancel, section_idx, max_new, depth + 1,
                                   stop_parts)
        return
    msgs = [system, {"role": "user", "content": f"Summaries of the consecutive parts of {what.lower()}:\n\n"
                                                f"{joined}\n\nWrite one summary of {what.lower()} in a few "
                                                "sentences, in the order things happen."}]
    yield from _written(_generate(engine, memory, msgs, cancel, True, section_idx, max_new))


def summarize(library: Library, engine: eng.Engine, doc_id: int, section_idx: int | None = None,
              redo: bool = False, cancel: threading.Event | None = None,
              max_new_tokens: int = ANSWER_TOKENS, before: MemoryBefore | None = None,
              stop_parts: bool = True) -> Iterator[SummaryEvent]:
    """A chapter's summary (section_idx) or the whole book's (None), streamed, then stored.
    `before` carries the re-read memory from one chapter to the next; `stop_parts` False writes every
    part summary to its end (`_summarize_text`; for measuring what stopping saves)."""
    try:
        stored = stored_summaries(library, doc_id, engine.fingerprint)
        if section_idx in stored and not redo:
            yield SummaryEvent("done", stored[section_idx], section_idx)
            return
        memory = load_memory(library, engine, doc_id)
        doc: Document = library.document(doc_id)
        if section_idx is not None and not 0 <= section_idx < len(doc.sections):
            raise LibraryError(f"“{doc.title}” has no chapter {section_idx + 1}")
    except (LibraryError, eng.SnapshotError) as exc:
        yield SummaryEvent("error", str(exc), section_idx)
        return

    if section_idx is not None:
        sec = doc.sections[section_idx]
        what, text = f"The chapter “{sec.title}”", doc.text[sec.start:sec.end]
        if sec.start > 0:
            yield SummaryEvent("status", "recalling the chapters before", section_idx)
            before = before or MemoryBefore(library, engine, doc_id)
            memory = before.at(sec.start, cancel)
            if memory is None:
                return
    elif doc.sections:  # the whole book, from its chapters' summaries
        notes = []
        before = MemoryBefore(library, engine, doc_id)
        for i, sec in enumerate(doc.sections):
            if i not in stored or redo:
                yield SummaryEvent("status", f"summarising chapter {i + 1} of {len(doc.sections)}", None)
                result = None
                for ev in summarize(library, engine, doc_id, i, redo, cancel, max_new_tokens, before, stop_parts):
                    if ev.kind == "error":
                        yield SummaryEvent("error", ev.text, None)
                        return
                    if ev.kind == "done":
                        result = ev.text
                if result is None:
                    return  # cancelled
                stored[i] = result
            notes.append(f"{sec.title}: {stored[i]}")
        what, text = "The whole book, chapter by chapter", "\n\n".join(notes)
    else:
        what, text = "The whole text", doc.text

    summary = None
    for ev in _summarize_text(engine, memory, doc.title, what, text, cancel, section_idx, max_new_tokens,
                              stop_parts=stop_parts):
        if isinstance(ev, str):
            summary = ev
        else:
            yield ev
    if summary is None or (cancel is not None and cancel.is_set()):
        return
    _store(library, doc_id, engine.fingerprint, section_idx, summary)
    yield SummaryEvent("done", summary, section_idx)
