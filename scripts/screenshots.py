"""Screenshots of the window for the user guide, on a real book read by the built-in model.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--book PATH]

Reads the book into a temporary library (a few minutes on two CPU cores), asks a question, opens a
citation, finds words in the book (Ctrl+F in the reading pane), writes a chapter summary, and saves
library.png, chat.png, find.png, summary.png and dark.png.
Runs without a display (offscreen) unless QT_QPA_PLATFORM says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT.parent / "shared" / "fixtures"
QUESTION = "What did the drink in the little bottle taste like?"
SHOWN = "cherry-tart"  # the source opened in the reading pane: the one with the answer, when cited
FIND = "golden key"  # looked for in the book (find.png)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    p.add_argument("--book", default=str(FIXTURES / "omni-alice-in-wonderland.epub"))
    p.add_argument("--second", default=str(FIXTURES / "alice.pdf"), help="a book shown stopped mid-reading")
    p.add_argument("--chapter", type=int, default=1, help="the chapter to summarise (1-based)")
    p.add_argument("--data-dir", help="the library to use (default: a new temporary one); a run that was "
                   "stopped goes on where it was")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="infini-shots-"))
    os.environ["INFINI_CONFIG_DIR"] = str(tmp / "config")  # never the user's settings
    os.environ.setdefault("INFINI_LOG_DIR", str(tmp / "logs"))

    from PySide6.QtCore import QUrl
    from PySide6.QtWidgets import QApplication

    from infini_reader.app.core.models import ModelChoice, load_engine
    from infini_reader.app.ui.main_window import MainWindow

    app = QApplication([sys.argv[0]])
    app.setApplicationName("Infini Reader")
    data = Path(args.data_dir) if args.data_dir else tmp / "data"
    window = MainWindow(lambda choice: load_engine(ModelChoice("builtin", "cpu")), data_dir=data)
    window.resize(1440, 900)
    window.show()

    def spin(cond, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()

    def shot(name: str) -> None:
        for _ in range(5):
            app.processEvents()
            time.sleep(0.05)
        path = out / name
        window.grab().save(str(path))
        print("saved", path, flush=True)

    def row(title_start: str):
        return next((r for r in window.library_pane.model.rows if r.title.startswith(title_start)), None)

    spin(lambda: window.engine is not None and window.library is not None, 120, "the model")
    broken = tmp / "notes.epub"
    broken.write_bytes(b"PK\x03\x04 not really an EPUB" * 10)
    t0 = time.monotonic()
    window.open_files([args.book, str(broken)])
    spin(lambda: not window.queue.running and row("Alice") is not None and row("Alice").status == "ready",
         7200, "the book to be read")
    print(f"read the book in {time.monotonic() - t0:.0f} s", flush=True)

    # A second book, stopped part way, so that the library shows every kind of state.
    if Path(args.second).exists() and not any(r.status == "cancelled" for r in window.library_pane.model.rows):
        window.open_files([args.second])
        spin(lambda: window.queue.running and (r := window.library_pane.model.row_of(window.queue.current_doc or -1))
             is not None and r.percent > 0, 900, "the second book")
        window.queue.stop()
        spin(lambda: not window.queue.running, 1800, "the reading to stop")
        window.refresh()
        spin(lambda: any(r.status == "cancelled" for r in window.library_pane.model.rows), 30, "the list")

    window.library_pane.select(row("Alice").doc_id)
    spin(lambda: window.chat.send.isEnabled(), 60, "the chat")
    shot("library.png")

    from infini_reader.app.core.answers import clear_chat

    clear_chat(window.library, row("Alice").doc_id)  # a run that goes on starts its chat afresh
    window.chat.chats.clear()
    window.chat.set_document(None)
    window._show_current()  # the panes show the open document (Alice) again, its chat empty
    spin(lambda: window.chat.send.isEnabled(), 60, "the chat")
    window.chat.question.setPlainText(QUESTION)
    window.chat.ask()
    spin(lambda: not window.chat.busy, 600, "the answer")
    answer = window.chat.turns[-1]
    print("answer:", answer.content[:300].replace("\n", " "), "| sources:", [c.where() for c in answer.citations],
          flush=True)
    k = next((k for k, c in enumerate(answer.citations) if SHOWN in c.passage), 0)
    window.chat.transcript.anchorClicked.emit(QUrl(f"cite:{len(window.chat.turns) - 1}/{k}"))
    spin(lambda: window.reading.passage is not None, 60, "the passage")
    window.chat.question.setPlainText("And what did Alice do then?")
    shot("chat.png")

    # Find in the book: Ctrl+F in the reading pane, the passages found, the second one opened
    window.reading.text.setFocus()
    window.find()  # Ctrl+F; offscreen the window may have no focus to tell the pane by: open the bar anyway
    window.reading.start_find()
    window.reading.find.edit.setText(FIND)
    window.reading.run_find()
    spin(lambda: window.reading.find.results.count() > 0, 60, "the passages found")
    window.reading.find.results.setCurrentRow(min(1, window.reading.find.results.count() - 1))
    spin(lambda: window.reading.where.text().startswith("Found"), 60, "the passage found")
    shot("find.png")
    window.reading.find.hide()
    window.chat.transcript.anchorClicked.emit(QUrl(f"cite:{len(window.chat.turns) - 1}/{k}"))  # the source again
    spin(lambda: window.reading.where.text().startswith("Source"), 60, "the passage")

    window.tabs.setCurrentWidget(window.summary)
    spin(lambda: window.summary.parts.count() > args.chapter, 60, "the chapters")
    window.summary.parts.setCurrentRow(args.chapter)
    spin(lambda: window.summary.make.isEnabled(), 60, "the stored summaries")
    if not window.summary.summary_text(args.chapter - 1):  # a library used before may have it
        window.summary.summarize()
        spin(lambda: not window.summary.busy, 1800, "the summary")
    window.summary.parts.setCurrentRow(args.chapter)
    shot("summary.png")

    from infini_reader.app.ui.settings import Settings

    window.apply_settings(Settings(**{**window.settings.__dict__, "theme": "dark"}))
    window.tabs.setCurrentWidget(window.chat)
    shot("dark.png")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
