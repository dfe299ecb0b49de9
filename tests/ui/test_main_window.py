"""The window with real widgets (offscreen) and the real built-in model."""

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from app.ui.main_window import MainWindow


def test_question_streams_an_answer(qtbot, builtin_engine):
    window = MainWindow(lambda: builtin_engine)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.send.isEnabled(), timeout=60000)
    assert "SmolLM2" in window.model_label.text() and "CPU" in window.model_label.text()

    pieces = []
    window.question.setPlainText("What is the capital of France?")
    qtbot.keyClick(window.question, Qt.Key_Return)  # Enter sends
    assert window.busy and window.stop.isEnabled()
    window._worker.yielded.connect(pieces.append)
    qtbot.waitUntil(lambda: not window.busy, timeout=60000)

    assert window.messages[0] == {"role": "user", "content": "What is the capital of France?"}
    answer = window.messages[1]["content"]
    assert "Paris" in answer
    assert len(pieces) > 1 and "".join(pieces) in answer  # it arrived in pieces
    assert "Paris" in window.transcript.toPlainText()
    assert window.question.toPlainText() == ""


def test_shift_enter_is_a_new_line_and_stop_ends_an_answer(qtbot, builtin_engine):
    window = MainWindow(lambda: builtin_engine)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.send.isEnabled(), timeout=60000)
    window.question.setPlainText("Tell me a long story about a lighthouse keeper.")
    window.question.moveCursor(QTextCursor.End)
    qtbot.keyClick(window.question, Qt.Key_Return, Qt.ShiftModifier)
    assert not window.busy and window.question.toPlainText().endswith("\n")
    qtbot.keyClick(window.question, Qt.Key_Return)
    assert window.busy
    qtbot.waitUntil(lambda: len(window._answer) > 10, timeout=60000)
    window.stop.click()
    qtbot.waitUntil(lambda: not window.busy, timeout=30000)
    assert 0 < len(window.messages[1]["content"].split()) < 300


def test_a_model_that_fails_to_load_is_reported(qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "critical", lambda *a: shown.append(a[2]))

    def broken():
        raise ValueError("model.gguf: not a GGUF file")

    window = MainWindow(broken)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: bool(shown), timeout=10000)
    assert "not a GGUF file" in shown[0]
    assert window.model_label.text() == "No model" and not window.send.isEnabled()
