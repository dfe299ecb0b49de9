"""One generated token in one Triton kernel: attention over the current segment's cache (positions
0 .. pos), the memory read and the gate mix.

One program per (batch, kv head) handles the G query heads that share it as the rows of one block
(padded to 16 for tl.dot), so every cached key and value is read once per kv head, not once per
query head: decoding is bound by reading the cache. The new token's key and value must already be
in the cache at pos (rotated key), as `SegmentCache.append` leaves them; entries past pos are never
read. Like the segment kernel, q arrives before rotary and is rotated in registers.

Not split over the cache length (no flash-decoding): the cache is one segment (≤ 2048 positions),
so B·Hkv programs each walk at most 2048 keys.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..infini_attention.fused import LOG2E, _unit_last
from ..utils import autotune_configs, check_device, dot_precision, length_bucket, memory_read_precision, mma, sigma

# (BLOCK_N, num_warps, num_stages)
DECODE_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bn, w, s in [(64, 4, 3), (128, 4, 3), (128, 8, 2), (256, 8, 2), (32, 4, 4)]
]


@triton.autotune(
    configs=autotune_configs(DECODE_CONFIGS, {"BLOCK_N": 32}),
    key=["L_BUCKET", "HEAD_DIM", "BLOCK_G", "HAS_MEM"],
)
@triton.jit
def _decode(
    Q, K, V, COS, SIN, M, Z, BETA, O,
    s_qb, s_qh,  # Q (B, H, 1, D), pre-rotary
    s_kb, s_kh, s_kt,  # K cache (B, Hkv, L, D), rotated
    s_vb, s_vh, s_vt,  # V cache (B, Hkv, L, D)
    s_ob, s_oh,  # O (B, H, 1, D)
    s_mb, s_mh, s_mk,  # M (B, Hkv, D, D) float32
    s_zb, s_zh,  # Z (B, Hkv, D) float32; COS/SIN: (D,) of position POS
    HKV, G, POS, sm_scale, L_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, HAS_MEM: tl.constexpr,
    PREC: tl.constexpr, MEM_PREC: tl.constexpr, BLOCK_N: tl.constexpr,
):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid = tl.program_id(0)
    b = (pid // HKV).to(tl.int64)
    hk = pid % HKV
    offs_g = tl.arange(0, BLOCK_G)
    g_ok = offs_g < G
    heads = hk * G + offs_g  # (BLOCK_G,) the query heads of this kv head
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + b * s_qb + heads[:, None] * s_qh + offs_h[None, :]
    q1 = tl.load(q_ptrs, mask=g_ok[:, None], other=0.0)  # (BLOCK_G, D/2)
    q2 = tl.load(q_ptrs + HALF, mask=g_ok[:, None], other=0.0)
    in_dtype = q1.dtype
    q1 = q1.to(tl.float32)
    q2 = q2.to(tl.float32)
    c1 = tl.load(COS + offs_h).to(tl.float32)[None, :]
    c2 = tl.load(COS + HALF + offs_h).to(tl.float32)[None, :]
    n1 = tl.load(SIN + offs_h).to(tl.float32)[None, :]
    n2 = tl.load(SIN + HALF + offs_h).to(tl.float32)[None, :]
    qr1 = (q1 * c1 - q2 * n1).to(in_dtype)
    qr2 = (q2 * c2 + q1 * n2).to(in_dtype)

    qk_scale = sm_scale * LOG2E
    k_base = K + b * s_kb + hk * s_kh
    v_base = V + b * s_vb + hk * s_vh
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, POS + 1, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ok = offs_n <= POS
        kt_ptrs = k_base + offs_n[None, :] * s_kt + offs_h[:, None]  # (D/2, BLOCK_N)
        k1t = tl.load(kt_ptrs, mask=ok[None, :], other=0.0)
        k2t = tl.load(kt_ptrs + HALF, mask=ok[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :], mask=ok[:, None], other=0.0)
        s = mma(qr1, k1t, None, PREC)
        s = mma(qr2, k2t, s, PREC) * qk_scale  # (BLOCK_G, BLOCK_N)
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], PREC)
        m_i = m_new
    a_dot = acc / l_i[:, None]

    g = tl.sigmoid(tl.load(BETA + heads, mask=g_ok, other=0.0).to(tl.float32))[:, None]  # (BLOCK_G, 1)
    if HAS_MEM:
        m_base = M + b * s_mb + hk * s_mh
        M1 = tl.load(m_base + offs_h[:, None] * s_mk + offs_d[None, :])
        M2 = tl.load(m_base + (HALF + offs_h)[:, None] * s_mk + offs_d[None, :])
        z1 = tl.load(Z + b * s_zb + hk * s_zh + offs_h)
        z2 = tl.load(Z + b * s_zb + hk * s_zh + HALF + offs_h)
        sq1 = sigma(q1)
        sq2 = sigma(q2)
        num = mma(sq1, M1, None, MEM_PREC)
        num = mma(sq2, M2, num, MEM_PREC)  # (BLOCK_G, D)
        den = tl.sum(sq1 * z1[None, :], 1) + tl.sum(sq2 * z2[None, :], 1)
        a = g * (num / den[:, None]) + (1.0 - g) * a_dot
    else:
        a = (1.0 - g) * a_dot
    tl.store(O + b * s_ob + heads[:, None] * s_oh + offs_d[None, :], a.to(O.dtype.element_ty), mask=g_ok[:, None])


def decode_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    beta: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Arguments as in `naive.decode`; returns (B, H, 1, D) in q's dtype (a view of a (B, 1, H, D)
    buffer, like the segment kernel's output)."""
    B, H, T, D = q.shape
    Hkv = k_cache.shape[1]
    if T != 1:
        raise ValueError("decode takes one token")
    if H % Hkv or D < 32 or D & (D - 1):
        raise ValueError("heads must be a multiple of kv heads and the head dim a power of two >= 32")
    if k_cache.shape[2] <= pos or v_cache.shape[2] <= pos or k_cache.shape[3] != D:
        raise ValueError(f"the cache holds {k_cache.shape[2]} positions, position {pos} is needed")
    if cos.shape[-1] != D or cos.numel() != D or sin.numel() != D:
        raise ValueError("cos/sin must be the (1, D) tables of position pos")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError("q and the cache must share a dtype")
    check_device(q, k_cache, v_cache, M, z, beta, cos, sin)
    q, k_cache, v_cache = (_unit_last(t) for t in (q, k_cache, v_cache))
    cos, sin, beta = cos.reshape(D).contiguous(), sin.reshape(D).contiguous(), beta.contiguous()
    has_mem = M is not None
    if has_mem:
        M, z = M.float().contiguous(), z.float().contiguous()
    else:
        M, z = q, q  # never read
    if out is None:
        out = q.new_empty(B, 1, H, D).transpose(1, 2)
    G = H // Hkv
    _decode[(B * Hkv,)](
        q, k_cache, v_cache, cos, sin, M, z, beta, out,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1),
        M.stride(0), M.stride(1), M.stride(2) if has_mem else 0,
        z.stride(0), z.stride(1),
        Hkv, G, pos, D**-0.5, length_bucket(pos + 1),
        HEAD_DIM=D, BLOCK_G=max(16, triton.next_power_of_2(G)), HAS_MEM=has_mem,
        PREC=dot_precision(q.dtype), MEM_PREC=memory_read_precision(q.dtype),
    )
    return out
