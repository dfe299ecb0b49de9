"""PDF reader: the Gutenberg Alice in ../shared/fixtures, and PDFs built here with pymupdf."""

from pathlib import Path

import pymupdf
import pytest

from infini_reader.app.core.readers import ReaderError, read_document

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"

ALICE_CHAPTERS = [
    ("Down the Rabbit-Hole", 2, 6),
    ("The Pool of Tears", 6, 9),
    ("A Caucus-Race and a Long Tale", 10, 14),
    ("The Rabbit Sends in a Little Bill", 14, 18),
    ("Advice from a Caterpillar", 18, 23),
    ("Pig and Pepper", 23, 29),
    ("A Mad Tea-Party", 29, 34),
    ("The Queen's Croquet-Ground", 35, 40),
    ("The Mock Turtle's Story", 40, 45),
    ("The Lobster Quadrille", 45, 50),
    ("Who Stole the Tarts?", 51, 55),
    ("Alice's Evidence", 55, 60),
]

# Page by page: "# " starts a heading line, "" a paragraph gap; None is a scanned page (an image, no text).
# Lines of a paragraph are about equally long, as set text is; "exam-" + "ple" is hyphenation,
# "well-" + "known" a compound that the book also writes whole ("well-known") elsewhere.
BOOK = [
    ["# A Test Book", "", "by Ann Author"],
    [
        "# Chapter One: The Start",
        "",
        "The first chapter opens with a short and plain exam-",
        "ple of hyphenation at the end of a printed line, and",
        "then it goes on for a while about other well-known",
        "things, as the first pages of a book usually do.",
        "",
        "A second paragraph begins here and it is long enough",
        "to run over the bottom of this page, so that it only",
        "ends on the next page, which a reader has to put back",
    ],
    [
        "together again, since the sentence continues onto the",
        "next page and ends here with a full stop at its end.",
        "",
        "# Chapter Two: The Middle",
        "",
        "The middle chapter tells a story that is very well-",
        "known to everybody who has read at least one book.",
    ],
    [
        "It goes on over the page with more of the same kind,",
        "until the chapter comes to its natural and quiet end.",
    ],
    None,
    [
        "# Chapter Three: The End",
        "",
        "The last chapter ties up every loose end in the book",
        "and then stops, as all good books have to stop too.",
    ],
]
OUTLINE = [
    [1, "Chapter One: The Start", 2],
    [2, "A detail", 2],
    [1, "Chapter Two: The Middle", 3],
    [1, "Chapter Three: The End", 6],
]


def make_pdf(path: Path, pages=BOOK, *, outline=None, header="A Test Book", footer="- {n} -", **save):
    doc = pymupdf.open()
    for n, lines in enumerate(pages, start=1):
        page = doc.new_page(width=420, height=595)
        if lines is None:
            pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 60, 80), False)
            pix.clear_with(180)
            page.insert_image(pymupdf.Rect(40, 40, 380, 555), pixmap=pix)
            continue
        if header and n > 1:
            page.insert_text((40, 30), header, fontsize=8)
        y = 70
        for line in lines:
            if line == "":
                y += 10
            elif line.startswith("# "):
                page.insert_text((40, y), line[2:], fontsize=16)
                y += 22
            else:
                page.insert_text((40, y), line, fontsize=10)
                y += 13
        if footer:
            page.insert_text((200, 575), footer.format(n=n), fontsize=8)
    if outline:
        doc.set_toc(outline)
    doc.save(path, **save)
    return path


def check_sections(doc) -> None:
    end = 0
    for s in doc.sections:
        assert end <= s.start < s.end <= len(doc.text), s
        end = s.end


def test_alice_chapters_pages_and_text():
    path = FIXTURES / "alice.pdf"
    if not path.exists():
        pytest.skip("alice.pdf is not in the fixtures")
    doc = read_document(path)
    assert (doc.title, doc.author, doc.language, doc.format, doc.pages) == (
        "Alice's Adventures in Wonderland", "Lewis Carroll", "en", "pdf", 69,
    )  # fmt: skip
    assert [(s.title, s.page_start, s.page_end) for s in doc.sections] == ALICE_CHAPTERS
    check_sections(doc)
    first = doc.sections[0]
    assert doc.text[first.start :].startswith(
        "CHAPTER I. Down the Rabbit-Hole\n\nAlice was beginning to get very tired"
    )
    # A heading set over two lines comes back as one.
    assert doc.text[doc.sections[2].start :].startswith(
        "CHAPTER III. A Caucus-Race and a Long Tale\n\nThey were indeed"
    )
    assert doc.text[doc.sections[-1].start : doc.sections[-1].end].endswith("the happy summer days.\n\nTHE END")
    # A paragraph running over a page break is one paragraph, and its second half is on page 3.
    joined = doc.text.index("daisy-chain would be worth the trouble of getting up")
    assert doc.page_at(doc.text.index("the trouble of getting up", joined)) == 3
    assert doc.page_at(first.start) == 2
    # Gutenberg's header and licence are not the book.
    assert "START OF THIS PROJECT GUTENBERG" not in doc.text and "PLEASE READ THIS" not in doc.text
    assert doc.warnings == []


