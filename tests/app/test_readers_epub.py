"""EPUB reader: the real books in ../shared/fixtures, and EPUBs built here with ebooklib."""

import zipfile
from pathlib import Path

import pytest
from ebooklib import epub

from infini_reader.app.core.readers import read_document

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"

ALICE_CHAPTERS = [
    "Down the Rabbit-Hole",
    "The Pool of Tears",
    "A Caucus-Race and a Long Tale",
    "The Rabbit Sends in a Little Bill",
    "Advice from a Caterpillar",
    "Pig and Pepper",
    "A Mad Tea-Party",
    "The Queen’s Croquet-Ground",
    "The Mock Turtle’s Story",
    "The Lobster Quadrille",
    "Who Stole the Tarts?",
    "Alice’s Evidence",
]


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} is not in {FIXTURES}")
    return path


def check_sections(doc) -> None:
    """Chapters in reading order, inside the text, never overlapping, each starting with its own text."""
    end = 0
    for s in doc.sections:
        assert end <= s.start < s.end <= len(doc.text), s
        assert not doc.text[s.start].isspace() and not doc.text[s.end - 1].isspace(), s
        end = s.end


def make_epub(path: Path, chapters, *, title="A Test Book", author="Ann Author", language="en", nav=True, toc=None):
    """An EPUB 3 (or, with nav=False, an NCX-only EPUB) whose chapters are (title, file name, XHTML body)."""
    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title(title)
    book.set_language(language)
    book.add_author(author)
    items = []
    for chapter_title, file_name, body in chapters:
        item = epub.EpubHtml(title=chapter_title, file_name=file_name, lang=language)
        item.content = f"<html><body>{body}</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = toc if toc is not None else items
    book.add_item(epub.EpubNcx())
    if nav:
        book.add_item(epub.EpubNav())
    book.spine = (["nav"] if nav else []) + items
    epub.write_epub(str(path), book)
    return path


