"""A chat as HTML for a QTextBrowser: questions, answers (the model writes Markdown), citations as
links that open the passage, a copy link under each answer."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from PySide6.QtGui import QPalette, QTextDocument

from infini_reader.app.core.answers import Citation


@dataclass
class Turn:
    role: str  # user | assistant
    content: str = ""
    citations: list[Citation] = field(default_factory=list)
    error: str = ""
    streaming: bool = False
    message_id: int | None = None
    waiting: bool = False  # asked while the model loads: answered once it is ready


def cite_label(c: Citation) -> str:
    parts = [c.chapter or "", f"p. {c.page}" if c.page else ""]
    return ", ".join(p for p in parts if p) or "passage"


def cite_quote(c: Citation, chars: int = 140) -> str:
    """The cited sentence (the one the answer came from, or the passage's best), short, on one line."""
    text = " ".join((c.sentence or c.passage).split())
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " …"


def passage_preview(c: Citation, chars: int = 320) -> str:
    text = " ".join(c.passage.split())
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " …"


_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.DOTALL)


def markdown_html(md: str) -> str:
    """The model's Markdown as an HTML fragment (Qt's own Markdown reader, so lists and bold work)."""
    doc = QTextDocument()
    doc.setMarkdown(md)
    m = _BODY.search(doc.toHtml())
    return m.group(1) if m else html.escape(md)


def _plain_html(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.splitlines()) or "&nbsp;"


def render(turns: list[Turn], palette: QPalette, cache: dict[str, str]) -> str:
    """`cache` keeps the HTML of finished answers between renders (streaming re-renders often)."""
    muted = palette.color(QPalette.PlaceholderText).name()
    bubble = palette.color(QPalette.AlternateBase).name()
    link = palette.color(QPalette.Link).name()
    out = []
    for i, t in enumerate(turns):
        if t.role == "user":
            out.append(
                f"<table width='100%' cellpadding='8' style='margin-top:10px; margin-bottom:4px'>"
                f"<tr><td style='background-color:{bubble}'><b>You</b><br>{_plain_html(t.content)}</td></tr></table>")
            continue
        body = t.content
        if t.waiting:
            part = (f"<p style='color:{muted}'><i>Waiting for the model… The question is answered as soon as "
                    "the model has loaded.</i></p>")
        elif t.streaming:
            part = markdown_html(body + " ▍") if body else f"<p style='color:{muted}'><i>Thinking…</i></p>"
        else:
            if body not in cache:
                cache[body] = markdown_html(body) if body else ""
            part = cache[body]
        out.append(f"<p style='margin-top:6px; margin-bottom:0'><b>Infini Reader</b></p>{part}")
        if t.error:
            out.append(f"<p style='color:#c0392b'>⚠ {html.escape(t.error)}</p>")
        if t.citations:  # one line a source: where it is (chapter, page) and what it says
            links = "<br>".join(
                f"<a href='cite:{i}/{k}' style='color:{link}; text-decoration:none'>[{k + 1}] "
                f"{html.escape(cite_label(c))}</a> — “{html.escape(cite_quote(c))}”" for k, c in enumerate(t.citations))
            out.append(f"<p style='color:{muted}; margin-top:2px'>Sources:<br>{links}</p>")
        if body and not t.streaming:
            out.append(f"<p style='margin-top:0'><a href='copy:{i}' style='color:{muted}'>Copy answer</a></p>")
    return "".join(out)


def empty_state(title: str, palette: QPalette) -> str:
    """What an empty chat shows: what to do, and what comes back."""
    muted = palette.color(QPalette.PlaceholderText).name()
    return (f"<div style='margin-top:80px' align='center'><p style='font-size:15px'>Ask a question about "
            f"<b>{html.escape(title)}</b></p><p style='color:{muted}'>The answer comes from the book, with the "
            "passages it was drawn from.<br>Click a source to read it in its chapter.</p>"
            f"<p style='color:{muted}'>Enter sends · Shift+Enter starts a new line · Esc stops</p></div>")


def parse_link(url: str) -> tuple[str, int, int]:
    """("cite", turn, k) or ("copy", turn, 0); ("", -1, -1) for anything else."""
    m = re.fullmatch(r"(cite|copy):(\d+)(?:/(\d+))?", url)
    if not m:
        return "", -1, -1
    return m.group(1), int(m.group(2)), int(m.group(3) or 0)
