"""Backward of the fused Infini-attention forward, for training on the GPU.

The local branch gets Triton flash-attention backward kernels (FlashAttention-2 scheme): the forward
saved the local output A_dot and its row log-sum-exp, so nothing (T, T) is ever stored.

- `_bwd_dkdv`: one program per (key block, batch, kv head) walks the query blocks that see it, for
  all G query heads of its kv head in turn, so dK and dV of a grouped-query head are summed in
  registers (no atomics).
- `_bwd_dq`: one program per (query block, head) walks the key blocks it sees.

Both take the rotated queries q_r (written once here by PyTorch; the forward rotates in registers).
The gate and the memory read are cheap per token (D × D products, no T × T) and are
differentiated by PyTorch's autograd on a recomputation of `naive.memory_retrieve`:

    A = g·A_mem + (1 − g)·A_dot,  g = sigmoid(β)
    dA_dot = (1 − g)·dA   (folded into the kernels as a per-head factor GDOT, dA is read as is)
    dA_mem = g·dA
    dβ     = g(1 − g)·Σ dA·(A_mem − A_dot)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import autotune_configs, dot_precision, length_bucket, mma
from . import fused, naive
from .fused import LOG2E

# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_N is the block of keys a dK/dV program owns,
# BLOCK_M the block of queries a dQ program owns.
DKDV_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(32, 64, 4, 3), (32, 128, 8, 3), (64, 64, 4, 2), (64, 128, 8, 2), (16, 64, 4, 4)]
]
DQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 32, 4, 3), (128, 32, 8, 3), (64, 64, 4, 2), (128, 64, 8, 2), (64, 16, 4, 4)]
]


@triton.autotune(configs=autotune_configs(DKDV_CONFIGS), key=["T_BUCKET", "HEAD_DIM"])
@triton.jit
def _bwd_dkdv(
    QR, K, V, DO, LSE, DELTA, GDOT, DK, DV,
    s_qb, s_qh, s_qt,  # QR (B, H, T, D), rotated queries
    s_kb, s_kh, s_kt,  # K (B, Hkv, >= POS0+T, D), rotated
    s_vb, s_vh, s_vt,  # V
    s_db, s_dh, s_dt,  # DO (B, H, T, D): dA, the gradient of the mixed output
    s_gb, s_gh, s_gt,  # DK and DV (B, Hkv, >= POS0+T, D), same layout
    H, HKV, G, T, POS0, sm_scale, T_BUCKET,
    HEAD_DIM: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bk = tl.program_id(1)
    b = (pid_bk // HKV).to(tl.int64)
    hk = pid_bk % HKV
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    n_keys = POS0 + T
    col_ok = offs_n < n_keys

    k = tl.load(K + b * s_kb + hk * s_kh + offs_n[:, None] * s_kt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    first = (tl.maximum(start_n - POS0, 0) // BLOCK_M) * BLOCK_M  # earlier queries cannot see these keys
    for g in range(G):
        h = hk * G + g
        gdot = tl.load(GDOT + h)  # 1 − sigmoid(β_h)
        row_base = (b * H + h) * T
        for start_m in range(first, T, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < T
            q_ptrs = QR + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :]
            do_ptrs = DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :]
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
            # transposed scores: (BLOCK_N, BLOCK_M)
            st = mma(k, tl.trans(q), None, PREC) * qk_scale
            visible = (offs_n[:, None] <= POS0 + offs_m[None, :]) & row_ok[None, :]
            pt = tl.where(visible, tl.exp2(st - lse[None, :]), 0.0)
            dv += gdot * mma(pt.to(do.dtype), do, None, PREC)  # (BLOCK_N, D)
            dpt = mma(v, tl.trans(do), None, PREC) * gdot  # (BLOCK_N, BLOCK_M)
            dst = pt * (dpt - delta[None, :])
            dk = mma(dst.to(q.dtype), q, dk, PREC)
    dk *= sm_scale
    out = b * s_gb + hk * s_gh + offs_n[:, None] * s_gt + offs_d[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.autotune(configs=autotune_configs(DQ_CONFIGS), key=["T_BUCKET", "HEAD_DIM"])
@triton.jit
def _bwd_dq(
    QR, K, V, DO, LSE, DELTA, GDOT, DQ,
    s_qb, s_qh, s_qt,  # QR (B, H, T, D)
    s_kb, s_kh, s_kt,  # K (B, Hkv, >= POS0+T, D)
    s_vb, s_vh, s_vt,  # V
    s_db, s_dh, s_dt,  # DO (B, H, T, D)
    H, G, T, POS0, sm_scale, T_BUCKET,  # DQ: (B, H, T, D) float32, contiguous
    HEAD_DIM: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // G
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    n_keys = POS0 + T

    q = tl.load(QR + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    row_base = pid_bh.to(tl.int64) * T
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    gdot = tl.load(GDOT + h)
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    end = tl.minimum(POS0 + start_m + BLOCK_M, n_keys)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < n_keys
        k = tl.load(k_base + offs_n[:, None] * s_kt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        s = mma(q, tl.trans(k), None, PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        visible = (offs_n[None, :] <= POS0 + offs_m[:, None]) & col_ok[None, :]
        p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
        dp = mma(do, tl.trans(v), None, PREC) * gdot
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, PREC)
    dq *= sm_scale
    dq_ptrs = DQ + pid_bh.to(tl.int64) * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dq_ptrs, dq, mask=row_ok[:, None])


def rotary_backward(dq_r: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The transpose of `naive.apply_rotary`: gradient w.r.t. q from the gradient w.r.t. rot(q)."""
    half = dq_r.shape[-1] // 2
    d1, d2 = dq_r[..., :half], dq_r[..., half:]
    s1, s2 = sin[..., :half], sin[..., half:]
    return dq_r * cos + torch.cat((d2 * s2, -d1 * s1), dim=-1)


