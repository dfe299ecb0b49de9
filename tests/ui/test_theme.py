"""The dark theme everywhere: every widget of the window dark once the theme is switched, the
information bar (the chat's banner) included, and light again after. Real widgets, offscreen grabs."""

from dataclasses import replace

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QWidget

from infini_reader.app.ui.settings import Settings, apply_theme
from infini_reader.app.ui.settings_dialog import SettingsDialog

from .test_main_window import open_window


def bright_share(widget: QWidget) -> float:
    """The share of a widget's pixels that are near white (lightness above 200 of 255)."""
    img = widget.grab().toImage()
    seen = bright = 0
    for y in range(0, img.height(), 4):
        for x in range(0, img.width(), 4):
            seen += 1
            bright += img.pixelColor(x, y).lightness() > 200
    return bright / max(seen, 1)


def glaring(window: QWidget) -> list[str]:
    """Visible widgets of some size that are mostly near white."""
    out = []
    for w in [window, *window.findChildren(QWidget)]:
        if w.isVisible() and w.width() > 24 and w.height() > 12 and bright_share(w) > 0.3:
            out.append(f"{type(w).__name__} in {type(w.parent()).__name__}")
    return out


def test_switching_to_the_dark_theme_darkens_every_widget(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader, settings=Settings(theme="light"))
    window.chat.banner.say("Read by another model: read it again to ask questions.", "Read again")
    window.library_pane.reading.show_stopped("A book", 0.4, 2)
    window.reading.show()
    window.reading.find.show()
    qtbot.waitUntil(window.chat.banner.isVisible)
    assert bright_share(window.chat.banner) > 0.5  # light theme: a light banner

    window.apply_settings(replace(window.settings, theme="dark"))  # as Settings → Theme → Dark does
    qtbot.wait(50)
    app = QApplication.instance()
    assert app.palette().color(QPalette.Window).lightness() < 60
    assert app.palette().color(QPalette.WindowText).lightness() > 180
    assert glaring(window) == []
    banner = window.chat.banner.grab().toImage()
    assert banner.pixelColor(banner.width() // 2, 3).lightness() < 80  # its background, not only its text
    # the labels' text is light on the dark ground (the empty library's "Drop books here" included)
    for label in (window.chat.title, window.chat.banner.text, window.library_pane.empty):
        assert label.palette().color(label.foregroundRole()).lightness() > 150, label.text()

    window.apply_settings(replace(window.settings, theme="light"))
    qtbot.wait(50)
    assert bright_share(window.chat.banner) > 0.5  # and back


def test_a_window_and_its_dialogs_started_in_the_dark_theme_are_dark(qtbot, tmp_path, tiny_reader):
    window = open_window(qtbot, tmp_path, tiny_reader, settings=Settings(theme="dark"))
    window.chat.banner.say("The model is loading…")
    qtbot.waitUntil(window.chat.banner.isVisible)
    assert glaring(window) == []
    dialog = SettingsDialog(window.settings, "tiny", False, str(tmp_path), window)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(dialog.isVisible)
    assert glaring(dialog) == []
    apply_theme("light")  # leave the application as other tests expect it
