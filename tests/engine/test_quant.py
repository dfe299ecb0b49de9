"""The int8 one-token decode path (engine/quant.py) beside the exact one."""

import math

import pytest
import torch

from infini_reader.engine import quant
from infini_reader.engine.generate import Stream, generate_ids
from infini_reader.kernels.reference import apply_rotary, rotary_tables

from .conftest import tiny_engine

pytestmark = pytest.mark.skipif(not quant.int8_supported(), reason="no fbgemm int8 kernels in this PyTorch build")


def test_rotation_is_rotary_as_one_product():
    cos, sin = rotary_tables(16, 64, 10000.0)
    x = torch.randn(5, 1, 16)
    for pos in (0, 1, 37, 63):
        torch.testing.assert_close(x @ quant.rotation(cos[pos], sin[pos]), apply_rotary(x, cos[pos : pos + 1], sin[pos : pos + 1]),
                                   rtol=1e-6, atol=1e-6)


def test_decode_mode_override(monkeypatch):
    monkeypatch.setenv(quant.DECODE_ENV, "exact")
    assert quant.resolve_decode(None, "cpu") == "exact"
    assert quant.resolve_decode("int8", "cpu") == "int8"  # an explicit argument wins
    monkeypatch.setenv(quant.DECODE_ENV, "int8")
    assert quant.resolve_decode(None, "cpu") == "int8"
    assert quant.resolve_decode(None, "meta") == "exact"  # the int8 kernels are the CPU's
    monkeypatch.setenv(quant.DECODE_ENV, "auto")
    assert quant.resolve_decode(None, "cpu") == "int8"  # the default on x86 (+1.2-1.3% perplexity, docs/performance.md)
    assert quant.resolve_decode(None, "meta") == "exact"
    monkeypatch.setenv(quant.DECODE_ENV, "int4")
    with pytest.raises(ValueError, match="decode mode"):
        quant.resolve_decode(None, "cpu")


@torch.inference_mode()
def test_head_shortlist_scores_its_best_candidates_exactly():
    e = tiny_engine(vocab_size=500)
    fast = quant.Int8Decoder.for_model(e.model)
    for seed in range(5):
        h = torch.randn(48, generator=torch.Generator().manual_seed(seed))
        ref = e.model.lm_head(h)
        got = fast.logits(h)
        exact = torch.isclose(got, ref, rtol=1e-6, atol=1e-6)
        assert int(exact.sum()) >= quant.TOPK  # the shortlist: the float head's own values
        assert bool(exact[got.topk(8).indices].all())
        assert int(got.argmax()) == int(ref.argmax())
        assert float((got - ref).norm() / ref.norm()) < 0.05  # the rest: int8


def _stream(model, prompt, mem, tokens, fast):
    s = Stream(model, mem, fast)
    out = [s.feed(prompt)]
    for t in tokens:
        out.append(s.feed(prompt.new_tensor([t])))
    return torch.stack(out), s.final_memory()


@pytest.mark.parametrize("rule", ["linear", "delta"])
@pytest.mark.parametrize("projection", [False, True])
@torch.inference_mode()
def test_int8_decode_follows_the_exact_path(rule, projection):
    """Token by token across two segment boundaries (segments of 16), on top of a memory, with and
    without an adapter's memory projections: logits and memory as the exact path gives them, to int8's
    rounding. A wrong rotation, split or memory read would be off by far more than that."""
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
    fast, fast_mem = _stream(e.model, prompt, mem, tokens, quant.Int8Decoder.for_model(e.model))
    ref, ref_mem = _stream(e.model, prompt, mem, tokens, None)
    assert int(fast[0].argmax()) == int(ref[0].argmax())  # the prompt is read exactly; its head is shortlisted
    for f, r in zip(fast, ref):
        assert float((f - r).norm() / r.norm()) < 0.03
    for (M, z), (M_ref, z_ref) in zip(fast_mem, ref_mem):
        assert float((M - M_ref).norm() / M_ref.norm()) < 0.03
        assert float((z - z_ref).norm() / z_ref.norm()) < 0.03


