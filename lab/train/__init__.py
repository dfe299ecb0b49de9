"""Training the memory: `python -m lab.train` (see `--help`)."""

from .data import TrainingData, passkey_ids
from .trainer import TrainConfig, Trainer, plot

__all__ = ["TrainConfig", "Trainer", "TrainingData", "passkey_ids", "plot"]
