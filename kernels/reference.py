"""The reference maths of Infini-attention in plain PyTorch (DESIGN.md section 3), in one place.

The engine's PyTorch path computes with these functions, and every Triton kernel's `naive.py`
reference is built from them, so a fix lands once. Memory tensors are float32.

Shapes: B batch, H query heads, Hkv key/value heads, G = H / Hkv, T tokens, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigma(x: torch.Tensor) -> torch.Tensor:
    """σ(x) = ELU(x) + 1: every feature positive, so σ(q)·z > 0 as soon as one token is written."""
    return F.elu(x) + 1.0


def rotary_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (length, D) in float32, in the half-split layout of Hugging Face Llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    t = torch.arange(length, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (L, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (L, D)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (..., T, D) with the tables of its positions, cos/sin (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def memory_retrieve(sq: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """A_mem = σ(Q) M / (σ(Q) z), query head h reading key/value head h // G.

    sq: (B, H, T, Dk) float32, already σ'd and *without* rotary. M: (B, Hkv, Dk, Dv), z: (B, Hkv, Dk).
    Returns (B, H, T, Dv) float32.
    """
    B, H, T, Dk = sq.shape
    Hkv = M.shape[1]
    # Query heads h = j*G + g belong to kv head j (the same mapping as repeat_interleave in local
    # attention). Splitting H as (Hkv, G) keeps that order; no data is copied.
    sq = sq.view(B, Hkv, H // Hkv, T, Dk)  # (B, Hkv, G, T, Dk)
    num = sq @ M.unsqueeze(2)  # (B, Hkv, G, T, Dv)
    den = sq @ z.unsqueeze(2).unsqueeze(-1)  # (B, Hkv, G, T, 1)
    return (num / den).reshape(B, H, T, -1)


def memory_delta(
    sk: torch.Tensor, v: torch.Tensor, M: torch.Tensor | None, z: torch.Tensor | None, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """What one segment adds to (M, z). sk: σ(K) (B, Hkv, T, Dk), v: (B, Hkv, T, Dv), float32.

    Linear: dM = σ(K)ᵀ V. Delta: dM = σ(K)ᵀ (V − σ(K) M / (σ(K) z)), subtracting what the *old*
    memory already returns for each key (the same old memory for every token of the segment); with
    an empty memory (M is None) there is nothing to subtract. dz = Σ_t σ(K_t) in both. The sum over
    tokens is additive, so a segment may be written in several chunks (as generation does).
    """
    if rule not in ("linear", "delta"):
        raise ValueError(f"unknown memory update rule {rule!r}")
    if rule == "delta" and M is not None:
        v = v - (sk @ M) / (sk @ z.unsqueeze(-1))
    dM = sk.transpose(-1, -2) @ v  # (B, Hkv, Dk, Dv)
    dz = sk.sum(dim=-2)  # (B, Hkv, Dk)
    return dM, dz


def causal_attention(q_r: torch.Tensor, k_r: torch.Tensor, v: torch.Tensor, pos0: int = 0) -> torch.Tensor:
    """Causal softmax attention of queries at positions pos0 .. pos0+T-1 over keys 0 .. pos0+T-1,
    the (T, pos0+T) scores materialised in float32: the slow, obvious version of the engine's fast
    local attention.

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
