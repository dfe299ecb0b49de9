"""Markdown export of what the library knows about a document: chapters, summaries, chats."""

from __future__ import annotations

from sqlalchemy import select

from .db import ChatRow, CitationRow, MessageRow, SummaryRow
from .library import Library


def export_markdown(library: Library, doc_id: int) -> str:
    info = library.info(doc_id)
    out = [f"# {info.title}", ""]
    if info.author:
        out += [f"*{info.author}*", ""]
    facts = [f"format {info.format}"] + ([f"{info.pages} pages"] if info.pages else []) + (
        [f"{info.tokens:,} tokens"] if info.tokens else [])
    out += [", ".join(facts), ""]
    text = library.document(doc_id).text
    with library.Session() as s:
        # negative section_idx: the notes of parts of a summary still being written (summaries.py), not summaries
        summaries = s.scalars(select(SummaryRow).where(SummaryRow.document_id == doc_id,
                                                       SummaryRow.section_idx.is_(None) | (SummaryRow.section_idx >= 0))
                              .order_by(SummaryRow.section_idx.is_not(None), SummaryRow.section_idx)).all()
        chats = s.scalars(select(ChatRow).where(ChatRow.document_id == doc_id).order_by(ChatRow.id)).all()
        messages = {c.id: s.scalars(select(MessageRow).where(MessageRow.chat_id == c.id)
                                    .order_by(MessageRow.id)).all() for c in chats}
        cites = {}
        ids = [m.id for ms in messages.values() for m in ms]
        for c in s.scalars(select(CitationRow).where(CitationRow.message_id.in_(ids)).order_by(CitationRow.rank)):
            cites.setdefault(c.message_id, []).append(c)
    if info.chapters:
        out += ["## Chapters", ""] + [f"{i}. {t}" for i, t in enumerate(info.chapters, 1)] + [""]
    if summaries:
        out += ["## Summaries", ""]
        for sm in summaries:
            name = "The whole book" if sm.section_idx is None else info.chapters[sm.section_idx]
            out += [f"### {name}", "", sm.text.strip(), ""]
    for chat in chats:
        out += [f"## Chat of {chat.created_at:%Y-%m-%d %H:%M}", ""]
        for m in messages[chat.id]:
            who = "**Question.**" if m.role == "user" else "**Answer.**"
            out += [f"{who} {m.content.strip()}", ""]
            for c in cites.get(m.id, []):
                where = ", ".join(x for x in (c.chapter, f"page {c.page}" if c.page else None) if x)
                out.append(f"- {where or 'passage'}: “{_quote(text, c)}”")
            if m.id in cites:
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def _quote(text: str, c: CitationRow, limit: int = 300) -> str:
    """The cited sentence (the one the answer came from), else the start of the cited passage, on one line."""
    start, end = (c.sentence_start, c.sentence_end) if c.sentence_start is not None else (c.char_start, c.char_end)
    quote = " ".join(text[start:end].split())
    return quote if len(quote) <= limit else quote[: limit - 1].rsplit(" ", 1)[0] + "…"
