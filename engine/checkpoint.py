"""Weights in and out: Hugging Face style directories (config.json + *.safetensors), never pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from infini_reader.kernels.reference import rotary_tables

from .config import InfiniConfig
from .model import InfiniTransformer

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message names the problem."""


# Tensors a Hugging Face checkpoint may hold that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _checked(model: InfiniTransformer, tensors: dict[str, torch.Tensor], source: str):
    """(tensors to load, the model's own state) by HF name, without tied or recomputed entries.
    Unknown or missing weights and wrong shapes are errors that name the tensor."""
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
    for name, t in tensors.items():
        if own[name].shape != t.shape:
            raise ModelLoadError(
                f"{source}: weight {name} has shape {tuple(t.shape)}, the config expects {tuple(own[name].shape)}"
            )
    return tensors, own


def load_state_dict_into(model: InfiniTransformer, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors (HF names) into the model; memory gates missing from a plain checkpoint keep
    their initial value. Unknown or missing weights are errors that name the tensor."""
    tensors, own = _checked(model, tensors, source)
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t)


class _Uninitialised(InfiniTransformer):
    def _init(self, m) -> None:  # its weights are about to be assigned (and random init on meta is slow)
        pass


def _empty_model(cfg: InfiniConfig, memory_projection: tuple[int, float] | None = None) -> InfiniTransformer:
    """The model's structure on the meta device: no memory allocated, nothing initialised."""
    with torch.device("meta"):
        model = _Uninitialised(cfg)
        model.__class__ = InfiniTransformer
        if memory_projection is not None:
            from .adapter import add_memory_projection  # the adapter module imports this one

            add_memory_projection(model, *memory_projection, train=False)
    return model


def _assign(model: InfiniTransformer, state: dict[str, torch.Tensor]) -> InfiniTransformer:
    """Make `state` (every entry of the model's state dict but a tied lm_head) the model's own
    tensors, without copying them: tensors read from safetensors stay memory-mapped from the file
    (copy-on-write: writing into them, as merging an adapter does, copies only the pages written)."""
    cfg = model.config
    if cfg.tie_word_embeddings:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rope_cos, model.rope_sin = rotary_tables(cfg.head_dim, cfg.segment_length, cfg.rope_theta)
    return model


def load_weights(cfg: InfiniConfig, tensors: dict[str, torch.Tensor], source: str) -> InfiniTransformer:
    """A float32 model holding `tensors` (HF names, as `read_hf_directory` gives them) without
    initialising it first or copying float32 weights; memory gates missing from a plain checkpoint get
    their initial value. The same model as `for_loading` + `load_state_dict_into`, in less time."""
    model = _empty_model(cfg)
    tensors, own = _checked(model, tensors, source)
    state = {k: v if v.dtype == torch.float32 else v.float() for k, v in tensors.items()}
    for name, t in own.items():
        if name not in state:  # memory gates
            state[name] = torch.full(t.shape, cfg.memory_gate_init, dtype=torch.float32)
    return _assign(model, state)


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


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def save_aligned(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str], align: int = 64) -> None:
    """A safetensors file (any reader reads it) whose tensors start on `align`-byte boundaries in the
    file, hence in memory when it is mapped: the header is padded with spaces, as the format allows,
    and tensors whose size is not a multiple of `align` (memory gates) come last. `save_file` puts
    them anywhere 8 bytes apart, and compute kernels prefer aligned weights."""
    def nbytes(t):
        return t.numel() * t.element_size()

    names = sorted(tensors, key=lambda n: (nbytes(tensors[n]) % align != 0, n))
    header: dict = {"__metadata__": metadata}
    offset = 0
    for n in names:
        t = tensors[n]
        header[n] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + nbytes(t)]}
        offset += nbytes(t)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % align)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for n in names:
            t = tensors[n].detach().cpu().contiguous().reshape(-1)
            f.write(memoryview(t.view(torch.uint8).numpy()))


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


