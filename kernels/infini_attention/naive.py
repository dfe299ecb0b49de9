"""Plain PyTorch reference of the fused Infini-attention segment forward (DESIGN.md section 3).

Everything is computed in float32 from the given inputs and the result cast to q's dtype, so that
it is the exact answer the Triton kernel is measured against. Its parts are kernels/reference.py,
which the engine computes with too.

Shapes: B batch, H query heads, Hkv key/value heads, G = H / Hkv, T queries of this chunk, pos0
positions already in the segment before them (keys 0 .. pos0 + T - 1), D head dim.
"""

from __future__ import annotations

import torch

from ..reference import apply_rotary, causal_attention, memory_retrieve, sigma


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
    a_dot = causal_attention(q_r, k_r, v, pos0)
    g = torch.sigmoid(beta.float()).view(1, H, 1, 1)
    if M is None:
        return ((1 - g) * a_dot).to(q.dtype)
    a_mem = memory_retrieve(sigma(q.float()), M.float(), z.float())
    return (g * a_mem + (1 - g) * a_dot).to(q.dtype)
