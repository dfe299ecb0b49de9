"""Which model the application runs, and loading it. Shared by the command line and the window."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import engine

log = logging.getLogger(__name__)


@dataclass
class ModelChoice:
    spec: str = "builtin"  # "builtin", a GGUF file, or a model folder
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"
    adapter: str = "auto"  # auto (the shipped one, for the built-in model), none, or an adapter file


def load_engine(choice: ModelChoice) -> engine.Engine:
    t0 = time.perf_counter()
    adapter = None if choice.adapter == "none" else choice.adapter
    e = engine.load_model(choice.spec, device=choice.device, dtype=choice.dtype, adapter=adapter)
    log.info("loaded %s on %s (%s) in %.1f s", choice.spec, e.device, e.dtype, time.perf_counter() - t0)
    return e


def describe(e: engine.Engine) -> str:
    """A short line for status bars: what runs, where, in which precision."""
    name = "built-in SmolLM2-135M-Instruct" if e.source == "builtin" else e.source
    dev = "GPU" if e.device.type == "cuda" else "CPU"
    return f"{name} · {dev} · {str(e.dtype).removeprefix('torch.')}"
