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
    greedy = list(generate_ids(e.model, prompt, e._as_layers(mem), 30, decode="exact"))
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


# ---- the one-token decode path (`InfiniTransformer.decode`) against the reference (`segment`) ----


def _stream_logits(model, prompt, mem, tokens, reference: bool):
    """Logits after the prompt and after each of `tokens` fed one at a time, by the fast one-token
    path or by the reference (`segment` for every chunk), and the final memory."""
    from infini_reader.engine.generate import Stream

    if reference:
        model.decode = model.segment  # an instance attribute: this model object only
    try:
        s = Stream(model, mem)
        out = [s.feed(prompt)]
        for t in tokens:
            out.append(s.feed(prompt.new_tensor([t])))
    finally:
        if reference:
            del model.decode
    return torch.stack(out), s.final_memory()


@pytest.mark.parametrize("rule", ["linear", "delta"])
@pytest.mark.parametrize("projection", [False, True])
@torch.inference_mode()
def test_decode_path_equals_the_segment_path(rule, projection):
    """Token by token across two segment boundaries, on top of a memory, with and without an adapter's
    memory projections: the same logits and the same memory as running each token through `segment`."""
    from infini_reader.engine.adapter import add_memory_projection

    e = tiny_engine(gate=0.0, memory_update=rule)
    if projection:
        add_memory_projection(e.model, rank=2, alpha=4, train=False)
        with torch.no_grad():
            for layer in e.model.model.layers:
                for p in layer.self_attn.memory_proj.parameters():
                    p.normal_(0, 0.2)
    mem = e._as_layers(e.ingest(list(range(1, 40)), e.new_memory()))
    prompt = torch.tensor([5, 9, 2, 7, 7, 1, 3])
    tokens = [int(t) for t in torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(0))]
    fast, fast_mem = _stream_logits(e.model, prompt, mem, tokens, reference=False)
    ref, ref_mem = _stream_logits(e.model, prompt, mem, tokens, reference=True)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.argmax(-1), ref.argmax(-1))
    for (M, z), (M_ref, z_ref) in zip(fast_mem, ref_mem):
        torch.testing.assert_close(M, M_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_decode_path_gives_the_reference_greedy_answers(smol):
    """The built-in model (its shipped adapter, the machine's dtype), segments of 48 so that answers cross
    boundaries: greedy answers by the exact one-token path equal those of `segment` for every token."""
    mem = smol._as_layers(smol.ingest("The lighthouse keeper was called Ezekiel Marsh. " * 8, smol.new_memory()))
    model = smol.model
    for question in ("Who was the lighthouse keeper?", "Name three colours."):
        prompt = smol.prompt_ids(question)
        fast = list(generate_ids(model, prompt, mem, 60, decode="exact"))
        model.decode = model.segment  # the reference, for this model object only
        try:
            ref = list(generate_ids(model, prompt, mem, 60, decode="exact"))
        finally:
            del model.decode
        assert fast == ref and len(fast) > 10
