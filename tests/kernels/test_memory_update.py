"""The fused memory write against `kernels/memory_update/naive.py` (and that against the engine's)."""

import pytest
import torch

from infini_reader.kernels.memory_update import naive
from infini_reader.kernels.memory_update.fused import TOKENS_PER_PROGRAM, MemoryUpdateFunction, memory_update_fwd

from .conftest import BOUNDS, GRAD_BOUNDS, poisoned, randn, random_memory, rel_err

f32, bf16 = torch.float32, torch.bfloat16

# (B, Hkv, T, D, dtype, memory, rule); 600 tokens take three token slices (partial sums).
CASES = [
    (1, 3, 63, 64, f32, True, "delta"),
    (1, 3, 63, 64, f32, False, "delta"),
    (2, 1, 100, 128, bf16, True, "delta"),
    (1, 2, 100, 64, bf16, False, "linear"),
    (1, 2, 257, 128, f32, True, "linear"),
    (1, 3, 257, 64, bf16, True, "delta"),
    (1, 1, 600, 64, f32, True, "delta"),
    (2, 3, 1, 128, f32, True, "delta"),
]


def make_inputs(seed, B, Hkv, T, D, dtype, memory):
    gen = torch.Generator().manual_seed(seed)
    k = randn(gen, B, Hkv, T, D, dtype=dtype)
    v = randn(gen, B, Hkv, T, D, dtype=dtype)
    M, z = random_memory(gen, B, Hkv, D) if memory else (None, None)
    return k, v, M, z


@pytest.mark.parametrize("B,Hkv,T,D,dtype,memory,rule", CASES)
def test_update_matches_reference(seed, B, Hkv, T, D, dtype, memory, rule):
    k, v, M, z = make_inputs(seed, B, Hkv, T, D, dtype, memory)
    out = (poisoned((B, Hkv, D, D), f32), poisoned((B, Hkv, D), f32))
    dM, dz = memory_update_fwd(k, v, M, z, rule, out=out)
    assert dM.data_ptr() == out[0].data_ptr() and dz.data_ptr() == out[1].data_ptr()
    rM, rz = naive.memory_update(k, v, M, z, rule)
    # the write accumulates in float32 whatever the inputs: float32 bounds for both
    assert rel_err(dM, rM) < BOUNDS[f32], f"dM, seed {seed}"
    assert rel_err(dz, rz) < BOUNDS[f32], f"dz, seed {seed}"


def test_token_slices_cover_the_segment():
    assert 257 > TOKENS_PER_PROGRAM and 600 > 2 * TOKENS_PER_PROGRAM  # CASES exercise the partial sums


def test_delta_subtracts_with_the_old_memory_for_every_token(seed):
    """Writing a segment in two chunks with the same old memory equals writing it at once (the
    subtraction does not see the segment's own earlier tokens); the engine's generation relies on it."""
    k, v, M, z = make_inputs(seed, 1, 2, 90, 64, f32, True)
    whole = memory_update_fwd(k, v, M, z, "delta")
    a = memory_update_fwd(k[:, :, :41], v[:, :, :41], M, z, "delta")
    b = memory_update_fwd(k[:, :, 41:], v[:, :, 41:], M, z, "delta")
    assert rel_err(a[0] + b[0], whole[0]) < BOUNDS[f32] and rel_err(a[1] + b[1], whole[1]) < BOUNDS[f32]


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_reference_is_the_engines_memory_delta(seed, rule):
    from infini_reader.engine.memory import memory_delta, sigma

    k, v, M, z = make_inputs(seed, 2, 3, 50, 64, f32, True)
    for mem in ((M, z), (None, None)):
        ref = memory_delta(sigma(k), v, *mem, rule)
        got = naive.memory_update(k, v, *mem, rule)
        assert rel_err(got[0], ref[0]) < 1e-6 and rel_err(got[1], ref[1]) < 1e-6


@pytest.mark.parametrize(
    "dtype,memory,rule", [(f32, True, "delta"), (f32, False, "linear"), (bf16, True, "delta")]
)
def test_backward_matches_reference(seed, dtype, memory, rule):
    inputs = make_inputs(seed, 1, 2, 70, 64, dtype, memory)
    gen = torch.Generator().manual_seed(seed + 1)
    gM, gz = randn(gen, 1, 2, 64, 64), randn(gen, 1, 2, 64)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    ref_leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    dM, dz = MemoryUpdateFunction.apply(*leaves, rule)
    torch.autograd.backward((dM, dz), (gM, gz))
    rM, rz = naive.memory_update(*ref_leaves, rule)
    torch.autograd.backward((rM, rz), (gM, gz))
    for name, got, ref in zip(("k", "v", "M", "z"), leaves, ref_leaves):
        if got is None:
            continue
        if ref.grad is None:  # M and z under the linear rule
            assert got.grad is None, name
            continue
        assert rel_err(got.grad, ref.grad) < GRAD_BOUNDS[dtype], f"d{name}, seed {seed}"
