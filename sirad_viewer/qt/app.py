"""The main window: builds the views, panels and workers and wires their signals.

The window holds the case (volume, reading, AI result) and moves it between its parts; the parts
live elsewhere: views in ``slice_view``/``view3d``, the docks, status bar, menus and keys in
``chrome``, reading layouts in ``layouts``, the AI run in ``ai_runner``, reader-study mode in
``study_mode``, screenshots in ``capture``, scripted runs (``make run``, ``--screenshot``) in
``scripted``. What is computed (heatmap stitching, mesh colours, the Series text) is Qt-free, in
``sirad_viewer.viz``. Loading and mesh building run in workers with a progress bar and Cancel; the
window appears before any heavy module is imported.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer import __version__
from sirad_viewer.errors import SiradError
from sirad_viewer.qt import capture, chrome, layouts, study_mode, workers
from sirad_viewer.qt.ai_runner import AIRunner
from sirad_viewer.qt.dialogs import DARK_QSS, DISCLAIMER, SeriesPicker, show_error  # noqa: F401 (re-exported)
from sirad_viewer.qt.pacs_dialog import use_stored_result
from sirad_viewer.qt.scripted import run  # noqa: F401 (re-exported: the entry point's old name)
from sirad_viewer.qt.settings import Settings
from sirad_viewer.state.reading import Reading
from sirad_viewer.qt.slice_view import SliceView
from sirad_viewer.state.viewer import LAYOUTS, ViewerState
from sirad_viewer.viz.overlay import stitch_heatmap
from sirad_viewer.viz.series_info import series_summary

log = logging.getLogger(__name__)


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
        chrome.build_docks(self)
        chrome.build_status(self)
        chrome.build_menus(self)
        self.state.layout_changed.connect(lambda *_: self._apply_layout())
        self.state.volume_changed.connect(lambda *_: self._show_series_info())
        self.state.text_changed.connect(lambda *_: self._show_series_info())  # Ctrl+T blanks the Series dock too
        saved_layout = str(self.settings.get("layout", "sij"))
        self.state.set_layout(saved_layout if saved_layout in LAYOUTS and saved_layout not in ("joints", "prior") else "sij")
        self._apply_layout()
        self._worker: workers.Worker | None = None
        self.ai = AIRunner(self.ai_panel, device=lambda: str(self.settings.get("ai_device", "auto")),
                           current_reading=lambda: self.reading)
        self.ai.finished.connect(self.ai_finished.emit)
        self.ai.set_segmenter(self.ai_panel.segmenter_choice.current_key())  # the saved choice (chrome.build_docks)
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

    # --- layout --------------------------------------------------------------------------------
    def _layout_cells(self, name: str) -> list[tuple[str, int, int, int, int]]:
        return layouts.layout_cells(name, set(self.views), self.active_view)

    def _apply_layout(self) -> None:
        layouts.place(self.grid, self.views, self._layout_cells(self.state.layout), wide_top=self.state.layout == "sij")
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
        if self.state.volume is None:
            return
        self.warnings_text = series_summary(self.state.volume, case_id=None if self.study is None else self.study.case_id,
                                            show_patient_text=self.state.show_patient_text,
                                            scan_text=getattr(self, "_scan_text", ""))
        self.info.setPlainText(self.warnings_text)

    def wait_until_ready(self, timeout_ms: int = 120_000, *, mesh: bool = True) -> bool:
        """Block (running the event loop) until the volume (and mesh) are shown, or an error."""
        sig = self.mesh_ready if (mesh and self.view3d is not None) else self.volume_ready
        return workers.wait_for(sig, self.load_failed, timeout_ms=timeout_ms)

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

    # --- study mode (qt/study_mode.py) -------------------------------------------------------------
    def open_study_dialog(self) -> None:
        study_mode.open_study_dialog(self)

    def start_study(self, path: str, reader: str | None = None, **kwargs: Any) -> bool:
        """Sign in and start at the reader's first unfinished case (see :func:`study_mode.start_study`)."""
        return study_mode.start_study(self, path, reader, **kwargs)

    def end_study(self) -> None:
        study_mode.end_study(self)

    def coordinator_dialog(self, path: str | None = None, key: str | None = None) -> None:
        study_mode.coordinator_dialog(self, path, key)

    # --- AI run (qt/ai_runner.py) ---------------------------------------------------------------
    @property
    def _ai_worker(self) -> workers.Worker | None:
        return self.ai.worker

    def _get_grader(self):
        return self.ai.grader()

    def _on_segmenter_changed(self, key: str) -> None:
        self.settings.set("ai_segmenter", key)
        self.ai.set_segmenter(key)

    def start_ai(self) -> None:
        """Run the AI in the background; its result goes into the reading, hidden until the lock."""
        if self.ai_volume is None or self.reading is None or not self.reading.ai_allowed:
            return  # an unaided study arm never runs the AI
        self.ai.start(self.ai_volume, self.reading)

    def cancel_ai(self) -> None:
        self.ai.cancel()

    def wait_for_ai(self, timeout_ms: int = 300_000) -> bool:
        return self.ai.wait(timeout_ms)

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
        vol = self.ai_volume
        heat = stitch_heatmap(vol.shape, [jr.heatmap for jr in result.joints.values()])
        labels = vol.with_array(result.segmentation.labels) if result.segmentation is not None else None
        self.state.set_overlays(heatmap=vol.with_array(heat), labels=labels,
                                boxes=[jr.box for jr in result.joints.values()])
        if self.state.sacral_axis_source != "reader":
            from sirad_viewer.imaging.sacral_plane import proposed_axis

            mid = (result.joints["left"].box.center_lps_mm + result.joints["right"].box.center_lps_mm) / 2.0
            self.state.set_sacral_axis(proposed_axis(result), mid, source="segmentation")
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
        return capture.grab(w, self.view3d if w is self.view3d else None).save(path)

    def export_layout(self, path: str) -> bool:
        return capture.grab(self.grid_host, self.view3d).save(path)

    def export_window(self, path: str) -> bool:
        """The whole window: views, reading panel and series dock."""
        return capture.grab(self).save(path)

    def export_view_dialog(self) -> None:
        if path := capture.save_dialog(self, "Export view", "view.png"):
            self.export_view(path)

    def export_layout_dialog(self) -> None:
        if path := capture.save_dialog(self, "Export layout", "layout.png"):
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

