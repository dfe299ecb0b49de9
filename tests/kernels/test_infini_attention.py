"""The fused segment forward and its backward against `kernels/infini_attention/naive.py`."""

import pytest
import torch

from infini_reader.kernels.infini_attention import naive
from infini_reader.kernels.infini_attention.fused import infini_attention_fwd, new_output
from infini_reader.kernels.infini_attention.fused_backward import InfiniAttentionFunction, rotary_backward

from .conftest import BOUNDS, DEVICE, GRAD_BOUNDS, poisoned, randn, random_memory, rel_err, rotary

f32, bf16 = torch.float32, torch.bfloat16

# (B, H, Hkv, T, D, dtype, memory). Lengths are never multiples of the block (32 in the
# interpreter, 64/128 compiled); grouped-query cases use 2 kv heads so that a wrong head mapping
# (h % Hkv instead of h // G, or always head 0) reads the wrong memory and keys.
FORWARD = [
    (1, 3, 3, 63, 64, f32, True),
    (1, 6, 2, 63, 128, bf16, False),
    (2, 6, 2, 100, 64, bf16, True),
    (1, 3, 3, 100, 128, f32, False),
    (1, 6, 2, 100, 128, f32, True),
    (1, 3, 3, 100, 64, bf16, True),
    (1, 6, 2, 257, 64, f32, True),
    (1, 3, 3, 257, 128, bf16, False),
]


def make_inputs(seed, B, H, Hkv, T, D, dtype, memory, pos0=0, spare=0):
    """q, k_r, v, M, z, beta, cos, sin. The key/value buffers hold `spare` NaN positions past the
    chunk, as the generation cache does: a kernel must never read them."""
    gen = torch.Generator().manual_seed(seed)
    q = randn(gen, B, H, T, D, dtype=dtype)
    k = torch.cat([randn(gen, B, Hkv, pos0 + T, D, dtype=dtype), poisoned((B, Hkv, spare, D), dtype)], dim=2)
    v = torch.cat([randn(gen, B, Hkv, pos0 + T, D, dtype=dtype), poisoned((B, Hkv, spare, D), dtype)], dim=2)
    M, z = random_memory(gen, B, Hkv, D) if memory else (None, None)
    beta = randn(gen, H, scale=2.0)
    cos, sin = rotary(T, D, pos0, dtype=dtype)
    return q, k, v, M, z, beta, cos, sin


@pytest.mark.parametrize("B,H,Hkv,T,D,dtype,memory", FORWARD)
def test_forward_matches_reference(seed, B, H, Hkv, T, D, dtype, memory):
    q, k, v, M, z, beta, cos, sin = make_inputs(seed, B, H, Hkv, T, D, dtype, memory)
    out = new_output(q).fill_(float("nan"))
    got = infini_attention_fwd(q, k, v, M, z, beta, cos, sin, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref = naive.infini_attention(q, k, v, M, z, beta, cos, sin)
    assert rel_err(got, ref) < BOUNDS[dtype], f"seed {seed}"


@pytest.mark.parametrize(
    "B,H,Hkv,T,D,dtype,pos0",
    [(1, 6, 2, 29, 64, f32, 37), (1, 3, 3, 63, 128, bf16, 200), (2, 3, 3, 2, 64, f32, 100)],
)
def test_chunk_after_cache_matches_reference(seed, B, H, Hkv, T, D, dtype, pos0):
    """A prompt chunk on top of earlier chunks of the same segment: queries at pos0 .. pos0+T-1."""
    q, k, v, M, z, beta, cos, sin = make_inputs(seed, B, H, Hkv, T, D, dtype, True, pos0=pos0, spare=40)
    out = new_output(q).fill_(float("nan"))
    got = infini_attention_fwd(q, k, v, M, z, beta, cos, sin, pos0, out=out)
    ref = naive.infini_attention(q, k, v, M, z, beta, cos, sin, pos0)
    assert rel_err(got, ref) < BOUNDS[dtype], f"seed {seed}"


def test_saved_local_branch_and_lse(seed):
    """What the backward relies on: a_dot is the local branch alone and lse its log2-sum-exp2."""
    B, H, Hkv, T, D = 1, 6, 2, 70, 64
    q, k, v, M, z, beta, cos, sin = make_inputs(seed, B, H, Hkv, T, D, f32, True)
    _, a_dot, lse = infini_attention_fwd(q, k, v, M, z, beta, cos, sin, store_dot=True)
    q_r = naive.apply_rotary(q, cos, sin)
    assert rel_err(a_dot, naive.causal_attention(q_r, k, v)) < BOUNDS[f32], f"seed {seed}"
    kk = k.repeat_interleave(H // Hkv, dim=1)
    s = (q_r @ kk.transpose(-1, -2)) * D**-0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=DEVICE).tril(), float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(s, -1) / torch.log(torch.tensor(2.0)), atol=1e-4), f"seed {seed}"


