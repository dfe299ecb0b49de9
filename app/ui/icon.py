"""The application's icon, drawn from the same SVG as packaging/infini-reader.svg (kept here so that
an installed wheel has it too)."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

SVG = b"""<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">
  <rect x="16" y="16" width="224" height="224" rx="48" fill="#2f5fb3"/>
  <path d="M48 76 q40 -18 80 4 v116 q-40 -22 -80 -4 z" fill="#f4f1ea"/>
  <path d="M208 76 q-40 -18 -80 4 v116 q40 -22 80 -4 z" fill="#e6e0d2"/>
  <path d="M82 150 c0 -18 26 -18 46 0 c20 18 46 18 46 0 c0 -18 -26 -18 -46 0 c-20 18 -46 18 -46 0 z"
        fill="none" stroke="#2f5fb3" stroke-width="9" stroke-linejoin="round"/>
</svg>"""


def app_icon() -> QIcon:
    renderer = QSvgRenderer(QByteArray(SVG))
    icon = QIcon()
    for size in (16, 24, 32, 48, 64, 128, 256):
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.transparent)
        painter = QPainter(pixmap)
        renderer.render(painter)
        painter.end()
        icon.addPixmap(pixmap)
    return icon
