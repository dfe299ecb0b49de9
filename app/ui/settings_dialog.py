"""Settings: the model and the device it runs on, the library's folder, the colour theme."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from .settings import Settings

DEVICE_NAMES = {"auto": "Automatic (GPU when there is one)", "cpu": "CPU", "cuda": "GPU (CUDA)"}
THEME_NAMES = {"system": "Follow the system", "light": "Light", "dark": "Dark"}


class ModelChooser(QWidget):
    """The built-in model, or a GGUF file / model folder the user already has."""

    def __init__(self, spec: str, parent=None):
        super().__init__(parent)
        self.builtin = QRadioButton("Built-in: SmolLM2-135M-Instruct")
        self.other = QRadioButton("A GGUF file or a model folder (Llama, Mistral, Qwen2):")
        group = QButtonGroup(self)
        group.addButton(self.builtin)
        group.addButton(self.other)
        self.path = QLineEdit()
        self.path.setPlaceholderText("/path/to/model.gguf or a folder with config.json")
        file_button = QPushButton("File…")
        folder_button = QPushButton("Folder…")
        file_button.clicked.connect(self._pick_file)
        folder_button.clicked.connect(self._pick_folder)
        row = QHBoxLayout()
        row.setContentsMargins(20, 0, 0, 0)
        row.addWidget(self.path, 1)
        row.addWidget(file_button)
        row.addWidget(folder_button)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.builtin)
        box.addWidget(self.other)
        box.addLayout(row)
        if spec == "builtin":
            self.builtin.setChecked(True)
        else:
            self.other.setChecked(True)
            self.path.setText(spec)
        self.path.textEdited.connect(lambda _: self.other.setChecked(True))

    def spec(self) -> str:
        text = self.path.text().strip()
        return text if self.other.isChecked() and text else "builtin"

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model file", self.path.text(), "GGUF models (*.gguf)")
        if path:
            self.path.setText(path)
            self.other.setChecked(True)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model folder", self.path.text())
        if path:
            self.path.setText(path)
            self.other.setChecked(True)


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, in_use: str, gpu: bool, library_dir: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(560)
        self._settings = settings
        self.model = ModelChooser(settings.model)
        self.device = QComboBox()
        for key, name in DEVICE_NAMES.items():
            self.device.addItem(name, key)
        if not gpu:
            self.device.model().item(2).setEnabled(False)
            self.device.setItemText(2, "GPU (CUDA) — none found")
        self.device.setCurrentIndex(list(DEVICE_NAMES).index(settings.device))
        self.in_use = QLabel(f"In use: {in_use}")
        self.in_use.setTextFormat(Qt.PlainText)
        self.in_use.setStyleSheet("color: palette(placeholder-text)")
        self.library = QLineEdit(settings.library_dir)
        self.library.setPlaceholderText(library_dir)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._pick_library)
        lib_row = QHBoxLayout()
        lib_row.addWidget(self.library, 1)
        lib_row.addWidget(browse)
        self.database = QLineEdit(settings.library_url)
        self.database.setPlaceholderText("Optional: postgresql+psycopg://user@host/library")
        self.database.setToolTip("A library shared by several machines: a PostgreSQL database (or an SQLite file) "
                                 "by its URL. Empty: the library in the folder above.")
        self.database_error = QLabel()
        self.database_error.setTextFormat(Qt.PlainText)
        self.database_error.setWordWrap(True)
        self.database_error.setStyleSheet("color: #e74c3c")
        self.database_error.hide()
        self.database.textEdited.connect(lambda _: self.database_error.hide())
        self.theme = QComboBox()
        for key, name in THEME_NAMES.items():
            self.theme.addItem(name, key)
        self.theme.setCurrentIndex(list(THEME_NAMES).index(settings.theme))

        form = QFormLayout()
        form.addRow("Model", self.model)
        form.addRow("Device", self.device)
        form.addRow("", self.in_use)
        form.addRow("Library folder", lib_row)
        form.addRow("Library database", self.database)
        form.addRow("", self.database_error)
        form.addRow("Theme", self.theme)
        self.summarize_after = QCheckBox("Summarise every chapter once a book is read")
        self.summarize_after.setChecked(settings.summarize_after_reading)
        self.summarize_after.setToolTip("The summaries are then ready at once; writing them takes about "
                                        "ten seconds a chapter with the built-in model on a CPU.")
        form.addRow("Summaries", self.summarize_after)
        note = QLabel("A book read by one model is read again to be used with another; the reading by the "
                      "first model is kept.")
        note.setWordWrap(True)
        note.setStyleSheet("color: palette(placeholder-text)")
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addWidget(note)
        box.addWidget(buttons)

    def accept(self) -> None:
        """A database URL that cannot be right is said at once, in one line; the dialog stays open."""
        url = self.database.text().strip()
        if url:
            from infini_reader.app.core.state import check_database_url

            why = check_database_url(url)
            if why is not None:
                self.database_error.setText(why[:1].upper() + why[1:])
                self.database_error.show()
                self.database.setFocus()
                return
        super().accept()

    def _pick_library(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose the library's folder",
                                                self.library.text() or self.library.placeholderText())
        if path:
            self.library.setText(path)

    def result_settings(self) -> Settings:
        lib = self.library.text().strip()
        return replace(self._settings, model=self.model.spec(), device=self.device.currentData(),
                       library_dir=str(Path(lib).expanduser()) if lib else "", theme=self.theme.currentData(),
                       library_url=self.database.text().strip(),
                       summarize_after_reading=self.summarize_after.isChecked())


class ModelDialog(QDialog):
    """Choose the model to read a document with (it becomes the model in use)."""

    def __init__(self, spec: str, titles: list[str], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Read with another model")
        self.setMinimumWidth(520)
        self.model = ModelChooser(spec)
        names = ", ".join(f"“{t}”" for t in titles[:3]) + (f" and {len(titles) - 3} more" if len(titles) > 3 else "")
        text = QLabel(f"Read {names} with:")
        text.setWordWrap(True)
        note = QLabel("The chosen model becomes the model in use. What other models read is kept.")
        note.setWordWrap(True)
        note.setStyleSheet("color: palette(placeholder-text)")
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Read")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        box = QVBoxLayout(self)
        box.addWidget(text)
        box.addWidget(self.model)
        box.addWidget(note)
        box.addWidget(buttons)
