"""Model configuration: the Llama-family fields plus the Infini-attention ones.

The Llama fields use Hugging Face `config.json` names so that a config round-trips through the
JSON file that `export_hf` writes and that `transformers` reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
MEMORY_UPDATES = ("linear", "delta")


@dataclass
class InfiniConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = 64
    intermediate_size: int = 1536
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    tie_word_embeddings: bool = True
    # q/k/v/o biases (Llama's flag). Qwen2 always has q/k/v biases and no o bias: see `qkv_bias`.
    attention_bias: bool = False
    model_type: str = "llama"
    max_position_embeddings: int = 8192
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    # Infini-attention: tokens per segment. Local attention sees one segment; older text reaches
    # the model only through the compressive memory.
    segment_length: int = 2048
    # "linear": M += σ(K)ᵀV. "delta": M += σ(K)ᵀ(V − σ(K)M/(σ(K)z)), writing only what is new.
    memory_update: str = "linear"
    # Initial β of a freshly converted model. sigmoid(-6) ≈ 0.0025: the memory read is open and has
    # a gradient (Adam's step does not shrink with it), while a pretrained model keeps 99.75% of its
    # attention in the first segment, where the memory is still empty. Measured on SmolLM2-135M:
    # at β = -3 (95%) its answers already fall apart; at -6 the next-token KL to the base model is 6e-4.
    memory_gate_init: float = -6.0

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.memory_update not in MEMORY_UPDATES:
            raise ValueError(f"memory_update must be one of {MEMORY_UPDATES}, not {self.memory_update!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.segment_length < 1:
            raise ValueError("segment_length must be positive")

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @property
    def kv_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def memory_floats(self) -> int:
        """Floats in one document memory: layers × kv_heads × d_key × (d_value + 1)."""
        return self.num_hidden_layers * self.num_key_value_heads * self.head_dim * (self.head_dim + 1)

    # ---- Hugging Face config.json ----

    def to_hf_dict(self) -> dict:
        d = asdict(self)
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        d["architectures"] = [arch[self.model_type]]
        d["hidden_act"] = "silu"
        d["torch_dtype"] = "float32"
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, **overrides) -> InfiniConfig:
        model_type = d.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported activation {d['hidden_act']!r}: only SwiGLU (silu) models load")
        # transformers < 5 writes rope_theta and rope_scaling; transformers >= 5 writes rope_parameters.
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) not in (None, "default"):
            raise ValueError(f"unsupported rotary scaling {rope!r}: only default RoPE is implemented")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        kw["model_type"] = model_type
        if kw.get("head_dim") is None:
            kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        kw.setdefault("num_key_value_heads", d["num_attention_heads"])
        kw.setdefault("tie_word_embeddings", False)  # the transformers default for Llama is False
        kw.update(overrides)
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, **overrides) -> InfiniConfig:
        return cls.from_hf_dict(json.loads(Path(path).read_text()), **overrides)
