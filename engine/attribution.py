"""Which segments would the memory draw on for a question?

Because z is a sum over tokens, the retrieval mass a query q sends to segment j in a layer is
σ(q)·z_j, where z_j is segment j's own Σσ(K). The engine keeps z_j per layer (averaged over key/value
heads) while ingesting; here the question's queries are summarised the same way and the two meet.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .engine import Engine
from .memory import sigma


@torch.inference_mode()
def query_features(engine: Engine, text_or_ids, per_head: bool = False) -> np.ndarray:
    """Per layer, σ(q) of the question's tokens *before* rotary, averaged over tokens and query
    heads: (layers, d_key) float32; with `per_head`, heads apart: (layers, heads, d_key). The
    question is read on an empty memory."""
    ids = engine._ids(text_or_ids)[: engine.config.segment_length]
    feats: list[torch.Tensor] = []
    H, D = engine.config.num_attention_heads, engine.config.head_dim
    me = threading.get_ident()

    def grab(module, args):
        if threading.get_ident() != me:  # the same model reading a book on another thread meanwhile
            return
        x = args[0]  # the layer's normed input (B, T, C)
        q = module.q_proj(x).float()
        if module.memory_proj is not None:  # the queries the memory is read with (model.py)
            q = q + module.memory_proj.delta("q", x)
        q = sigma(q.view(*x.shape[:2], H, D))  # (B, T, H, D)
        feats.append(q.mean(dim=(0, 1)) if per_head else q.mean(dim=(0, 1, 2)))

    hooks = [layer.self_attn.register_forward_pre_hook(grab) for layer in engine.model.model.layers]
    try:
        engine.model.segment(ids[None], None)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(feats).cpu().numpy()


def key_mass(query: np.ndarray, summaries: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """σ(q)·z_j per token of segment j, per layer: (segments, layers), or per layer and query head
    (segments, layers, heads) for per-head queries (layers, H, D) and summaries (segments, layers,
    Hkv, D), query head h reading key/value head h // (H / Hkv) as the memory does."""
    q, z = query.astype(np.float64), summaries.astype(np.float64)
    if q.ndim == 3:
        H, Hkv = q.shape[1], z.shape[2]
        z = np.repeat(z, H // Hkv, axis=2)  # (S, L, H, D): kv head of each query head
        mass = np.einsum("lhd,slhd->slh", q, z)
    else:
        mass = np.einsum("ld,sld->sl", q, z)
    return mass / np.maximum(tokens, 1).reshape(-1, *[1] * (mass.ndim - 1))


def segment_scores(
    query: np.ndarray, summaries: np.ndarray, tokens: np.ndarray, layers: list[int] | None = None
) -> np.ndarray:
    """Memory attribution of each segment: (segments,), higher is more.

    query (layers, D); summaries (segments, layers, D), each segment's Σσ(K); tokens (segments,).
    Per layer the mass σ(q)·z_j is divided by the segment's length (a long segment is not more
    relevant for being long) and by its mean over segments (layers weigh alike); then layers average.
    """
    if layers is not None:
        query, summaries = query[layers], summaries[:, layers]
    mass = np.einsum("ld,sld->sl", query.astype(np.float64), summaries.astype(np.float64))
    mass /= np.maximum(tokens, 1)[:, None]
    mass /= np.maximum(mass.mean(axis=0, keepdims=True), 1e-12)
    return mass.mean(axis=1)
