"""Chapter and whole-book summaries, written over the document's memory, streamed, stored as they go.

A chapter is cut into parts that fit the local window; each part is summarised on top of the memory
of everything before the chapter (its stored segments read again, `MemoryBefore`), streamed as it is
written, checked, and stored at once: Stop, or a crash, loses at most the part being written, and the
next Summarize continues with the next part. The parts' notes are then merged into one connected
account, a few at a time (a hierarchical merge: groups that fit the window, then the merges of the
groups). The whole book is merged the same way from its chapters' summaries.

Every text the model writes is checked before it is kept (`clean`):
- lines that echo the instructions ("Summarise this part in three sentences.") are taken out;
- a sentence in the first person outside quotes (the model speaking as the narrator: "In the end, I
  was left…") makes the part be written again, with an answer begun in the third person; what is
  still in the first person is dropped;
- a sentence whose names or words are not in the text it summarises is dropped (invented details);
- a merge that loses one of its inputs (few of its words kept) is replaced by the inputs' first
  sentences, in order.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select

from infini_reader import engine as eng

from .answers import load_memory
from .db import SegmentRow, SummaryRow
from .document import Document
from .library import Library, LibraryError

JOIN_WORDS = 260  # the most words a merge's inputs are cut to, in all (beside the window's budget)
ANSWER_TOKENS = 220  # room left in the segment for the prompt's wording and the summary itself
REPETITION_PENALTY = 1.15  # SmolLM2-135M loops on phrases without it
NOTE_SENTENCES = 3  # a part's note ends after this many sentences (unless `stop_parts` is False)
MERGE_KEEP = 0.25  # a merge must keep this share of each input's content words, else it is not used
SUPPORT = 0.5  # a sentence whose content words are less often than this in its source is dropped
STYLES = ("extractive", "abstractive")  # how a part's note is made (see `_note`, `_note_extractive`)
DEFAULT_STYLE = "extractive"  # measured beside "abstractive" in docs/quality.md
KEY_SENTENCES = 3  # sentences an extractive note starts from
MMR = 0.7  # key sentences: closeness to the part's meaning against closeness to those already chosen
PARTS_KEY = -1000  # stored part notes: section_idx PARTS_KEY - (chapter + 1); PARTS_KEY for the whole text
SENTENCE_END = re.compile(r"[.!?][”\"’')]?(?=\s|$)")
FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|I'll|me|my|mine|myself|we|us|our|ours|ourselves)\b")
QUOTED = re.compile(r"[“\"][^”\"]*[”\"]")
SPEECH = re.compile(r"[“”\"]|(^|\s)['‘]|['’](\s|$)")  # any quotation mark: a sentence of, or cut from, dialogue
# what the prompts say, that must never be kept as part of a summary
ECHO = re.compile(r"summari[sz]e|summary of (the|this)|in (a few|three|two) sentences|\bpart \d+ of\b|"
                  r"you summari|for a reader|the third person|connected summary|consecutive parts|"
                  r"\bin the (first|second|third|last|next) sentence\b|\b(these|those|the) sentences\b",
                  re.IGNORECASE)
LABEL = re.compile(r"^\s*(summary|part \d+|chapter \d+|answer)\s*:\s*", re.IGNORECASE)
WORD = re.compile(r"[A-Za-z][A-Za-z'’-]+")
STOP = set("""the and that this with from they them their there then than were was have has had into onto
about after before over under which while where when what who whom whose will would could should shall
been being also only just very much more most some such other another each every both either neither
upon said says like even well back down away here part story chapter book text summary reader things
happens happen still again once through though until these those your yours its it's his her hers him
she he not but for are all any can one two three first last later soon little long""".split())


@dataclass
class SummaryEvent:
    """kind: "status" (what is being done), "token" (a piece of text being written: of part `part`,
    or of the merge when `part` is None), "part" (part `part` of `parts` is finished: its note),
    "progress" (`done` of `total` parts of the whole job finished, `eta` seconds left when known),
    "done" (the summary of `section_idx`), "error"."""

    kind: str
    text: str = ""
    section_idx: int | None = None  # None: the whole book
    part: int | None = None
    parts: int | None = None
    done: int = 0
    total: int = 0
    eta: float | None = None


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


# ---- storage: finished summaries, and the notes of the parts finished so far ----

def _parts_key(section_idx: int | None) -> int:
    return PARTS_KEY if section_idx is None else PARTS_KEY - (section_idx + 1)


def stored_summaries(library: Library, doc_id: int, fingerprint: str) -> dict[int | None, str]:
    """The finished summaries: {chapter index or None for the whole book: text}."""
    with library.Session() as s:
        rows = s.scalars(select(SummaryRow).where(SummaryRow.document_id == doc_id,
                                                  SummaryRow.model_fingerprint == fingerprint)).all()
        return {r.section_idx: r.text for r in rows if r.section_idx is None or r.section_idx >= 0}


def _put(library: Library, doc_id: int, fingerprint: str, section_idx: int | None, text: str) -> None:
    with library.Session.begin() as s:
        s.execute(delete(SummaryRow).where(SummaryRow.document_id == doc_id, SummaryRow.model_fingerprint == fingerprint,
                                           SummaryRow.section_idx.is_(None) if section_idx is None
                                           else SummaryRow.section_idx == section_idx))
        s.add(SummaryRow(document_id=doc_id, model_fingerprint=fingerprint, section_idx=section_idx, text=text))


def _drop(library: Library, doc_id: int, fingerprint: str, key: int) -> None:
    with library.Session.begin() as s:
        s.execute(delete(SummaryRow).where(SummaryRow.document_id == doc_id, SummaryRow.model_fingerprint == fingerprint,
                                           SummaryRow.section_idx == key))


def _store(library: Library, doc_id: int, fingerprint: str, section_idx: int | None, text: str) -> None:
    """The finished summary; its parts' notes are no longer needed."""
    _put(library, doc_id, fingerprint, section_idx, text)
    _drop(library, doc_id, fingerprint, _parts_key(section_idx))


