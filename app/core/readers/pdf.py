"""PDF: the text layer page by page, with running headers and footers gone and paragraphs rejoined.

A PDF knows lines and their positions, not paragraphs. Lines of a block that reach its right edge
continue on the next line ("exam-" + "ple" becomes "example"); blocks, short lines ending a sentence
and wide gaps end paragraphs; a paragraph that runs over a page break is joined again.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# pymupdf 2 loads onnxruntime (for its layout analysis), whose official builds send telemetry: a
# background thread looks up Microsoft's event servers (DNS) a few seconds after the import. The
# application promises no network at run time; this must be set before onnxruntime starts.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import pymupdf  # noqa: E402

from infini_reader.app.core.document import Document, ReaderError
from infini_reader.app.core.readers.chapters import (
    Mark,
    gutenberg_bounds,
    heading_marks,
    promote_single_root,
    sections_from_marks,
    shift_pages,
)

pymupdf.TOOLS.mupdf_display_errors(False)  # damaged files are reported as ReaderErrors, not on stderr

# Ligatures expanded ("ﬁ" -> "fi"), images left out: text is all we read.
_FLAGS = (
    (pymupdf.TEXTFLAGS_DICT | pymupdf.TEXT_MEDIABOX_CLIP)
    & ~pymupdf.TEXT_PRESERVE_LIGATURES
    & ~pymupdf.TEXT_PRESERVE_IMAGES
)
_SENTENCE_END = re.compile(r"[.!?…:][\"'”’)\]]*$")
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
_ROMAN_TOKEN = re.compile(r"\b[ivxlcdm]+\b")
_JUNK_TITLE = re.compile(r"(?i)^(untitled|microsoft word - .*|.*\.(docx?|pdf|indd|rtf|odt|tex|qxd))$")


@dataclass(slots=True)
class _Line:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    size: float  # largest font size on the line


def read_pdf(path: Path) -> Document:
    name = path.name
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as e:
        raise ReaderError(f"{name} is damaged or not a PDF ({e})") from None
    with doc:
        if doc.needs_pass:
            raise ReaderError(
                f"{name} is password-protected; open it in a PDF viewer with its password and save an unprotected copy"
            )
        if doc.page_count == 0:
            raise ReaderError(f"{name} is damaged: it has no pages")
        pages, imageonly, unreadable = _read_pages(doc)
        repaired = bool(getattr(doc, "is_repaired", False))
        if repaired:  # a damaged file mupdf rebuilt: its empty pages are pages it lost, not blank ones
            unreadable = sorted(
                set(unreadable) | {i + 1 for i, blocks in enumerate(pages) if not blocks} - set(imageonly)
            )
        metadata = doc.metadata or {}
        language = getattr(doc, "language", None)
        try:
            toc = doc.get_toc(simple=True)
        except Exception:
            toc = []
    if not any(pages):
        if imageonly:
            raise ReaderError(f"{name} seems to be scanned: its pages have no text layer (OCR it first, then add it)")
        if unreadable:
            raise ReaderError(f"{name} is damaged (truncated or corrupt): none of its pages can be read")
        raise ReaderError(f"{name} has no readable text")
    if len(unreadable) > len(pages) // 2:
        raise ReaderError(
            f"{name} is damaged (truncated or corrupt): {len(unreadable)} of its {len(pages)} pages cannot be read"
        )

    _drop_running_lines(pages)
    text, page_starts = _assemble(pages)
    del pages
    warnings = []
    if imageonly:
        warnings.append(
            f"{_page_list(imageonly)} of {name} have no text layer (scanned images?) and were left out; "
            "OCR the PDF to read them"
        )
    if unreadable:
        warnings.append(f"{_page_list(unreadable)} of {name} could not be read (the file is damaged) and were left out")
    elif repaired:
        warnings.append(f"{name} is damaged; it was repaired while reading, so check that its text is complete")

    pg = gutenberg_bounds(text)
    if pg:
        page_starts = shift_pages(page_starts, pg.start, pg.end)
        text = text[pg.start : pg.end]
    lead = len(text) - len(text.lstrip())
    text = text.strip()
    page_starts = [min(max(p - lead, 0), len(text)) for p in page_starts]
    if not text:
        raise ReaderError(f"{name} has no readable text")

    sections = []
    if toc:
        marks = promote_single_root(_outline_marks(text, page_starts, toc))
        sections = sections_from_marks(text, marks, page_starts)
    if not sections:
        sections = sections_from_marks(text, heading_marks(text), page_starts)
    title = (pg.title if pg else None) or _clean_meta(metadata.get("title")) or path.stem
    return Document(
        title=title,
        author=(pg.author if pg else None) or _clean_meta(metadata.get("author")),
        language=(pg.language if pg else None) or language or None,
        format="pdf",
        text=text,
        sections=sections,
        page_starts=page_starts,
        warnings=warnings,
        source_path=str(path),
    )


def _clean_meta(value: str | None) -> str | None:
    value = " ".join((value or "").split())
    return None if not value or _JUNK_TITLE.match(value) else value


def _page_list(pages: list[int]) -> str:
    """1-based page numbers as "Page 3" or "Pages 3, 7–9"."""
    runs: list[list[int]] = []
    for p in pages:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    text = ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)
    return f"Page {text}" if len(pages) == 1 else f"Pages {text}"


def _read_pages(doc) -> tuple[list[list[list[_Line]]], list[int], list[int]]:
    """Per page, its text blocks as lists of visual lines; and the pages with only images, or unreadable."""
    pages = []
    imageonly, unreadable = [], []
    for i in range(doc.page_count):
        try:
            page = doc.load_page(i)
            blocks = _page_blocks(page)
            if not blocks and page.get_images():
                imageonly.append(i + 1)
        except Exception:
            blocks = []
            unreadable.append(i + 1)
        pages.append(blocks)
    return pages, imageonly, unreadable


def _page_blocks(page) -> list[list[_Line]]:
    blocks = []
    for b in page.get_text("dict", flags=_FLAGS)["blocks"]:
        lines: list[_Line] = []
        for line in b.get("lines", ()):
            spans = [s for s in line["spans"] if s["text"].strip()]
            if not spans:
                continue
            text = " ".join("".join(s["text"] for s in line["spans"]).split())
            x0, y0, x1, y1 = line["bbox"]
            size = max(s["size"] for s in spans)
            prev = lines[-1] if lines else None
            # Pieces of one visual line (table cells, "CHAPTER I." and its title) share a baseline.
            if prev is not None and abs(prev.y1 - y1) < 2 and x0 >= prev.x1 - 1:
                prev.text += " " + text
                prev.x1, prev.size = max(prev.x1, x1), max(prev.size, size)
            else:
                lines.append(_Line(text, x0, y0, x1, y1, size))
        # Unreadable glyphs come out as U+FFFD; a block of them is no text.
        lines = [ln for ln in lines if ln.text.count("\ufffd") <= len(ln.text) // 3]
        if lines:
            blocks.append(lines)
    return blocks


def _line_key(text: str) -> str:
    """A running header's identity: page numbers, in digits or roman numerals, do not count."""
    return _ROMAN_TOKEN.sub("#", re.sub(r"\d+", "#", " ".join(text.lower().split())))


