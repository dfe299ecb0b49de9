"""Memory projections: low-rank corrections of q, k, v and o that only the memory path sees.

A model with them reads and writes its memory with corrected projections while its local attention
keeps the layer's own; a graft of two adapters computes one's local attention and the other's memory
exactly; a run that trains them keeps an empty memory's answers as they were."""

import random

import pytest
import torch

from infini_reader.engine import Engine, build_model
from infini_reader.engine.adapter import add_lora, add_memory_projection, apply_adapter, read_adapter, save_adapter
from infini_reader.engine.generate import Stream
from lab.train.blend import main as blend_main

from .conftest import tiny_config, tiny_engine
from .test_train import RecallData, tiny_trainer
from lab.train.unroll import forward_train

L = 16


def randomize_memory_projection(model, seed=0, by=0.1):
    add_memory_projection(model, rank=3, alpha=6, train=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for p in layer.self_attn.memory_proj.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * by)


def write_random_adapter(path, seed, gate=0.0):
    """An adapter of the tiny model with random LoRA factors on q, k, v, o and gates near `gate`."""
    model = build_model(tiny_config(), seed=0)
    add_lora(model, 2, 4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(gate + torch.randn(p.shape, generator=g) if n.endswith("memory_gate")
                        else torch.randn(p.shape, generator=g) * 0.2)
    save_adapter(model, path)


def loaded(path):
    model = build_model(tiny_config(), seed=0)
    apply_adapter(model, path)
    return model


def test_a_zero_projection_changes_nothing_and_the_local_path_ignores_it():
    e = tiny_engine()
    ids = torch.randint(0, 97, (50,), generator=torch.Generator().manual_seed(0))
    plain = e.logits(ids)
    add_memory_projection(e.model, rank=3, alpha=6, train=False)
    torch.testing.assert_close(e.logits(ids), plain, rtol=0, atol=0)
    randomize_memory_projection(e.model)
    got = e.logits(ids)
    # the first segment reads an empty memory: only the local attention counts there
    torch.testing.assert_close(got[:L], plain[:L], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got[L:], plain[L:], atol=1e-3)  # the memory is read and written differently


def test_streaming_and_chunked_generation_agree_with_memory_projections():
    e = tiny_engine(memory_update="delta")
    randomize_memory_projection(e.model, seed=4)
    ids = torch.randint(0, 97, (45,), generator=torch.Generator().manual_seed(3))
    full = e.logits(ids)
    mem = e.ingest(ids[:32], e.new_memory())
    torch.testing.assert_close(e.logits(ids[32:], mem), full[32:], rtol=1e-5, atol=1e-5)
    stream = Stream(e.model, None)
    with torch.inference_mode():
        pos = 0
        for n in (5, 1, 13, 3, 1, 9, 13):  # crosses the boundaries at 16 and 32
            last = stream.feed(ids[pos : pos + n])
            pos += n
            torch.testing.assert_close(last, full[pos - 1], rtol=1e-5, atol=1e-5)
    final = e._to_memory(stream.final_memory(), e.new_memory(), 45)
    for a, b in zip(final.M, e.ingest(ids, e.new_memory()).M):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_adapter_file_carries_the_projections_and_changes_the_fingerprint(tmp_path):
    model = build_model(tiny_config(), seed=0)
    plain_fp = Engine(build_model(tiny_config(), seed=0)).fingerprint
    add_lora(model, 2, 4)
    add_memory_projection(model, rank=3, alpha=6)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    save_adapter(model, tmp_path / "a.safetensors")
    meta, tensors = read_adapter(tmp_path / "a.safetensors")
    assert (meta["memory_rank"], meta["memory_alpha"]) == (3, 6)
    assert "model.layers.2.self_attn.memory_proj.o_B" in tensors
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = forward_train(model, ids[None, :-1], ids[None, 1:], grad_checkpoint=False)
    back = loaded(tmp_path / "a.safetensors")
    with torch.no_grad():
        got = forward_train(back, ids[None, :-1], ids[None, 1:], grad_checkpoint=False)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert Engine(back).fingerprint != plain_fp
    with pytest.raises(ValueError, match="memory projections"):
        Engine(back).export_hf(tmp_path / "folder")


def test_a_graft_computes_one_adapter_s_local_attention_and_the_other_s_memory(tmp_path):
    write_random_adapter(tmp_path / "a.safetensors", seed=1, gate=-1.0)
    write_random_adapter(tmp_path / "b.safetensors", seed=2, gate=0.5)
    assert blend_main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--graft",
                       "--out", str(tmp_path / "g.safetensors")]) == 0
    a, b, g = (loaded(tmp_path / f"{n}.safetensors") for n in "abg")
    assert read_adapter(tmp_path / "g.safetensors")[0]["memory_rank"] == 4
    x = torch.randn(1, 11, 48, generator=torch.Generator().manual_seed(5))
    x0 = torch.randn(1, 16, 48, generator=torch.Generator().manual_seed(6))
    cos, sin = g.rope_cos[:11], g.rope_sin[:11]
    with torch.no_grad():
        for i in range(3):
            la, lb, lg = (m.model.layers[i].self_attn for m in (a, b, g))
            torch.testing.assert_close(lg.memory_gate, lb.memory_gate)
            # what the memory receives is B's
            for got, want in zip(lg.write_only(x0, None), lb.write_only(x0, None)):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            # an empty memory: A's local attention, with B's gates
            la.memory_gate.copy_(lb.memory_gate)
            empty_g, _ = lg(x, cos, sin, None)
            torch.testing.assert_close(empty_g, la(x, cos, sin, None)[0], rtol=1e-4, atol=1e-5)
            # what reading the memory adds is B's
            mem = lb.write_only(x0, None)
            read_g = lg(x, cos, sin, mem)[0] - empty_g
            read_b = lb(x, cos, sin, mem)[0] - lb(x, cos, sin, None)[0]
            assert read_b.abs().max() > 1e-2
            torch.testing.assert_close(read_g, read_b, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="without memory projections"):
        blend_main([str(tmp_path / "g.safetensors"), str(tmp_path / "b.safetensors"), "--graft",
                    "--out", str(tmp_path / "gg.safetensors")])


