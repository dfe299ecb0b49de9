"""`infini-reader`: arguments, the log file, unexpected errors shown rather than crashing."""

import logging
import sys
import weakref

import pytest
from PySide6.QtWidgets import QApplication

from infini_reader.app.ui import main as entry

from .conftest import add_window


def test_help_names_the_files_and_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        entry.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "FILE" in out and "--model" in out and "--device" in out and "--data-dir" in out


def test_files_model_and_library_from_the_command_line(qtbot, tmp_path, monkeypatch):
    made = {}

    class Idle:
        def stop(self):
            made["stopped"] = True

        def cancel_all(self):
            pass

        def wait_all(self):
            made["waited"] = True

    class Window:
        def __init__(self, **kw):
            made.update(kw)
            self.queue = self.tasks = Idle()

        def show(self):
            made["shown"] = True

        def show_error(self, *a):
            pass

    monkeypatch.setattr("infini_reader.app.ui.main_window.MainWindow", Window)
    monkeypatch.setattr(QApplication, "exec", lambda self: 0)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    handlers = list(logging.getLogger().handlers)
    try:
        code = entry.main(["a.epub", "b.pdf", "--model", "/m/x.gguf", "--device", "cpu",
                           "--data-dir", str(tmp_path / "lib")])
    finally:
        for h in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(h)
            h.close()
    assert code == 0 and made["shown"] and made["stopped"] and made["waited"]
    assert made["files"] == ["a.epub", "b.pdf"] and made["data_dir"] == str(tmp_path / "lib")
    assert (made["settings"].model, made["settings"].device) == ("/m/x.gguf", "cpu")
    assert (tmp_path / "logs" / "infini-reader.log").exists()  # INFINI_LOG_DIR (conftest)


def test_an_unexpected_error_is_shown_and_logged(qtbot, tmp_path, tiny_reader, caplog):
    from infini_reader.app.ui.main_window import MainWindow

    window = MainWindow(lambda choice: tiny_reader, data_dir=tmp_path / "data")
    add_window(qtbot, window)
    hook = entry._excepthook(weakref.ref(window))
    try:
        raise ValueError("a page with no text")
    except ValueError:
        with caplog.at_level(logging.ERROR):
            hook(*sys.exc_info())
    assert "a page with no text" in window.last_error and window._boxes[-1].isVisible()
    assert "Traceback" in caplog.text
