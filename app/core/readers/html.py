"""HTML and XHTML to clean text, for HTML files and for the chapters of EPUBs.

Parsing is lxml's, never regular expressions, and never resolves entities, loads DTDs or touches
the network: a chapter declaring `<!ENTITY x SYSTEM "file:///etc/passwd">` gets none of that file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree
from lxml import html as lxml_html

from infini_reader.app.core.document import Document, ReaderError
from infini_reader.app.core.readers.chapters import Mark, gutenberg_bounds, is_apparatus, sections_from_marks
from infini_reader.app.core.readers.text import decode_text, looks_binary, read_bytes

# Paragraph-like elements get a blank line around them, line-like ones a line break.
_BLOCK = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "dl", "table", "section", "article",
    "aside", "header", "footer", "figure", "figcaption", "hr", "address", "main", "body", "center", "details",
    "summary", "fieldset", "form", "hgroup", "html",
}  # fmt: skip
_LINE = {"div", "li", "tr", "dt", "dd", "caption", "legend", "thead", "tbody", "tfoot"}
# Never reading matter: code, styling, navigation, media and form controls.
_DROP = {
    "script", "style", "nav", "head", "noscript", "template", "svg", "math", "iframe", "object", "embed", "audio",
    "video", "canvas", "button", "input", "select", "textarea", "img", "map", "area", "rt", "rp", "title", "link",
    "meta", "base",
}  # fmt: skip
# Printed page numbers, footnote markers and Project Gutenberg's header and licence.
_DROP_CLASSES = {
    "pagenum", "pageno", "page-number", "lnum", "linenum", "line-number", "pg-boilerplate", "pgheader", "pgfooter",
    "x-ebookmaker-cover",
}  # fmt: skip
_DROP_TYPES = {"pagebreak", "noteref", "doc-pagebreak", "doc-noteref", "toc", "doc-toc", "landmarks", "page-list"}
_DROP_IDS = {"pg-header", "pg-footer"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_SPACE = re.compile(r"\s+")


@dataclass
class Converted:
    """The text of one HTML document, with where its ids and headings landed in that text."""

    text: str
    anchors: dict[str, int] = field(default_factory=dict)  # element id -> offset of its first character
    headings: list[tuple[int, str, int]] = field(default_factory=list)  # (level, title, offset)
    title: str | None = None  # the <title>
    link_chars: int = 0  # characters inside links to other places in the book: a table of contents is mostly links
    images: int = 0


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _epub_type(el) -> str:
    """`epub:type`, spelled `{http://www.idpf.org/2007/ops}type` by the XML parser and `epub:type` by the HTML one."""
    return el.get("{http://www.idpf.org/2007/ops}type") or el.get("epub:type") or ""


def _is_toc_list(el) -> bool:
    """A table or list whose rows are short links into the book: a table of contents or an index."""
    rows = [r for r in el.iter() if _local(r.tag) in ("li", "tr")]
    if len(rows) < 3:
        return False
    linked = 0
    chars = 0
    for r in rows:
        chars += len(" ".join("".join(r.itertext()).split()))
        if any(_local(a.tag) == "a" and a.get("href") and not _EXTERNAL.match(a.get("href")) for a in r.iter()):
            linked += 1
    return linked >= 0.8 * len(rows) and chars / len(rows) <= 100


def _dropped(el, tag: str) -> bool:
    if tag in _DROP or el.get("hidden") is not None or el.get("aria-hidden") == "true":
        return True
    if _DROP_CLASSES.intersection((el.get("class") or "").split()) or el.get("id") in _DROP_IDS:
        return True
    kinds = set(_epub_type(el).split()) | set((el.get("role") or "").split())
    if _DROP_TYPES.intersection(kinds):
        return True
    return tag in ("table", "ul", "ol") and _is_toc_list(el)


class _Writer:
    """Collects text runs, turning pending breaks and spaces into characters only between runs."""

    def __init__(self):
        self.pieces: list[str] = []
        self.length = 0
        self.brk = 0  # 1: a line break is due before the next text, 2: a blank line
        self.space = False
        self.cell_sep = False
        self.pending_anchors: list[str] = []
        self.anchors: dict[str, int] = {}
        self.link_depth = 0
        self.link_chars = 0

    def text(self, s: str, pre: bool = False) -> None:
        if not s:
            return
        if pre:
            body = s.replace("\r\n", "\n")
            lead = False
        else:
            body = _SPACE.sub(" ", s)
            lead = body.startswith(" ")
            if lead:
                self.space = True
            trail = body.endswith(" ")
            body = body.strip(" ")
            if not body:
                return
        if self.length:
            if self.brk:
                self._put("\n" * self.brk)
            elif self.cell_sep:
                self._put(" | ")
            elif self.space:
                self._put(" ")
        self.brk, self.space, self.cell_sep = 0, False, False
        for a in self.pending_anchors:
            self.anchors.setdefault(a, self.length)
        self.pending_anchors.clear()
        self._put(body)
        if self.link_depth:
            self.link_chars += len(body)
        if not pre:
            self.space = trail

    def _put(self, s: str) -> None:
        self.pieces.append(s)
        self.length += len(s)

    def block(self, level: int) -> None:
        self.brk = max(self.brk, level)

    def line_break(self) -> None:
        self.brk = min(self.brk + 1, 2)

    def finish(self) -> str:
        for a in self.pending_anchors:
            self.anchors.setdefault(a, self.length)
        return "".join(self.pieces)


def convert(root) -> Converted:
    """The text of an (X)HTML tree: headings and paragraphs apart, <br> a line break, lists as lists."""
    title = None
    for el in root.iter():
        if _local(el.tag) == "title":
            title = " ".join("".join(el.itertext()).split()) or None
            break
    body = next((el for el in root.iter() if _local(el.tag) == "body"), root)
    w = _Writer()
    lists: list[list] = []  # [ordered, counter] per open list
    headings: list[tuple[int, str, int]] = []
    open_headings: list[tuple] = []  # (level, piece index, element, anchor key)
    skipping = None  # the element whose subtree is dropped
    pre = 0
    images = 0
    walker = etree.iterwalk(body, events=("start", "end"))
    for event, el in walker:
        tag = _local(el.tag)
        if event == "start":
            if not tag:  # comment, processing instruction, unresolved entity: only their tails are text
                continue
            if tag in ("img", "image", "svg"):
                images += 1
            if _dropped(el, tag):
                # Links may point into what is dropped (a printed page number's id): they land here.
                w.pending_anchors.extend(i for i in (e.get("id") for e in el.iter() if isinstance(e.tag, str)) if i)
                skipping = el
                walker.skip_subtree()
                continue
            ident = el.get("id") or (el.get("name") if tag == "a" else None)
            if ident:
                w.pending_anchors.append(ident)
            if tag in _BLOCK:
                w.block(2)
            elif tag in _LINE:
                w.block(1)
            if tag in ("ul", "ol"):
                w.block(1 if lists else 2)  # a list inside a list item follows it line by line
                lists.append([tag == "ol", _int(el.get("start"), 1) - 1])
            elif tag == "li":
                marker = "- "
                if lists and lists[-1][0]:
                    lists[-1][1] += 1
                    marker = f"{lists[-1][1]}. "
                w.text(marker.strip())
                w.space = True
            elif tag in ("td", "th"):
                w.cell_sep = w.cell_sep or bool(w.pieces) and not w.brk
            elif tag == "br":
                w.line_break()
            elif tag == "pre":
                pre += 1
            elif tag == "a" and el.get("href") and not _EXTERNAL.match(el.get("href")):
                w.link_depth += 1
            if tag in _HEADINGS:
                key = f"\0heading{len(headings)}.{len(open_headings)}"
                open_headings.append((_HEADINGS[tag], len(w.pieces), el, key))
                w.pending_anchors.append(key)
            w.text(el.text, pre > 0)
        else:
            if el is skipping:
                skipping = None
            elif tag:
                if tag in _BLOCK:
                    w.block(2)
                elif tag in _LINE:
                    w.block(1)
                if tag in ("ul", "ol") and lists:
                    lists.pop()
                    w.block(1 if lists else 2)
                elif tag == "pre":
                    pre -= 1
                elif tag == "a" and el.get("href") and not _EXTERNAL.match(el.get("href")):
                    w.link_depth -= 1
                if open_headings and open_headings[-1][2] is el:
                    level, first, _, key = open_headings.pop()
                    start = w.anchors.pop(key, None)
                    if key in w.pending_anchors:  # a heading without text
                        w.pending_anchors.remove(key)
                    heading = " ".join("".join(w.pieces[first:]).split())
                    if start is not None and heading:
                        headings.append((level, heading, start))
            if el is not body:
                w.text(el.tail, pre > 0)
    text = w.finish()
    return Converted(text, w.anchors, headings, title, w.link_chars, images)


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# Parsers that never fetch or expand anything: entities stay unresolved, DTDs unloaded, no network.
def _xml_parser(recover: bool = False) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False, recover=recover, remove_pis=True
    )


# huge_tree lifts libxml2's 10 MB text-node and 256-level depth limits; the HTML parser expands no
# declared entities, so it opens no "billion laughs" door, and the input is already size-limited.
_HTML_PARSER_ARGS = dict(no_network=True, remove_pis=True, remove_comments=True, default_doctype=False, huge_tree=True)
# A DOCTYPE's internal subset (entity declarations) means nothing to an HTML parser, which would
# show "]>" as text.
_DOCTYPE = re.compile(r"<!DOCTYPE[^\[>]{0,500}(?:\[[^\]]{0,100000}\])?\s*>", re.I)
_XML_DECLARATION = re.compile(r"\s*<\?xml[^>]{0,200}\?>")
_CHARSET = re.compile(
    rb"""<\?xml[^>]{0,200}encoding=["']([\w.:-]{1,40})|<meta[^>]{0,300}charset=["']?([\w.:-]{1,40})""", re.I
)