def weights_state(model: InfiniTransformer) -> tuple:
    """What changes whenever a weight does: each tensor's name, place and version counter (every
    in-place write bumps it). A fingerprint known for one state holds while this stays equal."""
    return tuple((name, t.data_ptr(), t._version) for name, t in model.state_dict().items())


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


# ---- prepared weights: the model as it is loaded, cached so that a start copies and hashes nothing ----
#
# Loading a converted model the first time merges its adapter, casts it to the compute dtype and
# hashes it (`weights_fingerprint`). Its result is written once, beside the converted weights, under a
# name made of everything it was made from (the converted folder is named by the GGUF file's SHA-256;
# the adapter's SHA-256, the dtype, the config): `<folder>/prepared/<key>.safetensors`, holding every
# tensor that differs from the converted file (all of them in another dtype; the adapter's in float32)
# and, in its header, the fingerprint computed then. Later starts memory-map it straight into the
# model. The converted file's size and modification time are recorded too: if it changed, the
# prepared file is not used (so a memory made by other weights is still refused).

PREPARED_VERSION = 1  # bump when what loading does to weights changes (merging, casting), as CONVERTER_VERSION
PREPARED_KEY = "infini-prepared"
PREPARED_KEEP = 3  # prepared files kept per converted folder (adapters, dtypes, configs), newest first


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def prepared_path(folder: Path, cfg: InfiniConfig, dtype: torch.dtype, adapter_sha256: str | None) -> Path:
    key = {"version": PREPARED_VERSION, "config": cfg.to_hf_dict(), "dtype": str(dtype), "adapter": adapter_sha256}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return folder / "prepared" / f"{digest[:32]}.safetensors"


def load_prepared(path: Path, folder: Path, cfg: InfiniConfig,
                  tensors: dict[str, torch.Tensor]) -> tuple[InfiniTransformer, str] | None:
    """(the model, its fingerprint) from a prepared file and the converted `tensors` of `folder`, or
    None when there is none or it does not belong to these weights."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})[PREPARED_KEY])
            if info.get("version") != PREPARED_VERSION or info["base"] != [_stat(p) for p in _weight_files(folder)]:
                return None
            own = {k: f.get_tensor(k) for k in f.keys()}
        mrank, malpha = info["memory_projection"]
        model = _empty_model(cfg, (mrank, malpha) if mrank else None)
        state = {name: own[name] if name in own else tensors[name] for name in info["names"]}
        return _assign(model, state), info["fingerprint"]
    except Exception as exc:  # unreadable or from other code: made again from the converted weights
        log.warning("%s: prepared weights not used (%s)", path, exc)
        return None


def save_prepared(path: Path, folder: Path, model: InfiniTransformer) -> str:
    """Write the loaded `model` (adapter merged, in its dtype) as a prepared file beside the converted
    weights of `folder`; returns its fingerprint, computed as `weights_fingerprint` always does."""
    from .adapter import memory_projection_rank  # the adapter module imports this one

    fingerprint = weights_fingerprint(model)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    # The files as they are on disk, mapped afresh: the model's own float32 tensors may be mappings of
    # them already, into which the adapter was merged (privately, the files are unchanged).
    _, tensors = read_hf_directory(folder)
    own = {}
    for name, t in state.items():
        base = tensors.get(name)
        if base is None or base.dtype != t.dtype or base.shape != t.shape or not torch.equal(base, t.cpu()):
            own[name] = t.detach().contiguous().cpu()
    info = {"version": PREPARED_VERSION, "fingerprint": fingerprint, "names": sorted(state),
            "memory_projection": list(memory_projection_rank(model)),
            "base": [_stat(p) for p in _weight_files(folder)]}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        save_aligned(own, tmp, metadata={"format": "pt", PREPARED_KEY: json.dumps(info)})
        os.replace(tmp, path)
        tmp = None
        others = sorted((p for p in path.parent.glob("*.safetensors") if p != path),
                        key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in others[PREPARED_KEEP - 1:]:
            old.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full cache: this start was slow, the model is the same
        log.warning("could not cache the prepared weights in %s: %s", path.parent, exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return fingerprint
