import pytest
import torch

from infini_reader.engine import Engine, InfiniConfig, build_model


def tiny_config(**kw) -> InfiniConfig:
    base = dict(
        vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
        head_dim=8, intermediate_size=80, segment_length=16, rope_theta=10000.0, tie_word_embeddings=False,
    )
    base.update(kw)
    return InfiniConfig(**base)


def tiny_engine(seed: int = 0, gate: float | None = 0.0, **kw) -> Engine:
    """A random float32 engine; gate sets every memory_gate (0 → the memory gets half the weight,
    so that tests see the memory path clearly)."""
    model = build_model(tiny_config(**kw), seed=seed)
    if gate is not None:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.memory_gate.fill_(gate)
    return Engine(model)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
