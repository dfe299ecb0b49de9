"""Infini-attention inside the decoder: streaming, causality, rotary, GQA, gradients, parity."""

import json

import pytest
import torch

from infini_reader import engine
from infini_reader.engine import InfiniConfig
from infini_reader.engine.generate import Stream
from infini_reader.engine.memory import sigma

from .conftest import tiny_config, tiny_engine
from lab.train.unroll import forward_train


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_streaming_equals_one_call(rule):
    e = tiny_engine(memory_update=rule)
    ids = torch.randint(0, 97, (75,), generator=torch.Generator().manual_seed(0))
    full = e.logits(ids)
    assert full.shape == (75, 97) and full.dtype == torch.float32
    for cut in (16, 48):  # whole segments ingested first
        mem = e.ingest(ids[:cut], e.new_memory())
        rest = e.logits(ids[cut:], mem)
        torch.testing.assert_close(rest, full[cut:], rtol=1e-5, atol=1e-5)
    # the memory really matters: the same tail without it is different
    assert not torch.allclose(e.logits(ids[48:]), full[48:], atol=1e-3)


def test_ingest_in_pieces_equals_one_ingest_and_leaves_input_memory_alone():
    e = tiny_engine(memory_update="delta")
    ids = list(range(1, 97)) + list(range(1, 30))
    one = e.ingest(ids, e.new_memory())
    start = e.ingest(ids[:32], e.new_memory())
    before = [m.clone() for m in start.M]
    two = e.ingest(ids[32:], start)
    assert two.tokens == one.tokens == len(ids)
    for a, b in zip(one.M + one.z, two.M + two.z):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, start.M))


def test_chunked_generation_path_equals_logits():
    # Feeding a sequence chunk by chunk through the segment cache (as generation does) gives the
    # same logits as one logits() call, across segment boundaries.
    e = tiny_engine(memory_update="delta")
    ids = torch.randint(0, 97, (45,), generator=torch.Generator().manual_seed(3))
    full = e.logits(ids)
    stream = Stream(e.model, None)
    with torch.inference_mode():
        pos = 0
        for n in (5, 1, 1, 13, 3, 1, 9, 12):  # crosses the boundaries at 16 and 32
            last = stream.feed(ids[pos : pos + n])
            pos += n
            torch.testing.assert_close(last, full[pos - 1], rtol=1e-5, atol=1e-5)
    assert pos == 45
    final = e._to_memory(stream.final_memory(), e.new_memory(), 45)
    ing = e.ingest(ids, e.new_memory())
    for a, b in zip(final.M, ing.M):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("projections", [False, True], ids=["plain", "memory-projections"])
@pytest.mark.parametrize("t", [5, 20, 33])
def test_no_leakage_from_future_tokens(t, projections):
    """The memory a segment reads holds only the segments before it (with an adapter's memory
    projections too): changing every token after t leaves the logits up to t exactly as they were."""
    e = tiny_engine()
    if projections:
        from tests.lab.test_memory_projection import randomize_memory_projection

        randomize_memory_projection(e.model, seed=t)
    g = torch.Generator().manual_seed(t)
    ids = torch.randint(0, 97, (50,), generator=g)
    changed = ids.clone()
    changed[t + 1 :] = torch.randint(0, 97, (50 - t - 1,), generator=g)
    a, b = e.logits(ids), e.logits(changed)
    torch.testing.assert_close(a[: t + 1], b[: t + 1], rtol=0, atol=0)
    assert not torch.allclose(a[t + 1 :], b[t + 1 :])


def test_rotary_does_not_reach_the_memory():
    ids = torch.randint(0, 97, (16,), generator=torch.Generator().manual_seed(1))
    e1 = tiny_engine(seed=0, rope_theta=10000.0)
    e2 = tiny_engine(seed=0, rope_theta=500.0)
    m1, m2 = e1.ingest(ids, e1.new_memory()), e2.ingest(ids, e2.new_memory())
    # Layer 0 sees the same inputs in both models: its memory must not depend on positions.
    torch.testing.assert_close(m1.M[0], m2.M[0], rtol=0, atol=0)
    torch.testing.assert_close(m1.z[0], m2.z[0], rtol=0, atol=0)
    assert not torch.allclose(m1.M[1], m2.M[1])  # later layers do see the local attention's output
    # and layer 0's memory is exactly σ(K)ᵀV of the pre-rotary keys
    layer = e1.model.model.layers[0]
    with torch.no_grad():
        x = layer.input_layernorm(e1.model.model.embed_tokens(ids))
        k = (x @ layer.self_attn.k_proj.weight.T).view(16, 2, 8).transpose(0, 1)
        v = (x @ layer.self_attn.v_proj.weight.T).view(16, 2, 8).transpose(0, 1)
    torch.testing.assert_close(m1.M[0], sigma(k).transpose(-1, -2) @ v, rtol=1e-5, atol=1e-5)


