"""The trained adapter: memory gates (β) and low-rank updates (LoRA) of the attention projections.

Training wraps the chosen projections in `LoRALinear` (the base weight frozen, W + s·B·A) and
learns β and the low-rank factors. The adapter file holds only those: safetensors with one JSON
metadata key. Loading merges B·A into the base weights once (W ← W + s·B·A, float32), so the model
that reads books is a plain Infini-Transformer again, with no cost per token.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .checkpoint import ModelLoadError
from .model import InfiniTransformer, MemoryProjection

ADAPTER_FORMAT = "infini-adapter"
ADAPTER_VERSION = 1
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
class AdapterError(ModelLoadError):
    """An adapter file that cannot be applied to this model."""


class LoRALinear(nn.Module):
    """y = base(x) + s · (x Aᵀ) Bᵀ with the base frozen; B starts at zero, so training starts from
    the base model exactly. The low-rank path runs in float32 whatever the base dtype."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.linear(F.linear(x.float(), self.lora_A), self.lora_B) * self.scale
        return self.base(x) + low.to(x.dtype)

    def delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale


def add_lora(model: InfiniTransformer, rank: int, alpha: float, targets=PROJECTIONS) -> list[str]:
    """Wrap the attention projections named in `targets` of every layer; freeze everything but the
    low-rank factors and the memory gates. Returns the wrapped modules' names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        attn.memory_gate.requires_grad_(True)
        for t in targets if rank > 0 else ():
            if t not in PROJECTIONS:
                raise ValueError(f"unknown projection {t!r}; choose from {', '.join(PROJECTIONS)}")
            setattr(attn, t, LoRALinear(getattr(attn, t), rank, alpha))
            names.append(f"model.layers.{i}.self_attn.{t}")
    return names


def add_memory_projection(model: InfiniTransformer, rank: int, alpha: float, train: bool = True) -> None:
    """Give every layer a `MemoryProjection` (model.py): zero, so the model computes what it did.
    With `train`, its A factors start random (B stays zero) and it is trainable, with the gates."""
    for layer in model.model.layers:
        attn = layer.self_attn
        mp = MemoryProjection(model.config, rank, alpha).to(attn.memory_gate.device)
        if train:
            for name in ("q", "k", "v", "o"):
                nn.init.kaiming_uniform_(getattr(mp, f"{name}_A"), a=math.sqrt(5))
            attn.memory_gate.requires_grad_(True)
        else:
            mp.requires_grad_(False)
        attn.memory_proj = mp


def memory_projection_rank(model: InfiniTransformer) -> tuple[int, float]:
    mp = model.model.layers[0].self_attn.memory_proj
    return (mp.rank, mp.alpha) if mp is not None else (0, 0.0)


def trainable_state(model: InfiniTransformer) -> dict[str, torch.Tensor]:
    """What the adapter file holds: every gate and every low-rank factor, float32, by name."""
    return {n: p.detach().float().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: InfiniTransformer, path: str | Path, info: dict | None = None,
                 merged: tuple[dict, dict[str, torch.Tensor]] | None = None) -> None:
    """Write the trainable state. `merged`: (metadata, tensors) of an adapter already merged into the
    model's weights that the file must carry too (a run that trains only the memory projections on
    top of it); its LoRA factors and rank are written as its own."""
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    state = trainable_state(model)
    mrank, malpha = memory_projection_rank(model)
    if merged is not None:
        if lora:
            raise ValueError("an adapter merged into the weights cannot be saved beside new LoRA factors")
        mmeta, mt = merged
        state = {k: v for k, v in mt.items() if ".lora_" in k} | state
        lora_meta = {"rank": mmeta.get("rank", 0), "alpha": mmeta.get("alpha", 0)}
    else:
        lora_meta = {"rank": lora[0].rank if lora else 0, "alpha": lora[0].alpha if lora else 0}
    meta = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        **lora_meta,
        **({"memory_rank": mrank, "memory_alpha": malpha} if mrank else {}),
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        **(info or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={ADAPTER_FORMAT: json.dumps(meta, sort_keys=True)})


def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get(ADAPTER_FORMAT)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{path}: not a readable adapter file ({exc})") from None
    if raw is None:
        raise AdapterError(f"{path}: not an Infini Reader adapter (no {ADAPTER_FORMAT!r} metadata)")
    meta = json.loads(raw)
    if meta.get("version") != ADAPTER_VERSION:
        raise AdapterError(f"{path}: adapter format version {meta.get('version')} is not supported")
    return meta, tensors


def merge_lora(model: InfiniTransformer, meta: dict, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """W ← W + s·B·A (in float32) for every pair of LoRA factors among an adapter's tensors."""
    params = dict(model.named_parameters())
    scale = meta["alpha"] / meta["rank"] if meta.get("rank") else 0.0
    with torch.no_grad():
        for name, t in tensors.items():
            if name.endswith(".lora_A"):
                base = name.removesuffix(".lora_A")
                W = params.get(base + ".weight")
                B = tensors.get(base + ".lora_B")
                if W is None or B is None or W.shape != (B.shape[0], t.shape[1]):
                    raise AdapterError(f"{path}: {base} does not fit this model")
                W.copy_((W.float() + (B.float() @ t.float()) * scale).to(W.dtype))


def apply_adapter(model: InfiniTransformer, path: str | Path) -> dict:
    """Merge an adapter into a plain model's weights (gates set, W += s·B·A). Returns its metadata."""
    meta, tensors = read_adapter(path)
    cfg = model.config
    if meta.get("layers") != cfg.num_hidden_layers or meta.get("hidden_size") != cfg.hidden_size:
        raise AdapterError(
            f"{path}: the adapter was trained for another model ({meta.get('layers')} layers, hidden "
            f"{meta.get('hidden_size')}; this one has {cfg.num_hidden_layers}, {cfg.hidden_size})"
        )
    if any(".memory_proj." in name for name in tensors):
        if not meta.get("memory_rank"):
            raise AdapterError(f"{path}: memory projections without their rank")
        add_memory_projection(model, meta["memory_rank"], meta["memory_alpha"], train=False)
    merge_lora(model, meta, tensors, path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            if ".lora_" in name:
                continue
            if name in params and params[name].shape == t.shape:
                params[name].copy_(t.to(params[name].dtype))
            else:
                raise AdapterError(f"{path}: {name} does not fit this model")
    return meta
