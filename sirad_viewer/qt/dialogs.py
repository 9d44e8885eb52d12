"""Small dialogs and the look of the main window: the error box, the series picker, the dark style."""
from __future__ import annotations

import logging
from typing import Any

from PyQt6 import QtWidgets

from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)

DARK_QSS = """
QWidget { background: #15171a; color: #d8dadd; }
QMenuBar, QMenu, QStatusBar, QDockWidget::title { background: #1c1f23; }
QMenu::item:selected, QMenuBar::item:selected { background: #2d4a6b; }
QListWidget, QPlainTextEdit { background: #1c1f23; border: 1px solid #2a2e33; }
QPushButton { background: #23272c; border: 1px solid #3a3f45; padding: 3px 10px; }
QPushButton:hover { background: #2d4a6b; }
QPushButton:checked { background: #2d6a9b; border: 1px solid #8fc1ea; color: #ffffff; }
QProgressBar { border: 1px solid #3a3f45; text-align: center; }
QProgressBar::chunk { background: #2d6a9b; }
"""

DISCLAIMER = ("AI grades shown by this program come from demo weights trained on synthetic phantoms only "
              "(models/sij-densenet-demo, see its MODEL_CARD.md). They are not validated on patients and are "
              "meaningless on real CTs. Not for clinical use.")


def show_error(parent: QtWidgets.QWidget | None, exc: BaseException) -> None:
    """The one place where exceptions become a message box (Slicer's tryWithErrorDisplay)."""
    text = exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}"
    if parent is not None and getattr(parent.window(), "interactive", True) is False:
        return  # a scripted run (--screenshot, make run) prints the message itself; a modal box would wait forever
    log.error(text)
    if parent is not None and parent.isVisible() and QtWidgets.QApplication.platformName() not in ("offscreen", "minimal"):
        QtWidgets.QMessageBox.warning(parent, "SIRAD Viewer", text)


class SeriesPicker(QtWidgets.QDialog):
    """Lists the series of a folder with the loader's warnings beside each."""

    def __init__(self, result: Any, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose a series")
        self.resize(760, 420)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(QtWidgets.QLabel(f"{len(result.series)} series in {result.path}"))
        self.list = QtWidgets.QListWidget()
        for s in result.series:
            sp = s.spacing_mm
            text = (f"{s.description or '(no description)'} — {s.modality or '?'}, {s.n_images} images, "
                    f"{sp[0]:.2f} mm slices, {sp[1]:.2f} x {sp[2]:.2f} mm pixels")
            for w in s.warnings:
                text += f"\n    ⚠ [{w.code}] {w.message}"
            self.list.addItem(text)
        self.list.setCurrentRow(result.chosen)
        lay.addWidget(self.list)
        why = QtWidgets.QLabel(f"Default: {result.reason}")
        why.setWordWrap(True)
        lay.addWidget(why)
        bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Open
                                        | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        self.list.itemDoubleClicked.connect(lambda *_: self.accept())
        lay.addWidget(bb)

    def chosen(self) -> int:
        return self.list.currentRow()