def _body_size(pages) -> float:
    sizes = Counter()
    for blocks in pages:
        for block in blocks:
            for ln in block:
                sizes[round(ln.size)] += len(ln.text)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def _drop_running_lines(pages) -> None:
    """Remove the top and bottom lines repeated on several pages: running headers, footers, page numbers.

    A chapter heading at the top of a page is set larger than the body text; a running line is not.
    """
    body = _body_size(pages)
    edges = []  # per page: (top line, bottom line) or None
    tops, bottoms = Counter(), Counter()
    for blocks in pages:
        lines = [ln for block in blocks for ln in block]
        if not lines:
            edges.append(None)
            continue
        top = min(lines, key=lambda ln: ln.y0)
        bottom = max(lines, key=lambda ln: ln.y1)
        edges.append((top, bottom))
        tops[_line_key(top.text)] += 1
        if bottom is not top:
            bottoms[_line_key(bottom.text)] += 1
    text_pages = sum(e is not None for e in edges)
    if text_pages < 2:
        return
    needed = 3 if text_pages >= 6 else 2
    for blocks, edge in zip(pages, edges, strict=True):
        if edge is None:
            continue
        top, bottom = edge
        drop = set()
        if tops[_line_key(top.text)] >= needed and top.size <= body + 1:
            drop.add(id(top))
        if bottom is not top and bottoms[_line_key(bottom.text)] >= needed and bottom.size <= body + 1:
            drop.add(id(bottom))
        if drop:
            blocks[:] = [b for b in ([ln for ln in block if id(ln) not in drop] for block in blocks) if b]


def _vocabulary(pages) -> tuple[set[str], set[str]]:
    """The document's words and hyphenated compounds, to tell "exam-ple" (join) from "daisy-chain" (keep)."""
    words, compounds = set(), set()
    for blocks in pages:
        for block in blocks:
            for ln in block:
                for m in _WORD.finditer(ln.text.lower()):
                    (compounds if "-" in m.group() else words).add(m.group())
    return words, compounds


