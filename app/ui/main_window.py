"""The main window. For now: talk to the model; the library, documents and citations come next."""

from __future__ import annotations

import re
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

import engine
from app.core.models import describe

from .worker import GeneratorWorker


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|])", r"\\\1", text)


class QuestionBox(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line."""

    submitted = Signal()

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & Qt.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class MainWindow(QMainWindow):
    def __init__(self, load: Callable[[], engine.Engine]):
        super().__init__()
        self.setWindowTitle("Infini Reader")
        self.resize(900, 640)
        self.engine: engine.Engine | None = None
        self.messages: list[dict] = []
        self._worker: GeneratorWorker | None = None
        self._answer = ""

        self.transcript = QTextBrowser()
        self.transcript.setOpenExternalLinks(False)
        self.question = QuestionBox()
        self.question.setPlaceholderText("Ask the model…  (Enter sends, Shift+Enter for a new line)")
        self.question.setFixedHeight(80)
        self.send = QPushButton("Send")
        self.stop = QPushButton("Stop")
        self.stop.setEnabled(False)
        self.send.setEnabled(False)

        buttons = QVBoxLayout()
        buttons.addWidget(self.send)
        buttons.addWidget(self.stop)
        row = QHBoxLayout()
        row.addWidget(self.question, 1)
        row.addLayout(buttons)
        box = QVBoxLayout()
        box.addWidget(self.transcript, 1)
        box.addLayout(row)
        central = QWidget()
        central.setLayout(box)
        self.setCentralWidget(central)
        self.model_label = QLabel("Loading the model…")
        self.statusBar().addPermanentWidget(self.model_label)

        self.question.submitted.connect(self.ask)
        self.send.clicked.connect(self.ask)
        self.stop.clicked.connect(self.stop_answer)
        QShortcut(QKeySequence("Ctrl+N"), self, self.question.setFocus)
        QShortcut(QKeySequence("Escape"), self, self.stop_answer)

        self._loader = GeneratorWorker(lambda: iter([load()]))
        self._loader.yielded.connect(self._model_ready)
        self._loader.failed.connect(self._model_failed)
        self._loader.start()

    # ---- model ----

    def _model_ready(self, e: engine.Engine) -> None:
        self.engine = e
        self.model_label.setText(describe(e))
        self.send.setEnabled(True)
        self.statusBar().showMessage("Ready", 3000)

    def _model_failed(self, message: str) -> None:
        self.model_label.setText("No model")
        QMessageBox.critical(self, "Infini Reader", f"The model could not be loaded:\n\n{message}")

    # ---- asking ----

    def ask(self) -> None:
        text = self.question.toPlainText().strip()
        if not text or self.engine is None or self._worker is not None:
            return
        self.question.clear()
        self.messages.append({"role": "user", "content": text})
        self._answer = ""
        e, messages = self.engine, list(self.messages)
        self._worker = GeneratorWorker(lambda: e.generate(messages, e.new_memory(), max_new_tokens=400))
        self._worker.yielded.connect(self._piece)
        self._worker.finished.connect(self._done)
        self._worker.failed.connect(self._failed)
        self.send.setEnabled(False)
        self.stop.setEnabled(True)
        self._render()
        self._worker.start()

    def stop_answer(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def _piece(self, piece: str) -> None:
        self._answer += piece
        self._render()

    def _done(self) -> None:
        self.messages.append({"role": "assistant", "content": self._answer})
        self._answer = ""
        self._finish()

    def _failed(self, message: str) -> None:
        self.messages.pop()
        self._finish()
        self.statusBar().showMessage(f"The answer failed: {message}")
        QMessageBox.warning(self, "Infini Reader", f"The answer failed:\n\n{message}")

    def _finish(self) -> None:
        self._worker.wait()
        self._worker = None
        self.send.setEnabled(True)
        self.stop.setEnabled(False)
        self._render()

    def _render(self) -> None:
        # The model writes Markdown (lists, bold); the user's own words are shown as typed.
        parts = []
        for m in self.messages + ([{"role": "assistant", "content": self._answer + " ▍"}] if self._worker else []):
            if m["role"] == "user":
                body = "  \n".join(_md_escape(line) for line in m["content"].splitlines())
                parts.append(f"**You**\n\n{body}")
            else:
                parts.append(f"**Infini Reader**\n\n{m['content']}")
        self.transcript.setMarkdown("\n\n".join(parts))
        self.transcript.verticalScrollBar().setValue(self.transcript.verticalScrollBar().maximum())

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def closeEvent(self, event):  # noqa: N802
        for w in (self._worker, self._loader):
            if w is not None:
                w.cancel()
                w.wait(10000)
        super().closeEvent(event)
