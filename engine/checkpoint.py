"""Weights in and out: Hugging Face style directories (config.json + *.safetensors), never pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import InfiniConfig
from .model import InfiniTransformer


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message names the problem."""


# Tensors a Hugging Face checkpoint may hold that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_state_dict_into(model: InfiniTransformer, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors (HF names) into the model; memory gates missing from a plain checkpoint keep
    their initial value. Unknown or missing weights are errors that name the tensor."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    own = model.state_dict()
    cfg = model.config
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
        own.pop("lm_head.weight", None)
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ModelLoadError(f"{source}: unexpected weights {unknown[:5]} (is this a Llama-family model?)")
    missing = sorted(k for k in set(own) - set(tensors) if not k.endswith("memory_gate"))
    if missing:
        raise ModelLoadError(f"{source}: weights missing: {missing[:5]}{' …' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, t in tensors.items():
            if own[name].shape != t.shape:
                raise ModelLoadError(
                    f"{source}: weight {name} has shape {tuple(t.shape)}, the config expects {tuple(own[name].shape)}"
                )
            own[name].copy_(t)


def _flat_rope(d: dict) -> dict:
    """transformers 5 writes rope_theta (and any scaling) inside `rope_parameters`; lift it out."""
    rp = d.get("rope_parameters")
    if not isinstance(rp, dict):
        return d
    d = {**d, "rope_theta": rp.get("rope_theta", d.get("rope_theta", 10000.0))}
    if rp.get("rope_type", "default") != "default":
        d["rope_scaling"] = rp
    return d


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of a folder: those its shard index names, or else all of them.

    The index matters where a download also holds other formats of the same weights
    (Mistral's consolidated.safetensors beside the Hugging Face shards)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index}: unreadable shard index ({exc})") from exc
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(f"{path}: shards missing: {missing[:3]} (an incomplete download?)")
        return [path / n for n in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    return sorted(path.glob("*.safetensors"))


def read_tokenizer(path: Path):
    """(tokenizers.Tokenizer, its JSON) from a folder's tokenizer.json, or (None, None) without one."""
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        return None, None
    from tokenizers import Tokenizer

    tok_json = tok_file.read_text()
    try:
        return Tokenizer.from_str(tok_json), tok_json
    except Exception as exc:  # tokenizers raises a plain Exception for malformed JSON
        raise ModelLoadError(f"{tok_file}: cannot read the tokenizer ({exc})") from exc


def read_hf_directory(path: Path, **overrides) -> tuple[InfiniConfig, dict[str, torch.Tensor]]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"{path}: no config.json; a model folder needs config.json and *.safetensors")
    try:
        cfg = InfiniConfig.from_hf_dict(_flat_rope(json.loads(cfg_file.read_text())), **overrides)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{cfg_file}: {exc}") from exc
    files = _weight_files(path)
    if not files:
        hint = " (PyTorch .bin files are not loaded: pickles can run code)" if list(path.glob("*.bin")) else ""
        raise ModelLoadError(f"{path}: no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    tensors[k] = sf.get_tensor(k)
        except Exception as exc:  # safetensors raises several types for broken files
            raise ModelLoadError(f"{f}: cannot read the weights ({exc})") from exc
    return cfg, tensors


def export_hf_directory(model: InfiniTransformer, directory: Path, tokenizer_json: str | None, chat=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    d = cfg.to_hf_dict()
    d["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(d, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if any(".memory_proj." in k for k in state):  # no Hugging Face folder has a place for them
        raise ValueError("this model's adapter has memory projections, which only an adapter file holds: "
                         "export the model without the adapter and keep the adapter file beside it")
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_json is not None:
        (directory / "tokenizer.json").write_text(tokenizer_json)
    if chat is not None:  # the chat template travels with the weights, as in Hugging Face folders
        tc = {"chat_template": chat.template, "bos_token": chat.bos_token, "eos_token": chat.eos_token}
        (directory / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")


def weights_fingerprint(model: InfiniTransformer) -> str:
    """SHA-256 over the config and every weight as the engine holds it (dtype included): a memory
    is valid only for the exact arithmetic that produced it."""
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_hf_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
