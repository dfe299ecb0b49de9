"""Files that are not books, or are hostile: each gives a clear ReaderError or a warning, fast."""

import hashlib
import zipfile
from pathlib import Path

import pymupdf
import pytest

import infini_reader.app.core.readers.epub as epub_reader
from infini_reader.app.core.readers import ReaderError, read_document
from tests.app.test_readers_epub import FIXTURES, make_epub, replace_member
from tests.app.test_readers_pdf import make_pdf

WORDS = "Plenty of ordinary words fill this chapter so that it counts as one. " * 3


def three_chapters(tmp_path: Path, name="book.epub") -> Path:
    chapters = [(f"Chapter {n}", f"c{n}.xhtml", f"<h1>Chapter {n}</h1><p>{WORDS}</p>") for n in (1, 2, 3)]
    return make_epub(tmp_path / name, chapters)


def chapter_xhtml(body: str, doctype: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n{doctype}\n'
        f'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title></head><body>{body}</body></html>'
    ).encode()


@pytest.mark.parametrize("suffix", [".txt", ".md", ".pdf", ".epub", ".html"])
def test_empty_files(tmp_path, suffix):
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    with pytest.raises(ReaderError, match=rf"^empty{suffix} is empty$"):
        read_document(tmp_path / f"empty{suffix}")


@pytest.mark.parametrize(
    "name, data",
    [
        ("blank.txt", b" \n\n\t \r\n"),
        ("blank.md", b"\n\n   \n"),
        ("blank.html", b"<html><head><title>T</title><script>x()</script></head><body> <p> </p></body></html>"),
    ],
)
def test_files_without_text(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ReaderError, match="has no readable text"):
        read_document(tmp_path / name)


def test_epub_without_text(tmp_path):
    path = make_epub(
        tmp_path / "images.epub", [("Picture", "p.xhtml", "<div><img src='a.png' alt='A picture'/></div>")]
    )
    with pytest.raises(ReaderError, match="images.epub has no readable text"):
        read_document(path)


def test_unsupported_and_missing(tmp_path):
    with zipfile.ZipFile(tmp_path / "letter.docx", "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document/>")
    with pytest.raises(ReaderError, match=r"^cannot read \.docx files; supported: \.epub, \.pdf, \.txt, \.md"):
        read_document(tmp_path / "letter.docx")
    # The same file renamed: its contents decide.
    (tmp_path / "letter.zip").write_bytes((tmp_path / "letter.docx").read_bytes())
    with pytest.raises(ReaderError, match=r"cannot read \.docx files"):
        read_document(tmp_path / "letter.zip")
    (tmp_path / "data.xyz").write_bytes(b"whatever")
    with pytest.raises(ReaderError, match=r"cannot read \.xyz files; supported"):
        read_document(tmp_path / "data.xyz")
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00"
        + bytes(range(256)) * 4
    )
    (tmp_path / "picture.txt").write_bytes(png)
    with pytest.raises(ReaderError, match="does not look like a text file"):
        read_document(tmp_path / "picture.txt")
    (tmp_path / "noext").write_bytes(png)
    with pytest.raises(ReaderError, match="has no extension and is not text"):
        read_document(tmp_path / "noext")
    (tmp_path / "README").write_text("A plain note without an extension, read as text.\n")
    assert read_document(tmp_path / "README").format == "txt"
    with pytest.raises(ReaderError, match="does not exist"):
        read_document(tmp_path / "missing.epub")
    with pytest.raises(ReaderError, match="is a folder"):
        read_document(tmp_path)


def test_pdf_that_is_not_one(tmp_path):
    (tmp_path / "fake.pdf").write_bytes(b"This is not a PDF at all, just some text.\n" * 20)
    with pytest.raises(ReaderError, match="fake.pdf is damaged or not a PDF"):
        read_document(tmp_path / "fake.pdf")
    (tmp_path / "garbage.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40)
    with pytest.raises(ReaderError, match="garbage.pdf is damaged"):
        read_document(tmp_path / "garbage.pdf")


def test_epub_that_is_not_a_zip_or_is_truncated(tmp_path):
    (tmp_path / "text.epub").write_text("not a zip archive")
    with pytest.raises(ReaderError, match="text.epub is not a valid EPUB: it is damaged or not a ZIP archive"):
        read_document(tmp_path / "text.epub")
    alice = FIXTURES / "omni-alice-in-wonderland.epub"
    data = alice.read_bytes() if alice.exists() else three_chapters(tmp_path).read_bytes()
    (tmp_path / "half.epub").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match="half.epub is not a valid EPUB"):
        read_document(tmp_path / "half.epub")


