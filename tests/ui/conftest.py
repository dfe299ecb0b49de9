import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest

from infini_reader import engine
from infini_reader.app.core import models

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def builtin_engine():
    return models.load_model("builtin", device="cpu")


def tiny_engine(builtin: engine.Engine, seed: int = 0, name: str = "tiny") -> engine.Engine:
    """A small random model with the built-in tokenizer and chat format: reads a book in a second.
    Segments of 1,024 tokens leave the summaries room in the local window (their prompts, and parts
    long enough that summarising them shortens them)."""
    cfg = engine.InfiniConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16, intermediate_size=128, segment_length=1024, memory_update="delta")
    model = engine.build_model(cfg, seed=seed)
    return engine.Engine(model, builtin.tokenizer, name, builtin.tokenizer_json, builtin.chat)


@pytest.fixture(scope="session")
def tiny_reader(builtin_engine):
    return tiny_engine(builtin_engine)


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """Settings and logs of each test in its own folders, never the user's."""
    monkeypatch.setenv("INFINI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("INFINI_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("INFINI_DATA_DIR", raising=False)


def add_window(qtbot, window):
    """Register a window with qtbot; before it is closed and deleted, its work ends (a thread must
    not outlive its window)."""

    def finish(w):
        w.queue.stop()
        w.stop_work()
        qtbot.waitUntil(lambda: not w.tasks.busy, timeout=60000)

    qtbot.addWidget(window, before_close_func=finish)
    return window


@pytest.fixture(autouse=True)
def no_modal_dialogs(monkeypatch):
    """A modal dialog would wait for a click that never comes: answer the questions, record the rest."""
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.Yes)
    monkeypatch.setattr(QMessageBox, "information", lambda *a, **k: shown.append(a))
    monkeypatch.setattr(QMessageBox, "about", lambda *a, **k: shown.append(a))
    return shown


def make_epub(path: Path, title: str = "The Lighthouse Keeper", chapters: int = 3, paragraphs: int = 8) -> Path:
    """An EPUB 3 whose chapters each hold a few distinctive facts."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier(f"ui-test-{title}-{chapters}-{paragraphs}")
    book.set_title(title)
    book.set_language("en")
    book.add_author("Ann Author")
    items = []
    for c in range(1, chapters + 1):
        paras = [f"<p>In chapter {c}, paragraph {p}, the keeper of lighthouse number {c * 100 + p} counted "
                 f"{p + 3} ships passing the rocks before the storm came in from the west.</p>"
                 for p in range(paragraphs)]
        if c == 2:
            paras.insert(3, "<p>The keeper's cat was called Marmalade and slept on the lamp room stairs.</p>")
        item = epub.EpubHtml(title=f"Chapter {c}", file_name=f"c{c}.xhtml", lang="en")
        item.content = f"<html><body><h1>Chapter {c}</h1>{''.join(paras)}</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return path
