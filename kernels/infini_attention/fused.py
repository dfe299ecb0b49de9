"""Fused Infini-attention segment forward in Triton: one program per (block of queries, head) reads
its queries once and writes the mixed output once.

    A = sigmoid(β)·σ(Q)M/(σ(Q)z) + (1 − sigmoid(β))·softmax(rot(Q) rot(K)ᵀ/√D, causal) V

Rotary: the kernel takes the *pre-rotary* q plus the cos/sin tables of the chunk's positions and
rotates q in registers, because the memory read needs q without rotary and the local branch needs
it with: one read of Q serves both, and no rotated copy of Q (the largest activation, H heads) is
ever written. Keys arrive already rotated (k_r): that is what the generation cache stores anyway,
and rotating K inside the kernel would redo it once per query block.

The half-split rotary layout of Llama pairs feature i with feature i + D/2, so q is loaded as two
halves (BLOCK_M, D/2) and every product with q is a sum of two half-width products.

Grouped-query heads: query head h reads key/value head h // G, for attention and memory alike.
Scores are kept in base 2 (scaled by log2 e) for exp2; the saved row statistic LSE is
log2 Σ exp2(scores) in those units.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils import autotune_configs, check_device, dot_precision, length_bucket, memory_read_precision, mma, sigma

LOG2E = tl.constexpr(1.4426950408889634)

# (BLOCK_M, BLOCK_N, num_warps, num_stages). BLOCK_M, BLOCK_N and D/2 must be >= 16 (tl.dot).
FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (128, 64, 8, 3),
        (128, 64, 4, 3),
        (128, 32, 4, 3),
        (128, 128, 8, 2),
        (64, 64, 4, 3),
        (64, 64, 4, 4),
        (64, 32, 4, 4),
    ]
]


@triton.jit
def _attend(
    acc, l_i, m_i, qr1, qr2,  # acc (BLOCK_M, D), l_i/m_i (BLOCK_M,), qr1/qr2 (BLOCK_M, D/2) rotated q halves
    k_base, v_base, s_kt, s_vt,  # K/V of this (batch, kv head)
    offs_m, lo, hi, n_keys, POS0, qk_scale,
    HALF: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online softmax over key blocks lo .. hi. CAUSAL: the blocks that straddle the diagonal
    (masked); otherwise blocks every query of the block sees in full (no mask, no bounds check)."""
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt_ptrs = k_base + offs_n[None, :] * s_kt + offs_h[:, None]  # (D/2, BLOCK_N): Kᵀ, first half
        v_ptrs = v_base + offs_n[:, None] * s_vt + offs_d[None, :]  # (BLOCK_N, D)
        if CAUSAL:
            col_ok = offs_n < n_keys
            k1t = tl.load(kt_ptrs, mask=col_ok[None, :], other=0.0)
            k2t = tl.load(kt_ptrs + HALF, mask=col_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
        else:
            k1t = tl.load(kt_ptrs)
            k2t = tl.load(kt_ptrs + HALF)
            v = tl.load(v_ptrs)
        s = mma(qr1, k1t, None, PREC)
        s = mma(qr2, k2t, s, PREC)  # (BLOCK_M, BLOCK_N)
        s = s * qk_scale
        if CAUSAL:
            # query row i sits at position POS0 + i of the segment
            visible = offs_n[None, :] <= POS0 + offs_m[:, None]
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = mma(p.to(v.dtype), v, acc, PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=autotune_configs(FWD_CONFIGS), key=["T_BUCKET", "HEAD_DIM", "HAS_MEM", "STORE_DOT"])
@triton.jit
def _infini_attention_fwd(
    Q, K, V, COS, SIN, M, Z, BETA, O, ADOT, LSE,
    s_qb, s_qh, s_qt,  # Q (B, H, T, D), pre-rotary
    s_kb, s_kh, s_kt,  # K (B, Hkv, >= POS0+T, D), rotated
    s_vb, s_vh, s_vt,  # V (B, Hkv, >= POS0+T, D)
    s_ob, s_oh, s_ot,  # O (B, H, T, D), any layout with unit last stride
    s_ab, s_ah, s_at,  # ADOT (B, H, T, D): the local branch alone, for the backward
    s_ct, s_st,  # COS/SIN (T, D): rows of the chunk's positions
    s_mb, s_mh, s_mk,  # M (B, Hkv, D, D) float32
    s_zb, s_zh,  # Z (B, Hkv, D) float32
    H, G, T, POS0, sm_scale, T_BUCKET,
    HEAD_DIM: tl.constexpr, HAS_MEM: tl.constexpr, STORE_DOT: tl.constexpr,
    PREC: tl.constexpr, MEM_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // G  # the key/value head of this query head
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    # Q, read once, in halves: (BLOCK_M, D/2) each, float32
    q_ptrs = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_h[None, :]
    q1 = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(q_ptrs + HALF, mask=row_ok[:, None], other=0.0)
    in_dtype = q1.dtype
    q1 = q1.to(tl.float32)
    q2 = q2.to(tl.float32)

    # rotary for the local branch: rot(q) = q·cos + [−q2, q1]·sin
    c_ptrs = COS + offs_m[:, None] * s_ct + offs_h[None, :]
    s_ptrs = SIN + offs_m[:, None] * s_st + offs_h[None, :]
    c1 = tl.load(c_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    c2 = tl.load(c_ptrs + HALF, mask=row_ok[:, None], other=0.0).to(tl.float32)
    n1 = tl.load(s_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    n2 = tl.load(s_ptrs + HALF, mask=row_ok[:, None], other=0.0).to(tl.float32)
    qr1 = (q1 * c1 - q2 * n1).to(in_dtype)  # (BLOCK_M, D/2)
    qr2 = (q2 * c2 + q1 * n2).to(in_dtype)

    # local branch: causal softmax attention inside the segment
    qk_scale = sm_scale * LOG2E
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    n_keys = POS0 + T
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    diag = ((POS0 + start_m) // BLOCK_N) * BLOCK_N  # key blocks below: seen in full by every row
    end = tl.minimum(POS0 + start_m + BLOCK_M, n_keys)
    acc, l_i, m_i = _attend(
        acc, l_i, m_i, qr1, qr2, k_base, v_base, s_kt, s_vt, offs_m, 0, diag, n_keys, POS0, qk_scale,
        HALF, HEAD_DIM, False, PREC, BLOCK_N,
    )
    acc, l_i, m_i = _attend(
        acc, l_i, m_i, qr1, qr2, k_base, v_base, s_kt, s_vt, offs_m, diag, end, n_keys, POS0, qk_scale,
        HALF, HEAD_DIM, True, PREC, BLOCK_N,
    )
    a_dot = acc / l_i[:, None]  # (BLOCK_M, D)

    # gate mix, with the memory read from the pre-rotary q
    g = tl.sigmoid(tl.load(BETA + h).to(tl.float32))
    if HAS_MEM:
        m_base = M + b * s_mb + hk * s_mh
        M1 = tl.load(m_base + offs_h[:, None] * s_mk + offs_d[None, :])  # (D/2, D): rows 0 .. D/2-1
        M2 = tl.load(m_base + (HALF + offs_h)[:, None] * s_mk + offs_d[None, :])
        z1 = tl.load(Z + b * s_zb + hk * s_zh + offs_h)  # (D/2,)
        z2 = tl.load(Z + b * s_zb + hk * s_zh + HALF + offs_h)
        sq1 = sigma(q1)
        sq2 = sigma(q2)
        num = mma(sq1, M1, None, MEM_PREC)
        num = mma(sq2, M2, num, MEM_PREC)  # (BLOCK_M, D)
        den = tl.sum(sq1 * z1[None, :], 1) + tl.sum(sq2 * z2[None, :], 1)  # (BLOCK_M,)
        a = g * (num / den[:, None]) + (1.0 - g) * a_dot
    else:
        a = (1.0 - g) * a_dot  # empty memory: the retrieval is zero

    o_ptrs = O + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :]
    tl.store(o_ptrs, a.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STORE_DOT:
        a_ptrs = ADOT + b * s_ab + h * s_ah + offs_m[:, None] * s_at + offs_d[None, :]
        tl.store(a_ptrs, a_dot.to(ADOT.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def check_shapes(q, k_r, v, M, z, beta, cos, sin, pos0):
    B, H, T, D = q.shape
    Hkv = k_r.shape[1]
    if H % Hkv:
        raise ValueError(f"{H} query heads are not a multiple of {Hkv} key/value heads")
    if D < 32 or D & (D - 1):
        raise ValueError(f"head dim {D}: the kernels need a power of two >= 32")
    if k_r.shape[0] != B or v.shape[:2] != k_r.shape[:2] or k_r.shape[3] != D or v.shape[3] != D:
        raise ValueError("k_r/v must be (B, Hkv, >= pos0+T, D)")
    if k_r.shape[2] < pos0 + T or v.shape[2] < pos0 + T:
        raise ValueError(f"keys hold {k_r.shape[2]} positions, the chunk needs {pos0 + T}")
    if k_r.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k_r and v must share a dtype (got {q.dtype}, {k_r.dtype}, {v.dtype})")
    if (M is None) != (z is None):
        raise ValueError("M and z are both given or both None")
    if M is not None and (M.shape != (B, Hkv, D, D) or z.shape != (B, Hkv, D)):
        raise ValueError(f"M must be {(B, Hkv, D, D)} and z {(B, Hkv, D)}")
    if beta.shape != (H,):
        raise ValueError(f"beta must be ({H},)")
    if cos.shape != (T, D) or sin.shape != (T, D):
        raise ValueError(f"cos/sin must be ({T}, {D}): the tables of the chunk's positions")


def new_output(q: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) view of a (B, T, H, D) buffer: the layout the output projection reads, so the
    engine's transpose + reshape back to (B, T, H*D) copies nothing."""
    B, H, T, D = q.shape
    return q.new_empty(B, T, H, D).transpose(1, 2)


def infini_attention_fwd(
    q: torch.Tensor,
    k_r: torch.Tensor,
    v: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    beta: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos0: int = 0,
    out: torch.Tensor | None = None,
    store_dot: bool = False,
):
    """The fused forward; arguments as in `naive.infini_attention`. Returns out (B, H, T, D) in q's
    dtype, or (out, a_dot, lse) with store_dot (what the backward needs: the local branch alone
    (B, H, T, D) and its base-2 log-sum-exp (B, H, T) float32)."""
    check_shapes(q, k_r, v, M, z, beta, cos, sin, pos0)
    check_device(q, k_r, v, M, z, beta, cos, sin)
    B, H, T, D = q.shape
    Hkv = k_r.shape[1]
    q, k_r, v, cos, sin = (_unit_last(t) for t in (q, k_r, v, cos, sin))
    beta = beta.contiguous()
    has_mem = M is not None
    if has_mem:
        M, z = M.float().contiguous(), z.float().contiguous()
    else:
        M, z = q, q  # never read
    if out is None:
        out = new_output(q)
    a_dot = q.new_empty(B, H, T, D) if store_dot else out
    lse = q.new_empty(B, H, T, dtype=torch.float32) if store_dot else out
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)
    _infini_attention_fwd[grid](
        q, k_r, v, cos, sin, M, z, beta, out, a_dot, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_r.stride(0), k_r.stride(1), k_r.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        a_dot.stride(0), a_dot.stride(1), a_dot.stride(2),
        cos.stride(0), sin.stride(0),
        M.stride(0), M.stride(1), M.stride(2) if has_mem else 0,
        z.stride(0), z.stride(1),
        H, H // Hkv, T, pos0, D**-0.5, length_bucket(T),
        HEAD_DIM=D, HAS_MEM=has_mem, STORE_DOT=store_dot,
        PREC=dot_precision(q.dtype), MEM_PREC=memory_read_precision(q.dtype),
    )
    if store_dot:
        return out, a_dot, lse
    return out
