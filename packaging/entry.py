"""The one entry script of the desktop bundle: the executable's own name picks the program.

`infini-reader` (or any other name) starts the window, `infini` the command line; both are built
from this script by packaging/infini-reader.spec and share one folder of libraries.

INFINI_SMOKE_SECONDS=N (packaging/smoke_test.py) makes the window report what it shows after N
seconds and quit, so that a bundle can be checked offscreen (QT_QPA_PLATFORM=offscreen).
"""

import logging
import multiprocessing
import os
import sys
from pathlib import Path


def _smoke_window(seconds: float) -> None:
    """Create the application first (main() reuses it) and schedule a report-and-quit on its loop."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])

    def report(line: str) -> None:  # to the log too: a windowed executable on Windows has no stdout
        logging.getLogger("infini_reader.smoke").info(line)
        if sys.stdout is not None:
            print(line, flush=True)

    def report_and_quit():
        shown = [w for w in app.topLevelWidgets() if w.isVisible()]
        for w in shown:
            report(f"smoke: window shown: {w.windowTitle()!r} {w.width()}x{w.height()}")
        if not shown:
            report("smoke: no window is shown")
        app.exit(0 if shown else 3)

    QTimer.singleShot(int(seconds * 1000), report_and_quit)


def main() -> int:
    multiprocessing.freeze_support()
    name = Path(sys.executable if getattr(sys, "frozen", False) else sys.argv[0]).stem.lower()
    if name == "infini":
        from infini_reader.app.cli import main as cli

        return cli()
    smoke = os.environ.get("INFINI_SMOKE_SECONDS")
    if smoke:
        _smoke_window(float(smoke))
    from infini_reader.app.ui.main import main as window

    return window()


if __name__ == "__main__":
    sys.exit(main())
