"""The engine with the fused kernels (INFINI_KERNELS=triton; on the CPU through Triton's interpreter)
against the engine's own PyTorch path: segments with the memory carried, generation with the
segment cache (prompt chunks and single decoded tokens), training gradients through the memory."""

import pytest
import torch

from infini_reader.engine import InfiniConfig, build_model
from infini_reader.engine.generate import Stream
from infini_reader.engine.model import add_delta

from .conftest import DEVICE, rel_err
from lab.train.unroll import forward_train

TOL = 5e-5  # float32 model: the two paths differ by summation order only


def tiny_model(rule: str, seed: int = 0):
    cfg = InfiniConfig(
        vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        head_dim=32, intermediate_size=80, segment_length=40, rope_theta=10000.0, tie_word_embeddings=False,
        memory_update=rule,
    )
    model = build_model(cfg, device=DEVICE, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory_gate.copy_(torch.linspace(-1.0, 1.0, 6))  # the memory weighs in
    return model


def both_paths(monkeypatch, fn, expect=("infini_attention_fwd", "memory_update_fwd")):
    """fn() under INFINI_KERNELS=triton and =reference; checks which kernels the first one ran."""
    import infini_reader.kernels.decode.fused as dec
    import infini_reader.kernels.infini_attention.fused as att
    import infini_reader.kernels.memory_update.fused as upd

    calls = []
    for mod, name in ((att, "infini_attention_fwd"), (upd, "memory_update_fwd"), (dec, "decode_fwd")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **kw: calls.append(_n) or _r(*a, **kw))
    out = {}
    for m in ("triton", "reference"):
        monkeypatch.setenv("INFINI_KERNELS", m)
        calls.clear()
        out[m] = fn()
        assert set(calls) == (set(expect) if m == "triton" else set()), m
    return out["triton"], out["reference"]


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_segments_with_memory(monkeypatch, seed, rule):
    model = tiny_model(rule)
    ids = torch.randint(0, 97, (2, 3 * 40), generator=torch.Generator().manual_seed(seed)).to(DEVICE)

    @torch.inference_mode()
    def read():
        mem, outs = None, []
        for s in range(0, ids.shape[1], 40):
            h, deltas = model.segment(ids[:, s : s + 40], mem)
            mem = add_delta(mem, deltas)
            outs.append(h)
        return outs, mem

    (h_t, mem_t), (h_r, mem_r) = both_paths(monkeypatch, read)
    for a, b in zip(h_t, h_r):
        assert rel_err(a, b) < TOL, f"seed {seed}"
    for (M_t, z_t), (M_r, z_r) in zip(mem_t, mem_r):
        assert rel_err(M_t, M_r) < TOL and rel_err(z_t, z_r) < TOL, f"seed {seed}"


def test_generation_with_the_segment_cache(monkeypatch, seed):
    """Prompt chunks after earlier chunks (the segment kernel with pos0 > 0), then single tokens (the
    decode kernel), across a segment boundary where the cache is written into the memory."""
    model = tiny_model("delta")
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 97, (50,), generator=gen).to(DEVICE)
    new = torch.randint(0, 97, (35,), generator=gen).tolist()

    @torch.inference_mode()
    def run():
        stream = Stream(model, None)
        logits = [stream.feed(prompt[:23]), stream.feed(prompt[23:])]
        logits += [stream.feed(prompt.new_tensor([t])) for t in new]
        return logits

    for a, b in zip(*both_paths(monkeypatch, run, ("infini_attention_fwd", "memory_update_fwd", "decode_fwd"))):
        assert rel_err(a, b) < TOL, f"seed {seed}"


def test_training_gradients_through_the_memory(monkeypatch, seed):
    model = tiny_model("delta")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 97, (2, 100), generator=gen).to(DEVICE)
    targets = torch.randint(0, 97, (2, 100), generator=gen).to(DEVICE)

    def train_step():
        model.zero_grad()
        loss = forward_train(model, idx, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (loss_t, g_t), (loss_r, g_r) = both_paths(monkeypatch, train_step)
    assert rel_err(loss_t, loss_r) < TOL
    for name in g_r:
        assert rel_err(g_t[name], g_r[name]) < 1e-4, f"{name}, seed {seed}"
    assert g_t["model.layers.0.self_attn.memory_gate"].abs().sum() > 0
