"""The fingerprint each model choice had when it was last loaded, kept in the library's folder.

A memory belongs to the exact weights that wrote it (`weights_fingerprint`), and knowing them takes
loading and hashing the model: seconds, and torch. `infini list` loads no model, so it asks this
record instead: what the same choice (model, device, precision, adapter) hashed to the last time,
valid while the files behind it keep their size and modification time. No record (or a stale one)
means "unknown", never a guess. Imports nothing heavy.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

FILE = "model-fingerprints.json"
log = logging.getLogger(__name__)


def choice_key(spec: str, device: str, dtype: str, adapter: str) -> str:
    return json.dumps([str(spec), device, dtype, str(adapter)])


def _stats(files: list[Path]) -> list[list]:
    out = []
    for f in files:
        for g in sorted(f.iterdir()) if f.is_dir() else [f]:
            if g.is_file():
                st = g.stat()
                out.append([str(g.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _read(folder: Path) -> dict:
    try:
        data = json.loads((folder / FILE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember(folder: Path, key: str, files: list[Path], fingerprint: str) -> None:
    """Record `fingerprint` for `key` with the files it came from (written whole, then renamed)."""
    tmp = folder / f".{FILE}.{os.getpid()}"
    try:
        data = _read(folder)
        data[key] = {"fingerprint": fingerprint, "files": _stats(files)}
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, folder / FILE)
    except OSError as exc:  # a read-only folder: the record is a convenience, the model still works
        log.warning("could not record the model's fingerprint in %s: %s", folder, exc)
        tmp.unlink(missing_ok=True)


def recall(folder: Path, key: str) -> str | None:
    """The fingerprint recorded for `key`, if every file behind it is unchanged; else None."""
    entry = _read(folder).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
        return None
    try:
        files = entry["files"]
        for path, size, mtime in files:
            st = Path(path).stat()
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                return None
    except (OSError, TypeError, ValueError, KeyError):
        return None
    return entry["fingerprint"] if files else None
