"""Which model the application runs, and loading it. Shared by the command line and the window."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from infini_reader import engine

from . import fingerprints
from .builtin import builtin_path, model_path
from .paths import cache_dir, resource

log = logging.getLogger(__name__)

BUILTIN_ADAPTER_NAME = "smollm2-135m-infini-adapter.safetensors"


def builtin_adapter() -> Path | None:
    """The shipped adapter of the built-in model, or None when this installation lacks it."""
    return resource(BUILTIN_ADAPTER_NAME)


def load_model(spec: str | Path, device: str = "auto", dtype: str = "auto", adapter: str | Path | None = "auto",
               **overrides) -> engine.Engine:
    """The application's way to load a model: "builtin" (installed on first use), a GGUF file or a
    model folder, with the converted weights cached in the user cache folder. `adapter`: "auto" applies
    the shipped adapter to the built-in model and nothing to other models; a path applies that file;
    None (or "none") gives the plain converted model."""
    builtin = str(spec) == "builtin"
    if adapter == "none":
        adapter = None
    if adapter == "auto":
        adapter = builtin_adapter() if builtin else None
        if adapter is None and builtin:
            # Reading still works, with the plain converted model (its own fingerprint), but say so.
            log.warning("the built-in model's trained adapter (%s) is not in this installation; "
                        "using the plain converted model", BUILTIN_ADAPTER_NAME)
    name = str(spec)
    shipped = builtin_adapter()
    if adapter is not None and not (builtin and shipped is not None and Path(adapter).resolve() == shipped.resolve()):
        name = f"{spec}+{Path(adapter).stem}"  # name what is not the default
    path = builtin_path() if builtin else Path(spec)
    return engine.load_model(path, device=device, dtype=dtype, adapter=adapter, cache_dir=cache_dir(), name=name,
                             **overrides)


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
    e = load_model(choice.spec, device=choice.device, dtype=choice.dtype, adapter=choice.adapter)
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