def declared_charset(data: bytes) -> str | None:
    m = _CHARSET.search(data[:4096])
    return (m.group(1) or m.group(2)).decode("ascii") if m else None


def parse_html(data: bytes | str):
    """Lenient parse, as browsers read: undefined entities, unclosed tags and stray bytes are survived.

    What stops even this parser (nesting thousands of levels deep) is raised as a ValueError.
    """
    text = decode_text(data, declared_charset(data)) if isinstance(data, bytes) else data
    text = _DOCTYPE.sub("", text[:200000], count=1) + text[200000:]
    declaration = _XML_DECLARATION.match(text)
    if declaration:  # lxml refuses text that declares a byte encoding
        text = text[declaration.end() :]
    if not text.strip():
        raise ValueError("empty document")
    parser = lxml_html.HTMLParser(**_HTML_PARSER_ARGS)
    root = lxml_html.document_fromstring(text, parser=parser)
    fatal = [e.message for e in parser.error_log if e.level_name == "FATAL"]
    if fatal:
        raise ValueError(fatal[0].split(",")[0])
    return root


def parse_xhtml(data: bytes) -> tuple[object, str | None]:
    """An EPUB chapter: strict XML first; when that fails, the lenient HTML parser.

    Returns the tree and a problem worth a warning, or None. HTML entities such as &nbsp; (undefined
    in XML without the DTD, which is never loaded) are no problem: the HTML parser knows them.
    """
    try:
        return etree.fromstring(data, _xml_parser()), None
    except etree.XMLSyntaxError as e:
        first_error = str(e)
    parser = _xml_parser(recover=True)
    try:
        etree.fromstring(data, parser)
        errors = [err for err in parser.error_log if err.level_name in ("ERROR", "FATAL")]
    except etree.XMLSyntaxError:
        errors = None
    benign = errors is not None and all("Entity '" in err.message and "not defined" in err.message for err in errors)
    return parse_html(data), None if benign else first_error


