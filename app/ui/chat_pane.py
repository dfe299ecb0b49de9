"""The Chat tab: ask about the open document, answers streamed with their citations, kept per document."""

from __future__ import annotations

import threading

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QCursor, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from infini_reader.app.core import answers
from infini_reader.app.core.state import AppState, ModelState

from .library_model import Row
from .transcript import Turn, empty_state, parse_link, passage_preview, render
from .worker import Tasks


def _key(row: Row | None):
    return (row.doc_id, row.status) if row is not None else None


class QuestionBox(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line."""

    submitted = Signal()

    def keyPressEvent(self, event):
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and not event.modifiers() & Qt.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class Banner(QFrame):
    """A line about the document's state, with the one action that helps (read again, resume)."""

    action = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        self.setStyleSheet("Banner { background: palette(alternate-base); border-radius: 4px; }")
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.PlainText)
        self.button = QPushButton()
        self.button.clicked.connect(self.action)
        box = QHBoxLayout(self)
        box.setContentsMargins(8, 6, 8, 6)
        box.addWidget(self.text, 1)
        box.addWidget(self.button)
        self.hide()

    def say(self, text: str, button: str = "") -> None:
        self.text.setText(text)
        self.button.setText(button)
        self.button.setVisible(bool(button))
        self.setVisible(bool(text))


