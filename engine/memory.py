"""The compressive memory of Infini-attention: its arithmetic and its snapshot format.

Per attention layer and key/value head: a matrix M (d_key × d_value) and a vector z (d_key), both
float32 whatever the model's dtype. σ(x) = ELU(x) + 1 keeps every feature positive, so σ(q)·z > 0
as soon as one token has been written and retrieval is a well-defined weighted average.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from infini_reader.kernels.reference import memory_delta, memory_retrieve, sigma  # noqa: F401  (the arithmetic)

FORMAT_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot that cannot be used: corrupted, truncated, or made by other weights."""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class Memory:
    """A document's memory: per layer M (Hkv, Dk, Dv) and z (Hkv, Dk), float32, plus a header."""

    M: list[torch.Tensor]
    z: list[torch.Tensor]
    fingerprint: str
    update_rule: str
    segment_length: int
    tokens: int = 0  # tokens written into M and z so far
    extra: dict = field(default_factory=dict)  # free-form header fields (e.g. the source's name)

    @property
    def empty(self) -> bool:
        return self.tokens == 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.M, *self.z))

    def clone(self) -> Memory:
        return Memory(
            [m.clone() for m in self.M], [z.clone() for z in self.z], self.fingerprint,
            self.update_rule, self.segment_length, self.tokens, dict(self.extra),
        )

    def to(self, device: torch.device | str) -> Memory:
        out = self.clone()
        out.M = [m.to(device) for m in self.M]
        out.z = [z.to(device) for z in self.z]
        return out

    # ---- snapshot ----

    def to_bytes(self) -> bytes:
        tensors = {}
        for i, (m, z) in enumerate(zip(self.M, self.z)):
            tensors[f"layers.{i}.M"] = m.detach().to("cpu", torch.float32).contiguous()
            tensors[f"layers.{i}.z"] = z.detach().to("cpu", torch.float32).contiguous()
        header = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "update_rule": self.update_rule,
            "segment_length": self.segment_length,
            "tokens": self.tokens,
            "layers": len(self.M),
            "checksum": _digest(tensors),
            "extra": self.extra,
        }
        # One metadata entry holding sorted JSON (safetensors orders several entries at random):
        # the same memory always gives the same bytes.
        return st_save(tensors, metadata={"infini-memory": json.dumps(header, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes, expected_fingerprint: str | None = None) -> Memory:
        try:
            tensors = st_load(bytes(data))
            header = _read_header(data)
        except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"the memory snapshot is corrupted or truncated ({exc})") from exc
        if "infini-memory" not in header:
            raise SnapshotError("these bytes are not an Infini Reader memory snapshot")
        try:
            header = json.loads(header["infini-memory"])
        except json.JSONDecodeError as exc:
            raise SnapshotError(f"the memory snapshot's header is corrupted ({exc})") from exc
        if int(header.get("format_version", 0)) > FORMAT_VERSION:
            raise SnapshotError(
                f"the memory snapshot has format version {header['format_version']}, newer than this "
                f"program understands ({FORMAT_VERSION}); update Infini Reader"
            )
        if _digest(tensors) != header.get("checksum"):
            raise SnapshotError("the memory snapshot is corrupted (its checksum does not match)")
        if expected_fingerprint is not None and header["fingerprint"] != expected_fingerprint:
            raise SnapshotError(
                "this memory was made by a different model (fingerprint "
                f"{header['fingerprint'][:12]}…, the loaded model is {expected_fingerprint[:12]}…); "
                "read the document again with the current model, or switch back to the model that made it"
            )
        n = int(header["layers"])
        try:
            M = [tensors[f"layers.{i}.M"] for i in range(n)]
            z = [tensors[f"layers.{i}.z"] for i in range(n)]
        except KeyError as exc:
            raise SnapshotError(f"the memory snapshot is missing tensor {exc}") from exc
        return cls(M, z, header["fingerprint"], header["update_rule"], int(header["segment_length"]),
                   int(header["tokens"]), dict(header.get("extra") or {}))


def _read_header(data: bytes) -> dict:
    if len(data) < 8:
        raise ValueError("too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header runs past the end")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
