from pathlib import Path

import pytest

from infini_reader import engine
from infini_reader.app.core.library import Library
from infini_reader.app.core import models

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def builtin_tokenizer_engine():
    return models.load_model("builtin", device="cpu")


@pytest.fixture(scope="session")
def tiny_reader(builtin_tokenizer_engine):
    """A small random model with the built-in tokenizer: reads books in seconds, float32, exact."""
    cfg = engine.InfiniConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16, intermediate_size=128, segment_length=64, memory_update="delta")
    model = engine.build_model(cfg, seed=0)
    b = builtin_tokenizer_engine
    return engine.Engine(model, b.tokenizer, "tiny", b.tokenizer_json, b.chat)


@pytest.fixture
def library(tmp_path):
    return Library(f"sqlite:///{tmp_path / 'library.sqlite3'}")


def write_book(path: Path, chapters: int = 3, paragraphs: int = 6) -> Path:
    lines = ["THE TEST BOOK", "", "by A. Tester", ""]
    for c in range(1, chapters + 1):
        lines += [f"CHAPTER {c}", ""]
        for p in range(paragraphs):
            lines += [f"In chapter {c}, paragraph {p}, the keeper of lighthouse number {c * 100 + p} "
                      f"counted {p + 3} ships passing the rocks before the storm came in from the west.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