def test_epub_with_a_broken_package(tmp_path):
    path = three_chapters(tmp_path)
    with zipfile.ZipFile(path) as zf:
        opf = next(n for n in zf.namelist() if n.endswith(".opf"))
    replace_member(path, opf, b"<package><<< this is not XML")
    with pytest.raises(
        ReaderError, match=r"book.epub is not a valid EPUB: its package \(container or OPF\) cannot be read"
    ):
        read_document(path)
    # No container at all.
    with zipfile.ZipFile(tmp_path / "bare.epub", "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr("OEBPS/c.xhtml", chapter_xhtml("<p>text</p>"))
    with pytest.raises(ReaderError, match="has no META-INF/container.xml"):
        read_document(tmp_path / "bare.epub")


def test_broken_chapter_is_read_leniently_or_skipped_with_a_warning(tmp_path):
    path = three_chapters(tmp_path)
    replace_member(
        path, "c2.xhtml", chapter_xhtml(f"<h1>Chapter 2</h1><p>Unclosed <b>bold {WORDS}</p><p>Last</i> words")
    )
    doc = read_document(path)
    assert [s.title for s in doc.sections] == ["Chapter 1", "Chapter 2", "Chapter 3"]
    assert "Unclosed bold Plenty of ordinary words" in doc.text and "Last words" in doc.text
    assert len(doc.warnings) == 1 and "Chapter 2" in doc.warnings[0] and "not well-formed" in doc.warnings[0]

    # Bytes that are no markup in any encoding: that chapter is skipped, the others read.
    replace_member(path, "c2.xhtml", b"<?xml \x00\x81\xfe" + bytes(range(256)) * 8)
    doc = read_document(path)
    assert [s.title for s in doc.sections] == ["Chapter 1", "Chapter 3"]
    assert len(doc.warnings) == 1 and doc.warnings[0].startswith("Skipped “Chapter 2”")


def test_html_entities_without_a_dtd_are_no_problem(tmp_path):
    path = three_chapters(tmp_path)
    replace_member(
        path, "c2.xhtml", chapter_xhtml(f"<h1>Chapter 2</h1><p>Caf&eacute;&nbsp;au&nbsp;lait &mdash; {WORDS}</p>")
    )
    doc = read_document(path)
    assert "Café au lait — Plenty" in doc.text and doc.warnings == []


def test_external_entities_are_never_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doctype = (
        f'<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd"><!ENTITY sec SYSTEM "file://{secret}">'
        '<!ENTITY web SYSTEM "http://127.0.0.1:9/x">]>'
    )
    path = three_chapters(tmp_path)
    replace_member(
        path,
        "c2.xhtml",
        chapter_xhtml(f"<h1>Chapter 2</h1><p>Before &xxe; middle &sec; &web; after. {WORDS}</p>", doctype),
    )
    # The package document too: a title made of an entity.
    with zipfile.ZipFile(path) as zf:
        opf_name = next(n for n in zf.namelist() if n.endswith(".opf"))
        opf = zf.read(opf_name).decode()
    opf = opf.replace("<package", doctype.replace("html", "package", 1) + "\n<package", 1)
    opf = opf.replace(">A Test Book<", ">&sec;<")
    replace_member(path, opf_name, opf.encode())
    doc = read_document(path)
    assert "root:" not in doc.text and "TOP-SECRET" not in doc.text and "TOP-SECRET" not in doc.title
    assert "Before" in doc.text and "after." in doc.text
    # The same chapter as a standalone XHTML file.
    page = tmp_path / "page.xhtml"
    page.write_bytes(chapter_xhtml(f"<h1>Page</h1><p>Before &xxe; &sec; after. {WORDS}</p>", doctype))
    doc = read_document(page)
    assert "root:" not in doc.text and "TOP-SECRET" not in doc.text and "after." in doc.text


def test_billion_laughs_is_not_expanded(tmp_path):
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10)
    )
    path = three_chapters(tmp_path)
    replace_member(
        path, "c2.xhtml", chapter_xhtml(f"<h1>Chapter 2</h1><p>&lol9; {WORDS}</p>", f"<!DOCTYPE html [{entities}]>")
    )
    doc = read_document(path)
    assert len(doc.text) < 2000 and "lollol" not in doc.text


