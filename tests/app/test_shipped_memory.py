"""The shipped adapter's memory reads a book: the built-in model predicts a chapter of *Alice* better
with the memory of the pages before it than reading it alone. The adapter shipped before 2026-12-01
(whose memory was nearly shut) gives no such gain, so this fails if the shipped memory stops being
written, read or applied (docs/training.md, "Reading prose with the memory")."""

import math

import pytest
import torch

import engine
from app.core.readers import read_document
from app.evals.ppl import segment_nll

from .conftest import FIXTURES

ALICE = FIXTURES / "omni-alice-in-wonderland.epub"
pytestmark = pytest.mark.skipif(not ALICE.is_file(), reason="needs ../shared/fixtures")


def memory_gain(e: engine.Engine, ids: torch.Tensor) -> float:
    """How much lower the perplexity of every segment after the first is with the memory than alone."""
    on, alone = segment_nll(e, ids)
    ppl = lambda rows: math.exp(sum(n for n, _ in rows[1:]) / sum(t for _, t in rows[1:]))  # noqa: E731
    return 1 - ppl(on) / ppl(alone)


def test_the_shipped_memory_makes_the_book_likelier(builtin_tokenizer_engine):
    e = builtin_tokenizer_engine
    assert e.model.model.layers[0].self_attn.memory_proj is not None  # the adapter's memory projections
    ids = torch.tensor(e.tokenizer.encode(read_document(ALICE).text).ids)
    L = e.config.segment_length
    book = ids[L : 4 * L + 1]  # three segments from the second chapter on, the first two remembered
    gain = memory_gain(e, book)
    assert gain > 0.03, f"the memory gains {gain:.1%}"
