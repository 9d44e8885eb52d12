"""Main window (first cut): open a CT, pick a series, scroll axial slices in a bone window.

The full reading layout (MPR, oblique plane, 3D) comes with the viewer issue; this window
already loads in a background thread, shows the loader's warnings and writes screenshots.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer import __version__
from sirad_viewer.errors import SiradError
from sirad_viewer.imaging.display import PRESETS, apply_window
from sirad_viewer.imaging.volume import Volume

log = logging.getLogger(__name__)

DARK_QSS = """
QWidget { background: #15171a; color: #d8dadd; }
QMenuBar, QMenu, QStatusBar { background: #1c1f23; }
QMenu::item:selected, QMenuBar::item:selected { background: #2d4a6b; }
QListWidget, QPlainTextEdit { background: #1c1f23; border: 1px solid #2a2e33; }
QLabel#warning { color: #e8b04a; }
"""


def show_error(parent: QtWidgets.QWidget | None, exc: BaseException) -> None:
    """The one place where exceptions become a message box (Slicer's tryWithErrorDisplay)."""
    text = exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}"
    box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, "SIRAD Viewer", text, parent=parent)
    box.exec() if parent is not None and parent.isVisible() else log.error(text)


class LoadWorker(QtCore.QObject):
    """Loads a path off the GUI thread; emits the volume or the error."""

    finished = QtCore.pyqtSignal(object)
    failed = QtCore.pyqtSignal(object)
    progress = QtCore.pyqtSignal(float, str)

    def __init__(self, path: str, series: int | None) -> None:
        super().__init__()
        self.path, self.series = path, series
        self._cancel = False

    def cancel(self) -> None:
        self._cancel = True

    @QtCore.pyqtSlot()
    def run(self) -> None:
        from sirad_viewer.io import open_volume

        try:
            vol = open_volume(self.path, series=self.series, progress=lambda f, m: self.progress.emit(f, m),
                              cancel=lambda: self._cancel)
        except Exception as exc:  # noqa: BLE001 - relayed to the GUI thread
            self.failed.emit(exc)
            return
        self.finished.emit(vol)


class SliceView(QtWidgets.QLabel):
    """Axial slice in a window/level; the wheel scrolls."""

    def __init__(self) -> None:
        super().__init__()
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(400, 400)
        self.volume: Volume | None = None
        self.index = 0
        self.width_hu, self.level_hu = PRESETS["bone"]

    def set_volume(self, volume: Volume) -> None:
        self.volume = volume.reoriented()
        self.index = self.volume.shape[0] // 2
        self.render()

    def wheelEvent(self, event: QtGui.QWheelEvent) -> None:  # noqa: N802 - Qt API
        if self.volume is None:
            return
        step = 1 if event.angleDelta().y() > 0 else -1
        self.index = int(np.clip(self.index + step, 0, self.volume.shape[0] - 1))
        self.render()

    def render(self) -> None:
        if self.volume is None:
            return
        grey = np.ascontiguousarray(apply_window(self.volume.array[self.index], self.width_hu, self.level_hu))
        h, w = grey.shape
        img = QtGui.QImage(grey.data, w, h, w, QtGui.QImage.Format.Format_Grayscale8).copy()
        sp = self.volume.spacing
        pix = QtGui.QPixmap.fromImage(img).scaled(int(w * sp[2] / sp[1] * 2) if sp[1] else w * 2, h * 2,
                                                  QtCore.Qt.AspectRatioMode.IgnoreAspectRatio,
                                                  QtCore.Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(pix.scaled(self.size(), QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                                  QtCore.Qt.TransformationMode.SmoothTransformation))


class MainWindow(QtWidgets.QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(f"SIRAD Viewer {__version__}")
        self.resize(1200, 800)
        self.view = SliceView()
        self.info = QtWidgets.QPlainTextEdit()
        self.info.setReadOnly(True)
        self.info.setMaximumWidth(380)
        central = QtWidgets.QWidget()
        lay = QtWidgets.QHBoxLayout(central)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.info)
        self.setCentralWidget(central)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setMaximumWidth(240)
        self.statusBar().addPermanentWidget(self.progress)
        m = self.menuBar().addMenu("&File")
        m.addAction("Open file...", QtGui.QKeySequence.StandardKey.Open, self.open_file_dialog)
        m.addAction("Open folder...", self.open_folder_dialog)
        m.addSeparator()
        m.addAction("Quit", QtGui.QKeySequence.StandardKey.Quit, self.close)
        h = self.menuBar().addMenu("&Help")
        h.addAction("About", self.about)
        self._thread: QtCore.QThread | None = None
        self._worker: LoadWorker | None = None
        self.loaded = QtCore.QEventLoop()

    def about(self) -> None:
        QtWidgets.QMessageBox.about(
            self, "About SIRAD Viewer",
            f"SIRAD Viewer {__version__}\n\nAI grades shown by this program come from demo weights trained on "
            "synthetic phantoms only. Not for clinical use.")

    def open_file_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open CT", "", "CT (*.dcm *.nii *.nii.gz *.nrrd *.mha *.mhd *.zip);;All files (*)")
        if path:
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path:
            self.open_path(path)

    def open_path(self, path: str, series: int | None = None) -> None:
        self.statusBar().showMessage(f"loading {path} ...")
        self._thread = QtCore.QThread(self)
        self._worker = LoadWorker(path, series)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(lambda f, m: (self.progress.setValue(int(100 * f)), self.statusBar().showMessage(m)))
        self._worker.finished.connect(self._on_loaded)
        self._worker.failed.connect(self._on_failed)
        self._thread.start()

    def _finish_thread(self) -> None:
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait()
        self.loaded.quit()

    def _on_loaded(self, volume: Volume) -> None:
        self._finish_thread()
        self.view.set_volume(volume)
        md = volume.metadata
        lines = [f"{md.series_description or Path(volume.sources[0]).name if volume.sources else ''}",
                 f"shape {volume.shape}", "spacing " + " x ".join(f"{v:.2f}" for v in volume.spacing) + " mm"]
        lines += [f"[{w.code}] {w.message}" for w in volume.warnings]
        self.info.setPlainText("\n".join(lines))
        self.statusBar().showMessage("loaded")

    def _on_failed(self, exc: BaseException) -> None:
        self._finish_thread()
        self.statusBar().showMessage("could not load")
        self.info.setPlainText(exc.user_message() if isinstance(exc, SiradError) else str(exc))
        show_error(self, exc)


def run(path: str | None = None, *, series: int | None = None, screenshot: str | None = None) -> int:
    if screenshot and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setStyleSheet(DARK_QSS)
    win = MainWindow()
    win.show()
    if path:
        win.open_path(path, series)
        if screenshot:
            win.loaded.exec()
    if screenshot:
        app.processEvents()
        win.view.render()
        app.processEvents()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        ok = win.grab().save(screenshot)
        print(f"screenshot written to {screenshot}" if ok else f"could not write {screenshot}")
        return 0 if ok else 1
    return app.exec()
