"""Plain text, Markdown and HTML readers: encodings, Gutenberg markers, chapter headings."""

import codecs
import resource

import pytest

from infini_reader.app.core.readers import read_document

PARAGRAPH = (
    "It was a dark and stormy night; the rain fell in torrents, except at\n"
    "occasional intervals, when it was checked by a violent gust of wind\n"
    "which swept up the streets, rattling along the housetops.\n"
)

GUTENBERG = f"""The Project Gutenberg eBook of A Small Tale, by Jane Doe

This eBook is for the use of anyone anywhere at no cost.

Title: A Small Tale

Author: Jane Doe

Language: English

*** START OF THE PROJECT GUTENBERG EBOOK A SMALL TALE ***




A SMALL TALE

by Jane Doe


CONTENTS

     CHAPTER I.     The Beginning
     CHAPTER II.    The Middle Part
     CHAPTER III.   The End


CHAPTER I.
The Beginning

{PARAGRAPH}
{PARAGRAPH}

CHAPTER II.
The Middle Part

Chapter 2 of the report, a line that merely starts with a chapter word.
{PARAGRAPH}

CHAPTER III.
The End

{PARAGRAPH}
THE END

End of the Project Gutenberg EBook of A Small Tale, by Jane Doe

*** END OF THE PROJECT GUTENBERG EBOOK A SMALL TALE ***

Section 1. General Terms of Use and Redistributing Project Gutenberg-tm
electronic works
"""


def titles(doc):
    return [s.title for s in doc.sections]


def test_gutenberg_text_markers_metadata_and_chapters(tmp_path):
    path = tmp_path / "small-tale.txt"
    path.write_text(GUTENBERG.replace("\n", "\r\n"), encoding="utf-8")  # Windows line ends
    doc = read_document(path)
    assert (doc.title, doc.author, doc.language, doc.format) == ("A Small Tale", "Jane Doe", "en", "txt")
    assert titles(doc) == ["The Beginning", "The Middle Part", "The End"]
    assert "\r" not in doc.text
    assert doc.text.startswith("A SMALL TALE\n\nby Jane Doe")  # only what lies between the markers
    assert doc.text.endswith("THE END")
    assert "Project Gutenberg" not in doc.text and "General Terms" not in doc.text
    first, second, last = doc.sections
    assert doc.text[first.start : first.end].startswith("CHAPTER I.\nThe Beginning\n\nIt was a dark and stormy night")
    assert doc.text[second.start : second.end].startswith("CHAPTER II.\nThe Middle Part\n\nChapter 2 of the report")
    assert doc.text[last.start : last.end].endswith("rattling along the housetops.\n\nTHE END")
    assert first.page_start is None and doc.pages is None


def test_chapter_styles_books_and_numbers(tmp_path):
    text = (
        "Front matter that is no chapter.\n\n"
        "BOOK ONE\n\n"
        f"Chapter 1\n\n{PARAGRAPH}\nChapter 2: A Named One\n\n{PARAGRAPH}\n"
        "BOOK TWO\n\n"
        f"CHAPTER ONE\n\n{PARAGRAPH}\nCHAPTER TWENTY-TWO.\n\nThe Return\n\n{PARAGRAPH}"
    )
    (tmp_path / "books.txt").write_text(text)
    doc = read_document(tmp_path / "books.txt")
    # Books hold the chapters: they end the chapter before them without being chapters themselves.
    assert titles(doc) == ["Chapter 1", "A Named One", "CHAPTER ONE", "The Return"]
    second = doc.sections[1]
    assert doc.text[second.start : second.end].rstrip().endswith("housetops.")
    assert "BOOK TWO" not in doc.text[second.start : second.end]
    (tmp_path / "none.txt").write_text(f"Just a note.\n\n{PARAGRAPH}")
    assert read_document(tmp_path / "none.txt").sections == []


@pytest.mark.parametrize(
    "encoding, expected",
    [
        ("utf-8-sig", "Café “quoted” — naïve"),
        ("utf-16", "Café “quoted” — naïve"),  # with a BOM
        ("utf-16-be", "Café “quoted” — naïve"),  # without one
        ("cp1252", "Café “quoted” — naïve"),
    ],
)
def test_encodings(tmp_path, encoding, expected):
    path = tmp_path / "enc.txt"
    path.write_bytes(f"{expected}\n\n{PARAGRAPH}".encode(encoding))
    doc = read_document(path)
    assert doc.text.startswith(expected)
    assert "\ufeff" not in doc.text


def test_bytes_that_are_neither_utf8_nor_cp1252_still_read(tmp_path):
    # 0x81 and 0x8d are undefined in Windows-1252: Latin-1 takes them, the control characters go.
    path = tmp_path / "latin.txt"
    path.write_bytes(b"Caf\xe9 \x81\x8d ok\x00\x00\n\n" + PARAGRAPH.encode() * 3)
    doc = read_document(path)
    assert doc.text.startswith("Café  ok")


def test_markdown_title_chapters_and_code_fences(tmp_path):
    md = (
        "---\nauthor: Mark Down\n---\n"
        "# The Markdown Book\n\nAn opening note.\n\n"
        f"## First *Steps*\n\n{PARAGRAPH}\n```python\n## not a heading\n# nor this\n```\n\n"
        f"## Second [Steps](https://example.org)\n\n{PARAGRAPH}\n### A detail inside\n\n{PARAGRAPH}\n"
        f"## Contents\n\n- First Steps\n- Second Steps\n"
    )
    (tmp_path / "book.md").write_text(md)
    doc = read_document(tmp_path / "book.md")
    assert (doc.title, doc.author, doc.format) == ("The Markdown Book", "Mark Down", "md")
    assert titles(doc) == ["First Steps", "Second Steps"]  # "Contents" ends the second chapter, starts none
    second = doc.sections[1]
    assert doc.text[second.start : second.end].endswith("rattling along the housetops.")
    assert "### A detail inside" in doc.text[second.start : second.end]


