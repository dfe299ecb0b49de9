"""Cutting a document's tokens into the model's segments, each mapped back to text, chapter, page."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .document import Document

# Tokenize in pieces of about this many characters, cut at paragraph or line ends, so that a huge
# file never becomes one giant tokenizer call (memory) and offsets stay exact.
PIECE_CHARS = 200_000


@dataclass
class SegmentPlan:
    idx: int
    char_start: int
    char_end: int
    token_ids: np.ndarray  # int32
    section_idx: int | None
    page_start: int | None
    page_end: int | None


def _pieces(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):
            window = text[end - PIECE_CHARS // 4 : end]
            cut = max(window.rfind("\n\n"), window.rfind("\n"))
            if cut == -1:
                m = list(re.finditer(r"\s", window))
                cut = m[-1].start() if m else -1
            if cut != -1:
                end = end - PIECE_CHARS // 4 + cut + 1
        spans.append((start, end))
        start = end
    return spans


def tokenize_with_offsets(text: str, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (int32) and each token's start offset in `text`."""
    ids, starts = [], []
    for a, b in _pieces(text):
        enc = tokenizer.encode(text[a:b], add_special_tokens=False)
        ids.append(np.asarray(enc.ids, dtype=np.int32))
        starts.append(np.asarray([o[0] for o in enc.offsets], dtype=np.int64) + a)
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(starts)


def plan_segments(doc: Document, tokenizer, segment_length: int) -> list[SegmentPlan]:
    """Segments of `segment_length` tokens; segment j covers text[char_start:char_end], the spans
    tiling the text without gaps."""
    ids, starts = tokenize_with_offsets(doc.text, tokenizer)
    plans = []
    sec_bounds = [(s.start, s.end) for s in doc.sections]
    n = len(ids)
    for j, t0 in enumerate(range(0, n, segment_length)):
        t1 = min(t0 + segment_length, n)
        c0 = 0 if j == 0 else int(starts[t0])
        c1 = len(doc.text) if t1 == n else int(starts[t1])
        plans.append(SegmentPlan(
            j, c0, c1, ids[t0:t1].copy(), _main_section(sec_bounds, c0, c1),
            doc.page_at(c0), doc.page_at(max(c0, c1 - 1)),
        ))
    return plans


def _main_section(bounds: list[tuple[int, int]], a: int, b: int) -> int | None:
    """The chapter that holds most of [a, b), or None if it lies outside every chapter."""
    best, best_len = None, 0
    for i, (s, e) in enumerate(bounds):
        overlap = min(b, e) - max(a, s)
        if overlap > best_len:
            best, best_len = i, overlap
    return best
