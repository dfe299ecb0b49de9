"""Llama-family GGUF files (llama.cpp, Ollama, LM Studio): config, de-quantized weights, tokenizer.

A GGUF file is converted once into a Hugging Face style folder in a cache folder that the caller
names (`<cache>/weights/<sha256 of the file>/`: config.json, model.safetensors in float32, tokenizer.json,
tokenizer_config.json with the chat template). Every later start loads that folder, which is much
faster than parsing and de-quantizing the file again, and goes through the same code as any other
Hugging Face folder.

    folder = cached_folder("model.gguf", cache_dir)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .checkpoint import ModelLoadError, save_aligned
from .config import InfiniConfig

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# Bump when the conversion changes, so that folders converted by older code are rebuilt.
# 2: tensors 64-byte aligned in the file (save_aligned), as a start maps them straight into the model.
CONVERTER_VERSION = 2
# What llama.cpp calls the architecture → our model_type. Both use SwiGLU, RMSNorm and rotary.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
# Infini-attention fields stay out of the cached config: they are the engine's, not the file's.
_INFINI_FIELDS = ("segment_length", "memory_update", "memory_gate_init")


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


# ---- reading the file ----


def open_gguf(path: Path):
    """A `gguf.GGUFReader` for the file; a clear ModelLoadError for anything that is not a whole GGUF."""
    from gguf import GGUFReader  # imported here: it is slow to import and only needed on a first load

    if not is_gguf(path):
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError, IndexError, KeyError... for broken files
        raise ModelLoadError(f"{path}: cannot read this GGUF file, it is truncated or corrupt ({exc})") from exc
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise ModelLoadError(
                f"{path}: the file is truncated (tensor {t.name} ends at byte {t.data_offset + t.n_bytes:,}, "
                f"the file has {size:,} bytes); download or copy it again"
            )
    return reader


def read_metadata(reader) -> dict:
    """All key/value fields as Python values (strings, numbers, lists)."""
    try:
        return {key: field.contents() for key, field in reader.fields.items()}
    except Exception as exc:
        raise ModelLoadError(f"cannot decode the GGUF metadata, the file is corrupt ({exc})") from exc


def read_config(meta: dict, tensor_names: set[str], embed_rows: int) -> InfiniConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)} (Llama family)"
        )

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"the GGUF metadata lacks {arch}.{key}")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise ModelLoadError(f"this GGUF uses rope scaling ({scaling}), which the engine does not support")
    hidden, heads = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length", hidden // heads)
    if get("attention.value_length", head_dim) != head_dim or get("rope.dimension_count", head_dim) != head_dim:
        raise ModelLoadError("this GGUF has partial rotary or unequal key/value head sizes: not supported")
    return InfiniConfig(
        model_type=ARCHITECTURES[arch],
        # The embedding's rows, not the token list, decide the logits' size; they agree in practice.
        vocab_size=embed_rows,
        hidden_size=hidden,
        num_hidden_layers=get("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=get("attention.head_count_kv", heads),
        head_dim=head_dim,
        intermediate_size=get("feed_forward_length"),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias=arch == "llama" and "blk.0.attn_q.bias" in tensor_names,
        max_position_embeddings=get("context_length"),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )


_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name: str) -> str:
    """'blk.3.attn_q.weight' → 'model.layers.3.self_attn.q_proj.weight'."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    raise ModelLoadError(f"unexpected GGUF tensor {name!r} (is this a Llama-family model?)")


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row order for q/k (weights or biases) of Llama models.

    Its converter reorders each head's rows from Hugging Face's half-split rotary layout
    (x[:D/2] pairs with x[D/2:]) into interleaved pairs (x[2i] with x[2i+1]):
    `w.reshape(n_head, 2, D//2, ...).swapaxes(1, 2)`. Our model rotates half-split, so reverse it.
    """
    half = w.shape[0] // n_head // 2
    # (H, D/2, 2, ...) interleaved pairs → (H, 2, D/2, ...) halves
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(reader, cfg: InfiniConfig) -> dict[str, torch.Tensor]:
    """Every tensor de-quantized to float32, under its Hugging Face name and shape."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        # GGUF lists dimensions fastest-first; numpy (and torch) want them the other way round.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            w = dequantize(t.data, t.tensor_type).reshape(shape)
        except NotImplementedError as exc:
            raise ModelLoadError(f"tensor {t.name}: quantization {t.tensor_type.name} is not supported") from exc
        except Exception as exc:
            raise ModelLoadError(f"tensor {t.name}: cannot de-quantize ({exc}); the file is corrupt") from exc
        if cfg.model_type == "llama" and ".attn_q." in t.name:
            w = unpermute_rotary(w, cfg.num_attention_heads)
        elif cfg.model_type == "llama" and ".attn_k." in t.name:
            w = unpermute_rotary(w, cfg.num_key_value_heads)
        out[name] = torch.tensor(np.asarray(w, dtype=np.float32))  # a copy: the reader's data is a memory map
    return out


