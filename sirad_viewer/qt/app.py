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
from sirad_viewer.qt.ai_panel import AIPanel
from sirad_viewer.qt.pacs_dialog import open_from_pacs, use_stored_result
from sirad_viewer.state.reading import Reading
from sirad_viewer.qt.slice_view import SliceView
from sirad_viewer.qt.worklist import open_worklist
from sirad_viewer.state.viewer import LAYOUTS, ViewerState

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
    ai_finished = QtCore.pyqtSignal(object)

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
        # side-by-side joints: two oblique coronal views, each centred on one joint; they share the
        # crosshair, so scrolling one scrolls both
        self.views["joint-right"] = SliceView(self.state, "oblique")
        self.views["joint-left"] = SliceView(self.state, "oblique")
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
        self.state.text_changed.connect(lambda *_: self._show_series_info())  # Ctrl+T blanks the Series dock too
        saved_layout = str(self.settings.get("layout", "sij"))
        self.state.set_layout(saved_layout if saved_layout in LAYOUTS and saved_layout not in ("joints", "prior") else "sij")
        self._apply_layout()
        self._worker: workers.Worker | None = None
        self._ai_worker: workers.Worker | None = None
        self._grader = None
        self._grader_lock = __import__("threading").Lock()
        self.reading: Reading | None = None
        self.study = None  # a StudyController in reader-study mode
        self.ai_volume = None  # the CT exactly as the AI read it (heatmaps live on its grid)
        self._layout_before_joints = "sij"
        self.volume = None
        self.mesh = None
        self.warnings_text = ""
        geo = self.settings.get("geometry")
        if isinstance(geo, QtCore.QByteArray):
            self.restoreGeometry(geo)
        st = self.settings.get("window_state")
        if isinstance(st, QtCore.QByteArray):
            self.restoreState(st)
        from sirad_viewer.qt import reading_tools  # tools, findings, hanging protocol, F1 (#13)

        self.reading_tools = reading_tools.install(self)

    # --- construction ------------------------------------------------------------------------
    def _build_docks(self) -> None:
        self.info = QtWidgets.QPlainTextEdit()
        self.info.setReadOnly(True)
        dock = QtWidgets.QDockWidget("Series", self)
        dock.setObjectName("series-dock")
        dock.setWidget(self.info)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.series_dock = dock
        self.ai_panel = AIPanel()  # scrolls its results itself, under a pinned disclaimer
        ai_dock = QtWidgets.QDockWidget("Reading and AI", self)
        ai_dock.setObjectName("ai-dock")
        ai_dock.setWidget(self.ai_panel)
        ai_dock.setMinimumWidth(400)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, ai_dock)
        self.splitDockWidget(ai_dock, dock, QtCore.Qt.Orientation.Vertical)
        self.ai_dock = ai_dock
        p = self.ai_panel
        p.grading.lock_requested.connect(self.lock_and_reveal)
        p.run_requested.connect(self.start_ai)
        p.cancel_requested.connect(self.cancel_ai)
        p.jump_requested.connect(self.jump_to_joint)
        p.side_by_side_requested.connect(self.set_side_by_side)
        p.report_requested.connect(self.report_dialog)
        p.overlay_changed.connect(self._on_overlay_control)
        p.segmenter_choice.select(self.settings.get("ai_segmenter", "unet"))
        self._segmenter_key = p.segmenter_choice.current_key()
        p.segmenter_choice.changed.connect(self._on_segmenter_changed)
        for key, fn in ([(str(g), lambda g=g: p.grading.grade_key(g)) for g in range(5)]
                        + [("S", p.grading.switch_side), ("Ctrl+Return", self.lock_and_reveal),
                           ("H", self.toggle_heatmap), ("J", lambda: self.jump_to_joint("right")),
                           ("K", lambda: self.jump_to_joint("left"))]):
            sc = QtGui.QShortcut(QtGui.QKeySequence(key), self)
            sc.activated.connect(fn)

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
        f.addAction("Open from PACS...", lambda: open_from_pacs(self))
        f.addAction("Open worklist...", lambda: open_worklist(self))  # batch results in reading order
        self.recent_menu = f.addMenu("Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        f.addSeparator()
        self.export_actions = [
            f.addAction("Export screenshot of the active view...", self.export_view_dialog),
            f.addAction("Export screenshot of the layout...", QtGui.QKeySequence("Ctrl+Shift+S"), self.export_layout_dialog)]
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
        self.patient_text_action = txt
        v.addAction("Set sacral axis (drag along the sacrum on the sagittal view)", QtGui.QKeySequence("Ctrl+L"),
                    self.start_axis_mode)
        a = mb.addMenu("&AI")
        vis = a.addAction("AI visible at once (clinical reading, not for studies)")
        vis.setCheckable(True)
        vis.setChecked(self._ai_visible_at_once())
        vis.toggled.connect(self._set_ai_visible_at_once)
        self.ai_visible_action = vis
        a.addAction("Run AI on this case", self.start_ai)
        a.addAction("Cancel AI", self.cancel_ai)
        self.export_actions.append(a.addAction("Case report...", self.report_dialog))
        st = mb.addMenu("&Study")
        self.study_action = st.addAction("Read a study (sign in)...", self.open_study_dialog)
        self.coordinator_action = st.addAction("Coordinator view...", self.coordinator_dialog)
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
        if name == "sij":  # a wide main oblique panel over a row of small views (#13)
            cells = [("oblique", 0, 0, 1, 4 if has3d else 3), ("axial", 1, 0, 1, 1), ("coronal", 1, 1, 1, 1),
                     ("sagittal", 1, 2, 1, 1)]
            if has3d:
                cells.append(("3d", 1, 3, 1, 1))
            return cells
        if name == "1x1":
            return [(self.active_view if self.active_view in self.views else "oblique", 0, 0, 1, 1)]
        if name == "1x2":
            return [("oblique", 0, 0, 1, 1), ("axial", 0, 1, 1, 1)]
        if name == "joints":
            return [("joint-right", 0, 0, 1, 1), ("joint-left", 0, 1, 1, 1)]
        if name == "prior" and "prior" in self.views:  # current and prior side by side (qt/prior.py)
            return [("oblique", 0, 0, 1, 1), ("prior", 0, 1, 1, 1)]
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
        if self.state.layout == "sij":
            self.grid.setRowStretch(0, 2)
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

        self.statusBar().showMessage(f"reading case {self.study.case_id} ..." if self.study is not None
                                     else f"reading {path} ...")
        self._busy(True)
        self._path = str(path)
        self._worker = workers.start(lambda progress, cancel: scan(path, progress=progress, cancel=cancel),
                                     on_done=lambda result: self._on_scanned(result, series),
                                     on_error=self._on_failed, on_progress=self._on_progress)

    def _on_scanned(self, result: Any, series: int | None) -> None:
        from sirad_viewer.io import load_series

        idx = result.chosen if series is None else series
        if series is None and len(result.series) > 1 and self.interactive and self.study is None:
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
        self.ai_volume = volume
        self._new_reading(self._path)
        self.state.set_volume(volume)
        self.volume = self.state.volume
        if self.study is None:  # a study case's path never goes into the recent list
            self.settings.add_recent(self._path)
        self.statusBar().showMessage("loaded")
        self.volume_ready.emit(self.state.volume)
        # a stored AI report of this series (e.g. retrieved from the PACS) is used instead of running the model
        if not use_stored_result(self, volume) and self.settings.get("ai_autorun", True) not in (False, "false"):
            self.start_ai()
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
            self._update_3d_heatmap()
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
        if self.study is not None:  # blinded: the case id only, no description, file name, patient or study
            title = f"case {self.study.case_id}"
        elif not self.state.show_patient_text:
            title = "(series text hidden: Ctrl+T)"
        else:
            title = md.series_description or (Path(vol.sources[0]).name if vol.sources else "")
        lines = [title,
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

    # --- reading and AI ----------------------------------------------------------------------------
    def _ai_visible_at_once(self) -> bool:
        return self.settings.get("ai_visible_at_once", False) in (True, "true")

    def _set_ai_visible_at_once(self, on: bool) -> None:
        if self.study is not None:  # a study's arm decides; nothing set here may outlive the study
            self.statusBar().showMessage("the study's arm decides when the AI is shown")
            return
        self.settings.set("ai_visible_at_once", bool(on))
        self.statusBar().showMessage("applies from the next case opened")

    def _new_reading(self, path: str) -> None:
        from sirad_viewer.state.reading import default_log_path

        if self.study is not None:
            self.reading = self.study.new_reading()  # the core makes it: arm policy, resumed state, study log
        else:
            from sirad_viewer.io.deid import source_reference  # the reads log names no path (#12)

            self.reading = Reading(case=source_reference(Path(path).resolve()), reader=str(self.settings.get("reader", "reader")),
                                   ai_visible_at_once=self._ai_visible_at_once(),
                                   log_path=Path(self.settings.get("reads_log") or default_log_path()))
        self._shown_result = None
        if self.reading is None:
            self.ai_panel.bind(None)
            return
        self.reading.changed.connect(self._on_reading_changed)
        self.ai_panel.bind(self.reading)
        if self.state.layout == "joints":
            self.set_side_by_side(False)

    def open_study_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open study", "", "Study (*.sqlite *.db);;All files (*)")
        if path:
            self.start_study(path)

    def start_study(self, path: str, reader: str | None = None, *, key: str | None = None,
                    clock: Any = None, takeover: bool | None = None) -> bool:
        """Sign in (unless ``reader`` is given) and start at the reader's first unfinished case.

        An unknown reader id opens the sign-in dialog (it never quits the program); a reader signed
        in elsewhere is refused unless the reader takes the session over. ``key`` (or
        ``$SIRAD_STUDY_KEY``): the coordinator key, so that this workstation's events are signed.
        """
        from sirad_viewer.qt.study import SignInDialog, StudyController
        from sirad_viewer.study.integrity import CoordinatorKey
        from sirad_viewer.study.store import StudyStore

        try:
            key_path = key or os.environ.get("SIRAD_STUDY_KEY")
            store = StudyStore(path, key=CoordinatorKey.load(key_path) if key_path else None)
            message = ""
            if reader is not None and reader not in [r.id for r in store.protocol.readers]:
                message = f"There is no reader {reader!r} in this study; choose your reader id."
                reader = None
                if not self.interactive:
                    self.statusBar().showMessage(message)
                    return False
            if reader is None:
                dlg = SignInDialog(store, self, message=message)
                if dlg.exec() != QtWidgets.QDialog.DialogCode.Accepted:
                    return False
                reader = dlg.reader()
            if self.study is not None:
                self.end_study()
            kwargs = {"idle_s": float(self.settings.get("idle_s", 60))}
            if clock is not None:
                kwargs["clock"] = clock
            try:
                ctl = StudyController(self, store, reader, takeover=bool(takeover), **kwargs)
            except SiradError as exc:
                if exc.code != "reader_busy" or takeover is not None or not self.interactive:
                    raise
                answer = QtWidgets.QMessageBox.question(self, "Reader signed in elsewhere",
                                                        exc.message + "\n\nTake over that session? It will stop "
                                                        "recording.")
                if answer != QtWidgets.QMessageBox.StandardButton.Yes:
                    return False
                ctl = StudyController(self, store, reader, takeover=True, **kwargs)
        except SiradError as exc:
            self.statusBar().showMessage(exc.user_message())
            show_error(self, exc)
            return False
        self._enter_study_mode(ctl)
        ctl.start()
        return True

    # --- study mode: blinding by role (reader sessions offer no coordinator view, no export) --------
    def _enter_study_mode(self, ctl: Any) -> None:
        self._text_before_study = self.state.show_patient_text
        self.state.set_show_patient_text(False)
        self.patient_text_action.setChecked(False)
        for a in [self.patient_text_action, self.ai_visible_action, self.coordinator_action, *self.export_actions]:
            a.setEnabled(False)
        self.series_dock.hide()
        self.info.clear()
        ctl.finished.connect(self.end_study)

    def end_study(self) -> None:
        """Leave study mode: the clinical settings come back untouched by anything done in the study."""
        if self.study is None:
            return
        self.study.close()
        self.removeToolBar(self.study.bar)
        self.study = None
        for a in [self.patient_text_action, self.ai_visible_action, self.coordinator_action, *self.export_actions]:
            a.setEnabled(True)
        self.ai_visible_action.setChecked(self._ai_visible_at_once())
        self.patient_text_action.setChecked(getattr(self, "_text_before_study", True))
        self.series_dock.show()

    def coordinator_dialog(self, path: str | None = None, key: str | None = None) -> None:
        """The coordinator view: never from a reader's session, and only with the study's key."""
        from sirad_viewer.qt.study import CoordinatorDialog
        from sirad_viewer.study.integrity import CoordinatorKey
        from sirad_viewer.study.store import StudyStore

        if self.study is not None:
            self.statusBar().showMessage("the coordinator view is not available in a reader's session")
            return
        if path is None:
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open study", "", "Study (*.sqlite *.db);;All files (*)")
        if path and key is None:
            key, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Coordinator key", "", "Key (*.key);;All files (*)")
        if path and key:
            try:
                CoordinatorDialog(StudyStore(path), CoordinatorKey.load(key), self).exec()
            except SiradError as exc:
                show_error(self, exc)

    def _get_grader(self):
        with self._grader_lock:
            if self._grader is None:
                from sirad_viewer.ai.pipeline import Grader
                from sirad_viewer.ai.totalseg import resolve_segmenter

                key = self._segmenter_key  # set on the GUI thread; this runs in the AI worker
                self._grader = Grader(segmenter=None if key == "unet" else resolve_segmenter(key),
                                      device=str(self.settings.get("ai_device", "auto")))
            return self._grader

    def _on_segmenter_changed(self, key: str) -> None:
        self.settings.set("ai_segmenter", key)
        with self._grader_lock:
            self._segmenter_key = key
            self._grader = None  # the next run builds a grader with the new segmenter

    def start_ai(self) -> None:
        """Run the AI in the background; its result goes into the reading, hidden until the lock."""
        if self.ai_volume is None or self.reading is None or not self.reading.ai_allowed:
            return  # an unaided study arm never runs the AI
        if self._ai_worker is not None and not self._ai_worker.finished.is_set():
            return
        vol, reading = self.ai_volume, self.reading

        def job(progress, cancel):
            progress(0.0, "loading the model")
            grader = self._get_grader()
            return grader, grader(vol, progress=lambda stage, f: progress(f, stage), cancel=cancel)

        self.ai_panel.set_running(True)
        self._ai_worker = workers.start(job, on_done=lambda r: self._on_ai_done(reading, r),
                                        on_error=lambda e: self._on_ai_failed(reading, e),
                                        on_progress=lambda f, m: self.ai_panel.set_progress(f, m))

    def cancel_ai(self) -> None:
        if self._ai_worker is not None:
            self._ai_worker.cancel()

    def _on_ai_done(self, reading: Reading, out: Any) -> None:
        grader, result = out
        self.ai_panel.set_running(False)
        self.ai_panel.set_model(grader.bundle.name, grader.bundle.version, grader.device)
        if reading is self.reading:
            reading.receive_ai(result)
        self.ai_finished.emit(result)

    def _on_ai_failed(self, reading: Reading, exc: BaseException) -> None:
        self.ai_panel.set_running(False)
        cancelled = isinstance(exc, SiradError) and exc.code == "cancelled"
        if reading is self.reading and not cancelled:
            reading.receive_ai(None, error=exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}")
        self.ai_panel.set_progress(0.0, "cancelled" if cancelled else "failed")
        self.ai_panel.refresh()
        self.ai_finished.emit(None)

    def lock_and_reveal(self) -> None:
        if self.reading is None:
            return
        from sirad_viewer.state.reading import ReadingError

        try:
            if not self.reading.locked:
                self.ai_panel.grading.request_lock()  # commits the comment field into the lock record
        except ReadingError as exc:
            self.statusBar().showMessage(exc.message)
            return

    def _on_reading_changed(self) -> None:
        r = self.reading
        if r is None:
            return
        res = r.ai
        if res is not None and getattr(self, "_shown_result", None) is not res:
            self._shown_result = res
            self._show_ai(res)

    def _show_ai(self, result: Any) -> None:
        """Put the (revealed) AI result on the views: heatmap, bone labels, joint boxes, sacral axis."""
        import numpy as np

        vol = self.ai_volume
        heat = np.zeros(vol.shape, np.float32)
        for jr in result.joints.values():
            hm = jr.heatmap
            if hm is not None:
                o, b = hm.offset, hm.block
                sl = tuple(slice(o[i], o[i] + b.shape[i]) for i in range(3))
                np.maximum(heat[sl], b, out=heat[sl])
        labels = vol.with_array(result.segmentation.labels) if result.segmentation is not None else None
        self.state.set_overlays(heatmap=vol.with_array(heat), labels=labels,
                                boxes=[jr.box for jr in result.joints.values()])
        if self.state.sacral_axis_source != "reader":
            ax = result.localisation.sacral_axis
            mid = (result.joints["left"].box.center_lps_mm + result.joints["right"].box.center_lps_mm) / 2.0
            self.state.set_sacral_axis(ax[0] - ax[1], mid, source="segmentation")
        for side in ("right", "left"):
            self.views[f"joint-{side}"].set_focus(result.joints[side].box.center_lps_mm, 2.2,  # type: ignore[attr-defined]
                                                   f"{side} SIJ")
        self._update_3d_heatmap()

    def _update_3d_heatmap(self) -> None:
        if self.view3d is None or self.view3d.mesh is None:
            return
        ov = self.state.overlays
        if self.reading is None or self.reading.ai is None or ov.heatmap is None:
            return
        self.view3d.set_heatmap(ov.heatmap if ov.heatmap_visible else None, threshold=ov.threshold,
                                opacity=max(ov.opacity, 0.5))

    def _on_overlay_control(self, changes: dict) -> None:
        if self.reading is None or self.reading.ai is None:
            return  # nothing of the AI is shown before the reveal
        self.state.set_overlays(**changes)
        if {"heatmap_visible", "threshold", "opacity"} & set(changes):
            self._update_3d_heatmap()

    def toggle_heatmap(self) -> None:
        c = self.ai_panel.heat_check
        c.setChecked(not c.isChecked())

    def jump_to_joint(self, side: str) -> None:
        if self.reading is None or self.reading.ai is None:
            self.statusBar().showMessage("the joints are located by the AI: lock your grades first")
            return
        centre = self.reading.ai.joints[side].box.center_lps_mm
        self.state.set_crosshair(centre)
        for v in self.views.values():  # a zoomed view must not leave the joint at its edge (#13)
            if isinstance(v, SliceView) and v.isVisible() and v.focus_point is None:
                v.center_on(centre)
        self.statusBar().showMessage(f"centred on the {side} sacroiliac joint")

    def set_side_by_side(self, on: bool) -> None:
        if on and (self.reading is None or self.reading.ai is None):
            self.ai_panel.side_by_side.setChecked(False)
            return
        if on and self.state.layout != "joints":
            self._layout_before_joints = self.state.layout
            mid = (self.reading.ai.joints["left"].box.center_lps_mm + self.reading.ai.joints["right"].box.center_lps_mm) / 2
            self.state.set_crosshair(mid)
            self.state.set_layout("joints")
        elif not on and self.state.layout == "joints":
            self.state.set_layout(self._layout_before_joints)
        if self.ai_panel.side_by_side.isChecked() != on:
            self.ai_panel.side_by_side.setChecked(on)

    def report_dialog(self) -> None:
        if self.study is not None:
            self.statusBar().showMessage("no export in a reader's session")
            return
        if self.reading is None or self.reading.ai is None:
            self.statusBar().showMessage("the case report needs the AI result: lock your grades first")
            return
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Case report", "sirad-report.html",
                                                        "HTML (*.html);;PDF (*.pdf)")
        if path:
            self.write_report(path)

    def write_report(self, path: str) -> Path | None:
        from sirad_viewer.viz.report import write_report

        if self.reading is None or self.reading.ai is None or self.study is not None:
            return None  # nothing before the reveal, and no export from a reader's session
        try:
            out = write_report(path, self.ai_volume, self.reading.ai,
                               dict(self.reading.summary(), annotations=self.state.annotations.to_dict(),
                                    key_images=self.reading_tools.key_images),
                               self._get_grader().bundle.metadata)
        except SiradError as exc:
            show_error(self, exc)
            return None
        self.statusBar().showMessage(f"report written to {out}")
        return out

    def wait_for_ai(self, timeout_ms: int = 300_000) -> bool:
        if self._ai_worker is None:  # no model run: done only when a stored result was received
            return self.reading is not None and not self.reading.ai_pending
        loop = QtCore.QEventLoop()
        done = {"ok": False}

        def finish(ok: bool) -> None:
            done["ok"] = ok
            loop.quit()

        if self._ai_worker.finished.is_set():
            QtWidgets.QApplication.processEvents()
            return self.reading is not None and not self.reading.ai_pending
        self.ai_finished.connect(lambda r: finish(r is not None))
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

    def export_window(self, path: str) -> bool:
        """The whole window: views, reading panel and series dock."""
        return self._grab(self).save(path)

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
        self.cancel_ai()
        if self.study is not None:
            self.end_study()
        if self._ai_worker is not None:
            self._ai_worker.finished.wait(60)  # it stops at the next stage boundary
        for w in (self._worker,):
            if w is not None:
                w.finished.wait(10)
        if self.view3d is not None:
            self.view3d.plotter.close()
        super().closeEvent(e)


def run(path: str | None = None, *, series: int | None = None, screenshot: str | None = None,
        layout: str | None = None, sacral_axis: tuple[Any, Any] | None = None,
        grades: tuple[int, int] | None = None, report: str | None = None, study: str | None = None,
        reader: str | None = None, coordinator: str | None = None) -> int:
    if screenshot and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("SIRAD Viewer")
    app.setStyleSheet(DARK_QSS)
    with_3d = QtWidgets.QApplication.platformName() != "offscreen"  # QtInteractor needs a real (X) display
    win = MainWindow(interactive=screenshot is None, with_3d=with_3d)
    if layout and layout != "joints":
        win.state.set_layout(layout)
    win.show()
    if coordinator:
        win.coordinator_dialog(coordinator)
    if study:
        if not win.start_study(study, reader) and screenshot:
            return 2  # without a screenshot the window stays open: an unknown reader never quits the program
        if screenshot:
            QtWidgets.QApplication.processEvents()
            deadline = QtCore.QDeadlineTimer(120_000)
            while (win.state.volume is None or win.reading is None) and not deadline.hasExpired():
                app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 100)
            for _ in range(5):
                app.processEvents()
            ok = win.export_window(screenshot)
            print(f"screenshot written to {screenshot}" if ok else f"could not write {screenshot}")
            win.close()
            return 0 if ok else 1
        return app.exec()
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
        if grades is not None:
            # scripted reading: the reader's grades (right, left), lock, then the revealed AI
            win.ai_panel.grading.reading.set_grade("right", grades[0])
            win.reading.set_grade("left", grades[1])
            win.lock_and_reveal()
            if not win.wait_for_ai():
                print(f"the AI did not finish: {win.ai_panel.hidden_label.text()}", file=sys.stderr)
                return 2
            if layout == "joints":
                win.set_side_by_side(True)
            if report:
                win.write_report(report)
                print(f"case report written to {report}")
        for _ in range(3):
            app.processEvents()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        ok = win.export_window(screenshot) if grades is not None else win.export_layout(screenshot)
        print(f"screenshot written to {screenshot}" if ok else f"could not write {screenshot}")
        win.close()
        return 0 if ok else 1
    return app.exec()