def test_memory_reads_pre_rotary_queries_and_gate_extremes(seed):
    """β → +∞: the output is σ(q)M/(σ(q)z) with q *without* rotary; β → −∞: plain local attention."""
    B, H, Hkv, T, D = 1, 6, 2, 40, 64
    q, k, v, M, z, _, cos, sin = make_inputs(seed, B, H, Hkv, T, D, f32, True, pos0=0)
    mem_only = infini_attention_fwd(q, k, v, M, z, torch.full((H,), 60.0, device=DEVICE), cos, sin)
    sq = torch.nn.functional.elu(q) + 1
    for h in range(H):
        j = h // (H // Hkv)
        expect = (sq[:, h] @ M[:, j]) / (sq[:, h] @ z[:, j, :, None])
        assert rel_err(mem_only[:, h], expect) < BOUNDS[f32], f"head {h}, seed {seed}"
    local_only = infini_attention_fwd(q, k, v, M, z, torch.full((H,), -60.0, device=DEVICE), cos, sin)
    q_r = naive.apply_rotary(q, cos, sin)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q_r, k, v, is_causal=True, enable_gqa=True)
    assert rel_err(local_only, sdpa) < BOUNDS[f32], f"seed {seed}"


def test_empty_memory_is_zero_retrieval(seed):
    B, H, Hkv, T, D = 1, 3, 3, 33, 64
    q, k, v, _, _, beta, cos, sin = make_inputs(seed, B, H, Hkv, T, D, f32, False)
    got = infini_attention_fwd(q, k, v, None, None, beta, cos, sin)
    g = torch.sigmoid(beta).view(1, H, 1, 1)
    local = naive.causal_attention(naive.apply_rotary(q, cos, sin), k, v)
    assert rel_err(got, (1 - g) * local) < BOUNDS[f32], f"seed {seed}"


def test_reference_is_the_engines_formula(seed):
    """The naive reference computes what engine/model.py and engine/memory.py compute."""
    from infini_reader.engine.memory import memory_retrieve, sigma
    from infini_reader.engine.model import apply_rotary, local_attention

    B, H, Hkv, T, D = 1, 6, 2, 300, 64
    q, k, v, M, z, beta, cos, sin = make_inputs(seed, B, H, Hkv, T, D, f32, True)
    k_r = k  # both take the keys already rotated
    g = torch.sigmoid(beta).view(1, H, 1, 1)
    a_dot = local_attention(apply_rotary(q, cos, sin), k_r, v, 0)
    engine_out = g * memory_retrieve(sigma(q), M, z) + (1 - g) * a_dot
    assert rel_err(naive.infini_attention(q, k_r, v, M, z, beta, cos, sin), engine_out) < 1e-5, f"seed {seed}"


def test_rotary_backward_is_the_transpose(seed):
    gen = torch.Generator().manual_seed(seed)
    x = randn(gen, 2, 5, 64).requires_grad_()
    dy = randn(gen, 2, 5, 64)
    cos, sin = rotary(5, 64, pos0=11)
    naive.apply_rotary(x, cos, sin).backward(dy)
    assert rel_err(rotary_backward(dy, cos, sin), x.grad) < 1e-6


# (B, H, Hkv, T, D, dtype, memory, pos0)
BACKWARD = [
    (1, 6, 2, 63, 64, f32, True, 0),
    (1, 3, 3, 100, 128, f32, False, 0),
    (2, 6, 2, 63, 64, bf16, True, 0),
    (1, 3, 3, 100, 64, bf16, False, 0),
    (1, 6, 2, 29, 128, f32, True, 37),
]


@pytest.mark.parametrize("B,H,Hkv,T,D,dtype,memory,pos0", BACKWARD)
def test_backward_matches_reference(seed, B, H, Hkv, T, D, dtype, memory, pos0):
    inputs = make_inputs(seed, B, H, Hkv, T, D, dtype, memory, pos0=pos0)
    gen = torch.Generator().manual_seed(seed + 1)
    dA = randn(gen, B, H, T, D, dtype=dtype)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs[:6]]
    ref_leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs[:6]]
    InfiniAttentionFunction.apply(*leaves, *inputs[6:], pos0).backward(dA)
    naive.infini_attention(*ref_leaves, *inputs[6:], pos0).backward(dA)
    for name, got, ref in zip(("q", "k", "v", "M", "z", "beta"), leaves, ref_leaves):
        if got is None:
            continue
        assert got.grad is not None and got.grad.dtype == ref.grad.dtype, name
        assert rel_err(got.grad, ref.grad) < GRAD_BOUNDS[dtype], f"d{name}, seed {seed}"
