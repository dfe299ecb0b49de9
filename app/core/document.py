"""The one shape every reader produces: plain text with chapters and pages as character spans."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .errors import clean_line, clean_text


class ReaderError(ValueError):
    """A file that cannot be read; the message is shown to the user as it is, made one plain line
    (it quotes names and text from the file)."""

    def __init__(self, message: object = ""):
        super().__init__(clean_line(str(message)))


@dataclass
class Section:
    """A chapter: its title and its characters text[start:end]; pages where the source has them."""

    title: str
    start: int
    end: int
    page_start: int | None = None  # 1-based, as printed by PDF viewers
    page_end: int | None = None
    level: int = 1  # 1 for chapters; deeper outline levels are not chapters

    def __post_init__(self):
        self.title = clean_line(self.title) or ""


@dataclass
class Document:
    title: str
    author: str | None
    language: str | None
    format: str  # "epub", "pdf", "txt", "md", "html"
    text: str
    # Chapters in reading order, non-overlapping, increasing. Front matter, tables of contents and
    # licence text belong to no chapter.
    sections: list[Section] = field(default_factory=list)
    # For paged sources: the start offset of each page in `text` (page i + 1 starts at page_starts[i]).
    page_starts: list[int] | None = None
    # Things the user should know that did not stop the reading (e.g. pages without a text layer).
    warnings: list[str] = field(default_factory=list)
    source_path: str = ""

    def __post_init__(self):
        self.clean()

    def clean(self) -> Document:
        """Every string that came from the file, made safe to store, log and show (app/core/errors.py):
        no escape sequences, control or bidirectional-override characters. The text keeps its length."""
        self.title = clean_line(self.title) or ""
        self.author = clean_line(self.author) or None
        self.language = clean_line(self.language, 32) or None
        self.source_path = clean_line(self.source_path) or ""
        self.warnings = [w for w in (clean_line(w) for w in self.warnings) if w]
        self.text = clean_text(self.text)
        for s in self.sections:
            s.title = clean_line(s.title) or ""
        return self

    @property
    def pages(self) -> int | None:
        return len(self.page_starts) if self.page_starts is not None else None

    def page_at(self, offset: int) -> int | None:
        """1-based page holding character `offset`, or None for unpaged sources."""
        if not self.page_starts:
            return None
        return max(1, bisect.bisect_right(self.page_starts, offset))

    def section_at(self, offset: int) -> Section | None:
        starts = [s.start for s in self.sections]
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and offset < self.sections[i].end:
            return self.sections[i]
        return None