def test_markdown_several_top_headings_and_setext(tmp_path):
    md = f"Part One\n========\n\n{PARAGRAPH}\nPart Two\n========\n\n{PARAGRAPH}\n# Part Three\n\n{PARAGRAPH}"
    (tmp_path / "parts.markdown").write_text(md)
    doc = read_document(tmp_path / "parts.markdown")
    assert titles(doc) == ["Part One", "Part Two", "Part Three"]
    assert doc.title == "parts"


def test_html_title_headings_and_clean_text(tmp_path):
    html = f"""<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>Un   Livre</title><meta name="author" content="Jean Auteur">
<style>body {{ color: red }}</style><script>alert("no")</script></head>
<body><nav><a href="#a">Menu</a></nav>
<h1 id="a">Premier chapitre</h1><p>{PARAGRAPH}</p><p>Deuxième&nbsp;paragraphe<br>sur deux lignes.</p>
<h2>Une section</h2><p>Texte de section assez long pour compter comme du texte.</p>
<h1>Second chapitre</h1><p>{PARAGRAPH}</p>
</body></html>"""
    (tmp_path / "livre.html").write_text(html, encoding="utf-8")
    doc = read_document(tmp_path / "livre.html")
    assert (doc.title, doc.author, doc.language, doc.format) == ("Un Livre", "Jean Auteur", "fr", "html")
    assert titles(doc) == ["Premier chapitre", "Second chapitre"]
    first = doc.sections[0]
    assert doc.text[first.start : first.end].startswith("Premier chapitre\n\nIt was a dark and stormy night; the rain")
    assert "Deuxième paragraphe\nsur deux lignes." in doc.text
    assert "alert" not in doc.text and "color" not in doc.text and "Menu" not in doc.text


def test_html_in_windows_1252_with_a_meta_charset(tmp_path):
    (tmp_path / "old.htm").write_bytes(
        b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
        b"<title>Old</title></head><body><p>\x93Smart\x94 quotes \x97 and caf\xe9.</p></body></html>"
    )
    assert read_document(tmp_path / "old.htm").text == "“Smart” quotes — and café."


def test_a_50_mb_single_line_reads_in_bounded_memory(tmp_path):
    path = tmp_path / "one-line.txt"
    unit = b"lorem ipsum dolor sit amet "
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(unit * (2**20 // len(unit) + 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    doc = read_document(path)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert len(doc.text) > 50 * 10**6 and doc.sections == [] and doc.text.startswith("lorem ipsum")
    # The text itself is 50 MB; a few copies of it at most, never a blow-up.
    assert grown < 600 * 1024
    del doc


def test_utf16_detection_does_not_mistake_plain_bytes():
    from infini_reader.app.core.readers.text import decode_text

    assert decode_text(codecs.BOM_UTF8 + "é".encode()) == "é"
    assert decode_text("plain ascii".encode("utf-16-le")) == "plain ascii"
    assert decode_text(b"\xff\xfe") == ""


def test_chapters_titled_in_capitals_alone(tmp_path):
    """Jekyll and Hyde style: no "CHAPTER" word, each chapter headed by its title in capitals; the
    contents list of such lines at the top is no chapter."""
    body = "STRANGE CASE OF DR JEKYLL AND MR HYDE\n\nCONTENTS\n\nSTORY OF THE DOOR\nSEARCH FOR MR. HYDE\nIII.\n\n"
    for t in ("STORY OF THE DOOR", "SEARCH FOR MR. HYDE", "III."):
        body += f"\n\n{t}\n\n{PARAGRAPH}\nMR. UTTERSON said so, and walked on.\n\n{PARAGRAPH}"
    (tmp_path / "jekyll.txt").write_text(body)
    doc = read_document(tmp_path / "jekyll.txt")
    assert titles(doc) == ["STORY OF THE DOOR", "SEARCH FOR MR. HYDE", "III"]
    first = doc.sections[0]
    assert doc.text[first.start:].startswith("STORY OF THE DOOR\n\nIt was a dark")


def test_capital_lines_do_not_override_numbered_chapters_and_one_is_not_enough(tmp_path):
    (tmp_path / "one.txt").write_text(f"A NOTE\n\n{PARAGRAPH}\n\n{PARAGRAPH}")
    assert titles(read_document(tmp_path / "one.txt")) == []
    numbered = "".join(f"\n\nCHAPTER {n}\n\n{PARAGRAPH}\n\nTHE END OF IT\n\n{PARAGRAPH}" for n in ("I", "II"))
    (tmp_path / "numbered.txt").write_text(numbered)
    assert titles(read_document(tmp_path / "numbered.txt")) == ["CHAPTER I", "CHAPTER II"]


def test_markdown_titled_by_its_single_top_heading(tmp_path):
    (tmp_path / "notes.md").write_text(f"# Field Notes on Herons\n\n{PARAGRAPH}\n{PARAGRAPH}")
    assert read_document(tmp_path / "notes.md").title == "Field Notes on Herons"