def local_backward(q_r, k_r, v, dA, lse, delta, gdot, pos0):
    """dq_r (B, H, T, D) float32, dk_r and dv shaped like k_r and v (rows past pos0+T zero)."""
    B, H, T, D = q_r.shape
    Hkv = k_r.shape[1]
    dk = torch.zeros(k_r.shape, dtype=k_r.dtype, device=k_r.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    dq = torch.empty(B, H, T, D, dtype=torch.float32, device=q_r.device)
    prec = dot_precision(q_r.dtype)
    common = (
        q_r.stride(0), q_r.stride(1), q_r.stride(2),
        k_r.stride(0), k_r.stride(1), k_r.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dA.stride(0), dA.stride(1), dA.stride(2),
    )
    n_keys = pos0 + T
    _bwd_dkdv[lambda meta: (triton.cdiv(n_keys, meta["BLOCK_N"]), B * Hkv)](
        q_r, k_r, v, dA, lse, delta, gdot, dk, dv, *common,
        dk.stride(0), dk.stride(1), dk.stride(2),
        H, Hkv, H // Hkv, T, pos0, D**-0.5, length_bucket(T), HEAD_DIM=D, PREC=prec,
    )
    _bwd_dq[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](
        q_r, k_r, v, dA, lse, delta, gdot, dq, *common,
        H, H // Hkv, T, pos0, D**-0.5, length_bucket(T), HEAD_DIM=D, PREC=prec,
    )
    return dq, dk, dv


class InfiniAttentionFunction(torch.autograd.Function):
    """Differentiable fused forward: apply(q, k_r, v, M, z, beta, cos, sin, pos0), M/z may be None."""

    @staticmethod
    def forward(ctx, q, k_r, v, M, z, beta, cos, sin, pos0):
        out, a_dot, lse = fused.infini_attention_fwd(q, k_r, v, M, z, beta, cos, sin, pos0, store_dot=True)
        ctx.save_for_backward(q, k_r, v, M, z, beta, cos, sin, a_dot, lse)
        ctx.pos0 = pos0
        return out

    @staticmethod
    def backward(ctx, dA):
        q, k_r, v, M, z, beta, cos, sin, a_dot, lse = ctx.saved_tensors
        H = q.shape[1]
        if dA.stride(-1) != 1:
            dA = dA.contiguous()
        g = torch.sigmoid(beta.detach().float())  # (H,)
        gdot = (1 - g).contiguous()
        rowdot = (dA.float() * a_dot.float()).sum(-1)  # Σ_d dA·A_dot: (B, H, T)
        delta = (rowdot * gdot.view(1, H, 1)).contiguous()  # the flash backward's rowsum(dO_dot·O_dot)

        q_r = naive.apply_rotary(q.float(), cos.float(), sin.float()).to(q.dtype)  # as the forward rounds it
        dq_r, dk, dv = local_backward(q_r, k_r, v, dA, lse, delta, gdot, ctx.pos0)
        dq = rotary_backward(dq_r, cos.float(), sin.float())

        dM = dz = None
        mem_dot = torch.zeros_like(g)  # Σ dA·A_mem per head
        if M is not None:
            with torch.enable_grad():
                qm = q.detach().float().requires_grad_()
                Mm = M.detach().requires_grad_()
                zm = z.detach().requires_grad_()
                a_mem = naive.memory_retrieve(naive.sigma(qm), Mm, zm)  # (B, H, T, D) float32
                dq_m, dM, dz = torch.autograd.grad(a_mem, (qm, Mm, zm), dA.float() * g.view(1, H, 1, 1))
            dq = dq + dq_m.float()
            mem_dot = (dA.float() * a_mem.detach()).sum((0, 2, 3))
        dbeta = g * (1 - g) * (mem_dot - rowdot.sum((0, 2)))
        return dq.to(q.dtype), dk, dv, dM, dz, dbeta.to(beta.dtype), None, None, None