def test_memory_read_uses_pre_rotary_queries_and_the_right_kv_head():
    # With the gate fully open the first layer's attention output is o_proj(A_mem) alone; compute it
    # by hand from pre-rotary queries, head h reading kv head h // 3.
    e = tiny_engine(gate=50.0)
    g = torch.Generator().manual_seed(5)
    mem = e.new_memory()
    mem.M = [torch.randn(2, 8, 8, generator=g) for _ in mem.M]
    mem.M[0][1] *= -4  # the two kv heads differ strongly
    mem.z = [torch.rand(2, 8, generator=g) + 0.5 for _ in mem.z]
    mem.tokens = 16
    ids = torch.randint(0, 97, (10,), generator=g)
    attn = e.model.model.layers[0].self_attn
    with torch.no_grad():
        x = e.model.model.layers[0].input_layernorm(e.model.model.embed_tokens(ids))[None]
        cos, sin = e.model.rope_cos[:10], e.model.rope_sin[:10]
        layers = [(M[None], z[None]) for M, z in zip(mem.M, mem.z)]
        out, _ = attn(x, cos, sin, layers[0])
        q = (x[0] @ attn.q_proj.weight.T).view(10, 6, 8)
        heads = []
        for h in range(6):
            sq = sigma(q[:, h])
            heads.append((sq @ mem.M[0][h // 3]) / (sq @ mem.z[0][h // 3])[:, None])
        expected = torch.cat(heads, dim=-1) @ attn.o_proj.weight.T
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)


def test_empty_memory_first_segment_is_finite_and_scaled():
    e = tiny_engine(gate=0.0)
    out = e.logits(list(range(16)))
    assert torch.isfinite(out).all()


def _train_grads(model, idx, targets, ckpt):
    model.zero_grad()
    loss = forward_train(model, idx, targets, grad_checkpoint=ckpt)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_flow_through_the_memory_into_the_first_segment():
    e = tiny_engine(gate=0.0, memory_update="delta")
    model = e.model.train()
    # tokens 0..15 only in segment 1; tokens 50..96 only in segments 2 and 3; loss on segment 3 only
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.arange(16), torch.randint(50, 97, (32,), generator=g)])[None].repeat(2, 1)
    targets = idx.clone()
    targets[:, :32] = -100
    loss, grads = _train_grads(model, idx, targets, ckpt=True)
    emb = grads["model.embed_tokens.weight"]
    assert emb[:16].abs().sum() > 0  # reached through M and z of two segments
    for layer in range(3):
        assert grads[f"model.layers.{layer}.self_attn.memory_gate"].abs().sum() > 0
    # the same gradients without checkpointing
    loss2, grads2 = _train_grads(model, idx, targets, ckpt=False)
    torch.testing.assert_close(loss, loss2)
    for n in grads:
        torch.testing.assert_close(grads[n], grads2[n], rtol=1e-4, atol=1e-6)
    # with the memory shut, nothing from segment 1 reaches the loss
    with torch.no_grad():
        for lay in model.model.layers:
            lay.self_attn.memory_gate.fill_(-100.0)
    _, grads3 = _train_grads(model, idx, targets, ckpt=True)
    assert grads3["model.embed_tokens.weight"][:16].abs().max() < 1e-12


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(memory_update="delta", segment_length=1024, attention_bias=True)
    cfg.save(tmp_path / "config.json")
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["num_key_value_heads"] == 2 and d["rope_theta"] == 10000.0 and d["rms_norm_eps"] == 1e-5
    assert d["segment_length"] == 1024 and d["memory_update"] == "delta"
    assert InfiniConfig.load(tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="memory_update"):
        tiny_config(memory_update="cubic")


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kv_heads,bias", [(2, False), (6, True)])
def test_gates_shut_one_segment_equals_plain_llama(tmp_path, kv_heads, bias):
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=101, hidden_size=72, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=kv_heads, head_dim=16, rope_theta=5000.0, rms_norm_eps=1e-6, attention_bias=bias,
        tie_word_embeddings=False, max_position_embeddings=256,
    )
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    ref.save_pretrained(tmp_path)
    e = engine.load_model(tmp_path, device="cpu", dtype="float32", segment_length=64)
    with torch.no_grad():
        for layer in e.model.model.layers:
            layer.self_attn.memory_gate.fill_(-100.0)  # sigmoid(-100) ≈ 4e-44: the memory is shut
    ids = torch.randint(0, 101, (1, 60), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(ids).logits[0]
    got = e.logits(ids[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_export_hf_round_trip(tmp_path):
    e = tiny_engine(gate=-1.5, memory_update="delta")
    e.export_hf(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["segment_length"] == 16 and d["memory_update"] == "delta"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.layers.2.self_attn.memory_gate" in names and "model.layers.0.self_attn.q_proj.weight" in names
    back = engine.load_model(tmp_path, device="cpu", dtype="float32")
    ids = list(range(40))
    assert torch.equal(back.logits(ids), e.logits(ids))
    assert back.fingerprint == e.fingerprint
    assert torch.equal(back.model.model.layers[1].self_attn.memory_gate, torch.full((6,), -1.5))


@pytest.mark.parametrize("T,pos0,block", [(300, 0, 256), (100, 37, 32), (257, 0, 64), (1, 50, 256)])
def test_blocked_attention_equals_sdpa(T, pos0, block):
    from infini_reader.engine.model import blocked_attention

    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, 6, T, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 2, pos0 + T, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 2, pos0 + T, 16, generator=g, requires_grad=True)
    mask = torch.ones(T, pos0 + T, dtype=torch.bool).tril(pos0)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    got = blocked_attention(q, k, v, pos0, block=block)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_blocked_attention_trains_after_running_in_inference_mode():
    from infini_reader.engine.model import blocked_attention

    q, k, v = (torch.randn(1, 2, 300, 8) for _ in range(3))
    with torch.inference_mode():
        blocked_attention(q, k, v, 0, block=128)
    q.requires_grad_(True)
    blocked_attention(q, k, v, 0, block=128).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_rows_read_side_by_side_get_each_its_own_memory(rule):
    """`ingest_many`: every row's memory is what reading it alone on top of the same memory gives."""
    e = tiny_engine(memory_update=rule)
    g = torch.Generator().manual_seed(5)
    start = e.ingest(torch.randint(0, 97, (40,), generator=g).tolist(), e.new_memory())
    rows = [torch.randint(0, 97, (37,), generator=g).tolist() for _ in range(3)]
    for base in (start, e.new_memory()):
        many = e.ingest_many(rows, base)
        assert len(many) == 3
        for row, got in zip(rows, many):
            want = e.ingest(row, base)
            assert got.tokens == want.tokens == base.tokens + 37 and got.fingerprint == want.fingerprint
            for a, b in zip(got.M + got.z, want.M + want.z):
                assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(many[0].M[-1], many[1].M[-1])  # the rows are not mixed up
    assert start.tokens == 40  # the memory read from is not changed
    with pytest.raises(ValueError, match="one length"):
        e.ingest_many([rows[0], rows[1][:-1]], start)


@pytest.mark.parametrize("tied", [True, False])
def test_load_weights_maps_the_same_model_that_copying_built(tmp_path, tied):
    """`load_weights` (meta model, tensors assigned, not copied) gives the model `for_loading` +
    `load_state_dict_into` gave: same weights, same fingerprint; plain checkpoints' gates get their
    initial value; wrong checkpoints are still refused by name."""
    from safetensors.torch import load_file, save_file

    from infini_reader.engine.checkpoint import (
        ModelLoadError, load_state_dict_into, load_weights, read_hf_directory, weights_fingerprint,
    )

    e = tiny_engine(seed=3, tie_word_embeddings=tied)
    e.export_hf(tmp_path)
    plain = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if not k.endswith("memory_gate")}
    save_file(plain, tmp_path / "model.safetensors")  # as a Hugging Face checkpoint: no gates
    cfg, tensors = read_hf_directory(tmp_path)
    copied = engine.InfiniTransformer.for_loading(cfg)
    load_state_dict_into(copied, tensors, "tiny")
    mapped = load_weights(cfg, tensors, "tiny")
    assert mapped.model.embed_tokens.weight.data_ptr() == tensors["model.embed_tokens.weight"].data_ptr()  # no copy
    assert (mapped.lm_head.weight is mapped.model.embed_tokens.weight) == tied
    assert weights_fingerprint(mapped) == weights_fingerprint(copied)
    assert torch.equal(mapped.model.layers[0].self_attn.memory_gate, torch.full((6,), cfg.memory_gate_init))
    assert torch.equal(mapped.rope_cos, copied.rope_cos)
    ids = torch.arange(16)[None]
    with torch.no_grad():
        assert torch.equal(mapped.segment(ids, None)[0], copied.segment(ids, None)[0])
    with pytest.raises(ModelLoadError, match="unexpected weights"):
        load_weights(cfg, {**tensors, "model.layers.0.extra.weight": torch.zeros(1)}, "tiny")
    with pytest.raises(ModelLoadError, match="has shape"):
        load_weights(cfg, {**tensors, "model.norm.weight": torch.zeros(3)}, "tiny")


def test_query_features_ignore_a_reading_on_another_thread():
    """A question's attribution hooks the model's layers; a book read by the same model on another
    thread at the same time (askable while reading) must not add its layers' queries to the question's."""
    import threading

    from infini_reader.engine.attribution import query_features

    e = tiny_engine(num_hidden_layers=2, segment_length=64)
    alone = query_features(e, list(range(20)))
    stop = threading.Event()

    def read():
        while not stop.is_set():
            e.ingest(list(range(60)), e.new_memory())

    t = threading.Thread(target=read)
    t.start()
    try:
        for _ in range(20):
            assert query_features(e, list(range(20))).shape == alone.shape == (2, e.config.head_dim)
    finally:
        stop.set()
        t.join()