def test_training_the_projections_keeps_an_empty_memory_s_answers(tmp_path):
    write_random_adapter(tmp_path / "init.safetensors", seed=3, gate=0.0)
    t = tiny_trainer(tmp_path / "run", steps=30, lr=3e-2, rank=0, memory_rank=4, memory_alpha=8,
                     init=str(tmp_path / "init.safetensors"))
    trained = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert trained and all(".memory_proj." in n or n.endswith("memory_gate") for n in trained)
    first = sum(r["loss"] for r in t.train_step()) / 2
    t.run()
    last = sum(r["loss"] for r in t.train_step()) / 2
    assert last < 0.92 * first, (first, last)  # measured 4.66 → 4.09: recall learnt through the memory path alone
    t.save()
    init_meta, init_t = read_adapter(tmp_path / "init.safetensors")
    meta, saved = read_adapter(tmp_path / "run" / "adapter.safetensors")
    assert (meta["rank"], meta["alpha"], meta["memory_rank"]) == (2, 4, 4)
    for n, v in init_t.items():  # the init's factors are carried as they were
        if ".lora_" in n:
            assert torch.equal(saved[n], v), n
    assert any(bool((v != 0).any()) for n, v in saved.items() if n.endswith("memory_proj.k_B"))
    after, before = loaded(tmp_path / "run" / "adapter.safetensors"), loaded(tmp_path / "init.safetensors")
    gates_moved = any(not torch.equal(la.self_attn.memory_gate, lb.self_attn.memory_gate)
                      for la, lb in zip(after.model.layers, before.model.layers))
    assert gates_moved
    with torch.no_grad():
        for la, lb in zip(after.model.layers, before.model.layers):
            la.self_attn.memory_gate.copy_(lb.self_attn.memory_gate)
        ids = torch.tensor([[random.Random(4).randrange(97) for _ in range(L)]])
        torch.testing.assert_close(after.segment(ids, None)[0], before.segment(ids, None)[0], rtol=1e-5, atol=1e-5)
        # and the trained model loads into what the trainer held
        ex = RecallData().example(0)
        args = torch.tensor([ex.ids]), torch.tensor([ex.targets])
        assert float(forward_train(loaded(tmp_path / "run" / "adapter.safetensors"), *args)) == pytest.approx(
            float(forward_train(t.model, *args)), rel=1e-5)


