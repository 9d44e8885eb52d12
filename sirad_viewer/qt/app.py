"""The main window: reading layouts, loading, settings, screenshots.

Default layout for sacroiliac reading: the oblique coronal plane along the sacrum (tall, left),
axial, coronal, sagittal and the 3D pelvis. Other layouts: 1x1 (the active view), 1x2 (oblique
and axial), 2x2 (axial, coronal, sagittal, 3D). Loading and mesh building run in workers with
a progress bar and Cancel; the window appears before any heavy module is imported.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer import __version__
from sirad_viewer.errors import SiradError
from sirad_viewer.imaging.display import PRESETS
from sirad_viewer.qt import workers
from sirad_viewer.qt.slice_view import SliceView
from sirad_viewer.state.viewer import LAYOUTS, ViewerState

log = logging.getLogger(__name__)

DARK_QSS = """
QWidget { background: #15171a; color: #d8dadd; }
QMenuBar, QMenu, QStatusBar, QDockWidget::title { background: #1c1f23; }
QMenu::item:selected, QMenuBar::item:selected { background: #2d4a6b; }
QListWidget, QPlainTextEdit { background: #1c1f23; border: 1px solid #2a2e33; }
QPushButton { background: #23272c; border: 1px solid #3a3f45; padding: 3px 10px; }
QPushButton:hover { background: #2d4a6b; }
QProgressBar { border: 1px solid #3a3f45; text-align: center; }
QProgressBar::chunk { background: #2d6a9b; }
"""

DISCLAIMER = ("AI grades shown by this program come from demo weights trained on synthetic phantoms only. "
              "Not for clinical use.")
MAX_RECENT = 10


def show_error(parent: QtWidgets.QWidget | None, exc: BaseException) -> None:
    """The one place where exceptions become a message box (Slicer's tryWithErrorDisplay)."""
    text = exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}"
    log.error(text)
    if parent is not None and parent.isVisible() and QtWidgets.QApplication.platformName() not in ("offscreen", "minimal"):
        QtWidgets.QMessageBox.warning(parent, "SIRAD Viewer", text)


class Settings:
    """QSettings wrapper: layout, window presets, recent files, window/panel geometry.

    ``SIRAD_SETTINGS`` (an .ini path) overrides the per-user location, e.g. for tests.
    """

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get("SIRAD_SETTINGS")
        if path:
            self.q = QtCore.QSettings(path, QtCore.QSettings.Format.IniFormat)
        else:
            self.q = QtCore.QSettings("SIRAD", "SIRAD Viewer")

    def get(self, key: str, default: Any = None) -> Any:
        v = self.q.value(key, default)
        return default if v is None else v

    def set(self, key: str, value: Any) -> None:
        self.q.setValue(key, value)
        self.q.sync()

    @property
    def recent(self) -> list[str]:
        raw = self.get("recent", "[]")
        try:
            return [str(p) for p in json.loads(raw)][:MAX_RECENT]
        except (TypeError, ValueError):
            return []

    def add_recent(self, path: str) -> None:
        items = [path] + [p for p in self.recent if p != path]
        self.set("recent", json.dumps(items[:MAX_RECENT]))

    @property
    def presets(self) -> dict[str, tuple[float, float]]:
        try:
            saved = json.loads(self.get("presets", "{}"))
            return {str(k): (float(v[0]), float(v[1])) for k, v in saved.items()}
        except (TypeError, ValueError, IndexError):
            return {}

    def save_preset(self, name: str, width: float, level: float) -> None:
        p = self.presets
        p[name] = (width, level)
        self.set("presets", json.dumps(p))


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


class MainWindow(QtWidgets.QMainWindow):
    volume_ready = QtCore.pyqtSignal(object)
    mesh_ready = QtCore.pyqtSignal(object)
    load_failed = QtCore.pyqtSignal(object)

    def __init__(self, *, settings: Settings | None = None, state: ViewerState | None = None,
                 interactive: bool = True, with_3d: bool = True) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.state = state or ViewerState()
        self.interactive = interactive
        self.setWindowTitle(f"SIRAD Viewer {__version__}")
        self.resize(1500, 950)
        self.setAcceptDrops(True)
        self.views: dict[str, QtWidgets.QWidget] = {n: SliceView(self.state, n) for n in ("oblique", "axial", "coronal", "sagittal")}
        self.view3d = None
        if with_3d:
            from sirad_viewer.qt.view3d import View3D

            self.view3d = View3D(self.state)
            self.views["3d"] = self.view3d
        self.active_view = "oblique"
        for v in self.views.values():
            v.activated.connect(self._set_active)  # type: ignore[attr-defined]
        self.grid_host = QtWidgets.QWidget()
        self.grid = QtWidgets.QGridLayout(self.grid_host)
        self.grid.setContentsMargins(2, 2, 2, 2)
        self.grid.setSpacing(3)
        self.setCentralWidget(self.grid_host)
        self._build_docks()
        self._build_status()
        self._build_menus()
        self.state.layout_changed.connect(lambda *_: self._apply_layout())
        self.state.volume_changed.connect(lambda *_: self._show_series_info())
        saved_layout = str(self.settings.get("layout", "sij"))
        self.state.set_layout(saved_layout if saved_layout in LAYOUTS else "sij")
        self._apply_layout()
        self._worker: workers.Worker | None = None
        self.volume = None
        self.mesh = None
        self.warnings_text = ""
        geo = self.settings.get("geometry")
        if isinstance(geo, QtCore.QByteArray):
            self.restoreGeometry(geo)
        st = self.settings.get("window_state")
        if isinstance(st, QtCore.QByteArray):
            self.restoreState(st)

    # --- construction ------------------------------------------------------------------------
    def _build_docks(self) -> None:
        self.info = QtWidgets.QPlainTextEdit()
        self.info.setReadOnly(True)
        dock = QtWidgets.QDockWidget("Series", self)
        dock.setObjectName("series-dock")
        dock.setWidget(self.info)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.series_dock = dock

    def _build_status(self) -> None:
        self.progress = QtWidgets.QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setRange(0, 100)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.cancel_button)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        f.addAction("Open file...", QtGui.QKeySequence.StandardKey.Open, self.open_file_dialog)
        f.addAction("Open folder...", QtGui.QKeySequence("Ctrl+Shift+O"), self.open_folder_dialog)
        self.recent_menu = f.addMenu("Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        f.addSeparator()
        f.addAction("Export screenshot of the active view...", self.export_view_dialog)
        f.addAction("Export screenshot of the layout...", QtGui.QKeySequence("Ctrl+Shift+S"), self.export_layout_dialog)
        f.addSeparator()
        f.addAction("Quit", QtGui.QKeySequence.StandardKey.Quit, self.close)
        v = mb.addMenu("&View")
        lay_menu = v.addMenu("Layout")
        for name, label in (("sij", "SIJ reading (oblique, axial, coronal, sagittal, 3D)"), ("1x1", "1x1 (active view)"),
                            ("1x2", "1x2 (oblique and axial)"), ("2x2", "2x2 (axial, coronal, sagittal, 3D)")):
            lay_menu.addAction(label, lambda n=name: self.state.set_layout(n))
        self.preset_menu = v.addMenu("Window preset")
        self.preset_menu.aboutToShow.connect(self._fill_presets)
        v.addAction("Save current window as preset...", self.save_preset_dialog)
        txt = v.addAction("Show patient and series text")
        txt.setCheckable(True)
        txt.setChecked(True)
        txt.setShortcut(QtGui.QKeySequence("Ctrl+T"))
        txt.toggled.connect(self.state.set_show_patient_text)
        v.addAction("Set sacral axis (drag along the sacrum on the sagittal view)", QtGui.QKeySequence("Ctrl+L"),
                    self.start_axis_mode)
        h = mb.addMenu("&Help")
        h.addAction("About SIRAD Viewer", self.about)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.settings.recent:
            self.recent_menu.addAction(p, lambda p=p: self.open_path(p))
        if not self.settings.recent:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _fill_presets(self) -> None:
        self.preset_menu.clear()
        names = {"bone": "Bone W2000/L500", "bone-narrow": "Bone W1500/L300", "soft-tissue": "Soft tissue W400/L40"}
        for key, label in names.items():
            self.preset_menu.addAction(label, lambda k=key: self.state.apply_preset(k))
        for key, (w, lv) in self.settings.presets.items():
            self.preset_menu.addAction(f"{key} W{w:.0f}/L{lv:.0f}", lambda k=key: self.state.apply_preset(k, self.settings.presets))

    # --- layout --------------------------------------------------------------------------------
    def _layout_cells(self, name: str) -> list[tuple[str, int, int, int, int]]:
        has3d = "3d" in self.views
        if name == "sij":
            cells = [("oblique", 0, 0, 2, 1), ("axial", 0, 1, 1, 1), ("coronal", 0, 2, 1, 1), ("sagittal", 1, 1, 1, 1)]
            if has3d:
                cells.append(("3d", 1, 2, 1, 1))
            return cells
        if name == "1x1":
            return [(self.active_view if self.active_view in self.views else "oblique", 0, 0, 1, 1)]
        if name == "1x2":
            return [("oblique", 0, 0, 1, 1), ("axial", 0, 1, 1, 1)]
        return [("axial", 0, 0, 1, 1), ("coronal", 0, 1, 1, 1), ("sagittal", 1, 0, 1, 1),
                ("3d" if has3d else "oblique", 1, 1, 1, 1)]

    def _apply_layout(self) -> None:
        for v in self.views.values():
            self.grid.removeWidget(v)
            v.hide()
        for i in range(4):
            self.grid.setColumnStretch(i, 0)
            self.grid.setRowStretch(i, 0)
        cells = self._layout_cells(self.state.layout)
        for name, r, c, rs_, cs in cells:
            w = self.views[name]
            self.grid.addWidget(w, r, c, rs_, cs)
            w.show()
        cols = max(c + cs for _, _, c, _, cs in cells)
        rows = max(r + rs_ for _, r, _, rs_, _ in cells)
        for i in range(cols):
            self.grid.setColumnStretch(i, 1)
        for i in range(rows):
            self.grid.setRowStretch(i, 1)
        self.settings.set("layout", self.state.layout)

    def _set_active(self, name: str) -> None:
        self.active_view = name

    # --- loading -------------------------------------------------------------------------------
    def open_file_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Open CT", "", "CT (*.dcm *.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.zip);;All files (*)")
        if path:
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path:
            self.open_path(path)

    def dragEnterEvent(self, e: QtGui.QDragEnterEvent) -> None:  # noqa: N802
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e: QtGui.QDropEvent) -> None:  # noqa: N802
        urls = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_path(urls[0])

    def _busy(self, busy: bool) -> None:
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress.setValue(100)

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(100 * fraction))
        self.statusBar().showMessage(message)

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self.statusBar().showMessage("cancelling ...")

    def open_path(self, path: str, series: int | None = None) -> None:
        """Scan, pick a series (when several), load, then build the 3D surface; all off the GUI thread."""
        from sirad_viewer.io import scan

        self.statusBar().showMessage(f"reading {path} ...")
        self._busy(True)
        self._path = str(path)
        self._worker = workers.start(lambda progress, cancel: scan(path, progress=progress, cancel=cancel),
                                     on_done=lambda result: self._on_scanned(result, series),
                                     on_error=self._on_failed, on_progress=self._on_progress)

    def _on_scanned(self, result: Any, series: int | None) -> None:
        from sirad_viewer.io import load_series

        idx = result.chosen if series is None else series
        if series is None and len(result.series) > 1 and self.interactive:
            dlg = SeriesPicker(result, self)
            if dlg.exec() != QtWidgets.QDialog.DialogCode.Accepted:
                self._busy(False)
                self.statusBar().showMessage("cancelled")
                return
            idx = dlg.chosen()
        if not 0 <= idx < len(result.series):
            self._on_failed(SiradError(f"series {idx + 1} does not exist ({len(result.series)} found)", path=result.path))
            return
        info = result.series[idx]
        self._scan_text = f"{len(result.series)} series found; {result.reason}" if len(result.series) > 1 else ""
        self._worker = workers.start(lambda progress, cancel: load_series(info, progress=progress, cancel=cancel),
                                     on_done=self._on_loaded, on_error=self._on_failed, on_progress=self._on_progress)

    def _on_loaded(self, volume: Any) -> None:
        self.state.set_volume(volume)
        self.volume = self.state.volume
        self.settings.add_recent(self._path)
        self.statusBar().showMessage("loaded")
        self.volume_ready.emit(self.state.volume)
        if self.view3d is not None:
            from sirad_viewer.viz.bone_mesh import bone_mesh

            vol = self.state.volume
            self._worker = workers.start(lambda progress, cancel: bone_mesh(vol, progress=progress, cancel=cancel),
                                         on_done=self._on_mesh, on_error=self._on_failed, on_progress=self._on_progress)
        else:
            self._busy(False)

    def _on_mesh(self, mesh: Any) -> None:
        self.mesh = mesh
        if self.view3d is not None:
            self.view3d.set_mesh(mesh)
        self._busy(False)
        self.statusBar().showMessage(f"ready: bone surface {mesh.n_cells} triangles")
        self.mesh_ready.emit(mesh)

    def _on_failed(self, exc: BaseException) -> None:
        self._busy(False)
        msg = exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}"
        self.statusBar().showMessage("could not load" if not (isinstance(exc, SiradError) and exc.code == "cancelled") else "cancelled")
        self.info.setPlainText(msg)
        self.load_failed.emit(exc)
        if not (isinstance(exc, SiradError) and exc.code == "cancelled"):
            show_error(self, exc)

    def _show_series_info(self) -> None:
        vol = self.state.volume
        if vol is None:
            return
        md = vol.metadata
        sp = vol.spacing
        lines = [md.series_description or (Path(vol.sources[0]).name if vol.sources else ""),
                 f"{md.modality or 'modality not stated'}  {vol.shape[0]} x {vol.shape[1]} x {vol.shape[2]}",
                 f"voxel {sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm"]
        if getattr(self, "_scan_text", ""):
            lines.append(self._scan_text)
        if vol.warnings:
            lines.append("")
            lines += [f"⚠ [{w.code}] {w.message}" for w in vol.warnings]
        self.warnings_text = "\n".join(lines)
        self.info.setPlainText(self.warnings_text)

    def wait_until_ready(self, timeout_ms: int = 120_000, *, mesh: bool = True) -> bool:
        """Block (running the event loop) until the volume (and mesh) are shown, or an error."""
        loop = QtCore.QEventLoop()
        done = {"ok": False}

        def finish(ok: bool) -> None:
            done["ok"] = ok
            loop.quit()

        sig = self.mesh_ready if (mesh and self.view3d is not None) else self.volume_ready
        sig.connect(lambda *_: finish(True))
        self.load_failed.connect(lambda *_: finish(False))
        QtCore.QTimer.singleShot(timeout_ms, lambda: finish(False))
        loop.exec()
        return done["ok"]

    # --- presets, axis, screenshots -------------------------------------------------------------
    def save_preset_dialog(self) -> None:
        name, ok = QtWidgets.QInputDialog.getText(self, "Save window preset", "Name:")
        if ok and name.strip():
            w = self.state.window
            self.settings.save_preset(name.strip(), w.width, w.level)

    def start_axis_mode(self) -> None:
        sag = self.views["sagittal"]
        sag.axis_mode = True  # type: ignore[attr-defined]
        self.statusBar().showMessage("drag along the long axis of the sacrum on the sagittal view")

    def export_view(self, path: str, name: str | None = None) -> bool:
        w = self.views.get(name or self.active_view, self.views["oblique"])
        return self._grab(w).save(path)

    def export_layout(self, path: str) -> bool:
        return self._grab(self.grid_host).save(path)

    def _grab(self, widget: QtWidgets.QWidget) -> QtGui.QPixmap:
        QtWidgets.QApplication.processEvents()
        pix = widget.grab()
        if self.view3d is not None and self.view3d.isVisible() and (widget is self.grid_host or widget is self.view3d):
            # GL content does not always come through grab(): paint the rendered frame over it.
            import numpy as np

            img = np.ascontiguousarray(self.view3d.render_image()[..., :3])
            h, w = img.shape[:2]
            qimg = QtGui.QImage(img.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
            p = QtGui.QPainter(pix)
            top_left = self.view3d.mapTo(widget, QtCore.QPoint(0, 0)) if widget is not self.view3d else QtCore.QPoint(0, 0)
            p.drawImage(QtCore.QRect(top_left, self.view3d.size()), qimg)
            p.end()
        return pix

    def export_view_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export view", "view.png", "PNG (*.png)")
        if path:
            self.export_view(path)

    def export_layout_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export layout", "layout.png", "PNG (*.png)")
        if path:
            self.export_layout(path)

    def about(self) -> None:
        QtWidgets.QMessageBox.about(self, "About SIRAD Viewer", f"SIRAD Viewer {__version__}\n\n{DISCLAIMER}")

    def closeEvent(self, e: QtGui.QCloseEvent) -> None:  # noqa: N802
        self.settings.set("geometry", self.saveGeometry())
        self.settings.set("window_state", self.saveState())
        if self._worker is not None:
            self._worker.cancel()
        if self.view3d is not None:
            self.view3d.plotter.close()
        super().closeEvent(e)


def run(path: str | None = None, *, series: int | None = None, screenshot: str | None = None,
        layout: str | None = None, sacral_axis: tuple[Any, Any] | None = None) -> int:
    if screenshot and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("SIRAD Viewer")
    app.setStyleSheet(DARK_QSS)
    with_3d = QtWidgets.QApplication.platformName() != "offscreen"  # QtInteractor needs a real (X) display
    win = MainWindow(interactive=screenshot is None, with_3d=with_3d)
    if layout:
        win.state.set_layout(layout)
    win.show()
    if path:
        if sacral_axis is not None:
            win.volume_ready.connect(lambda *_: win.state.set_sacral_axis_from_line(*sacral_axis))
        win.open_path(path, series)
    if screenshot:
        if not path:
            print("--screenshot needs a PATH to open", file=sys.stderr)
            return 2
        ok = win.wait_until_ready()
        if not ok:
            print(f"could not load {path}: {win.info.toPlainText()}", file=sys.stderr)
            return 2
        for _ in range(3):
            app.processEvents()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        ok = win.export_layout(screenshot)
        print(f"screenshot written to {screenshot}" if ok else f"could not write {screenshot}")
        win.close()
        return 0 if ok else 1
    return app.exec()
