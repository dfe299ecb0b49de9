"""Paragraph-sized passages: the unit of lexical search, of citations and of re-reading."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .document import Document

TARGET_CHARS = 700  # about 150 tokens: small enough to point at, big enough to hold a fact
MAX_CHARS = 1400


@dataclass
class PassageSpan:
    idx: int
    start: int
    end: int
    section_idx: int | None
    page: int | None


_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)]*\s+")


def _paragraphs(text: str):
    pos = 0
    for m in re.finditer(r"\n\s*\n", text):
        if m.start() > pos:
            yield pos, m.start()
        pos = m.end()
    if pos < len(text):
        yield pos, len(text)


def _split_long(text: str, a: int, b: int):
    """A paragraph longer than MAX_CHARS is cut at sentence ends (or anywhere, as a last resort)."""
    while b - a > MAX_CHARS:
        cut = None
        for m in _SENTENCE_END.finditer(text, a + TARGET_CHARS // 2, a + MAX_CHARS):
            cut = m.end()
            if cut - a >= TARGET_CHARS:
                break
        cut = cut or a + MAX_CHARS
        yield a, cut
        a = cut
    if b > a:
        yield a, b


def split_passages(doc: Document) -> list[PassageSpan]:
    """Consecutive paragraphs grouped up to about TARGET_CHARS; never across a chapter or a page
    start, so that a citation's chapter and page are those of all its text."""
    text = doc.text
    chapter_starts = {s.start for s in doc.sections} | set(doc.page_starts or ())
    spans: list[tuple[int, int]] = []
    cur: list[int] | None = None
    for pa, pb in _paragraphs(text):
        for a, b in _split_long(text, pa, pb):
            # a chapter starting after the current passage began (up to this paragraph) closes it
            crosses = cur is not None and any(cur[0] < c <= a for c in chapter_starts)
            if cur is not None and b - cur[0] <= TARGET_CHARS and not crosses:
                cur[1] = b
            else:
                if cur is not None:
                    spans.append((cur[0], cur[1]))
                cur = [a, b]
    if cur is not None:
        spans.append((cur[0], cur[1]))
    out = []
    for i, (a, b) in enumerate(spans):
        sec = doc.section_at(a)
        out.append(PassageSpan(i, a, b, doc.sections.index(sec) if sec is not None else None, doc.page_at(a)))
    return out


# Sentences, for the sentence-level index and for what is re-read: a blank line ends one too (a
# heading); "Dr. Jekyll" stays one sentence.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])[\"'”’)]*\s+|\n\s*\n")
ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Capt|Col|Gen|Lt|Rev|Hon|No|vs|Mt|[A-Z])\.[\"'”’)]*\s*$")


def sentences(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """Sentence spans (document offsets) of text[a:b]."""
    out, start = [], a
    for m in _SENTENCE_BREAK.finditer(text, a, b):
        if ABBREVIATION.search(text, start, m.end()) and "\n" not in m.group():
            continue
        if text[start:m.start()].strip():
            out.append((start, m.start()))
        start = m.end()
    if text[start:b].strip():
        out.append((start, b))
    return out
