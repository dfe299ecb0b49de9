"""EPUB 2 and 3: the spine's documents in reading order, chapters from the navigation document or NCX."""

from __future__ import annotations

import posixpath
import re
import warnings
import zipfile
from pathlib import Path
from urllib.parse import unquote

from ebooklib import epub
from lxml import etree

from infini_reader.app.core.document import Document, ReaderError
from infini_reader.app.core.readers.chapters import Mark, gutenberg_bounds, promote_single_root, sections_from_marks
from infini_reader.app.core.readers.html import Converted, convert, declared_charset, heading_chapters, parse_xhtml

# A zip bomb unpacks a few kilobytes into gigabytes. zipfile never returns more than a member's
# declared size, so checking the declared sizes before anything is read bounds the memory used.
MAX_MEMBER_BYTES = 200 * 2**20
MAX_TOTAL_BYTES = 2**30
MAX_MEMBERS = 20_000
# Text compresses about 3:1 and repetitive markup 20:1; a large member far beyond that is a bomb.
MAX_RATIO = 200
RATIO_CHECK_FROM = 10 * 2**20

_DOCUMENT_TYPES = {"application/xhtml+xml", "text/html", "application/html+xml"}
_FONT_OBFUSCATION = {"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"}
_ENC = "{http://www.w3.org/2001/04/xmlenc#}"
_NCX = "{http://www.daisy.org/z3986/2005/ncx/}"
_COVER = re.compile(r"(?<![a-z])cover(?![a-z])", re.IGNORECASE)  # "cover.xhtml", "id-cover", not "discovery"


def check_archive(path: Path) -> None:
    """Refuse what is not a ZIP, what would unpack to too much, and what is DRM-encrypted, before reading."""
    name = path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ReaderError(f"{name} is not a valid EPUB: it is damaged or not a ZIP archive ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ReaderError(f"{name} is refused: it holds {len(infos)} files (the limit is {MAX_MEMBERS})")
        total = 0
        for info in infos:
            total += info.file_size
            if info.file_size > MAX_MEMBER_BYTES:
                raise ReaderError(
                    f"{name} is refused: {info.filename} would unpack to {info.file_size / 2**20:.0f} MB "
                    f"(the limit is {MAX_MEMBER_BYTES // 2**20} MB); it looks like a zip bomb"
                )
            if info.file_size > RATIO_CHECK_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ReaderError(
                    f"{name} is refused: {info.filename} is compressed "
                    f"{info.file_size // max(info.compress_size, 1)}:1, "
                    "far beyond any book; it looks like a zip bomb"
                )
        if total > MAX_TOTAL_BYTES:
            raise ReaderError(
                f"{name} is refused: it would unpack to {total / 2**20:.0f} MB "
                f"(the limit is {MAX_TOTAL_BYTES // 2**20} MB); it looks like a zip bomb"
            )
        names = {i.filename for i in infos}
        if "META-INF/container.xml" not in names:
            raise ReaderError(f"{name} is not a valid EPUB: it has no META-INF/container.xml")
        if "META-INF/encryption.xml" in names and _drm_encrypted(zf.read("META-INF/encryption.xml")):
            raise ReaderError(f"{name} is protected by DRM (its text is encrypted); use a DRM-free copy of the book")


def _drm_encrypted(data: bytes) -> bool:
    """Encrypted content documents, as opposed to the font obfuscation many ordinary EPUBs use."""
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True))
    except etree.XMLSyntaxError:
        return False
    for enc in root.iter(f"{_ENC}EncryptedData"):
        method = enc.find(f"{_ENC}EncryptionMethod")
        algorithm = method.get("Algorithm") if method is not None else None
        ref = enc.find(f".//{_ENC}CipherReference")
        uri = (ref.get("URI") or "") if ref is not None else ""
        if algorithm in _FONT_OBFUSCATION or uri.lower().endswith((".otf", ".ttf", ".woff", ".woff2")):
            continue
        return True
    return False


