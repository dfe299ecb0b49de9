"""Entry point of the desktop application: `infini-reader`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import platformdirs


def setup_logging() -> Path:
    log_dir = Path(platformdirs.user_log_dir("infini-reader"))
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "infini-reader.log"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(path, encoding="utf-8")],
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infini-reader", description="Read whole books with a local model.")
    parser.add_argument("--model", default="builtin", help="builtin, a GGUF file or a model folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args, qt_args = parser.parse_known_args(argv)
    setup_logging()

    from PySide6.QtWidgets import QApplication

    from app.core.models import ModelChoice, load_engine

    from .main_window import MainWindow

    app = QApplication([sys.argv[0], *qt_args])
    app.setApplicationName("Infini Reader")
    window = MainWindow(lambda: load_engine(ModelChoice(args.model, args.device)))
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