# ---- tokenizer ----


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, in which byte-level vocabularies are spelled."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# Split rules of `tokenizer.ggml.pre` values whose models do not use GPT-2's own (the regexes of
# those models' tokenizer.json files).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def _pre_tokenizer(pre: str | None):
    if pre in _SPLITS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre not in (None, "default", "gpt-2", "gpt2", "smollm"):
        log.warning("GGUF tokenizer split rule %r is unknown here; using GPT-2's, so tokens may differ slightly", pre)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # SmolLM's tokenizer.json splits digits apart before GPT-2's rule (as llama.cpp does)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def read_tokenizer(meta: dict) -> Tokenizer:
    """The tokenizer the metadata describes: byte-level BPE ("gpt2" in llama.cpp's terms: Llama 3,
    SmolLM, Qwen) or SentencePiece BPE ("llama": Llama 2, Mistral, TinyLlama)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tok, vocab = _byte_level_bpe(meta)
    elif kind == "llama":
        tok, vocab = _sentencepiece_bpe(meta)
    else:
        raise ModelLoadError(f"this GGUF's tokenizer is {kind!r}; supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece)")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    # 2 = unknown, 3 = control (<|im_end|>, <s>...): special, never split, dropped by decode(skip_special_tokens=True).
    # 4 = user-defined (<think>...): matched whole in the text, ordinary text otherwise.
    # Only tokens the model vocabulary spells that way: some files mislabel others, and adding those
    # would grow the vocabulary past the embedding.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                            if ty in (2, 3) and t in vocab])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
                    if ty == 4 and t in vocab])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
    if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]}:1 $B:1", special_tokens=[(tokens[bos], bos)]
        )
    return tok


def _byte_level_bpe(meta: dict) -> tuple[Tokenizer, dict[str, int]]:
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())

    def spelled(token: str) -> str:  # tokens written with other characters are respelled byte by byte
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab = {spelled(t): i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    return tok, vocab


def _sentencepiece_bpe(meta: dict) -> tuple[Tokenizer, dict[str, int]]:
    """SentencePiece BPE as Llama's tokenizer.json has it: "▁" for spaces, bytes as <0xNN> tokens."""
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = _merges_from_scores(vocab, dict(zip(tokens, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok, vocab


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece files store scores, not merges: every split of a token into two tokens is a
    merge, ranked by the merged token's score (as transformers' `generate_merges` does)."""
    found = []
    for token, score in scores.items():
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        found += [(a, b, score) for a, b in sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]]))]
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def tokenizer_config(meta: dict) -> dict:
    """The tokenizer_config.json of the converted folder: chat template and special tokens."""
    tokens = meta["tokenizer.ggml.tokens"]
    name = lambda key: tokens[meta[key]] if meta.get(key) is not None else None  # noqa: E731
    return {
        "chat_template": meta.get("tokenizer.chat_template"),
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")),
    }


# ---- conversion to a cached Hugging Face folder ----


def convert(path: Path, folder: Path) -> None:
    """Write the GGUF file as a Hugging Face folder (float32 safetensors, config, tokenizer)."""
    reader = open_gguf(path)
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ModelLoadError(f"{path}: no token_embd.weight tensor (is this a Llama-family model?)")
    try:
        cfg = read_config(meta, names, int(embed.shape[-1]))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: unusable GGUF metadata ({exc})") from exc
    try:
        tokenizer = read_tokenizer(meta)
        tensors = read_tensors(reader, cfg)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc

    folder.mkdir(parents=True, exist_ok=True)
    hf = {k: v for k, v in cfg.to_hf_dict().items() if k not in _INFINI_FIELDS}
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_aligned(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "tokenizer.json").write_text(tokenizer.to_str())
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(meta), indent=2) + "\n")
    source = {"source": str(path), "converter_version": CONVERTER_VERSION, "name": meta.get("general.name")}
    (folder / "source.json").write_text(json.dumps(source, indent=2) + "\n")


def file_sha256(path: Path, cache_dir: str | Path) -> str:
    """SHA-256 of the file, remembered per (path, size, mtime) so that a start does not re-read 100+ MB."""
    st = path.stat()
    key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
    memo_file = Path(cache_dir) / "weights" / "hashes.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get(key, {}).get("stamp") == stamp:
        return memo[key]["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    memo[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    _write_atomic(memo_file, json.dumps(memo, indent=1))
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _is_current(folder: Path) -> bool:
    try:
        return json.loads((folder / "source.json").read_text())["converter_version"] == CONVERTER_VERSION
    except (OSError, ValueError, KeyError):
        return False


def cached_folder(path: str | Path, cache_dir: str | Path) -> Path:
    """The converted folder of a GGUF file, converting it on the first call.

    The folder is written under a temporary name and renamed when complete, so a crash mid-way
    never leaves a half-written cache behind.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if not is_gguf(path):
        raise ModelLoadError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    folder = Path(cache_dir) / "weights" / file_sha256(path, cache_dir)
    if _is_current(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        convert(path, tmp)
        if _is_current(folder):  # another process finished the same conversion meanwhile
            return folder
        if folder.exists():  # made by an older converter
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
