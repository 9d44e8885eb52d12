"""Comparison with a prior CT of the same patient: side by side, linked in patient coordinates.

File > Open prior for comparison loads the prior and registers it rigidly onto the current CT
(:func:`sirad_viewer.imaging.registration.register_rigid`, in a worker). The prior is shown in
its own oblique view, driven by a second :class:`ViewerState`: every crosshair move, window
change and sacral axis of the current case is mapped through the registration, so both views
show the same anatomy. *Mirror* flips the prior view left-right (to lay one joint over the
other side's).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer.qt import workers
from sirad_viewer.qt.slice_view import SliceView
from sirad_viewer.state.viewer import ViewerState

if TYPE_CHECKING:
    from sirad_viewer.imaging.registration import RigidTransform
    from sirad_viewer.qt.app import MainWindow

log = logging.getLogger(__name__)


class PriorView(SliceView):
    """An oblique view of the prior; ``mirrored`` flips it left-right."""

    def __init__(self, state: ViewerState) -> None:
        super().__init__(state, "oblique")
        self.mirrored = False
        self.caption = "PRIOR"
        self.source: tuple[ViewerState, RigidTransform] | None = None  # the current case and the registration

    def plane(self):
        """The current case's oblique plane carried into the prior by the registration."""
        if self.source is None:
            return super().plane()
        from sirad_viewer.imaging.reslice import SlicePlane

        main, tx = self.source
        pl = main.plane("oblique")
        return SlicePlane(tx.apply(pl.point), tx.rotation @ pl.right, tx.rotation @ pl.down, "oblique")

    # driven from the prior: scrolling and clicks move the *current* case's crosshair (through the
    # inverse registration); the prior then follows it back, so both stay on the same anatomy
    def step(self, steps: int) -> None:
        if self.source is None:
            return super().step(steps)
        main, _ = self.source
        main.step_along(main.plane("oblique"), steps)

    def _set_cross(self, pos: QtCore.QPointF) -> None:
        if self.source is None:
            return super()._set_cross(pos)
        w = self.widget_to_world(pos)  # prior LPS (the mirror is inside image_transform)
        if w is None:
            return
        main, tx = self.source
        p = tx.inverse().apply(w)
        n = main.plane("oblique").normal
        main.set_crosshair(p - n * float((p - main.crosshair) @ n))  # within the plane shown

    def image_transform(self) -> QtGui.QTransform:
        t = super().image_transform()
        if not self.mirrored:
            return t
        flip = QtGui.QTransform(-1, 0, 0, 1, self.width(), 0)
        return t * flip


class PriorComparison(QtCore.QObject):
    def __init__(self, win: "MainWindow") -> None:
        super().__init__(win)
        self.win = win
        self.state = ViewerState()
        self.view = PriorView(self.state)
        self.view.activated.connect(win._set_active)
        win.views["prior"] = self.view
        self.view.hide()
        self.transform: RigidTransform | None = None
        self._worker: workers.Worker | None = None
        st = win.state
        st.crosshair_changed.connect(lambda *_: self.sync())
        st.oblique_changed.connect(lambda *_: self.sync())
        st.window_changed.connect(lambda w: self.state.set_window(w.width, w.level, w.preset))
        st.volume_changed.connect(lambda *_: self.close_prior())

    def open_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self.win, "Open prior CT", "", "CT (*.dcm *.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.zip);;All files (*)")
        if path:
            self.open(path)

    def open(self, path: str) -> None:
        """Load and register the prior in the background, then show it beside the current oblique plane."""
        from sirad_viewer.imaging.registration import register_rigid
        from sirad_viewer.io import open_volume

        current = self.win.state.volume
        if current is None:
            self.win.statusBar().showMessage("open the current CT first")
            return

        def job(progress, cancel):
            progress(0.05, "loading the prior")
            prior = open_volume(path).reoriented()
            return prior, register_rigid(current, prior, progress=progress, cancel=cancel)

        self._worker = workers.start(job, on_done=self._on_ready, on_error=self._on_error,
                                     on_progress=self.win._on_progress)

    def _on_error(self, exc: BaseException) -> None:
        """A prior that cannot be loaded or registered: say so; the current case stays as it was.

        (It went through the main window's load-failure path: the series panel was replaced by the
        prior's error, ``load_failed`` fired for the current case, and ``wait`` ran to its timeout.)
        """
        from sirad_viewer.errors import SiradError
        from sirad_viewer.qt.dialogs import show_error

        self._worker = None
        self.win._busy(False)
        msg = exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}"
        self.win.statusBar().showMessage(f"prior not opened: {msg}")
        if not (isinstance(exc, SiradError) and exc.code == "cancelled"):
            show_error(self.win, exc)

    def wait(self, timeout_s: float = 300) -> bool:
        """Block (running events) until the prior is shown (tests, scripts)."""
        deadline = QtCore.QDeadlineTimer(int(timeout_s * 1000))
        while self._worker is not None and not deadline.hasExpired():
            QtWidgets.QApplication.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
        return self.transform is not None

    def _on_ready(self, out: Any) -> None:
        prior, tx = out
        self._worker = None
        self.show(prior, tx)

    def show(self, prior, tx: "RigidTransform") -> None:
        self.transform = tx
        self.view.source = (self.win.state, tx)
        self.state.set_volume(prior)
        w = self.win.state.window
        self.state.set_window(w.width, w.level, w.preset)
        self.sync()
        self.win.state.set_layout("prior")
        QtWidgets.QApplication.processEvents()
        self.frame()
        self.win.statusBar().showMessage(f"prior registered: {tx.angle_deg:.1f}° rotation, "
                                         f"{np.linalg.norm(tx.translation):.1f} mm shift (rigid, pelvis)")

    def frame(self, zoom: float = 2.0) -> None:
        """The same zoom in both views, each centred on its crosshair (the same anatomy)."""
        main = self.win.views["oblique"]
        main.zoom, main.pan = zoom, QtCore.QPointF(0, 0)
        main.center_on(self.win.state.crosshair)
        img_m, img_p = main.slice_image(), self.view.slice_image()
        if img_m is None or img_p is None:
            return
        px_per_mm = main.image_transform().m11() / img_m.pixel_mm[1]
        self.view.zoom, self.view.pan = 1.0, QtCore.QPointF(0, 0)
        base = self.view.image_transform().m11() / img_p.pixel_mm[1]
        self.view.zoom = float(px_per_mm / base)  # the same mm per screen pixel in both views
        self.view.center_on(self.state.crosshair)

    def sync(self) -> None:
        """Put the prior's crosshair and sacral axis on the current case's, through the registration."""
        tx, st = self.transform, self.win.state
        if tx is None or self.state.volume is None or st.volume is None:
            return
        axis = st.sacral_axis if st.sacral_axis is not None else st.default_sacral_axis()
        self.state.sacral_axis = tx.rotation @ axis
        self.state.sacral_axis_source = "reader"
        self.state.oblique_changed.emit()
        self.state.set_crosshair(tx.apply(st.crosshair))

    def set_mirrored(self, on: bool) -> None:
        self.view.mirrored = bool(on)
        self.view.update()

    def close_prior(self) -> None:
        self.transform = None
        self.view.source = None
        if self.win.state.layout == "prior":
            self.win.state.set_layout("sij")
