"""A trained memory reads a book: the built-in model with its shipped adapter (since 2026-12-01, memory
projections trained on book text; the same file as `resources/training/cpu-context-ce-2-adapter.safetensors`)
predicts a chapter of *Alice* better with the memory of the pages before it than reading it alone
(7.8% here). The adapter shipped before it (`cpu-chat-3-adapter.safetensors`) has a memory that is
nearly shut and gives nothing (-0.04%), so this fails if a trained memory stops being written, read
or applied through its projections, or if the built-in model stops loading the adapter that has
them (docs/training.md, "Reading prose with the memory")."""

import math
from pathlib import Path

import pytest
import torch

import engine
from app.core.readers import read_document
from app.evals.ppl import segment_nll

from .conftest import FIXTURES

ALICE = FIXTURES / "omni-alice-in-wonderland.epub"
TRAINING = Path(__file__).resolve().parents[2] / "resources" / "training"
pytestmark = pytest.mark.skipif(not ALICE.is_file(), reason="needs ../shared/fixtures")


def memory_gain(e: engine.Engine, ids: torch.Tensor) -> float:
    """How much lower the perplexity of every segment after the first is with the memory than alone."""
    on, alone = segment_nll(e, ids)
    ppl = lambda rows: math.exp(sum(n for n, _ in rows[1:]) / sum(t for _, t in rows[1:]))  # noqa: E731
    return 1 - ppl(on) / ppl(alone)


def alice_segments(e: engine.Engine) -> torch.Tensor:
    ids = torch.tensor(e.tokenizer.encode(read_document(ALICE).text).ids)
    L = e.config.segment_length
    return ids[L : 4 * L + 1]  # three segments past the first (the front matter); the last two are scored


def test_the_built_in_models_memory_makes_the_book_likelier(builtin_tokenizer_engine):
    e = builtin_tokenizer_engine  # the shipped adapter
    assert e.model.model.layers[0].self_attn.memory_proj is not None  # the adapter's memory projections
    shipped = engine.load_model("builtin", device="cpu", adapter=str(TRAINING / "cpu-context-ce-2-adapter.safetensors"))
    assert shipped.fingerprint == e.fingerprint  # that run's adapter is what ships
    gain = memory_gain(e, alice_segments(e))
    assert gain > 0.03, f"the memory gains {gain:.1%}"


def test_an_untrained_memory_gives_nothing(builtin_tokenizer_engine):
    """The control: the adapter shipped before, whose gates sit near -6 and which has no projections."""
    e = engine.load_model("builtin", device="cpu", adapter=str(TRAINING / "cpu-chat-3-adapter.safetensors"))
    assert e.model.model.layers[0].self_attn.memory_proj is None
    assert e.fingerprint != builtin_tokenizer_engine.fingerprint
    assert abs(memory_gain(e, alice_segments(e))) < 0.01