def test_outline_running_lines_hyphenation_and_a_scanned_page(tmp_path):
    doc = read_document(make_pdf(tmp_path / "book.pdf", outline=OUTLINE))
    assert doc.pages == 6 and doc.format == "pdf"
    assert [(s.title, s.page_start, s.page_end) for s in doc.sections] == [
        ("The Start", 2, 3),
        ("The Middle", 3, 4),
        ("The End", 6, 6),
    ]
    check_sections(doc)
    one, two, three = (doc.text[s.start : s.end] for s in doc.sections)
    assert one == (
        "Chapter One: The Start\n\n"
        "The first chapter opens with a short and plain example of hyphenation at the end of a printed line, and "
        "then it goes on for a while about other well-known things, as the first pages of a book usually do.\n\n"
        "A second paragraph begins here and it is long enough to run over the bottom of this page, so that it only "
        "ends on the next page, which a reader has to put back together again, since the sentence continues onto the "
        "next page and ends here with a full stop at its end."
    )
    assert two.startswith("Chapter Two: The Middle\n\nThe middle chapter tells a story that is very well-known to")
    assert two.endswith("until the chapter comes to its natural and quiet end.")
    assert three.startswith("Chapter Three: The End\n\nThe last chapter ties up")
    # Running header and page-number footers are gone; the title page keeps its (larger) title.
    assert doc.text.count("A Test Book") == 1 and "- 3 -" not in doc.text
    assert doc.page_at(doc.text.index("together again")) == 3
    assert doc.page_at(doc.text.index("ties up")) == 6
    assert len(doc.warnings) == 1 and "Page 5 " in doc.warnings[0] and "no text layer" in doc.warnings[0]


def test_without_outline_chapter_headings_are_found(tmp_path):
    doc = read_document(make_pdf(tmp_path / "plain.pdf"))
    assert [(s.title, s.page_start) for s in doc.sections] == [("The Start", 2), ("The Middle", 3), ("The End", 6)]
    assert doc.title == "plain"  # no metadata, no Gutenberg header: the file's name


def test_outline_with_a_single_root_uses_its_children(tmp_path):
    outline = [[1, "The Whole Book", 1]] + [[level + 1, title, page] for level, title, page in OUTLINE]
    doc = read_document(make_pdf(tmp_path / "rooted.pdf", outline=outline))
    assert [s.title for s in doc.sections] == ["The Start", "The Middle", "The End"]


def test_metadata_title_and_author(tmp_path):
    path = make_pdf(tmp_path / "meta.pdf")
    with pymupdf.open(path) as d:
        d.set_metadata({"title": "Metadata Title", "author": "Meta Author"})
        d.save(tmp_path / "meta2.pdf")
    doc = read_document(tmp_path / "meta2.pdf")
    assert (doc.title, doc.author) == ("Metadata Title", "Meta Author")


def test_encrypted_pdf_is_refused_but_owner_only_protection_reads(tmp_path):
    locked = make_pdf(
        tmp_path / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw="secret"
    )
    with pytest.raises(ReaderError, match="password-protected"):
        read_document(locked)
    # Only an owner password (printing/copying restrictions): opens without one, as in any viewer.
    restricted = make_pdf(
        tmp_path / "restricted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw=""
    )
    assert len(read_document(restricted).sections) == 3


def test_scanned_pdf_without_any_text_layer(tmp_path):
    with pytest.raises(ReaderError, match=r"scanned.*no text layer.*OCR"):
        read_document(make_pdf(tmp_path / "scan.pdf", [None, None]))


def test_truncated_pdf(tmp_path):
    path = FIXTURES / "alice.pdf"
    if not path.exists():
        pytest.skip("alice.pdf is not in the fixtures")
    data = path.read_bytes()
    (tmp_path / "short.pdf").write_bytes(data[: len(data) // 20])
    with pytest.raises(ReaderError, match=r"damaged \(truncated or corrupt\)"):
        read_document(tmp_path / "short.pdf")
    # Cut near its end, it loses only Gutenberg's licence pages: read, with a warning naming them.
    (tmp_path / "cut.pdf").write_bytes(data[: len(data) * 3 // 10])
    doc = read_document(tmp_path / "cut.pdf")
    assert len(doc.sections) == 12
    assert doc.warnings and "damaged" in doc.warnings[0] and "Pages 60–69" in doc.warnings[0]
