"""Entry point of the desktop application: `infini-reader [FILE...]`."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
import traceback
from pathlib import Path

from infini_reader.app.core.paths import log_dir

log = logging.getLogger("infini_reader.app.ui")


def setup_logging() -> Path:
    path = log_dir() / "infini-reader.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return path


def _excepthook(window_ref):
    """An unexpected error becomes a message in the window and a traceback in the log, not a crash."""

    def hook(kind, value, tb):
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(kind, value, tb)))
        window = window_ref()
        if window is not None:
            window.show_error("Something went wrong", f"Something went wrong: {value or kind.__name__}")

    return hook


def bring_forward(window, files: list[str]) -> None:
    """Another `infini-reader` handed over its files: queue them, and show the window."""
    window.showNormal() if window.isMinimized() else window.show()
    window.raise_()
    window.activateWindow()
    if files:
        window.open_files(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infini-reader", description="Read whole books with a local model.")
    parser.add_argument("files", nargs="*", metavar="FILE", help="books to add to the library (EPUB, PDF, TXT, "
                        "Markdown, HTML)")
    parser.add_argument("--model", help="builtin, a GGUF file or a model folder (default: from the settings)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: from the settings")
    parser.add_argument("--data-dir", help="the library's folder (default: from the settings, or $INFINI_DATA_DIR)")
    parser.add_argument("--db", metavar="URL", help="a library by database URL, e.g. postgresql+psycopg://user@host/"
                        "library (default: from the settings, or the library folder)")
    args, qt_args = parser.parse_known_args(argv)
    log_path = setup_logging()
    log.info("starting; log in %s", log_path)

    from PySide6.QtWidgets import QApplication

    from infini_reader.app.ui.single_instance import InstanceServer, hand_over

    app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setApplicationName("Infini Reader")
    app.setOrganizationName("infini-reader")
    app.setDesktopFileName("infini-reader")
    # One window per user: when one is running, it takes the files (and comes to the front).
    server = InstanceServer(parent=app)
    if not server.listen() and hand_over(args.files, server.name):
        n = len(args.files)
        log.info("handed %d file(s) to the window already open", n)
        print("infini-reader: " + (f"{n} file{'s' if n != 1 else ''} handed to the window already open" if n
                                   else "the window is already open"), file=sys.stderr)
        return 0

    from infini_reader.app.ui.main_window import MainWindow
    from infini_reader.app.ui.settings import Settings

    from infini_reader.app.ui.icon import app_icon

    app.setWindowIcon(app_icon())
    settings = Settings.load()
    if args.model:
        settings.model = args.model
    if args.device:
        settings.device = args.device
    window = MainWindow(settings=settings, data_dir=args.data_dir, files=args.files, db_url=args.db)
    server.files.connect(lambda files: bring_forward(window, files))
    import weakref

    sys.excepthook = _excepthook(weakref.ref(window))
    window.show()
    code = app.exec()
    window.queue.stop()
    window.tasks.cancel_all()
    window.tasks.wait_all()  # a thread must not outlive the application (the reading stores its place)
    server.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