def _join(a: str, b: str, words: set[str], compounds: set[str]) -> str:
    """Two lines of one paragraph as one, undoing the hyphenation of a word split at the line end."""
    if a.endswith("\xad"):
        return a[:-1] + b
    if len(a) >= 2 and a[-1] == "-" and a[-2].isalpha() and b[:1].islower():
        head = re.search(r"[^\W\d_]+-$", a)
        tail = re.match(r"[^\W\d_]+", b)
        if head and tail:
            first, second = head.group()[:-1].lower(), tail.group().lower()
            if f"{first}-{second}" in compounds and first + second not in words:
                return a + b  # a real compound, seen elsewhere with its hyphen
        return a[:-1] + b
    if a.endswith(("—", "–")):
        return a + b
    return a + " " + b


def _block_paragraphs(block: list[_Line], body: float, words, compounds) -> list[str]:
    heading = all(ln.size > body + 1 for ln in block)
    prose = heading or (len(block) >= 2 and sum(len(ln.text) for ln in block[:-1]) / (len(block) - 1) >= 40)
    left = min(ln.x0 for ln in block)
    right = max(ln.x1 for ln in block)
    width = max(right - left, 1.0)
    paragraphs = []
    current = block[0].text
    for a, b in itertools.pairwise(block):
        height = max(a.y1 - a.y0, 1.0)
        if not prose:
            current += "\n" + b.text
        elif b.y0 - a.y1 > 0.8 * height or abs(a.size - b.size) > 1:  # a wide gap or a heading: a new paragraph
            paragraphs.append(current)
            current = b.text
        elif heading:  # a heading set over several lines: "CHAPTER III. A Caucus-Race and" + "a Long Tale"
            current = (
                current + "\n" + b.text if _SENTENCE_END.search(a.text) else _join(current, b.text, words, compounds)
            )
        elif a.x1 >= right - 0.15 * width:
            if b.x0 > left + 0.03 * width + 4 and _SENTENCE_END.search(a.text):  # an indented first line
                paragraphs.append(current)
                current = b.text
            else:
                current = _join(current, b.text, words, compounds)
        elif _SENTENCE_END.search(a.text):
            paragraphs.append(current)
            current = b.text
        else:  # a short line that does not end a sentence: verse, an address, a list
            current += "\n" + b.text
    paragraphs.append(current)
    return [p.replace("\xad", "") for p in paragraphs]


def _merge_headings(blocks: list[list[_Line]], body: float) -> list[list[_Line]]:
    """A large heading broken over lines often comes as one block per line; put it back together."""
    merged: list[list[_Line]] = []
    for block in blocks:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and all(ln.size > body + 1 for ln in prev + block)
            and abs(prev[-1].size - block[0].size) < 1
            and 0 <= block[0].y0 - prev[-1].y1 < 1.5 * (prev[-1].y1 - prev[-1].y0)
        ):
            merged[-1] = prev + block
        else:
            merged.append(block)
    return merged


def _assemble(pages) -> tuple[str, list[int]]:
    """All pages' paragraphs as one text, and where each page starts in it."""
    body = _body_size(pages)
    words, compounds = _vocabulary(pages)
    parts: list[str] = []
    page_starts: list[int] = []
    length = 0
    open_end = False  # the text so far ends inside a paragraph that may continue on the next page
    for blocks in pages:
        blocks = _merge_headings(blocks, body)
        paragraphs = [p for block in blocks for p in _block_paragraphs(block, body, words, compounds)]
        if not paragraphs:
            page_starts.append(length)
            continue
        first = paragraphs[0]
        if parts and open_end and first[:1].islower():
            joined = _join(parts[-1], first, words, compounds)
            # The page starts where its own characters do, inside the joined paragraph.
            page_starts.append(length - len(parts[-1]) + len(joined) - len(first))
            length += len(joined) - len(parts[-1])
            parts[-1] = joined
            paragraphs = paragraphs[1:]
        else:
            page_starts.append(length + (2 if parts else 0))
        for p in paragraphs:
            if parts:
                parts.append("\n\n")
                length += 2
            parts.append(p)
            length += len(p)
        last_block = blocks[-1]
        open_end = not _SENTENCE_END.search(parts[-1]) and not all(ln.size > body + 1 for ln in last_block)
    return "".join(parts), page_starts


def _outline_marks(text: str, page_starts: list[int], toc) -> list[Mark]:
    """Outline entries at the character where their title appears on their page, else the page's start."""
    marks = []
    n_pages = len(page_starts)
    for entry in toc:
        level, title, page = entry[0], entry[1] or "", entry[2]
        if not (1 <= page <= n_pages):
            continue
        start = page_starts[page - 1]
        end = page_starts[page] if page < n_pages else len(text)
        words = title.split()[:6]
        offset = start
        if words:
            pattern = r"\s+".join(re.escape(w) for w in words)
            m = re.search(pattern, text[start : end + 200], re.I)
            if m:
                offset = start + m.start()
        marks.append(Mark(title, offset, level))
    return marks