def test_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    path = three_chapters(tmp_path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("EPUB/bomb.xhtml", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(250):  # 250 MB of zeros, about 250 KB compressed
                member.write(chunk)
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(ReaderError, match=r"book.epub is refused: EPUB/bomb.xhtml would unpack to 250 MB .*zip bomb"):
        read_document(path)


def test_zip_bomb_by_ratio_and_by_total(tmp_path, monkeypatch):
    path = three_chapters(tmp_path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("EPUB/padding.css", bytes(20 * 2**20))
    with pytest.raises(ReaderError, match=r"is compressed \d+:1, far beyond any book; it looks like a zip bomb"):
        read_document(path)
    monkeypatch.setattr(epub_reader, "MAX_TOTAL_BYTES", 2**20)
    path = three_chapters(tmp_path, "big.epub")
    with zipfile.ZipFile(path, "a") as zf:
        for n in range(3):
            zf.writestr(f"EPUB/extra{n}.css", b"p { margin: 0 } " * 40_000)
    with pytest.raises(ReaderError, match=r"big.epub is refused: it would unpack to \d+ MB \(the limit is 1 MB\)"):
        read_document(path)


def test_drm_encrypted_epub_is_refused_but_font_obfuscation_is_not(tmp_path):
    def encryption(algorithm, uri):
        return (
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            f'<enc:EncryptionMethod Algorithm="{algorithm}"/><enc:CipherData>'
            f'<enc:CipherReference URI="{uri}"/></enc:CipherData></enc:EncryptedData></encryption>'
        )

    path = three_chapters(tmp_path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(
            "META-INF/encryption.xml", encryption("http://www.w3.org/2001/04/xmlenc#aes128-cbc", "EPUB/c1.xhtml")
        )
    with pytest.raises(ReaderError, match="protected by DRM"):
        read_document(path)
    path = three_chapters(tmp_path, "fonts.epub")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("META-INF/encryption.xml", encryption("http://www.idpf.org/2008/embedding", "EPUB/fonts/a.otf"))
    assert len(read_document(path).sections) == 3


def test_deeply_nested_html_fails_cleanly(tmp_path):
    (tmp_path / "deep.html").write_text(
        "<html><body>" + "<div>" * 100_000 + "deep" + "</div>" * 100_000 + "</body></html>"
    )
    with pytest.raises(ReaderError, match="cannot be read as HTML"):
        read_document(tmp_path / "deep.html")


def test_files_are_never_modified(tmp_path):
    paths = [
        three_chapters(tmp_path),
        make_pdf(tmp_path / "book.pdf"),
        tmp_path / "notes.txt",
        tmp_path / "notes.md",
        tmp_path / "page.html",
    ]
    paths[2].write_text(f"Chapter 1\n\n{WORDS}\n")
    paths[3].write_text(f"# Title\n\n## One\n\n{WORDS}\n")
    paths[4].write_text(f"<h1>One</h1><p>{WORDS}</p>")
    paths += [p for p in sorted(FIXTURES.glob("*")) if p.suffix in (".epub", ".pdf")]

    def state(p: Path):
        return hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns

    before = {p: state(p) for p in paths}
    for p in paths:
        read_document(p)
    assert {p: state(p) for p in paths} == before


def test_image_only_pdf_page_counts_and_pymupdf_pixmap(tmp_path):
    # One scanned page among text pages: read, with the page named in a warning.
    doc = read_document(
        make_pdf(tmp_path / "mixed.pdf", [["# Chapter 1: Text", "", WORDS[:50]], None, None, ["More text here."]])
    )
    assert doc.pages == 4 and any("Pages 2–3 " in w and "no text layer" in w for w in doc.warnings)
    assert pymupdf.open(tmp_path / "mixed.pdf").page_count == 4
