"""Plain PyTorch reference of one generated token: local attention over the current segment's
cache (positions 0 .. pos), the memory read and the gate mix."""

from __future__ import annotations

import torch

from ..infini_attention.naive import infini_attention


def decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    M: torch.Tensor | None,
    z: torch.Tensor | None,
    beta: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: int,
) -> torch.Tensor:
    """q (B, H, 1, D) before rotary, the new token at position pos of its segment; k_cache/v_cache
    (B, Hkv, L, D) with the new token's (rotated) key and value already written at pos, entries
    beyond pos never read; cos/sin (1, D) for position pos. Returns (B, H, 1, D) in q's dtype."""
    return infini_attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1], M, z, beta, cos, sin, pos0=pos)
