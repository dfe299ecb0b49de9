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
