"""Which model the application runs, and loading it. Shared by the command line and the window."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import engine
from engine.adapter import builtin_adapter
from engine.builtin import model_path

from . import fingerprints

log = logging.getLogger(__name__)


@dataclass
class ModelChoice:
    spec: str = "builtin"  # "builtin", a GGUF file, or a model folder
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"
    adapter: str = "auto"  # auto (the shipped one, for the built-in model), none, or an adapter file

    @property
    def key(self) -> str:
        return fingerprints.choice_key(self.spec, self.device, self.dtype, self.adapter)


def load_engine(choice: ModelChoice) -> engine.Engine:
    t0 = time.perf_counter()
    adapter = None if choice.adapter == "none" else choice.adapter
    e = engine.load_model(choice.spec, device=choice.device, dtype=choice.dtype, adapter=adapter)
    log.info("loaded %s on %s (%s) in %.1f s", choice.spec, e.device, e.dtype, time.perf_counter() - t0)
    return e


def remember_fingerprint(folder: Path, choice: ModelChoice, e: engine.Engine) -> None:
    """Record the loaded model's fingerprint for `choice` in the library's folder (hashes the weights
    once, as the first reading or question would), so that `infini list` can tell "read by another
    model" without loading it."""
    builtin = choice.spec == "builtin"
    files = [model_path() if builtin else Path(choice.spec)]
    adapter = (builtin_adapter() if builtin else None) if choice.adapter == "auto" else (
        None if choice.adapter == "none" else Path(choice.adapter))
    if adapter is not None:
        files.append(Path(adapter))
    fingerprints.remember(folder, choice.key, files, e.fingerprint)


def describe(e: engine.Engine) -> str:
    """A short line for status bars: what runs, where, in which precision."""
    name = "built-in SmolLM2-135M-Instruct" if e.source == "builtin" else e.source
    dev = "GPU" if e.device.type == "cuda" else "CPU"
    return f"{name} · {dev} · {str(e.dtype).removeprefix('torch.')}"
