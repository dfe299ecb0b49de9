"""The window's settings: a small JSON file in the user config folder, and the colour theme."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import platformdirs
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

from infini_reader.app.core.paths import APP

log = logging.getLogger(__name__)

THEMES = ("system", "light", "dark")
DEVICES = ("auto", "cpu", "cuda")


def settings_path() -> Path:
    d = Path(os.environ.get("INFINI_CONFIG_DIR") or platformdirs.user_config_dir(APP))
    return d / "settings.json"


@dataclass
class Settings:
    model: str = "builtin"  # "builtin", a GGUF file or a model folder
    device: str = "auto"  # auto | cpu | cuda
    library_dir: str = ""  # empty: the user data folder (or $INFINI_DATA_DIR)
    library_url: str = ""  # a database URL (PostgreSQL, or an SQLite file elsewhere): wins over library_dir
    theme: str = "system"  # system | light | dark
    geometry: str = ""  # the window's size and place, hex of QMainWindow.saveGeometry()
    splitter: str = ""  # the panes' widths, hex of QSplitter.saveState()
    summarize_after_reading: bool = False  # every chapter's summary written once a book is read

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or settings_path()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:  # a damaged file must not stop the application
            log.warning("ignoring the settings in %s: %s", path, exc)
            return cls()
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        s = cls(**{k: v for k, v in raw.items() if k in kinds and type(v) is kinds[k]})
        if s.theme not in THEMES:
            s.theme = "system"
        if s.device not in DEVICES:
            s.device = "auto"
        return s

    def save(self, path: Path | None = None) -> None:
        path = path or settings_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)


def _dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    for role, color in [
        (QPalette.Window, window), (QPalette.WindowText, text), (QPalette.Base, base),
        (QPalette.AlternateBase, QColor(38, 40, 43)), (QPalette.ToolTipBase, window), (QPalette.ToolTipText, text),
        (QPalette.Text, text), (QPalette.Button, QColor(55, 57, 61)), (QPalette.ButtonText, text),
        (QPalette.BrightText, QColor(255, 107, 107)), (QPalette.Link, QColor(110, 168, 254)),
        (QPalette.Highlight, QColor(53, 116, 240)), (QPalette.HighlightedText, QColor(255, 255, 255)),
        (QPalette.PlaceholderText, QColor(140, 143, 150)),
    ]:
        p.setColor(role, color)
    for role in (QPalette.Text, QPalette.ButtonText, QPalette.WindowText):
        p.setColor(QPalette.Disabled, role, QColor(120, 122, 128))
    return p


def system_is_dark() -> bool:
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def apply_theme(theme: str) -> bool:
    """Colours for the whole application; returns whether they are dark."""
    app = QApplication.instance()
    if app is None:
        return False
    dark = theme == "dark" or (theme == "system" and system_is_dark())
    app.setStyle("Fusion")  # the same look everywhere, and palettes that apply fully
    app.setPalette(_dark_palette() if dark else app.style().standardPalette())
    # A style sheet's palette(...) colours are taken when it is set: set again, each takes the new
    # palette's (else a banner made in the light theme stays white in the dark one).
    for w in app.allWidgets():
        sheet = w.styleSheet()
        if sheet:
            w.setStyleSheet("")
            w.setStyleSheet(sheet)
    return dark