def _plan_hash(parts: list[str], style: str = "abstractive") -> str:
    """Which cut into parts, and which kind of notes, the stored notes belong to."""
    return hashlib.sha256("\x00".join([style] + parts).encode()).hexdigest()[:16]


def stored_notes(library: Library, doc_id: int, fingerprint: str, section_idx: int | None,
                 plan: str | None = None) -> list[str]:
    """The notes of the parts finished so far (of the same cut into parts, when `plan` is given)."""
    with library.Session() as s:
        row = s.scalars(select(SummaryRow).where(SummaryRow.document_id == doc_id,
                                                 SummaryRow.model_fingerprint == fingerprint,
                                                 SummaryRow.section_idx == _parts_key(section_idx))).first()
        if row is None:
            return []
        try:
            data = json.loads(row.text)
        except ValueError:
            return []
    if plan is not None and data.get("plan") != plan:
        return []
    return list(data.get("notes", []))


def _store_notes(library: Library, doc_id: int, fingerprint: str, section_idx: int | None, plan: str,
                 notes: list[str]) -> None:
    _put(library, doc_id, fingerprint, _parts_key(section_idx), json.dumps({"plan": plan, "notes": notes}))


# ---- cutting, sentences ----

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


def _budget(engine: eng.Engine, max_new: int) -> int:
    # What fits in one segment beside the instructions and the answer (a floor for short-segment models,
    # whose prompt then spills over into the memory).
    return max(engine.config.segment_length - max_new - 150, 256)


def sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    out, start = [], 0
    for m in SENTENCE_END.finditer(text):
        out.append(text[start : m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return [s for s in out if s]


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


def _stem(w: str) -> str:
    return w.lower().replace("’", "'").split("'")[0][:6]


def _content(text: str) -> set[str]:
    return {_stem(w) for w in WORD.findall(text) if len(w) > 3 and w.lower() not in STOP}


def first_person(sentence: str) -> bool:
    """Whether a sentence speaks as "I" or "we" outside quoted speech."""
    return bool(FIRST_PERSON.search(QUOTED.sub(" ", sentence)))


def supported(sentence: str, source_words: set[str], source_names: set[str]) -> bool:
    """Whether a sentence's names and most of its words are in the text it summarises."""
    words = WORD.findall(sentence)
    names = {w.lower() for w in words[1:] if w[0].isupper() and len(w) > 2 and w.lower() not in STOP}
    if names - source_names:
        return False
    content = _content(sentence)
    return not content or len(content & source_words) / len(content) >= SUPPORT


def clean(text: str, source: str | None = None, third_person: bool = True) -> str:
    """What of a written summary is kept: whole sentences, no instruction echoed, no first person
    (when `third_person`), nothing unsupported by `source` (when given)."""
    text = "\n".join(LABEL.sub("", line) for line in text.splitlines())
    words = _content(source) if source is not None else set()
    names = {w.lower() for w in WORD.findall(source)} if source is not None else set()
    kept = []
    for s in sentences(_whole_sentences(text)):
        if ECHO.search(s) or (third_person and first_person(s)):
            continue
        if source is not None and not supported(s, words, names):
            continue
        kept.append(s)
    return " ".join(kept)


def key_sentences(text: str, n: int = 2) -> str:
    """An extractive note: the part's `n` sentences closest to its words as a whole, in order (the
    fallback when nothing the model wrote can be kept); speech and first person left out."""
    cands = [s for s in sentences(text) if 6 <= len(s.split()) <= 45 and not first_person(s) and not QUOTED.search(s)]
    if not cands:
        return ""
    counts: dict[str, int] = {}
    for w in WORD.findall(text):
        if len(w) > 3 and w.lower() not in STOP:
            counts[_stem(w)] = counts.get(_stem(w), 0) + 1
    score = [sum(counts.get(w, 0) for w in _content(s)) / (len(s.split()) ** 0.5) for s in cands]
    best = sorted(np.argsort(score)[::-1][:n])
    return " ".join(cands[i] for i in best)


def _candidates(text: str, third_person: bool = True) -> list[str]:
    """Sentences that can stand alone in a note: of a reasonable length, not speech (and not the
    narrator speaking, when `third_person`)."""
    return [s for s in _paragraph_sentences(text) if 8 <= len(s.split()) <= 45 and not SPEECH.search(s)
            and not (third_person and first_person(s))]


def _paragraph_sentences(text: str) -> list[str]:
    """The sentences of each paragraph (a heading stays out of the sentence after it)."""
    return [x for para in re.split(r"\n\s*\n", text) for x in sentences(para)]


def choose_sentences(text: str, n: int = KEY_SENTENCES, embedder=None) -> list[str]:
    """The part's `n` key sentences, in the text's order: by meaning (each candidate's closeness to
    the whole part's embedding, maximal marginal relevance so that they say different things) when an
    embedding model is given, else by the part's most frequent words. Sentences in the first person
    are taken only when the text has too few others (a narrator telling the story: the rewrite turns
    them to the third person)."""
    cands = _candidates(text) or _candidates(text, third_person=False)
    if len(cands) <= n:
        return cands
    if embedder is None:
        return sentences(key_sentences(text, n))
    everything = [s for s in _paragraph_sentences(text) if len(s.split()) >= 3] or cands
    vecs = embedder(cands)
    centre = embedder(everything).mean(axis=0)
    centre /= np.linalg.norm(centre) + 1e-9
    relevance = vecs @ centre
    chosen: list[int] = []
    while len(chosen) < n:
        overlap = (vecs @ vecs[chosen].T).max(axis=1) if chosen else np.zeros(len(cands))
        score = MMR * relevance - (1 - MMR) * overlap
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return [cands[i] for i in sorted(chosen)]


def _embedder():
    from .embeddings import default_embedder
    return default_embedder()


def _note_extractive(engine, memory, title, what, part, i, n, cancel, section_idx, max_new, stop_parts) -> Iterator:
    """One part's note made from the part's own key sentences (`choose_sentences`), retold by the model
    in the third person from those sentences alone: the model writes from three sentences, not a whole
    part, so it has little room to invent, and the prompt is short (fast). The retelling is kept when
    every sentence of it is supported by the part and it keeps enough of the key sentences' words;
    otherwise the key sentences themselves are the note. Last item: the note."""
    key = choose_sentences(part, KEY_SENTENCES, _embedder())
    if not key:
        yield ""
        return
    picked = " ".join(key)
    where = f"{what}" if n == 1 else f"part {i + 1} of {n} of {what.lower()}"
    ask = (f"Here are sentences from {where}, in order:\n\n{picked}\n\nRetell them in two or three short "
           "sentences: who does what. Use the characters' names. Add nothing that is not in them.")
    msgs = [_system(title), {"role": "user", "content": ask}]
    result = yield from _relay(_generate(engine, memory, msgs, cancel, section_idx, i, min(max_new, 120),
                                         _sentences_done(NOTE_SENTENCES) if stop_parts else None))
    if result is None:
        return  # cancelled
    note = clean(result, part)
    if not note or _coverage(note, picked) < MERGE_KEEP:
        note = " ".join(s for s in key if not first_person(s))
    yield note


# ---- timing ----

_RATE: dict[tuple[str, str], float] = {}  # (engine fingerprint, style) → seconds a part took (the ETA's guess)
EXTRACTIVE_PROMPT = 200  # tokens of an extractive note's prompt: the instructions and three sentences


def seconds_per_part(engine: eng.Engine, max_new: int = ANSWER_TOKENS, style: str | None = None) -> float:
    """What one part takes on this machine: measured on the parts written so far in this process,
    else by a short probe (a few tokens of a short answer)."""
    style = style or DEFAULT_STYLE
    key = (getattr(engine, "fingerprint", ""), style)
    if key in _RATE:
        return _RATE[key]
    t0, n = time.perf_counter(), 0
    for _ in engine.generate([{"role": "user", "content": "Say hello to the reader. " * 20}], None, max_new_tokens=8):
        n += 1
    per_token = (time.perf_counter() - t0) / max(n, 1)
    # a note is about 80 tokens (three sentences) after a prompt of a segment (extractive: of three
    # sentences), read about 20× faster a token
    prompt = EXTRACTIVE_PROMPT if style == "extractive" else _budget(engine, max_new)
    guess = per_token * (min(max_new, 90) + prompt / 20)
    _RATE[key] = guess
    return guess


@dataclass
class Estimate:
    parts: int  # parts to write (the merges come on top, counted in the time)
    seconds: float

    def words(self) -> str:
        m = round(self.seconds / 60)
        return f"about {m} minute{'s' if m != 1 else ''}" if m >= 1 else "less than a minute"


def _chapter_texts(doc: Document, section_idx: int | None) -> list[tuple[int | None, str]]:
    if section_idx is not None:
        sec = doc.sections[section_idx]
        return [(section_idx, doc.text[sec.start:sec.end])]
    if doc.sections:
        return [(i, doc.text[s.start:s.end]) for i, s in enumerate(doc.sections)]
    return [(None, doc.text)]


def estimate(library: Library, engine: eng.Engine, doc_id: int, section_idx: int | None = None,
             max_new_tokens: int = ANSWER_TOKENS, redo: bool = False, style: str | None = None) -> Estimate:
    """How many parts are left to write for this summary, and about how long it will take."""
    doc = library.document(doc_id)
    stored = {} if redo else stored_summaries(library, doc_id, engine.fingerprint)
    budget = _budget(engine, max_new_tokens)
    style = style or DEFAULT_STYLE
    parts = merges = 0
    for key, text in _chapter_texts(doc, section_idx):
        if key in stored and key is not None:
            continue
        plan = _parts(engine, text, budget)
        have = 0 if redo else len(stored_notes(library, doc_id, engine.fingerprint, key, _plan_hash(plan, style)))
        parts += max(len(plan) - have, 0)
        merges += max(len(plan) - 1, 0) // 3 + (len(plan) > 1)
    if section_idx is None and doc.sections:
        merges += max(len(doc.sections) // 3, 1)
    return Estimate(parts, (parts + 1.5 * merges) * seconds_per_part(engine, max_new_tokens, style))


class _Clock:
    """The job's parts done and left, and the time left, from the parts' measured pace."""

    def __init__(self, engine, total: int, done: int, max_new: int, style: str):
        self.key = (getattr(engine, "fingerprint", ""), style)
        self.total, self.done = total, done
        self.guess = _RATE.get(self.key)
        self.spent, self.written = 0.0, 0

    def part_done(self, seconds: float) -> None:
        self.done += 1
        self.spent += seconds
        self.written += 1
        _RATE[self.key] = self.spent / self.written

    def event(self, section_idx) -> SummaryEvent:
        per = self.spent / self.written if self.written else self.guess
        left = max(self.total - self.done, 0)
        eta = None if per is None else per * (left + 1.5 * (1 + left // 3))
        return SummaryEvent("progress", "", section_idx, done=self.done, total=self.total, eta=eta)


# ---- writing ----

def _relay(events: Iterator) -> Iterator[SummaryEvent]:
    """Pass a step's events on; return its last item, the text it made (None when it was cancelled).
    `text = yield from _relay(step)`."""
    text = None
    for ev in events:
        if isinstance(ev, str):
            text = ev
        else:
            yield ev
    return text


def _ids(engine, messages: list[dict], prefix: str):
    """The prompt with the answer begun (`prefix`), as token ids (a string would become a new turn)."""
    if not prefix or getattr(engine, "chat", None) is None:
        return messages
    text = engine.chat.render(messages, add_generation_prompt=True) + prefix
    return engine.tokenizer.encode(text, add_special_tokens=False).ids


def _generate(engine, memory, prompt, cancel, section_idx, part, max_new,
              enough: Callable[[str], bool] | None = None, prefix: str = "") -> Iterator[SummaryEvent | str]:
    """Token events; the last item is the whole answer (None-free). Returns early when cancelled."""
    out = [prefix] if prefix else []
    if prefix:
        yield SummaryEvent("token", prefix, section_idx, part=part)
    for piece in engine.generate(_ids(engine, prompt, prefix), memory, max_new_tokens=max_new,
                                 repetition_penalty=REPETITION_PENALTY):
        if cancel is not None and cancel.is_set():
            return
        out.append(piece)
        yield SummaryEvent("token", piece, section_idx, part=part)
        if enough is not None and enough("".join(out)):
            break
    yield "".join(out).strip()


def _sentences_done(n: int) -> Callable[[str], bool]:
    """A note is enough once it has `n` sentences confirmed by the next character ("Mr." at the very
    end may not be a sentence end)."""
    def enough(text: str) -> bool:
        text = text.strip()
        return sum(1 for m in SENTENCE_END.finditer(text) if m.end() < len(text)) >= n
    return enough


def _system(title: str) -> dict:
    return {"role": "system", "content": f"You write summaries of the book “{title}”. Write in the third person "
                                         "about the characters (he, she, they, their names), never as the narrator."}


def _note(engine, memory, title, what, part, i, n, cancel, section_idx, max_new, stop_parts) -> Iterator:
    """One part's note, checked: written again, begun in the third person, when it speaks as the
    narrator; the part's key sentences when nothing of it can be kept. Last item: the note."""
    where = f"{what}" if n == 1 else f"part {i + 1} of {n} of {what.lower()}"
    ask = (f"Here is {where}:\n\n{part}\n\nTell in three sentences what happens in it: who does what. "
           "Use the characters' names.")
    msgs = [_system(title), {"role": "user", "content": ask}]
    enough = _sentences_done(NOTE_SENTENCES) if stop_parts else None
    note = ""
    for prefix in ("", "In this part, "):
        result = yield from _relay(_generate(engine, memory, msgs, cancel, section_idx, i, max_new, enough, prefix))
        if result is None:
            return  # cancelled
        narrator = any(first_person(s) for s in sentences(result))
        note = clean(result, part)
        if not narrator and note:
            break
        yield SummaryEvent("status", f"writing part {i + 1} again, in the third person", section_idx, part=i)
    yield note or key_sentences(part)


def _coverage(merged: str, source: str) -> float:
    words = _content(source)
    return len(words & _content(merged)) / len(words) if words else 1.0


def _merge(engine, memory, title, what, notes: list[str], cancel, section_idx, max_new, depth: int = 0) -> Iterator:
    """One connected account of consecutive notes: groups that fit the window merged by the model,
    then their merges, until one is left. Last item: the account."""
    notes = [n for n in notes if n.strip()]
    if len(notes) <= 1:
        yield notes[0] if notes else ""
        return
    budget = _budget(engine, max_new)
    cut = [_lead_sentences(n, max(JOIN_WORDS // len(notes), 40)) for n in notes]
    groups, cur, size = [], [], 0
    for n in cut:
        k = len(engine.tokenizer.encode(n, add_special_tokens=False).ids)
        if cur and (size + k > budget or len(cur) >= 4):
            groups.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += k
    groups.append(cur)
    merged = []
    for g in groups:
        if len(g) == 1:
            merged.append(g[0])
            continue
        yield SummaryEvent("status", "connecting the parts", section_idx)
        joined = "\n\n".join(g)
        ask = (f"These are summaries of consecutive parts of {what.lower()}, in order:\n\n{joined}\n\n"
               "Rewrite them as one connected account of what happens, in order, keeping every event and name.")
        msgs = [_system(title), {"role": "user", "content": ask}]
        result = yield from _relay(_generate(engine, memory, msgs, cancel, section_idx, None, max_new))
        if result is None:
            return
        text = clean(result, joined)
        if not text or min(_coverage(text, n) for n in g) < MERGE_KEEP:  # a part lost: keep them all
            text = " ".join(_lead_sentences(n, max(JOIN_WORDS // len(g), 30)) for n in g)
        merged.append(text)
    if len(merged) == 1 or depth >= 3:
        yield " ".join(merged)
        return
    yield from _merge(engine, memory, title, what, merged, cancel, section_idx, max_new, depth + 1)


def _summarize_text(library, engine, memory, doc_id, title, what, text, cancel, section_idx, max_new, clock,
                    stop_parts: bool, redo: bool, style: str = "abstractive") -> Iterator:
    """A chapter (or a text without chapters): its parts' notes, stored one by one, then merged.
    Events; the last item is the summary (nothing when cancelled)."""
    parts = _parts(engine, text, _budget(engine, max_new))
    plan = _plan_hash(parts, style)
    fp = engine.fingerprint
    write_note = _note_extractive if style == "extractive" else _note
    if redo:
        _drop(library, doc_id, fp, _parts_key(section_idx))
    notes = stored_notes(library, doc_id, fp, section_idx, plan)[: len(parts)]
    for i, note in enumerate(notes):  # finished before: shown as they are
        yield SummaryEvent("part", note, section_idx, part=i, parts=len(parts))
    for i in range(len(notes), len(parts)):
        yield SummaryEvent("status", f"writing part {i + 1} of {len(parts)}" if len(parts) > 1 else "writing",
                           section_idx, part=i, parts=len(parts))
        yield clock.event(section_idx)
        t0 = time.perf_counter()
        note = yield from _relay(write_note(engine, memory, title, what, parts[i], i, len(parts), cancel, section_idx,
                                            max_new, stop_parts))
        if note is None or (cancel is not None and cancel.is_set()):
            return
        notes.append(note)
        _store_notes(library, doc_id, fp, section_idx, plan, notes)
        clock.part_done(time.perf_counter() - t0)
        yield SummaryEvent("part", note, section_idx, part=i, parts=len(parts))
        yield clock.event(section_idx)
    summary = yield from _relay(_merge(engine, memory, title, what, notes, cancel, section_idx, max_new))
    if summary is not None and not (cancel is not None and cancel.is_set()):
        yield summary


def summarize(library: Library, engine: eng.Engine, doc_id: int, section_idx: int | None = None,
              redo: bool = False, cancel: threading.Event | None = None,
              max_new_tokens: int = ANSWER_TOKENS, before: MemoryBefore | None = None,
              stop_parts: bool = True, style: str | None = None) -> Iterator[SummaryEvent]:
    """A chapter's summary (section_idx) or the whole book's (None: every chapter missing, then the
    book), streamed; each part's note stored as it is finished, each summary once merged. Cancelled,
    it ends without "done"; called again, it continues with the first part not finished. `redo`
    writes everything again. `stop_parts` False lets every note run to the token limit. `style`: how
    the parts' notes are made (`STYLES`; default `DEFAULT_STYLE`)."""
    style = style or DEFAULT_STYLE
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

    budget = _budget(engine, max_new_tokens)
    chapters = _chapter_texts(doc, section_idx)
    sizes = {k: len(_parts(engine, t, budget)) for k, t in chapters}
    done = 0
    for k, _ in chapters:
        if k is not None and k in stored and not redo:
            done += sizes[k]
        elif not redo:
            done += min(len(stored_notes(library, doc_id, engine.fingerprint, k)), sizes[k])
    clock = _Clock(engine, sum(sizes.values()), done, max_new_tokens, style)

    def chapter(i: int, text: str) -> Iterator:
        nonlocal before
        sec = doc.sections[i]
        mem = memory
        if sec.start > 0:
            yield SummaryEvent("status", "recalling the chapters before", i)
            before = before or MemoryBefore(library, engine, doc_id)
            mem = before.at(sec.start, cancel)
            if mem is None:
                return
        yield from _summarize_text(library, engine, mem, doc_id, doc.title, f"The chapter “{sec.title}”", text,
                                   cancel, i, max_new_tokens, clock, stop_parts, redo, style)

    if section_idx is not None or doc.sections:
        notes = []
        for i, text in chapters:
            if i in stored and not redo:
                notes.append(stored[i])
                continue
            if section_idx is None:
                yield SummaryEvent("status", f"summarising chapter {i + 1} of {len(chapters)}", i)
            result = yield from _relay(chapter(i, text))
            if result is None:
                return  # cancelled: the parts finished so far are stored
            _store(library, doc_id, engine.fingerprint, i, result)
            yield SummaryEvent("done", result, i)
            notes.append(result)
        if section_idx is not None:
            return
        yield SummaryEvent("status", "connecting the chapters", None)
        summary = yield from _relay(_merge(engine, memory, doc.title, "the whole book", notes, cancel, None,
                                           max_new_tokens))
    else:  # a text without chapters: its parts, merged
        summary = yield from _relay(_summarize_text(library, engine, memory, doc_id, doc.title, "The whole text",
                                                    doc.text, cancel, None, max_new_tokens, clock, stop_parts, redo,
                                                    style))
    if summary is None or (cancel is not None and cancel.is_set()):
        return
    _store(library, doc_id, engine.fingerprint, None, summary)
    yield SummaryEvent("done", summary, None)
