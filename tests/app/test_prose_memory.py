"""A trained memory reads a book: the built-in model with its shipped adapter (since 2026-12-01, memory
projections trained on book text and then on story questions; the same file as
`lab/runs/cpu-context-ce-4/adapter.safetensors`) predicts a chapter of *Alice* better with
the memory of the pages before it than reading it alone (7.2% here; context-ce-2, trained on book
text alone, 7.8%). The plain converted model, whose memory is untrained, gains nothing, so this
fails if a trained memory stops being written, read or applied through its projections, or if the
built-in model stops loading the adapter that has them (lab/NOTEBOOK.md, "Reading prose with the
memory")."""

import math
from pathlib import Path

import pytest
import torch

from infini_reader import engine
from infini_reader.app.core.readers import read_document
from lab.evals.ppl import segment_nll
from infini_reader.app.core import models

from .conftest import FIXTURES

ALICE = FIXTURES / "omni-alice-in-wonderland.epub"
pytestmark = pytest.mark.skipif(not ALICE.is_file(), reason="needs ../shared/fixtures")


def memory_gain(e: engine.Engine, ids: torch.Tensor) -> float:
    """How much lower the perplexity of every segment after the first is with the memory than alone."""
    on, alone = segment_nll(e, ids)
    ppl = lambda rows: math.exp(sum(n for n, _ in rows[1:]) / sum(t for _, t in rows[1:]))  # noqa: E731
    return 1 - ppl(on) / ppl(alone)


def alice_pages(e: engine.Engine) -> torch.Tensor:
    """Three segments past the first (the front matter); the last two are scored."""
    ids = torch.tensor(e.tokenizer.encode(read_document(ALICE).text).ids)
    L = e.config.segment_length
    return ids[L : 4 * L + 1]


def test_the_built_in_models_memory_makes_the_book_likelier(builtin_tokenizer_engine):
    e = builtin_tokenizer_engine  # the shipped adapter
    assert e.model.model.layers[0].self_attn.memory_proj is not None  # the adapter's memory projections
    gain = memory_gain(e, alice_pages(e))
    assert gain > 0.03, f"the memory gains {gain:.1%}"


def test_an_untrained_memory_gains_nothing_on_the_same_pages(builtin_tokenizer_engine):
    """The control: the plain converted model (no adapter: no memory projections, gates at their
    initial value) reads the same segments no better with its untrained memory than without it."""
    e = models.load_model("builtin", device="cpu", adapter=None)
    assert e.model.model.layers[0].self_attn.memory_proj is None
    assert e.fingerprint != builtin_tokenizer_engine.fingerprint
    assert memory_gain(e, alice_pages(e)) < 0.01
