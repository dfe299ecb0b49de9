"""Generation: greedy determinism, streaming, segments filling up mid-answer, stop strings."""

import pytest
import torch

from infini_reader import engine
from infini_reader.engine.generate import detokenize, generate_ids

from .conftest import tiny_engine
from infini_reader.app.core import models


@pytest.fixture(scope="module")
def smol():
    """The built-in model with short segments, so that answers cross segment boundaries."""
    return models.load_model("builtin", device="cpu", segment_length=48)


def test_greedy_is_deterministic_and_pieces_concatenate():
    # Full-length segments: the untrained memory cannot yet carry an answer across a boundary.
    smol = models.load_model("builtin", device="cpu")
    mem = smol.ingest("The lighthouse keeper was called Ezekiel Marsh. " * 6, smol.new_memory())
    pieces = list(smol.generate("Name three colours.", mem, max_new_tokens=60))
    again = "".join(smol.generate("Name three colours.", mem, max_new_tokens=60))
    assert len(pieces) > 5 and "".join(pieces) == again
    text = again.lower()
    assert sum(c in text for c in ("red", "blue", "green", "yellow", "orange", "purple", "black", "white")) >= 2


def test_a_long_answer_crosses_segments_and_leaves_the_memory_untouched(smol):
    mem = smol.ingest("Chapter one. The ship left the harbour at dawn. " * 10, smol.new_memory())
    before = mem.to_bytes()
    prompt = smol.prompt_ids("Write a long story about a ship at sea.")
    assert len(prompt) < 48
    seen = []
    out = list(smol.generate("Write a long story about a ship at sea.", mem, max_new_tokens=150,
                             on_memory=seen.append))
    assert len(smol.tokenizer.encode("".join(out), add_special_tokens=False).ids) > 100  # > 2 segments
    assert mem.to_bytes() == before  # byte-identical: nothing was written into the caller's memory
    (after,) = seen
    assert after.tokens > mem.tokens + 100 and not torch.equal(after.M[5], mem.M[5])


def test_generation_equals_recomputed_logits():
    """Each greedy token is the argmax of logits() over the whole sequence so far (tiny model,
    float32, segments of 16, so that prompt and answer cross boundaries)."""
    e = tiny_engine(gate=0.0)
    mem = e.ingest(list(range(1, 40)), e.new_memory())
    prompt = torch.tensor([5, 9, 2, 7, 7, 1, 3, 8, 11, 4, 6, 10, 12])
    greedy = list(generate_ids(e.model, prompt, e._as_layers(mem), 30))
    assert len(greedy) == 30
    seq = prompt.tolist()
    for tok in greedy:
        assert int(e.logits(seq, mem)[-1].argmax()) == tok
        seq.append(tok)


def test_stop_strings_and_split_characters():
    vocab = {0: b"Hel", 1: b"lo", 2: b" wor", 3: b"ld", 4: b"\n\nQ", 5: b"uestion", 6: "é".encode()[:1],
             7: "é".encode()[1:], 8: b"!"}

    def decode(ids):
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    assert "".join(detokenize(iter([0, 1, 2, 3]), decode, [])) == "Hello world"
    pieces = list(detokenize(iter([0, 1, 6, 7, 8]), decode, []))
    assert "".join(pieces) == "Helloé!" and all("\ufffd" not in p for p in pieces)
    assert "".join(detokenize(iter([0, 1, 2, 4, 5, 3]), decode, ["\n\nQuestion"])) == "Hello wor"
    # a prefix of a stop string that turns out not to be one is released
    assert "".join(detokenize(iter([0, 1, 4, 8]), decode, ["\n\nQuestion"])) == "Hello\n\nQ!"


def test_top_p_and_temperature_sampling_is_seeded(smol):
    a = "".join(smol.generate("Say something about cats.", None, 20, temperature=0.8, top_p=0.9, seed=3))
    b = "".join(smol.generate("Say something about cats.", None, 20, temperature=0.8, top_p=0.9, seed=3))
    assert a == b and a