def test_kept_rows_are_written_before_the_segment_moves_on():
    """The int8 step keeps each token's keys and values for the memory instead of writing them: a
    prompt chunk after decoded tokens, a full segment and the stream's end all write them first, and a
    segment cannot restart with rows unwritten."""
    from infini_reader.engine.model import SegmentCache

    c = SegmentCache()
    c.keep(torch.ones(1, 4), 8)
    c.pos = 1
    with pytest.raises(RuntimeError, match="not written"):
        c.restart()
    rows = c.take_kept()
    assert rows.shape == (1, 1, 4) and c.take_kept() is None
    c.restart()
    c.keep(torch.ones(1, 4), 8)
    c.pos = 3  # two tokens read by another path in between
    with pytest.raises(RuntimeError, match="consecutive"):
        c.keep(torch.ones(1, 4), 8)


@torch.inference_mode()
def test_smoothing_moves_input_outliers_into_the_weights():
    """SmoothQuant's factors leave each product unchanged in float (W·s applied to x / s) and shrink
    the largest input channel against the rest, which is what int8's per-row activation scale needs."""
    e = tiny_engine()
    ranges = quant.input_ranges(e.model, None)
    assert len(ranges) == e.config.num_hidden_layers and set(ranges[0]) == set(quant.PRODUCTS)
    w = e.model.model.layers[0].mlp.down_proj.weight.float()
    act = ranges[0]["down"]
    assert act.shape == (w.shape[1],) and bool((act > 0).all())
    x = torch.randn(3, w.shape[1]) * act  # inputs with the measured ranges
    s = quant.smoothing(act, w, 0.6)
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-4, atol=1e-5)
    spread = lambda t: float(t.abs().amax(0).max() / t.abs().amax(0).median())  # noqa: E731
    assert spread(x / s) < spread(x)


