"""Plain PyTorch reference of the fused Infini-attention segment forward (DESIGN.md section 3).

Everything is computed in float32 from the given inputs and the result cast to q's dtype, so that
it is the exact answer the Triton kernel is measured against. It materialises the (T, T) score
matrix: fine for tests, not for long segments (the engine's own path uses SDPA).

Shapes: B batch, H query heads, Hkv key/value heads, G = H / Hkv, T queries of this chunk, pos0
positions already in the segment before them (keys 0 .. pos0 + T - 1), D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigma(x: torch.Tensor) -> torch.Tensor:
    """σ(x) = ELU(x) + 1: every feature positive, so σ(q)·z > 0 once anything is written."""
    return F.elu(x) + 1.0


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split layout of Hugging Face Llama; cos/sin (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def memory_retrieve(q: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """σ(Q) M / (σ(Q) z) with the pre-rotary q (B, H, T, D); M (B, Hkv, D, Dv), z (B, Hkv, D).

    Query head h reads key/value head h // G. Returns (B, H, T, Dv) float32.
    """
    B, H, T, D = q.shape
    Hkv = M.shape[1]
    sq = sigma(q.float()).view(B, Hkv, H // Hkv, T, D)  # (B, Hkv, G, T, D)
    num = sq @ M.float().unsqueeze(2)  # (B, Hkv, G, T, Dv)
    den = sq @ z.float()[:, :, None, :, None]  # (B, Hkv, G, T, 1)
    return (num / den).reshape(B, H, T, -1)


def local_attention(q_r: torch.Tensor, k_r: torch.Tensor, v: torch.Tensor, pos0: int = 0) -> torch.Tensor:
    """Causal softmax attention of queries at positions pos0 .. pos0+T-1 over keys 0 .. pos0+T-1.

    q_r (B, H, T, D), k_r/v (B, Hkv, >= pos0+T, D), rotary already applied. Returns float32.
    """
    _, H, T, D = q_r.shape
    Hkv = k_r.shape[1]
    Tk = pos0 + T
    k = k_r[:, :, :Tk].float().repeat_interleave(H // Hkv, dim=1)  # (B, H, Tk, D)
    v = v[:, :, :Tk].float().repeat_interleave(H // Hkv, dim=1)
    s = (q_r.float() @ k.transpose(-1, -2)) * D**-0.5  # (B, H, T, Tk)
    visible = torch.ones(T, Tk, dtype=torch.bool, device=q_r.device).tril(pos0)
    s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, dim=-1) @ v  # (B, H, T, D)


def infini_attention(
    q: torch.Tensor,
    k_r: torch.Tensor,
    v: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    beta: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos0: int = 0,
) -> torch.Tensor:
    """A = sigmoid(β)·A_mem + (1 − sigmoid(β))·A_dot for one chunk of a segment.

    q (B, H, T, D) *before* rotary (the memory read uses it as is; the local branch rotates it with
    cos/sin (T, D), the tables of positions pos0 .. pos0+T-1); k_r (B, Hkv, >= pos0+T, D) with rotary
    applied (what the generation cache holds); v (B, Hkv, >= pos0+T, D); M (B, Hkv, D, D) and
    z (B, Hkv, D) float32, or None for an empty memory (zero retrieval); beta (H,).
    Returns (B, H, T, D) in q's dtype. Differentiable in q, k_r, v, M, z and beta.
    """
    H = q.shape[1]
    q_r = apply_rotary(q.float(), cos.float(), sin.float())
    a_dot = local_attention(q_r, k_r, v, pos0)
    g = torch.sigmoid(beta.float()).view(1, H, 1, 1)
    if M is None:
        return ((1 - g) * a_dot).to(q.dtype)
    a_mem = memory_retrieve(q, M, z)
    return (g * a_mem + (1 - g) * a_dot).to(q.dtype)
