"""Indexing time of a long book: what stands between dropping a file and asking it. A held-out
Gutenberg book (or consecutive books joined) cut to N tokens is written to a .txt file and read into
a fresh SQLite library the way `ingest_file` starts: parsed and split into chapters (`_read`),
stored with its passages and their full-text index (`add_document`), its passages embedded with
all-MiniLM-L6-v2 (`index_passages`). The memory pass that follows is not timed here. Then one
question is asked with the memory still empty (the book is askable once this is done) and timed."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from infini_reader.app.core import embeddings
from infini_reader.app.core.answers import RetrievalSettings, ask
from infini_reader.app.core.ingest import _read, index_passages
from infini_reader.app.core.library import Library, file_hash

from .common import DATA, Table, load_engine, parse_tokens, read_jsonl, token_label, write_json


def add_arguments(p) -> None:
    p.add_argument("--tokens", default="150K", help="book length in tokens (default 150K)")
    p.add_argument("--books", default=str(DATA / "gutenberg" / "valid.jsonl.xz"))
    p.add_argument("--question", default="Who is the main character's closest friend?",
                   help="asked once the book is indexed (its answer is not scored)")


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run(args) -> dict:
    from .needle import haystack

    t_start = time.perf_counter()
    e = load_engine(args.model, args.device, adapter=args.adapter)
    N = parse_tokens(args.tokens)
    title, text = haystack(e, list(read_jsonl(args.books)), N, set())
    embedder = embeddings.default_embedder()
    if embedder is None:
        raise SystemExit("the embedding model is not installed: run `infini model install`")
    row = {"length": N, "title": title, "chars": len(text), "load_before": _load()}
    with tempfile.TemporaryDirectory(prefix="infini-indexing-") as d:
        path = Path(d) / "book.txt"
        path.write_text(text, encoding="utf-8")
        lib = Library(f"sqlite:///{Path(d) / 'library.sqlite3'}")
        c0 = time.process_time()
        t0 = time.perf_counter()
        doc = _read(path)
        row["parse_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        doc_id = lib.add_document(doc, file_hash(path), path.stat().st_size)
        row["store_fts_s"] = time.perf_counter() - t0
        row["passages"] = len(lib.passages(doc_id))
        row["chapters"] = len(doc.sections)
        t0 = time.perf_counter()
        list(index_passages(lib, doc_id, title, embedder))
        row["embed_s"] = time.perf_counter() - t0
        row["index_s"] = row["parse_s"] + row["store_fts_s"] + row["embed_s"]
        # CPU seconds of this process (all its threads): on shared cores, what the work itself cost
        row["index_cpu_s"] = time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        answer = ""
        for ev in ask(lib, e, doc_id, args.question, max_new_tokens=32, settings=RetrievalSettings()):
            if ev.kind == "done":
                answer = ev.text
            elif ev.kind == "error":
                raise RuntimeError(ev.text)
        row["first_answer_s"] = time.perf_counter() - t0
        row["first_answer_cpu_s"] = time.process_time() - c0
        row["answer"] = answer
    row["load_after"] = _load()
    result = {"command": "indexing", "settings": {k: v for k, v in vars(args).items() if k != "func"}, "rows": [row]}
    result["tables"] = [Table(
        "Indexing a book (split + full-text + embeddings), then the first question with an empty memory",
        ["length", "chars", "passages", "chapters", "parse + split s", "store + full-text s", "embeddings s",
         "indexing s", "indexing CPU s", "first answer s (CPU s)", "load avg before / after"],
        [[token_label(N), row["chars"], row["passages"], row["chapters"], f"{row['parse_s']:.1f}",
          f"{row['store_fts_s']:.1f}", f"{row['embed_s']:.1f}", f"{row['index_s']:.1f}", f"{row['index_cpu_s']:.1f}", f"{row['first_answer_s']:.1f} ({row['first_answer_cpu_s']:.1f})",
          f"{row['load_before']} → {row['load_after']}"]])]
    result["seconds"] = time.perf_counter() - t_start
    write_json(args.out, result)
    return result
