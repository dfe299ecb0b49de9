"""A segment's write into the memory in one Triton kernel: σ of the keys, the delta rule's
subtraction against the *old* memory, and the sums into float32 dM and dz.

    linear: dM = σ(K)ᵀ V                         dz = Σ_t σ(K_t)
    delta:  dM = σ(K)ᵀ (V − σ(K) M / (σ(K) z))   (old M, z for every token; skipped when empty)

One program per (batch·kv head, block of value columns, slice of tokens). A program holds the whole
key width (Dk ≤ 128) so that the delta rule's σ(K)·M and σ(K)·z are complete in registers. Token
slices give the GPU enough programs for one segment; their partial sums are added by PyTorch
(deterministic, no atomics). The backward recomputes through the PyTorch reference (the write is
D × D per token, no T × T: there is nothing a kernel would save there).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import MEMORY_WRITE_PRECISION, autotune_configs, check_device, mma, sigma
from . import naive

# Tokens per program: a segment of 2048 tokens gives 8 slices per (batch, kv head, value block).
TOKENS_PER_PROGRAM = 256

# (BLOCK_T, BLOCK_V, num_warps, num_stages)
UPDATE_CONFIGS = [
    triton.Config({"BLOCK_T": bt, "BLOCK_V": bv}, num_warps=w, num_stages=s)
    for bt, bv, w, s in [(64, 64, 4, 2), (32, 64, 4, 3), (64, 32, 4, 2), (128, 64, 8, 2), (32, 128, 8, 2)]
]


@triton.autotune(
    configs=autotune_configs(UPDATE_CONFIGS, {"BLOCK_T": 32, "BLOCK_V": 32}),
    key=["DK", "DV", "DELTA"],
)
@triton.jit
def _memory_update(
    K, V, M, Z, DM, DZ,
    s_kb, s_kh, s_kt,  # K (B, Hkv, T, Dk) before rotary
    s_vb, s_vh, s_vt,  # V (B, Hkv, T, Dv)
    s_mb, s_mh, s_mk,  # M (B, Hkv, Dk, Dv) float32, the old memory (DELTA only)
    s_zb, s_zh,  # Z (B, Hkv, Dk) float32
    HKV, T, TOKENS,  # DM (S, B, Hkv, Dk, Dv), DZ (S, B, Hkv, Dk): contiguous partial sums per slice
    DK: tl.constexpr, DV: tl.constexpr, DELTA: tl.constexpr, PREC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_v = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    hk = pid_bh % HKV
    offs_k = tl.arange(0, DK)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = offs_v < DV

    if DELTA:
        m_ptrs = M + b * s_mb + hk * s_mh + offs_k[:, None] * s_mk + offs_v[None, :]
        Mb = tl.load(m_ptrs, mask=col_ok[None, :], other=0.0)  # (Dk, BLOCK_V)
        z = tl.load(Z + b * s_zb + hk * s_zh + offs_k)  # (Dk,)
    acc = tl.zeros([DK, BLOCK_V], dtype=tl.float32)
    acc_z = tl.zeros([DK], dtype=tl.float32)
    t0 = pid_s * TOKENS
    t1 = tl.minimum(t0 + TOKENS, T)
    for start_t in range(t0, t1, BLOCK_T):
        offs_t = start_t + tl.arange(0, BLOCK_T)
        row_ok = offs_t < t1
        k_ptrs = K + b * s_kb + hk * s_kh + offs_t[:, None] * s_kt + offs_k[None, :]
        k = tl.load(k_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_T, Dk)
        # σ(0) = 1, not 0: rows past the end must be zeroed explicitly
        sk = tl.where(row_ok[:, None], sigma(k.to(tl.float32)), 0.0)  # (BLOCK_T, Dk)
        v_ptrs = V + b * s_vb + hk * s_vh + offs_t[:, None] * s_vt + offs_v[None, :]
        v = tl.load(v_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        u = v.to(tl.float32)  # (BLOCK_T, BLOCK_V)
        if DELTA:
            den = tl.sum(sk * z[None, :], 1)  # (BLOCK_T,)
            den = tl.where(row_ok, den, 1.0)
            u -= mma(sk, Mb, None, PREC) / den[:, None]
        acc = mma(tl.trans(sk), u, acc, PREC)  # (Dk, BLOCK_V)
        acc_z += tl.sum(sk, 0)
    part = (pid_s * tl.num_programs(0) + pid_bh).to(tl.int64)  # (slice, b·Hkv + hk) in DM/DZ
    tl.store(DM + part * DK * DV + offs_k[:, None] * DV + offs_v[None, :], acc, mask=col_ok[None, :])
    if pid_v == 0:
        tl.store(DZ + part * DK + offs_k, acc_z)


def memory_update_fwd(
    k: torch.Tensor,
    v: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    rule: str,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `naive.memory_update`: returns (dM, dz) float32. `out` optionally gives the
    (dM, dz) tensors to write (the tests pass NaN-filled ones)."""
    if rule not in ("linear", "delta"):
        raise ValueError(f"unknown memory update rule {rule!r}")
    check_device(k, v, M, z)
    B, Hkv, T, Dk = k.shape
    Dv = v.shape[3]
    if v.shape[:3] != (B, Hkv, T):
        raise ValueError("k and v must be (B, Hkv, T, D)")
    if Dk < 16 or Dk & (Dk - 1):
        raise ValueError(f"key dim {Dk}: the kernel needs a power of two >= 16")
    if (M is None) != (z is None):
        raise ValueError("M and z are both given or both None")
    if M is not None and (M.shape != (B, Hkv, Dk, Dv) or z.shape != (B, Hkv, Dk)):
        raise ValueError(f"M must be {(B, Hkv, Dk, Dv)} and z {(B, Hkv, Dk)}")
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    delta = rule == "delta" and M is not None
    if delta:
        M, z = M.float().contiguous(), z.float().contiguous()
    else:
        M = z = k  # never read
    slices = max(1, triton.cdiv(T, TOKENS_PER_PROGRAM))
    if slices == 1 and out is not None:
        dM, dz = out[0].view(1, B, Hkv, Dk, Dv), out[1].view(1, B, Hkv, Dk)
    else:
        dM = k.new_empty(slices, B, Hkv, Dk, Dv, dtype=torch.float32)
        dz = k.new_empty(slices, B, Hkv, Dk, dtype=torch.float32)
    grid = lambda meta: (B * Hkv, triton.cdiv(Dv, meta["BLOCK_V"]), slices)
    _memory_update[grid](
        k, v, M, z, dM, dz,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        M.stride(0), M.stride(1), M.stride(2) if delta else 0,
        z.stride(0), z.stride(1),
        Hkv, T, TOKENS_PER_PROGRAM,
        DK=Dk, DV=Dv, DELTA=delta, PREC=MEMORY_WRITE_PRECISION,
    )
    if slices == 1:
        return (out if out is not None else (dM[0], dz[0]))
    if out is not None:
        torch.sum(dM, 0, out=out[0])
        torch.sum(dz, 0, out=out[1])
        return out
    return dM.sum(0), dz.sum(0)


class MemoryUpdateFunction(torch.autograd.Function):
    """Differentiable memory write: apply(k, v, M, z, rule); backward through the reference."""

    @staticmethod
    def forward(ctx, k, v, M, z, rule):
        ctx.save_for_backward(k, v, M, z)
        ctx.rule = rule
        return memory_update_fwd(k, v, M, z, rule)

    @staticmethod
    def backward(ctx, dM_grad, dz_grad):
        k, v, M, z = ctx.saved_tensors
        inputs = [t.detach().requires_grad_() if t is not None else None for t in (k, v, M, z)]
        with torch.enable_grad():
            dM, dz = naive.memory_update(*inputs, ctx.rule)
            wrt = [t for t in inputs if t is not None]
            grads = iter(torch.autograd.grad((dM, dz), wrt, (dM_grad, dz_grad), allow_unused=True))
        return (*[next(grads) if t is not None else None for t in inputs], None)