def _decodes(data: bytes) -> bool:
    """Whether a document's bytes are text in its declared encoding (UTF-8 when it declares none)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    try:
        data.decode(declared_charset(data) or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return False
    return b"\0" not in data


def _norm(href: str) -> str:
    return posixpath.normpath(unquote(href)).lstrip("/")


def read_epub(path: Path) -> Document:
    name = path.name
    check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            book = epub.read_epub(str(path), {"ignore_ncx": True})
    except Exception as e:  # ebooklib raises whatever the broken part provokes: KeyError, AttributeError, ...
        raise ReaderError(
            f"{name} is not a valid EPUB: its package (container or OPF) cannot be read ({e!r})"
        ) from None
    doc_warnings: list[str] = []
    nav_entries = _nav_entries(book)
    titles_by_file = {}
    for _, title, href in nav_entries:
        titles_by_file.setdefault(_norm(href.split("#", 1)[0]), title)

    cover_ids = {g.get("href", "").split("#")[0] for g in (book.guide or []) if g.get("type") == "cover"}
    spine = [(book.get_item_with_id(idref), linear) for idref, linear in book.spine]
    spine = [(item, linear) for item, linear in spine if item is not None and item.media_type in _DOCUMENT_TYPES]
    if any(linear != "no" for _, linear in spine):
        spine = [(item, linear) for item, linear in spine if linear != "no"]
    parts: list[str] = []
    starts: dict[str, tuple[int, Converted]] = {}  # file name -> (offset of its first character, its text)
    offset = 0
    for item, _ in spine:
        if isinstance(item, epub.EpubNav):
            continue
        file_name = _norm(item.file_name)
        label = titles_by_file.get(file_name) or file_name
        content = item.content  # the raw bytes: get_content() re-renders (and so repairs) HTML documents
        try:
            tree, problem = parse_xhtml(content)
            converted = convert(tree)
        except Exception as e:  # an empty or unparseable document: the others are still a book
            doc_warnings.append(f"Skipped “{label}”: it cannot be read ({e})")
            continue
        text = converted.text
        if problem:
            if not text.strip() or not _decodes(content):  # not markup in any encoding: nothing to salvage
                doc_warnings.append(f"Skipped “{label}”: it is not well-formed XHTML ({problem})")
                continue
            doc_warnings.append(
                f"“{label}” is not well-formed XHTML ({problem}); it was read leniently, some text may be lost"
            )
        if not text.strip():
            continue
        words = len(text.split())
        is_cover = (
            isinstance(item, epub.EpubCoverHtml)
            or item.file_name in cover_ids
            or any(_COVER.search(s) for s in (item.id or "", file_name))
        )
        if is_cover and words < 100:
            continue
        if converted.link_chars > 0.6 * len(text.strip()) and words < 5000:  # a table of contents page
            continue
        if parts:
            parts.append("\n\n")
            offset += 2
        starts[file_name] = (offset, converted)
        parts.append(text)
        offset += len(text)
    text = "".join(parts)
    del parts
    if not text.strip():
        raise ReaderError(f"{name} has no readable text" + (f" ({doc_warnings[0]})" if doc_warnings else ""))

    marks = []
    for level, title, href in nav_entries:
        file_part, _, fragment = href.partition("#")
        target = starts.get(_norm(file_part))
        if target is None:
            continue
        base, converted = target
        marks.append(Mark(title, base + converted.anchors.get(unquote(fragment), 0) if fragment else base, level))
    marks = promote_single_root(marks)
    if not marks:  # no navigation: the documents' own headings
        headings = [(lvl, t, base + off) for base, conv in starts.values() for lvl, t, off in conv.headings]
        marks, _ = heading_chapters(headings)

    pg = gutenberg_bounds(text)
    if pg:
        text = text[pg.start : pg.end]
        marks = [Mark(m.title, m.offset - pg.start, m.level, m.chapter) for m in marks]
    lead = len(text) - len(text.lstrip())
    text = text.strip()
    marks = [Mark(m.title, m.offset - lead, m.level, m.chapter) for m in marks]

    title = _first_metadata(book, "title") or (pg.title if pg else None) or path.stem
    creators = [v for v, _ in book.get_metadata("DC", "creator") if v and v.strip()]
    return Document(
        title=" ".join(title.split()),
        author=", ".join(" ".join(c.split()) for c in creators) or (pg.author if pg else None),
        language=_first_metadata(book, "language"),
        format="epub",
        text=text,
        sections=sections_from_marks(text, marks),
        warnings=doc_warnings,
        source_path=str(path),
    )


def _first_metadata(book, field: str) -> str | None:
    for value, _ in book.get_metadata("DC", field):
        if value and value.strip():
            return value.strip()
    return None


def _nav_entries(book) -> list[tuple[int, str, str]]:
    """(level, title, href relative to the OPF) in reading order, from the EPUB 3 nav, else the NCX."""
    for item in book.get_items():
        if isinstance(item, epub.EpubNav):
            entries = _from_nav(item)
            if entries:
                return entries
    for item in book.get_items():
        if item.media_type == "application/x-dtbncx+xml":
            return _from_ncx(item)
    return []


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _label(el) -> str:
    return " ".join("".join(el.itertext()).split())


def _from_nav(item) -> list[tuple[int, str, str]]:
    try:
        root, _ = parse_xhtml(item.content)
    except Exception:
        return []
    base = posixpath.dirname(item.file_name)
    navs = [el for el in root.iter() if _local(el.tag) == "nav"]
    toc = [
        n for n in navs if "toc" in ((n.get("{http://www.idpf.org/2007/ops}type") or n.get("epub:type") or "").split())
    ]
    nav = toc[0] if toc else navs[0] if len(navs) == 1 else None
    if nav is None:
        return []
    entries: list[tuple[int, str, str]] = []

    def walk(ol, level: int) -> None:
        for li in ol:
            if _local(li.tag) != "li":
                continue
            link = next((c for c in li if _local(c.tag) == "a" and c.get("href")), None)
            sub = [c for c in li if _local(c.tag) == "ol"]
            if link is not None:
                entries.append((level, _label(link), posixpath.join(base, link.get("href"))))
            # An entry without a link ("<span>Abram S. Isaacs</span>") groups its children at its level.
            for child in sub:
                walk(child, level + 1 if link is not None else level)

    for ol in nav:
        if _local(ol.tag) == "ol":
            walk(ol, 1)
    return entries


def _from_ncx(item) -> list[tuple[int, str, str]]:
    try:
        root = etree.fromstring(
            item.content, etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, recover=True)
        )
    except (etree.XMLSyntaxError, ValueError):
        return []
    if root is None:
        return []
    base = posixpath.dirname(item.file_name)
    entries: list[tuple[int, str, str]] = []

    def walk(parent, level: int) -> None:
        for point in parent:
            if _local(point.tag) != "navpoint":
                continue
            label = point.find(f"{_NCX}navLabel/{_NCX}text")
            content = point.find(f"{_NCX}content")
            if content is not None and content.get("src"):
                entries.append(
                    (level, _label(label) if label is not None else "", posixpath.join(base, content.get("src")))
                )
            walk(point, level + 1)

    nav_map = root.find(f"{_NCX}navMap")
    if nav_map is not None:
        walk(nav_map, 1)
    return entries
