"""Where the application keeps its things (platformdirs), with overrides for tests and users."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "infini-reader"


def data_dir(override: str | Path | None = None) -> Path:
    """The library's folder: --data-dir, else $INFINI_DATA_DIR, else the user data folder."""
    d = Path(override or os.environ.get("INFINI_DATA_DIR") or platformdirs.user_data_dir(APP))
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_db_url(data: Path) -> str:
    return f"sqlite:///{data / 'library.sqlite3'}"


def log_dir() -> Path:
    d = Path(os.environ.get("INFINI_LOG_DIR") or platformdirs.user_log_dir(APP))
    d.mkdir(parents=True, exist_ok=True)
    return d


def models_dir() -> Path:
    """Where the built-in model's file is installed. Its own variable, not INFINI_DATA_DIR: moving the
    library must not mean fetching the model again."""
    return Path(os.environ.get("INFINI_MODEL_DIR") or Path(platformdirs.user_data_dir(APP)) / "models")


def cache_dir() -> Path:
    """Converted model weights (safetensors) live here: $INFINI_CACHE_DIR or the user cache folder."""
    return Path(os.environ.get("INFINI_CACHE_DIR") or platformdirs.user_cache_dir(APP))


# The project's resources/ folder, beside the packages: the checkout's own folder (and an editable
# install's), or the package infini_reader.resources that a wheel and a PyInstaller bundle carry.
RESOURCE_DIRS = (Path(__file__).resolve().parents[2] / "resources",)


def resource(name: str) -> Path | None:
    """A file of the shipped resources, or None when this installation lacks it."""
    for d in RESOURCE_DIRS:
        if (d / name).is_file():
            return d / name
    return None


def user_guide() -> Path | None:
    """The user guide (docs/user-guide.md): the checkout's, or the copy a wheel carries as
    infini_reader.docs. None when this installation has neither."""
    guide = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"
    return guide if guide.is_file() else None