@torch.inference_mode()
def test_outliers_are_kept_out_of_int8():
    """LLM.int8()'s decomposition, per token: with a planted outlier in each row (60, -40 and 30 among
    standard normal values, on different channels), the product with each row's k largest inputs in float32 is an
    order of magnitude nearer the float product than plain int8, whose activation scale they set,
    and nearer one row at a time too (the decode step's path). Dropping their float part
    or leaving them in the int8 row would fail."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(576, 1536, generator=g) / 40
    x = torch.randn(3, 1536, generator=g)
    x[0, 7] = 60.0
    x[1, 100] = -40.0
    x[2, 1500] = 30.0
    ref = x @ W.T
    err = lambda y, r=ref: float((y - r).norm() / r.norm())  # noqa: E731
    plain, mixed = quant.QLinear(W), quant.QLinear(W, None, 16)
    assert err(plain(x)) > 0.1  # the outliers leave the other channels a few int8 levels
    assert err(mixed(x)) < 0.015, err(mixed(x))
    for r in range(3):
        one = mixed(x[r : r + 1])
        assert err(one, ref[r : r + 1]) < 0.015
        assert err(one, ref[r : r + 1]) < err(plain(x[r : r + 1]), ref[r : r + 1]) / 4
    dropped = torch.ops.quantized.linear_dynamic(x.scatter(1, x.abs().topk(16, 1).indices, 0.0), mixed.packed, True)
    assert err(dropped) > 0.5  # the outliers' float part carries much of the product
    x_even = torch.randn(3, 1536, generator=g)  # no outlier: about plain int8
    assert err(mixed(x_even), x_even @ W.T) < 0.02


def test_decoder_is_made_again_when_a_weight_changes():
    """(A write under inference mode bumps no version counter: weights are changed outside it.)"""
    e = tiny_engine()
    d = quant.Int8Decoder.for_model(e.model)
    assert quant.Int8Decoder.for_model(e.model) is d
    with torch.no_grad():
        e.model.model.layers[0].mlp.down_proj.weight.mul_(2)
    assert quant.Int8Decoder.for_model(e.model) is not d


HELD_OUT = (
    "The old mill stood at the bend of the river, where the water ran slow and brown past the reeds. "
    "Every morning the miller opened the sluice, and the wheel began to turn with a low groan that the "
    "whole village knew. His daughter kept the accounts in a thick ledger bound in green cloth, and she "
    "wrote each sack of flour in a small, careful hand, with the name of the farmer who had brought the grain."
)


@torch.inference_mode()
def test_builtin_model_perplexity_and_greedy_answers(builtin_engine_f32):
    """The built-in model: held-out text fed one token at a time has about the exact path's perplexity
    (with SmoothQuant and the down projection's outliers in float, +1.3% on 2,496 held-out tokens on
    this machine's own path, +1.15% with PyTorch forced to AVX2; 3.5% without either:
    docs/performance.md), and the greedy answers start the same. A wrong product, rotation or
    smoothing would be off by far more."""
    e = builtin_engine_f32
    fast = quant.Int8Decoder.for_model(e.model)
    ids = torch.tensor(e.tokenizer.encode(HELD_OUT, add_special_tokens=False).ids)
    nll = {}
    for name, f in (("exact", None), ("int8", fast)):
        s = Stream(e.model, None, f)
        logits, total = s.feed(ids[:4]), 0.0
        for tok in ids[4:]:
            total -= float(torch.log_softmax(logits, -1)[tok])
            logits = s.feed(tok.view(1))
        nll[name] = total / (len(ids) - 4)
    assert abs(math.exp(nll["int8"]) / math.exp(nll["exact"]) - 1) < 0.06, nll
    prompt = e.prompt_ids("What is the capital of France?")
    exact = list(generate_ids(e.model, prompt, None, 12, decode="exact"))
    int8 = list(generate_ids(e.model, prompt, None, 12, decode="int8"))
    assert int8[:6] == exact[:6] and len(exact) >= 6


@torch.inference_mode()
def test_input_ranges_are_kept_on_disk_for_the_next_process(builtin_engine_f32, tmp_path, monkeypatch):
    """`Engine.int8_decoder` measures the ranges on the calibration text once and keeps them beside the
    prepared weights; a later decoder (another process) reads them instead of measuring, and a damaged
    file or one of other weights is measured again."""
    e = builtin_engine_f32
    assert e.decode_cache is not None and e.decode_cache.name.endswith(".int8-ranges.safetensors")
    monkeypatch.setattr(e, "decode_cache", tmp_path / "r.int8-ranges.safetensors")
    monkeypatch.delitem(e.model.__dict__, "_int8_decoder", raising=False)
    d = e.int8_decoder()
    assert e.decode_cache.is_file() and e.int8_decoder() is d
    measured = d.ranges
    e.model.__dict__.pop("_int8_decoder")
    calls = []
    monkeypatch.setattr(quant, "input_ranges", lambda *a: calls.append(a) or measured)
    d2 = e.int8_decoder()
    assert not calls  # read from the file
    for a, b in zip(d2.ranges, measured):
        for k in quant.PRODUCTS:
            torch.testing.assert_close(a[k], b[k])
    e.model.__dict__.pop("_int8_decoder")
    e.decode_cache.write_bytes(b"\0" * 64)
    e.int8_decoder()
    assert len(calls) == 1  # measured again, and written anew
    assert quant.load_ranges(e.decode_cache, {"fingerprint": e.fingerprint, "calibration": "x"}, 30) is None
    e.model.__dict__.pop("_int8_decoder")


@torch.inference_mode()
def test_a_short_default_answer_does_not_make_the_decoder(monkeypatch):
    """Chosen by default, the int8 decoder is made for answers that may repay it (or when it exists
    already); a short one-off answer stays exact, and an explicit int8 is always honoured."""
    from infini_reader.engine import generate as gen

    monkeypatch.delenv(quant.DECODE_ENV, raising=False)
    e = tiny_engine()
    prompt = torch.tensor([5, 9, 2])
    list(gen.generate_ids(e.model, prompt, None, 4))
    assert quant.Int8Decoder.current(e.model) is None
    list(gen.generate_ids(e.model, prompt, None, gen.INT8_BREAK_EVEN))
    d = quant.Int8Decoder.current(e.model)
    assert d is not None
    e2 = tiny_engine()
    list(gen.generate_ids(e2.model, prompt, None, 4, decode="int8"))
    assert quant.Int8Decoder.current(e2.model) is not None
