"""Plain PyTorch reference of a segment's write into the memory (DESIGN.md section 3, item 5).

kernels/reference.py's `memory_delta` (the engine's), taking the raw keys (before rotary) and
applying σ itself, as the fused kernel does.
"""

from __future__ import annotations

import torch

from ..reference import memory_delta, sigma


def memory_update(
    k: torch.Tensor, v: torch.Tensor, M: torch.Tensor | None, z: torch.Tensor | None, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """What one segment (or chunk) adds to (M, z): returns (dM (B, Hkv, Dk, Dv), dz (B, Hkv, Dk)), float32.

    k (B, Hkv, T, Dk) before rotary, v (B, Hkv, T, Dv), any float dtype. Linear rule:
    dM = σ(K)ᵀ V. Delta rule: dM = σ(K)ᵀ (V − σ(K) M / (σ(K) z)) with the *old* memory for every
    token, and no subtraction while the memory is empty (M None). dz = Σ_t σ(K_t) in both.
    """
    return memory_delta(sigma(k.float()), v.float(), M, z, rule)