def replace_member(path: Path, member: str, data: bytes) -> None:
    """Rewrite one file inside an EPUB, bytes as given: ebooklib itself would tidy broken markup."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, content in members:
            zf.writestr(info, data if info.filename.endswith(member) else content)


def test_alice_twelve_chapters_in_order():
    doc = read_document(fixture("omni-alice-in-wonderland.epub"))
    assert (doc.title, doc.author, doc.language, doc.format) == (
        "Alice's Adventures in Wonderland", "Lewis Carroll", "en", "epub",
    )  # fmt: skip
    assert [s.title for s in doc.sections] == ALICE_CHAPTERS
    check_sections(doc)
    first, last = doc.sections[0], doc.sections[-1]
    assert doc.text[first.start :].startswith(
        "CHAPTER I.\nDown the Rabbit-Hole\n\nAlice was beginning to get very tired"
    )
    assert doc.text[last.start :].startswith("CHAPTER XII.\nAlice’s Evidence\n\n“Here!” cried Alice")
    assert doc.text[last.start : last.end].endswith("the happy summer days.\n\nTHE END")
    assert doc.warnings == []
    # Front matter stays outside the chapters; the contents table and Gutenberg's licence are gone.
    assert doc.text.startswith("Alice’s Adventures in Wonderland\n\nby Lewis Carroll")
    assert doc.text.count("Down the Rabbit-Hole") == 1
    assert "Project Gutenberg" not in doc.text and "START OF THE PROJECT" not in doc.text
    assert doc.pages is None and all(s.page_start is None for s in doc.sections)


def test_childrens_literature_nav_with_a_single_root_and_author_groups():
    doc = read_document(fixture("dart-childrens-literature.epub"))
    assert doc.title == "Children's Literature"
    assert doc.author == "Charles Madison Curry, Erle Elsworth Clippinger"
    titles = [s.title for s in doc.sections]
    # The one top entry ("SECTION IV ...") holds the chapters; author names group stories without being chapters.
    assert len(titles) == 17
    assert titles[:4] == [
        "BIBLIOGRAPHY",
        "INTRODUCTORY",
        "190 A FOUR-LEAVED CLOVER",
        "191 THE LORD HELPETH MAN AND BEAST",
    ]
    assert titles[-1] == "204 THE KING OF THE GOLDEN RIVER OR THE BLACK BROTHERS"
    assert "I. The Rabbi and the Diadem" not in titles  # level 3: part of a story
    check_sections(doc)
    intro = doc.sections[1]
    assert doc.text[intro.start :].startswith("INTRODUCTORY\n\nThe difficulties of classification")
    # Printed page numbers (epub:type="pagebreak") are not text; the cover and the nav are not either.
    assert "\n\n174\n\n" not in doc.text and "THE CONTENTS" not in doc.text
    assert "1. Alden, Raymond Macdonald, Why the Chimes Rang" in doc.text  # an <ol> as a numbered list


def test_wasteland_poem_lines_and_notes():
    doc = read_document(fixture("dart-wasteland.epub"))
    assert (doc.title, doc.author, doc.language) == ("The Waste Land", "T.S. Eliot", "en-US")
    assert [s.title for s in doc.sections] == [
        "I. THE BURIAL OF THE DEAD",
        "II. A GAME OF CHESS",
        "III. THE FIRE SERMON",
        "IV. DEATH BY WATER",
        "V. WHAT THE THUNDER SAID",
        'NOTES ON "THE WASTE LAND"',
    ]
    check_sections(doc)
    iv = doc.sections[3]
    # One verse line per line; footnote markers and line numbers dropped.
    assert doc.text[iv.start : iv.end] == (
        "IV. DEATH BY WATER\n\nPhlebas the Phoenician, a fortnight dead,\n"
        "Forgot the cry of gulls, and the deep sea swell\n"
        "And the profit and loss.\nA current under sea\nPicked his bones in whispers. As he rose and fell\n"
        "He passed the stages of his age and youth\nEntering the whirlpool.\nGentile or Jew\n"
        "O you who turn the wheel and look to windward,\nConsider Phlebas, who was once handsome and tall as you."
    )
    assert doc.text.startswith("The Waste Land\n\nT.S. Eliot")  # title page: front matter, in no chapter
    assert doc.sections[0].start > 0


def test_hittel_ncx_of_title_fragments():
    # An EPUB 2 whose NCX lists the title page word by word ("HITTEL", "ON", "GOLD MINES", ...) and an index.
    doc = read_document(fixture("dart-hittelOnGoldMines.epub"))
    assert (doc.title, doc.author, doc.language) == ("Hittel on Gold Mines and Mining", "John S. Hittell", "en")
    assert [s.title for s in doc.sections] == ["GOLD MINES"]
    check_sections(doc)
    body = doc.text[doc.sections[0].start : doc.sections[0].end]
    assert "Chief Industry.—Mining is the chief industry of California." in body
    assert body.endswith("Orleans Flat, Moore's Flat and Humbug City.")  # the index is not part of it
    assert "Project Gutenberg" not in doc.text


def test_generated_epub3_text_and_structure(tmp_path):
    path = make_epub(
        tmp_path / "book.epub",
        [
            (
                "The First Chapter",
                "one.xhtml",
                "<h1>The First Chapter</h1><p>It began  on a\n Monday.</p>"
                "<p>Line one<br/>line two</p><ul><li>apples</li><li>pears</li></ul>"
                "<ol><li>first</li><li>second</li></ol>"
                "<script>var hidden = 1;</script><style>p { color: red }</style>"
                "<nav><a href='two.xhtml'>navigation</a></nav><p>The end &amp; more.</p>",
            ),
            (
                "The Second Chapter",
                "two.xhtml",
                "<h1>The Second Chapter</h1><div>Divided</div><div>lines</div>"
                "<table><tr><td>cell a</td><td>cell b</td></tr></table>"
                "<p>Closing <i>words</i> here, enough of them to be a chapter.</p>",
            ),
            (
                "The Third Chapter",
                "three.xhtml",
                "<h1>The Third Chapter</h1><p>" + "Words and more words. " * 10 + "</p>",
            ),
        ],
    )
    doc = read_document(path)
    assert (doc.title, doc.author, doc.language) == ("A Test Book", "Ann Author", "en")
    assert [s.title for s in doc.sections] == ["The First Chapter", "The Second Chapter", "The Third Chapter"]
    check_sections(doc)
    first = doc.sections[0]
    assert doc.text[first.start : first.end] == (
        "The First Chapter\n\nIt began on a Monday.\n\nLine one\nline two\n\n"
        "- apples\n- pears\n\n1. first\n2. second\n\n"
        "The end & more."
    )
    second = doc.sections[1]
    assert doc.text[second.start : second.end] == (
        "The Second Chapter\n\nDivided\nlines\n\ncell a | cell b\n\nClosing words here, enough of them to be a chapter."
    )
    assert doc.text.index("The Third Chapter") == doc.sections[2].start
    assert doc.warnings == []


def test_ncx_only_epub_takes_titles_from_the_ncx(tmp_path):
    chapters = [
        (f"NCX title {i}", f"c{i}.xhtml", f"<h2>Heading {i}</h2><p>{'Some text of this chapter. ' * 8}</p>")
        for i in range(1, 4)
    ]
    doc = read_document(make_epub(tmp_path / "epub2.epub", chapters, nav=False))
    assert [s.title for s in doc.sections] == ["NCX title 1", "NCX title 2", "NCX title 3"]
    assert doc.text[doc.sections[1].start :].startswith("Heading 2\n\nSome text of this chapter.")


def test_nested_nav_chapters_are_the_top_level_and_fragments_land_inside_documents(tmp_path):
    body = (
        "<h1 id='p1'>Part One</h1><p>" + "Opening words of the part. " * 6 + "</p>"
        "<h2 id='s1'>Section A</h2><p>" + "Alpha text goes here. " * 6 + "</p>"
        "<h2 id='s2'>Section B</h2><p>" + "Beta text goes here. " * 6 + "</p>"
    )
    body2 = "<h1 id='p2'>Part Two</h1><p>" + "Second part words. " * 8 + "</p>"
    c1 = epub.EpubHtml(title="Part One", file_name="p1.xhtml")
    c2 = epub.EpubHtml(title="Part Two", file_name="p2.xhtml")
    toc = [
        (
            epub.Section("Part One", href="p1.xhtml#p1"),
            [epub.Link("p1.xhtml#s1", "Section A", "a"), epub.Link("p1.xhtml#s2", "Section B", "b")],
        ),
        epub.Link("p2.xhtml#p2", "Part Two", "p2"),
    ]
    book = epub.EpubBook()
    book.set_identifier("x")
    book.set_title("Nested")
    c1.content, c2.content = f"<html><body>{body}</body></html>", f"<html><body>{body2}</body></html>"
    book.add_item(c1)
    book.add_item(c2)
    book.toc = toc
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = [c1, c2]
    epub.write_epub(str(tmp_path / "nested.epub"), book)
    doc = read_document(tmp_path / "nested.epub")
    assert [s.title for s in doc.sections] == ["Part One", "Part Two"]
    assert doc.text[doc.sections[0].start : doc.sections[0].end].endswith("Beta text goes here.")

    # With a single top entry holding everything, its children are the chapters.
    book.toc = [
        (
            epub.Section("The Book", href="p1.xhtml#p1"),
            [
                epub.Link("p1.xhtml#s1", "Section A", "a"),
                epub.Link("p1.xhtml#s2", "Section B", "b"),
                epub.Link("p2.xhtml#p2", "Part Two", "p2"),
            ],
        )
    ]
    epub.write_epub(str(tmp_path / "single.epub"), book)
    doc = read_document(tmp_path / "single.epub")
    assert [s.title for s in doc.sections] == ["Section A", "Section B", "Part Two"]
    assert doc.text[doc.sections[1].start :].startswith("Section B\n\nBeta text goes here.")


def test_without_navigation_the_headings_are_the_chapters(tmp_path):
    chapters = [
        (f"T{i}", f"c{i}.xhtml", f"<h1>Heading {i}</h1><p>{'Plenty of words in here. ' * 5}</p>") for i in range(3)
    ]
    path = make_epub(tmp_path / "bare.epub", chapters)
    # Drop both tables of contents from the package.
    with zipfile.ZipFile(path) as zf:
        opf_name = next(n for n in zf.namelist() if n.endswith(".opf"))
        opf = zf.read(opf_name).decode()
    opf = opf.replace('properties="nav"', "").replace('toc="ncx"', "")
    opf = "\n".join(line for line in opf.splitlines() if "toc.ncx" not in line)
    replace_member(path, opf_name, opf.encode())
    doc = read_document(path)
    assert [s.title for s in doc.sections] == ["Heading 0", "Heading 1", "Heading 2"]
