"""Where chapters begin and end: outlines, heading lines and Project Gutenberg's wrapper.

Every reader ends here. It finds the places where the source says a division begins (an EPUB's
navigation, a PDF's outline, "CHAPTER IV." lines, Markdown headings) as `Mark`s, and
`sections_from_marks` turns them into non-overlapping chapter `Section`s, leaving front matter,
tables of contents and licence text outside every chapter.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from infini_reader.app.core.document import Section


@dataclass
class Mark:
    """A place in the text where the source says a division begins."""

    title: str
    offset: int
    level: int = 1  # 1 = chapter level; deeper outline entries only end chapters when they are apparatus
    chapter: bool = True  # False: ends the chapter before it without being one (a "BOOK TWO" line among chapters)


# A chapter with fewer words than this (its heading included) is a title-page fragment or an empty
# divider: outlines of scanned books list "HITTEL", "ON", "GOLD MINES" as entries.
MIN_CHAPTER_WORDS = 15

_APPARATUS = re.compile(
    r"(table of )?contents|the contents|index|general index|cover( page| image)?|title( page)?|half title|"
    r"copyright( page)?|colophon|imprint|(list of )?(illustrations|figures|tables|plates)|"
    r"about (this|the) (e-?book|edition)|also by .*|"
    r"(the )?(full )?(project gutenberg )?licen[cs]e|.*project gutenberg.*licen[cs]e.*|.*gutenberg.*small print.*|"
    r"transcriber'?s? notes?|(end of|start of) (the |this )?project gutenberg.*",
    re.I,
)


def is_apparatus(title: str) -> bool:
    """Tables of contents, indexes, covers, copyright and licence pages: parts of a book that are not chapters."""
    bare = re.sub(r"[\s.:;,*\u2019'’\"“”-]+$", "", " ".join(title.split())).strip()
    return bool(_APPARATUS.fullmatch(bare))


# "CHAPTER I." / "Chapter 12:" / "BOOK ONE" / "Part the First" / "STAVE III" (English only).
_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred"
).split()
_ORDINAL_WORDS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth last"
).split()
_UNITS = "|".join(_NUMBER_WORDS[:9])
_NUMBER = (
    rf"\d{{1,4}}|[IVXLCDM]{{1,9}}|(?i:(?:{'|'.join(_NUMBER_WORDS)})(?:[- ](?:{_UNITS}))?)"
    rf"|(?i:the[ \t]+(?:{'|'.join(_ORDINAL_WORDS)}))"
)
_KEYWORDS = ("chapter", "chap.", "book", "part", "volume", "vol.", "stave", "canto", "letter")
# Higher divisions end chapters without being them when both kinds are present.
_RANK = {"volume": 0, "vol.": 0, "book": 1, "part": 2}
# A bounded line: the pattern cannot run past a newline, so a 50 MB single line costs one failed try.
_HEADING = re.compile(
    rf"^[ \t]{{0,20}}(?P<kw>(?i:{'|'.join(re.escape(k) for k in _KEYWORDS)}))[ \t]+(?P<num>{_NUMBER})"
    r"(?![\w'’])[ \t]*(?:[.:\-–—][ \t]*)?(?P<rest>[^\n]{0,100}?)[ \t]*$",
    re.M,
)
_ROMAN = re.compile(r"M{0,4}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})")
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}


def _number_value(num: str) -> int | None:
    num = num.strip()
    if num.isdigit():
        return int(num)
    if _ROMAN.fullmatch(num):
        values = [_ROMAN_VALUES[c] for c in num]
        return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))
    words = re.split(r"[- \t]+", num.lower())
    if words[0] == "the":
        w = words[-1]
        return _ORDINAL_WORDS.index(w) + 1 if w != "last" else None
    total = 0
    for w in words:
        if w in _NUMBER_WORDS:
            i = _NUMBER_WORDS.index(w)
            total += i + 1 if i < 19 else 20 + 10 * (i - 19) if i < 27 else 100
    return total or None


def _line_at(text: str, start: int, end: int) -> str:
    return text[start:end].strip()


def _next_line(text: str, pos: int) -> tuple[int, int] | None:
    """The span of the line after the newline at or after `pos`, or None at the end of the text."""
    nl = text.find("\n", pos)
    if nl < 0:
        return None
    end = text.find("\n", nl + 1)
    return nl + 1, len(text) if end < 0 else end


def _prev_line_blank(text: str, start: int) -> bool:
    """Whether the line before the one starting at `start` is blank (or there is none)."""
    if start == 0:
        return True
    prev_end = start - 1  # the newline ending the previous line
    prev_start = text.rfind("\n", 0, prev_end) + 1
    return not text[prev_start:prev_end].strip()


def _fewer_visible(text: str, start: int, end: int, limit: int) -> bool:
    """Whether text[start:end] holds fewer than `limit` non-space characters, looking no further than needed."""
    seen = 0
    while start < end and seen < limit:
        chunk = text[start : min(end, start + 8192)]
        seen += len(chunk) - sum(map(len, re.findall(r"\s+", chunk)))
        start += len(chunk)
    return seen < limit


def _title_line(text: str, after: int) -> tuple[str, int] | None:
    """A heading's own title on the next line ("CHAPTER I.\\nDown the Rabbit-Hole"), and where it ends.

    Only a short line that stands alone (a blank line or the end after it) counts: the first line of
    a paragraph is followed by more of the paragraph.
    """
    span = _next_line(text, after)
    if span and not text[span[0] : span[1]].strip():  # one blank line between is allowed
        span = _next_line(text, span[1])
    if not span:
        return None
    line = _line_at(text, *span)
    if not line or len(line) > 80 or len(line.split()) > 12 or _HEADING.fullmatch(line):
        return None
    if line[-1] in ",;" or (line[-1] == "." and not line.isupper()):
        return None
    after_span = _next_line(text, span[1])
    if after_span and text[after_span[0] : after_span[1]].strip():
        return None
    return line, span[1]


@dataclass
class _Heading:
    start: int
    end: int  # end of the heading, its title line included
    keyword: str
    number: int | None
    title: str
    blank_before: bool


def heading_marks(text: str) -> list[Mark]:
    """Chapter marks from "Chapter N" / "CHAPTER IV." / "BOOK ONE" lines in plain text.

    A heading line stands alone after a blank line; lines that come in a dense run (a table of
    contents) are not chapters; when both books/parts and chapters are present, the chapters are
    the chapters and the larger divisions only end them.
    """
    found: list[_Heading] = []
    for m in _HEADING.finditer(text):
        kw = m.group("kw")
        if not kw[0].isupper():  # "chapter 3 shows ..." inside a sentence
            continue
        num = m.group("num")
        if num[0] in "IVXLCDM" and num.isalpha() and num.isupper() and not _ROMAN.fullmatch(num):
            continue
        rest = m.group("rest").strip()
        if rest and (rest[0].islower() or rest[-1] in ",;"):  # "Chapter 2 of the report, ...": a sentence
            continue
        end = m.end()
        title = rest
        if not rest:
            own = _title_line(text, m.end())
            if own:
                title, end = own
        heading = " ".join(f"{kw} {num}".split())
        found.append(
            _Heading(
                m.start(), end, kw.lower(), _number_value(num), title or heading, _prev_line_blank(text, m.start())
            )
        )
    # A table of contents: the next heading-like line of the same or a larger division follows within
    # a line or two. ("BOOK ONE" directly over "Chapter 1" is how books begin.)
    candidates = []
    for i, h in enumerate(found):
        if not h.blank_before:
            continue
        nxt = found[i + 1] if i + 1 < len(found) else None
        if (
            nxt is not None
            and _RANK.get(nxt.keyword, 3) <= _RANK.get(h.keyword, 3)
            and _fewer_visible(text, h.end, nxt.start, 150)
        ):
            continue
        candidates.append(h)
    if not candidates:
        return []
    ranks = {_RANK.get(h.keyword, 3) for h in candidates}
    chapter_rank = max(ranks)
    # The last line of a table of contents ("CHAPTER XII.") is followed by the real "CHAPTER I.":
    # a chapter whose successor's number is not larger, with nothing larger between, is a leftover.
    kept: list[_Heading] = []
    for i, h in enumerate(candidates):
        if _RANK.get(h.keyword, 3) == chapter_rank:
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            if (
                nxt is not None
                and _RANK.get(nxt.keyword, 3) == chapter_rank
                and h.number is not None
                and nxt.number is not None
                and nxt.number <= h.number
                and _fewer_visible(text, h.end, nxt.start, 3000)
            ):
                continue
        kept.append(h)
    return [Mark(h.title, h.start, 1, _RANK.get(h.keyword, 3) == chapter_rank) for h in kept]


_CAPS_LINE = re.compile(r"^[ \t]*(?P<title>[A-Z0-9][A-Z0-9 '’&,.:;!?()\-–—]{2,70}?)[ \t]*$", re.M)


def caps_marks(text: str) -> list[Mark]:
    """Chapter marks from all-capital title lines ("STORY OF THE DOOR", "SEARCH FOR MR. HYDE"), for
    books whose chapters are headed by their titles alone.

    A title line stands alone (blank lines around it), has two letters or more, no lower case, does
    not end a sentence with a comma or semicolon, and is followed by text; a run of such lines close
    together (a table of contents, a title page) is not a chapter. At least two are needed."""
    found: list[tuple[int, int, str]] = []
    for m in _CAPS_LINE.finditer(text):
        title = m.group("title").strip()
        numeral = _ROMAN.fullmatch(title.rstrip(".")) is not None  # "III." alone heads a chapter too
        if (sum(ch.isalpha() for ch in title) < 3 and not numeral) or title[-1] in ",;" \
                or not _prev_line_blank(text, m.start()):
            continue
        nxt = _next_line(text, m.end())
        if nxt is not None and text[nxt[0] : nxt[1]].strip():  # the first line of a paragraph
            continue
        found.append((m.start(), m.end(), title))
    kept = []
    for i, (a, b, title) in enumerate(found):
        # a line with another such line right after it heads nothing (a title page, a contents list)
        if not (i + 1 < len(found) and _fewer_visible(text, b, found[i + 1][0], 150)):
            kept.append(Mark(title.rstrip("."), a))
    return kept if len(kept) >= 2 else []


def promote_single_root(marks: list[Mark]) -> list[Mark]:
    """Outline entries whose chapters are one level down: a single top entry (the book) holding them all."""
    while marks:
        top = min(m.level for m in marks)
        roots = [m for m in marks if m.level == top]
        if len(roots) != 1 or len(marks) == 1:
            return marks
        root = roots[0]
        marks = [Mark(m.title, m.offset, m.level - 1, m.chapter) for m in marks if m is not root]
    return marks


_CHAPTER_PREFIX = re.compile(rf"(?i:chapter|chap\.)[ \t]+(?:{_NUMBER})[ \t]*[.:\-–—]?[ \t]+(?=\S)")


def clean_title(title: str) -> str:
    """One line of title: "CHAPTER I. Down the Rabbit-Hole" keeps its real title, "Down the Rabbit-Hole"."""
    title = " ".join(title.split())
    m = _CHAPTER_PREFIX.match(title)
    if m and len(title) > m.end():
        title = title[m.end() :]
    return title


def _enough_words(text: str, start: int, end: int) -> bool:
    # A slice of bounded size: counting the words of a whole long chapter is wasted work.
    return len(text[start : min(end, start + 40 * MIN_CHAPTER_WORDS)].split()) >= MIN_CHAPTER_WORDS


def sections_from_marks(text: str, marks: list[Mark], page_starts: list[int] | None = None) -> list[Section]:
    """Chapters from marks: each level-1 mark runs to the next level-1 mark or apparatus mark.

    Apparatus (contents, index, licence) at any level ends the chapter before it and starts none; so do
    marks with `chapter=False`. Chapters too short to be chapters are dropped, their text left to none.
    """
    n = len(text)
    marks = sorted((Mark(m.title, min(max(m.offset, 0), n), m.level, m.chapter) for m in marks), key=lambda m: m.offset)
    boundaries = [m for m in marks if m.level <= 1 or is_apparatus(m.title)]
    sections = []
    for i, m in enumerate(boundaries):
        if m.level > 1 or not m.chapter or is_apparatus(clean_title(m.title)):
            continue
        end = boundaries[i + 1].offset if i + 1 < len(boundaries) else n
        start = m.offset
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if not _enough_words(text, start, end):
            continue
        title = clean_title(m.title) or _first_line(text, start, end)
        section = Section(title, start, end)
        if page_starts:
            section.page_start = max(1, bisect.bisect_right(page_starts, start))
            section.page_end = max(1, bisect.bisect_right(page_starts, end - 1))
        sections.append(section)
    return sections


def _first_line(text: str, start: int, end: int) -> str:
    line = text[start : min(end, start + 200)].strip().split("\n", 1)[0]
    return " ".join(line.split())[:80]


# Project Gutenberg wraps every book in a header and a licence; neither is the book.
# Each starts with a literal "***" or "*END*" (no alternation, no repeat): the regex engine then
# scans for it at C speed, twenty times faster over a 50 MB text.
_PG_START = re.compile(r"\*\*\*(?i:[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG[^*]{0,300})\*\*\*")
_PG_OLD_START = re.compile(r"\*END\*(?i:THE SMALL PRINT[^\n]{0,200})")
_PG_END = re.compile(r"\*\*\*(?i:[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG[^*]{0,300})\*\*\*")
_PG_END_LINE = re.compile(r"^[ \t]*End of (?:the |this )?Project Gutenberg", re.I | re.M)
_PG_FIELD = re.compile(r"^[ \t]*(Title|Author|Language):[ \t]*(\S[^\n]*)$", re.M)
_LANGUAGES = {
    "english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it", "portuguese": "pt",
    "dutch": "nl", "latin": "la", "finnish": "fi", "swedish": "sv", "danish": "da", "norwegian": "no",
    "russian": "ru", "polish": "pl", "greek": "el", "chinese": "zh", "japanese": "ja", "hungarian": "hu",
}  # fmt: skip


@dataclass
class Gutenberg:
    start: int  # keep text[start:end]
    end: int
    title: str | None = None
    author: str | None = None
    language: str | None = None


def gutenberg_bounds(text: str) -> Gutenberg | None:
    """Where a Project Gutenberg book's own text lies between its START and END markers; None if not one."""
    start_m = _PG_START.search(text) or _PG_OLD_START.search(text)
    end_m = _PG_END.search(text, start_m.end() if start_m else 0)
    if not start_m and not end_m:
        return None
    start = start_m.end() if start_m else 0
    end = end_m.start() if end_m else len(text)
    # "End of Project Gutenberg's Alice's Adventures..." stands a few lines before the END marker.
    tail = _PG_END_LINE.search(text, max(start, end - 3000), end)
    if tail:
        end = tail.start()
    info = Gutenberg(start, end)
    if start_m and start_m.start() < 200_000:
        for field, value in _PG_FIELD.findall(text, 0, start_m.start()):
            value = " ".join(value.split())
            if field == "Title" and info.title is None:
                info.title = value
            elif field == "Author" and info.author is None:
                info.author = value
            elif field == "Language" and info.language is None:
                info.language = _LANGUAGES.get(value.lower(), value)
    return info


def shift_pages(page_starts: list[int], start: int, end: int) -> list[int]:
    """Page starts after keeping only text[start:end]: pages cut away start at the nearest kept edge."""
    return [min(max(p - start, 0), end - start) for p in page_starts]
