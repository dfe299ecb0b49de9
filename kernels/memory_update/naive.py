"""Plain PyTorch reference of a segment's write into the memory (DESIGN.md section 3, item 5).

Same contract as engine/memory.py's `memory_delta`, except that it takes the raw keys (before
rotary) and applies σ itself, as the fused kernel does.
"""

from __future__ import annotations

import torch

from ..infini_attention.naive import sigma


def memory_update(
    k: torch.Tensor, v: torch.Tensor, M: torch.Tensor | None, z: torch.Tensor | None, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """What one segment (or chunk) adds to (M, z): returns (dM (B, Hkv, Dk, Dv), dz (B, Hkv, Dk)), float32.

    k (B, Hkv, T, Dk) before rotary, v (B, Hkv, T, Dv), any float dtype. Linear rule:
    dM = σ(K)ᵀ V. Delta rule: dM = σ(K)ᵀ (V − σ(K) M / (σ(K) z)) with the *old* memory for every
    token, and no subtraction while the memory is empty (M None). dz = Σ_t σ(K_t) in both.
    """
    if rule not in ("linear", "delta"):
        raise ValueError(f"unknown memory update rule {rule!r}")
    sk = sigma(k.float())  # (B, Hkv, T, Dk)
    v = v.float()
    if rule == "delta" and M is not None:
        v = v - (sk @ M) / (sk @ z.unsqueeze(-1))
    dM = sk.transpose(-1, -2) @ v  # (B, Hkv, Dk, Dv)
    dz = sk.sum(dim=-2)  # (B, Hkv, Dk)
    return dM, dz