def test_memory_projections_need_fixed_weights_and_a_matching_rank(tmp_path):
    with pytest.raises(ValueError, match="rank 0"):
        tiny_trainer(tmp_path / "a", rank=4, memory_rank=4)
    t = tiny_trainer(tmp_path / "b", steps=2, rank=0, memory_rank=4, memory_alpha=8)
    t.run()
    with pytest.raises(ValueError, match="memory projections of rank 4"):
        tiny_trainer(tmp_path / "c", rank=0, memory_rank=2, init=str(tmp_path / "b" / "adapter.safetensors"))


def test_memory_attribution_uses_the_queries_the_memory_reads_with():
    from infini_reader.engine.attribution import query_features
    from infini_reader.engine.memory import sigma

    e = tiny_engine()
    ids = [random.Random(8).randrange(97) for _ in range(12)]
    plain = query_features(e, ids)
    randomize_memory_projection(e.model, seed=7)
    got = query_features(e, ids)
    xs = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a: xs.append(a[0])) for layer in e.model.model.layers]
    with torch.no_grad():
        e.model.segment(torch.tensor([ids]), None)
        for h in hooks:
            h.remove()
        want = []
        for layer, x in zip(e.model.model.layers, xs):
            attn = layer.self_attn
            q = attn.q_proj(x).view(1, len(ids), 6, 8).transpose(1, 2)
            want.append(sigma(attn.memory_proj.heads("q", x, q)).mean(dim=(0, 1, 2)))
    torch.testing.assert_close(torch.from_numpy(got), torch.stack(want), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(torch.from_numpy(got), torch.from_numpy(plain), atol=1e-3)


def test_at_inference_the_projections_run_in_the_model_s_dtype(monkeypatch):
    from infini_reader.engine.model import MemoryProjection

    model = build_model(tiny_config(), seed=0)
    randomize_memory_projection(model, seed=2, by=0.3)
    ids = torch.randint(0, 97, (48,), generator=torch.Generator().manual_seed(5))  # whole segments
    exact = Engine(model).logits(ids)  # float32 throughout
    e = Engine(model.to(torch.bfloat16))
    asked = []
    real = MemoryProjection.delta

    def spy(self, name, x, dtype=torch.float32):
        asked.append(dtype)
        return real(self, name, x, dtype)

    monkeypatch.setattr(MemoryProjection, "delta", spy)
    with torch.inference_mode():
        fast = e.logits(ids)
    assert asked and set(asked) == {torch.bfloat16}  # q, k, v and o of every layer, in bf16
    # as near the float32 model as bf16 weights allow (the memory is still added up in float32)
    assert (fast - exact).abs().max() < 0.1 * exact.abs().max()
    assert fast.argmax(-1).eq(exact.argmax(-1)).float().mean() > 0.9
    asked.clear()
    x = torch.randn(2, 7, model.config.hidden_size, dtype=torch.bfloat16)
    mp = e.model.model.layers[0].self_attn.memory_proj
    assert mp.product_dtype(x) == torch.float32  # while training (gradient on): float32
    with torch.inference_mode():
        assert mp.product_dtype(x[:, :1]) == torch.float32  # and for one token at a time (decoding)
        assert mp.product_dtype(x.repeat(1, 3, 1)) == torch.bfloat16
    loss = forward_train(e.model, ids[None], ids[None])
    loss.backward()
    assert set(asked) == {torch.float32}
