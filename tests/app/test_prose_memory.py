"""A trained memory reads a book: the built-in model with the prose-memory adapter
(`resources/training/cpu-context-ce-2-adapter.safetensors`, memory projections trained on book text)
predicts a chapter of *Alice* better with the memory of the pages before it than reading it alone
(7.8% here). The shipped adapter's memory is nearly shut and gives nothing (-0.04%), so this fails if
a trained memory stops being written, read or applied through its projections (docs/training.md,
"Reading prose with the memory")."""

import math
from pathlib import Path

import pytest
import torch

import engine
from app.core.readers import read_document
from app.evals.ppl import segment_nll

from .conftest import FIXTURES

ALICE = FIXTURES / "omni-alice-in-wonderland.epub"
ADAPTER = Path(__file__).resolve().parents[2] / "resources" / "training" / "cpu-context-ce-2-adapter.safetensors"
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


def test_a_trained_memory_makes_the_book_likelier(builtin_tokenizer_engine):
    e = engine.load_model("builtin", device="cpu", adapter=str(ADAPTER))
    assert e.model.model.layers[0].self_attn.memory_proj is not None  # the adapter's memory projections
    assert e.fingerprint != builtin_tokenizer_engine.fingerprint
    gain = memory_gain(e, alice_pages(e))
    assert gain > 0.03, f"the memory gains {gain:.1%}"


def test_the_shipped_adapters_memory_gives_nothing_on_the_same_pages(builtin_tokenizer_engine):
    """The control: the built-in model's own adapter, whose memory is nearly shut (β near -6, no
    projections), reads the same segments the same with and without the memory."""
    e = builtin_tokenizer_engine
    assert e.model.model.layers[0].self_attn.memory_proj is None
    assert abs(memory_gain(e, alice_pages(e))) < 0.01
