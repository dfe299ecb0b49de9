"""Plain text and Markdown: bytes of unknown encoding to text, chapters from heading lines."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from infini_reader.app.core.document import Document, ReaderError
from infini_reader.app.core.readers.chapters import Mark, caps_marks, gutenberg_bounds, heading_marks, is_apparatus, sections_from_marks

# Bigger than any book (the King James Bible is 4.5 MB); a larger "text" file is a log or a data dump.
MAX_TEXT_BYTES = 256 * 1024 * 1024

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# C0 controls other than tab, newline and form feed, DEL and the C1 block: never text. Also the soft
# hyphen: invisible, and it splits words for the tokenizer. (A regex: str.translate is ten times slower.)
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\xad]+")


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes to text: a BOM wins, then a declared encoding, then UTF-8, then UTF-16 without a BOM,
    then Windows-1252 and finally Latin-1, which never fails. Control characters are removed and
    line ends made "\\n"."""
    text = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data[len(bom) :].decode(encoding, errors="replace")
            break
    if text is None and declared:
        try:
            text = data.decode(codecs.lookup(declared).name, errors="replace")
        except LookupError:
            pass
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = _guess_utf16(data)
    if text is None:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")  # form feed: an old page break
    return _CONTROLS.sub("", text)


def _guess_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: Latin-script text in it has a zero in every other byte."""
    head = data[:4096]
    if len(head) < 4:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if odd > len(head) // 4 and even < len(head) // 40:
        return data.decode("utf-16-le", errors="replace")
    if even > len(head) // 4 and odd < len(head) // 40:
        return data.decode("utf-16-be", errors="replace")
    return None


def read_bytes(path: Path, limit: int = MAX_TEXT_BYTES) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise ReaderError(
            f"{path.name} is too large to be a book ({size / 2**20:.0f} MB; the limit is {limit // 2**20} MB)"
        )
    with open(path, "rb") as f:
        return f.read(limit + 1)[:limit]


_BINARY_BYTES = [bytes([c]) for c in (*range(0, 9), *range(14, 27), *range(28, 32))]


def looks_binary(data: bytes) -> bool:
    """Control bytes in more than a few places (and not UTF-16/32): an image, an archive or a program.

    A stray control byte or two in a damaged text file does not make it binary; random bytes hold
    one in ten.
    """
    head = data[:8192]
    if not head or any(data.startswith(bom) for bom, _ in _BOMS):
        return False
    controls = sum(head.count(c) for c in _BINARY_BYTES)
    return controls > max(2, len(head) // 100) and _guess_utf16(data) is None


def read_text(path: Path) -> Document:
    data = read_bytes(path)
    if looks_binary(data):
        raise ReaderError(f"{path.name} does not look like a text file (it contains binary data)")
    text = decode_text(data)
    del data
    markdown = path.suffix.lower() in (".md", ".markdown")
    title = author = language = None
    if markdown:
        text, front = _front_matter(text)
        title, author, language = front.get("title"), front.get("author"), front.get("lang") or front.get("language")
    pg = gutenberg_bounds(text)
    if pg:
        text = text[pg.start : pg.end]
        title, author, language = pg.title or title, pg.author or author, pg.language or language
    # Leading and trailing blank lines are no part of the book; offsets count from the first character.
    text = text.strip("\n \t")
    if not text.strip():
        raise ReaderError(f"{path.name} has no readable text")
    if markdown:
        marks, h1 = markdown_marks(text)
        title = title or h1
    else:
        marks = heading_marks(text)
        if sum(m.chapter for m in marks) < 2:  # no "CHAPTER I" headings: chapters titled in capitals
            marks = caps_marks(text) or marks
    return Document(
        title=title or _title_from_name(path),
        author=author,
        language=language,
        format="md" if markdown else "txt",
        text=text,
        sections=sections_from_marks(text, marks),
        source_path=str(path),
    )


def _title_from_name(path: Path) -> str:
    return " ".join(path.stem.replace("_", " ").split()) or path.name


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?P<body>(?:[^\n]{0,500}\n){0,60}?)(?:---|\.\.\.)[ \t]*(?:\n|\Z)")
_FRONT_FIELD = re.compile(r"^(title|author|lang|language):[ \t]*(.+?)[ \t]*$", re.M | re.I)


def _front_matter(text: str) -> tuple[str, dict[str, str]]:
    """YAML front matter ("---\\ntitle: ...\\n---"): its few fields a reader needs, and the text after it."""
    m = _FRONT_MATTER.match(text)
    if not m:
        return text, {}
    fields = {k.lower(): v.strip("\"'") for k, v in _FRONT_FIELD.findall(m.group("body"))}
    return text[m.end() :], fields


# An ATX heading ("## Title ##") or a code fence; headings inside fenced code are code.
_MD_LINE = re.compile(
    r"^(?:[ ]{0,3}(?P<fence>```|~~~)[^\n]*|[ ]{0,3}(?P<hashes>#{1,6})(?:[ \t]+(?P<title>[^\n]{0,300}?))?[ \t]*#*[ \t]*"
    r"|(?P<underline>=+|-+)[ \t]*)$",
    re.M,
)
_MD_INLINE = re.compile(r"!?\[([^\]\n]{0,300})\]\([^)\n]{0,500}\)|[*_`]+")


def markdown_marks(text: str) -> tuple[list[Mark], str | None]:
    """Chapters from Markdown headings, and the document's title when a single "#" heading holds it.

    One "#" heading over "##" headings is the book's title and the "##" are its chapters; several
    "#" headings are the chapters; without any, the largest headings present are.
    """
    headings: list[tuple[int, str, int]] = []  # (level, title, offset)
    fence = None
    for m in _MD_LINE.finditer(text):
        if m.group("fence"):
            if fence is None:
                fence = m.group("fence")
            elif m.group("fence") == fence:
                fence = None
            continue
        if fence is not None:
            continue
        if m.group("hashes"):
            title = _MD_INLINE.sub(lambda g: g.group(1) or "", m.group("title") or "").strip()
            if title:
                headings.append((len(m.group("hashes")), title, m.start()))
        elif m.group("underline") and m.start() > 0:
            # Setext: "Title\n=====". The title is one line after a blank line; "---" under a
            # paragraph's last line would be a rule, which the blank line rules out.
            prev_end = m.start() - 1
            prev_start = text.rfind("\n", 0, prev_end) + 1
            line = text[prev_start:prev_end].strip()
            blank_before = True
            if prev_start > 0:
                before_start = text.rfind("\n", 0, prev_start - 1) + 1
                blank_before = not text[before_start : prev_start - 1].strip()
            if line and len(line) <= 200 and blank_before:
                level = 1 if m.group("underline")[0] == "=" else 2
                headings.append((level, _MD_INLINE.sub(lambda g: g.group(1) or "", line), prev_start))
    if not headings:
        return [], None
    h1 = [h for h in headings if h[0] == 1]
    deeper = [h for h in headings if h[0] > 1]
    title = h1[0][1] if len(h1) == 1 else None  # a single "#" heading titles the document
    if len(h1) == 1 and deeper:
        level = min(h[0] for h in deeper)
    else:
        level = min(h[0] for h in headings)
    marks = [Mark(t, off) for lvl, t, off in headings if lvl == level]
    # Apparatus headings deeper down ("### Contents") still end the chapter before them.
    marks += [Mark(t, off, 2) for lvl, t, off in headings if lvl > level and is_apparatus(t)]
    return marks, title
