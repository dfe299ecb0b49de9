"""The decode kernel against `kernels/decode/naive.py`, and against the segment kernel."""

import pytest
import torch

from infini_reader.kernels.decode import naive
from infini_reader.kernels.decode.fused import decode_fwd
from infini_reader.kernels.infini_attention.fused import infini_attention_fwd

from .conftest import BOUNDS, poisoned, randn, random_memory, rel_err, rotary

f32, bf16 = torch.float32, torch.bfloat16

# (B, H, Hkv, pos, L, D, dtype, memory): the cache buffer holds L positions, NaN past pos.
CASES = [
    (1, 9, 3, 0, 64, 64, f32, True),
    (1, 9, 3, 62, 100, 64, bf16, False),
    (2, 6, 2, 99, 128, 128, bf16, True),
    (1, 3, 3, 256, 300, 128, f32, True),
    (1, 4, 1, 130, 257, 64, f32, False),
]


def make_inputs(seed, B, H, Hkv, pos, L, D, dtype, memory):
    gen = torch.Generator().manual_seed(seed)
    q = randn(gen, B, H, 1, D, dtype=dtype)
    k = poisoned((B, Hkv, L, D), dtype)
    v = poisoned((B, Hkv, L, D), dtype)
    k[:, :, : pos + 1] = randn(gen, B, Hkv, pos + 1, D, dtype=dtype)
    v[:, :, : pos + 1] = randn(gen, B, Hkv, pos + 1, D, dtype=dtype)
    M, z = random_memory(gen, B, Hkv, D) if memory else (None, None)
    beta = randn(gen, H, scale=2.0)
    cos, sin = rotary(1, D, pos, dtype=dtype)
    return q, k, v, M, z, beta, cos, sin


@pytest.mark.parametrize("B,H,Hkv,pos,L,D,dtype,memory", CASES)
def test_decode_matches_reference(seed, B, H, Hkv, pos, L, D, dtype, memory):
    q, k, v, M, z, beta, cos, sin = make_inputs(seed, B, H, Hkv, pos, L, D, dtype, memory)
    out = poisoned((B, 1, H, D), dtype).transpose(1, 2)
    got = decode_fwd(q, k, v, M, z, beta, cos, sin, pos, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref = naive.decode(q, k, v, M, z, beta, cos, sin, pos)
    assert rel_err(got, ref) < BOUNDS[dtype], f"seed {seed}"


def test_decode_equals_the_segment_kernels_last_row(seed):
    B, H, Hkv, D, T = 1, 6, 2, 64, 45
    gen = torch.Generator().manual_seed(seed)
    q = randn(gen, B, H, T, D)
    k, v = randn(gen, B, Hkv, T, D), randn(gen, B, Hkv, T, D)
    M, z = random_memory(gen, B, Hkv, D)
    beta = randn(gen, H)
    cos, sin = rotary(T, D)
    seg = infini_attention_fwd(q, k, v, M, z, beta, cos, sin)
    last = decode_fwd(q[:, :, -1:], k, v, M, z, beta, cos[-1:], sin[-1:], T - 1)
    assert rel_err(last, seg[:, :, -1:]) < BOUNDS[f32], f"seed {seed}"