class ChatPane(QWidget):
    citation_clicked = Signal(int, object)  # doc_id, Citation
    reread_requested = Signal(int)  # doc_id: read it (again) with the model in use
    message = Signal(str)  # for the status bar
    answered = Signal(int)  # doc_id: an answer has been stored

    def __init__(self, tasks: Tasks, state: AppState | None = None, parent=None):
        super().__init__(parent)
        self._tasks = tasks
        self.state = state if state is not None else AppState()  # the model's loading; questions waiting for it
        self._placeholders: dict[int, Turn] = {}  # id(PendingQuestion) → the answer shown as waiting
        self.library = None
        self.engine = None
        self.row: Row | None = None
        self.chats: dict[int, list[Turn]] = {}  # doc_id → turns, loaded once per document
        self._loading: set[int] = set()
        self._answering: int | None = None  # the document whose answer is streaming
        self._cancel: threading.Event | None = None
        self._cache: dict[str, str] = {}

        self.title = QLabel()
        self.title.setTextFormat(Qt.PlainText)
        self.title.setStyleSheet("font-weight: bold; font-size: 14px")
        self.banner = Banner()
        self.transcript = QTextBrowser()
        self.transcript.setOpenLinks(False)
        self.transcript.setPlaceholderText("Questions and answers about this document appear here.")
        self.question = QuestionBox()
        self.question.setPlaceholderText("Ask about this document…  (Enter sends, Shift+Enter for a new line)")
        self.question.setFixedHeight(72)
        self.send = QPushButton("Ask")
        self.send.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the answer (Esc)")
        self.clear = QPushButton("Clear chat")
        self.clear.setFlat(True)

        buttons = QVBoxLayout()
        buttons.addWidget(self.send)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.question, 1)
        row.addLayout(buttons)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.clear)
        box = QVBoxLayout(self)
        box.addLayout(top)
        box.addWidget(self.banner)
        box.addWidget(self.transcript, 1)
        box.addLayout(row)

        self._render_timer = QTimer(self, singleShot=True, interval=40)
        self._render_timer.timeout.connect(self.render)
        self.question.submitted.connect(self.ask)
        self.send.clicked.connect(self.ask)
        self.stop_button.clicked.connect(self.stop)
        self.clear.clicked.connect(self._clear)
        self.transcript.anchorClicked.connect(self._link)
        self.transcript.highlighted.connect(self._hover)
        self.banner.action.connect(lambda: self.row and self.reread_requested.emit(self.row.doc_id))
        self.set_document(None)

    # ---- the open document ----

    def bind(self, library, engine) -> None:
        if library is not self.library:
            self.chats.clear()
        self.library, self.engine = library, engine
        self.set_document(self.row)
        if self.state.model.state == ModelState.FAILED:
            self._give_up_waiting(f"Not answered: the model could not be loaded ({self.state.model.error}).")
        self._answer_waiting()

    def set_document(self, row: Row | None) -> None:
        """Show a document's chat (loaded once from the library), or nothing."""
        changed = _key(row) != _key(self.row)
        self.row = row if row is not None and row.doc_id is not None else None
        if self.row is None:
            self.title.setText("No document open")
            self.banner.say("Choose a document in the library, or drop a book on the window.")
        else:
            self.title.setText(self.row.title)
            self._say_state()
            if self.row.doc_id not in self.chats and self.library is not None:
                self._load(self.row.doc_id)
        self._update_buttons()
        if changed:
            self.render()

    def _say_state(self) -> None:
        r = self.row
        model = "the model in use"
        if r.status == "ready" and self.engine is None and self.state.waiting_questions(r.doc_id):
            self.banner.say("Waiting for the model to load: your question is answered as soon as it is ready.")
        elif r.status == "ready":
            self.banner.say("")
        elif r.status == "other-model":
            self.banner.say(f"“{r.title}” was read by another model. Read it again with {model} to ask questions "
                            "(or switch back to that model in Settings).", "Read again with this model")
        elif r.status in ("reading", "parsing", "queued"):
            self.banner.say(f"“{r.title}” is being read ({r.percent}%). You can ask as soon as it is ready.")
        elif r.status == "cancelled":
            self.banner.say(f"Reading stopped at {r.percent}%. Resume it to ask questions.", "Resume reading")
        elif r.status == "failed":
            self.banner.say(f"This document could not be read: {r.error or 'unknown reason'}", "Try again")

    def _load(self, doc_id: int) -> None:
        if doc_id in self._loading:
            return
        self._loading.add(doc_id)
        library = self.library

        def loaded(messages):
            self._loading.discard(doc_id)
            self.chats[doc_id] = [Turn(m.role, m.content, list(m.citations), message_id=m.id) for m in messages]
            if self.row is not None and self.row.doc_id == doc_id:
                self.render()
                self._update_buttons()

        def failed(message):
            self._loading.discard(doc_id)
            self.chats[doc_id] = []
            self.message.emit(f"The chat could not be loaded: {message}")
            self._update_buttons()

        self._tasks.call(lambda: answers.chat_history(library, doc_id), loaded, failed)

    @property
    def turns(self) -> list[Turn]:
        return self.chats.get(self.row.doc_id, []) if self.row is not None else []

    @property
    def busy(self) -> bool:
        return self._answering is not None

    def _update_buttons(self) -> None:
        askable = self.row is not None and self.row.status == "ready" and self.row.doc_id in self.chats
        # while the model loads, questions are taken and wait for it
        model = self.engine is not None or self.state.loading
        waiting = askable and bool(self.state.waiting_questions(self.row.doc_id))
        self.send.setEnabled(askable and model and not self.busy)
        self.question.setEnabled(self.row is not None)
        self.question.setPlaceholderText(
            "The model is loading: ask now, the answer comes as soon as it is ready…" if self.engine is None
            and self.state.loading else "Ask about this document…  (Enter sends, Shift+Enter for a new line)")
        self.stop_button.setEnabled(self.busy or bool(self.state.questions))
        self.clear.setEnabled(askable and self.engine is not None and not self.busy and not waiting
                              and bool(self.turns))

    # ---- asking ----

    def ask(self) -> None:
        text = self.question.toPlainText().strip()
        if not text or not self.send.isEnabled():
            return
        self.question.clear()
        doc_id = self.row.doc_id
        turns = self.chats[doc_id]
        turns.append(Turn("user", text))
        answer = Turn("assistant")
        turns.append(answer)
        if self.engine is None:  # the model is loading: the question waits for it, in sight
            answer.waiting = True
            self._placeholders[id(self.state.ask_later(doc_id, text))] = answer
            self.message.emit("Waiting for the model: the question is answered as soon as it has loaded")
            self._say_state()
            self._update_buttons()
            self.render()
            return
        self._answer(doc_id, text, answer)

    def _answer_waiting(self) -> None:
        """The model is ready: answer the next question that waited for it (one at a time)."""
        if self.busy or self.engine is None or self.library is None:
            return
        q = self.state.next_question()
        if q is None:
            return
        answer = self._placeholders.pop(id(q), None)
        if answer is None or q.doc_id not in self.chats:  # its chat was forgotten meanwhile
            answer = Turn("assistant")
            self.chats.setdefault(q.doc_id, []).extend([Turn("user", q.text), answer])
        self._answer(q.doc_id, q.text, answer)
        if self.row is not None and self.row.doc_id == q.doc_id:
            self._say_state()

    def _give_up_waiting(self, why: str) -> None:
        for q in self.state.drop_questions():
            answer = self._placeholders.pop(id(q), None)
            if answer is not None:
                answer.waiting, answer.error = False, why
        self._update_buttons()
        self.render()
        if self.row is not None:
            self._say_state()

    def _answer(self, doc_id: int, text: str, answer: Turn) -> None:
        """Stream the answer to `text` into `answer`, a turn of `doc_id`'s chat: it stays that
        document's whatever the window shows meanwhile."""
        library, engine = self.library, self.engine
        answer.waiting, answer.streaming = False, True
        self._answering, self._cancel = doc_id, threading.Event()
        cancel = self._cancel

        def event(ev: answers.AnswerEvent) -> None:
            if ev.kind == "citations":
                answer.citations = list(ev.citations)
            elif ev.kind == "token":
                answer.content += ev.text
            elif ev.kind == "done":
                answer.content, answer.message_id = ev.text, ev.message_id
            elif ev.kind == "error":
                answer.error = ev.text
                self._refused(doc_id, ev.text)
            self._schedule()

        def failed(message: str) -> None:
            answer.error = f"The answer failed: {message}"
            end()

        def end() -> None:
            answer.streaming = False
            if not answer.content and not answer.error:
                answer.error = "Stopped before the first word."
            self._answering = self._cancel = None
            self._update_buttons()
            self.render()
            if answer.error:
                self.message.emit(answer.error)
            elif answer.message_id is not None:
                self.answered.emit(doc_id)
            self._answer_waiting()

        self._tasks.run(lambda: answers.ask(library, engine, doc_id, text, cancel=cancel), event, end, failed)
        self._update_buttons()
        self.render()

    def _refused(self, doc_id: int, message: str) -> None:
        if self.row is not None and self.row.doc_id == doc_id and "different model" in message:
            self.banner.say(message, "Read again with this model")

    def stop(self) -> None:
        """Stop the answer being written, and the questions waiting for the model."""
        if self._cancel is not None:
            self._cancel.set()
        if self.state.questions:
            self._give_up_waiting("Not answered: stopped before the model was ready.")

    def focus_question(self) -> None:
        self.question.setFocus()

    def _clear(self) -> None:
        if self.row is None:
            return
        if QMessageBox.question(self, "Clear chat", f"Forget the questions and answers about “{self.row.title}”?",
                                QMessageBox.Yes | QMessageBox.No) != QMessageBox.Yes:
            return
        doc_id, library = self.row.doc_id, self.library
        self._tasks.call(lambda: answers.clear_chat(library, doc_id),
                         lambda _: (self.chats.__setitem__(doc_id, []), self.render(), self._update_buttons()),
                         lambda m: self.message.emit(f"The chat could not be cleared: {m}"))

    # ---- showing ----

    def _schedule(self) -> None:
        if self.row is not None and self.row.doc_id == self._answering and not self._render_timer.isActive():
            self._render_timer.start()

    def render(self) -> None:
        bar = self.transcript.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        if not self.turns and self.row is not None and self.row.status == "ready":
            self.transcript.setHtml(empty_state(self.row.title, self.palette()))
        else:
            self.transcript.setHtml(render(self.turns, self.palette(), self._cache))
        if at_end or self.busy:
            bar.setValue(bar.maximum())

    def changeEvent(self, event):
        super().changeEvent(event)
        if event.type() == QEvent.PaletteChange:  # the theme changed: the transcript's colours follow
            self.render()

    def _link(self, url) -> None:
        kind, i, k = parse_link(url.toString())
        turns = self.turns
        if not 0 <= i < len(turns):
            return
        if kind == "copy":
            QGuiApplication.clipboard().setText(turns[i].content)
            self.message.emit("Answer copied")
        elif kind == "cite" and 0 <= k < len(turns[i].citations):
            self.citation_clicked.emit(self.row.doc_id, turns[i].citations[k])

    def _hover(self, url) -> None:
        kind, i, k = parse_link(url.toString())
        turns = self.turns
        if kind == "cite" and 0 <= i < len(turns) and 0 <= k < len(turns[i].citations):
            QToolTip.showText(QCursor.pos(), passage_preview(turns[i].citations[k]), self.transcript)
        else:
            QToolTip.hideText()