def read_html(path: Path) -> Document:
    data = read_bytes(path)
    if looks_binary(data):
        raise ReaderError(f"{path.name} does not look like an HTML file (it contains binary data)")
    try:
        root = parse_html(data)
    except (ValueError, etree.ParserError) as e:
        raise ReaderError(f"{path.name} cannot be read as HTML ({e})") from None
    author = language = None
    for meta in root.iter("meta"):
        if (meta.get("name") or "").lower() in ("author", "dc.creator") and meta.get("content"):
            author = " ".join(meta.get("content").split())
            break
    language = root.get("lang") or root.get("{http://www.w3.org/XML/1998/namespace}lang")
    doc = convert(root)
    text, headings = doc.text, doc.headings
    pg = gutenberg_bounds(text)
    if pg:
        text = text[pg.start : pg.end]
        headings = [(lvl, t, off - pg.start) for lvl, t, off in headings if pg.start <= off < pg.end]
    stripped = text.strip()
    lead = len(text) - len(text.lstrip())
    text = stripped
    headings = [(lvl, t, max(0, off - lead)) for lvl, t, off in headings]
    if not text:
        raise ReaderError(f"{path.name} has no readable text")
    marks, h1_title = heading_chapters(headings)
    title = (pg.title if pg else None) or doc.title or h1_title or path.stem
    return Document(
        title=" ".join(title.split()),
        author=(pg.author if pg else None) or author,
        language=(pg.language if pg else None) or language,
        format="html",
        text=text,
        sections=sections_from_marks(text, marks),
        source_path=str(path),
    )


def heading_chapters(headings: list[tuple[int, str, int]]) -> tuple[list[Mark], str | None]:
    """h1/h2 as chapters: a single h1 over h2s is the title and the h2s the chapters; several h1s are chapters."""
    h1 = [h for h in headings if h[0] == 1]
    h2 = [h for h in headings if h[0] == 2]
    if len(h1) == 1 and h2:
        chosen, title = h2, h1[0][1]
    elif h1:
        chosen, title = h1, None
    else:
        chosen, title = h2, None
    marks = [Mark(t, off) for _, t, off in chosen]
    marks += [Mark(t, off, 2) for lvl, t, off in headings if (lvl, t, off) not in chosen and is_apparatus(t)]
    return marks, title
