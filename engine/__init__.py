"""The Infini-Transformer engine: config, model, memory, checkpoints, generation.

Knows nothing of files of books, SQL or Qt.
"""

from .checkpoint import ModelLoadError
from .config import InfiniConfig
from .engine import Engine, build_model, load_model
from .memory import Memory, SnapshotError
from .model import InfiniTransformer

__all__ = [
    "Engine", "InfiniConfig", "InfiniTransformer", "Memory", "ModelLoadError", "SnapshotError",
    "build_model", "load_model",
]
