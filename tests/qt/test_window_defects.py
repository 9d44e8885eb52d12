"""#13 defects of the main window checked through the paths a reader uses (the K key, the mouse
readout under the crosshair, the 3D view's marker), with nothing but the window's public calls, so
that the same tests run against the code before the fixes.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from PyQt6 import QtCore, QtGui

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, phantom_nifti):
    from sirad_viewer.qt.app import MainWindow

    tmp = tmp_path_factory.mktemp("defects")
    old = {k: os.environ.get(k) for k in ("SIRAD_SETTINGS", "SIRAD_READS")}
    (tmp / "settings.ini").write_text("[General]\nai_autorun=false\n")
    os.environ["SIRAD_SETTINGS"] = str(tmp / "settings.ini")
    os.environ["SIRAD_READS"] = str(tmp / "reads.jsonl")
    ph, path = phantom_nifti
    w = MainWindow(interactive=False, with_3d=False)
    w.resize(1400, 900)
    w.show()
    w.open_path(str(path))
    assert w.wait_until_ready(mesh=False), w.info.toPlainText()
    for _ in range(5):
        qapp.processEvents()
    w.phantom = ph
    yield w
    w.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def rgb(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    return np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()].reshape(
        img.height(), img.width(), 3).astype(int)


def test_k_frames_the_left_joint_in_the_middle_of_a_zoomed_view(win, qapp):
    """#13: after K the left joint sat at the edge of the zoomed view, partly cut off."""
    joint = np.array(win.phantom.truth["joints"]["left"]["center_lps_mm"], float)
    right = np.array(win.phantom.truth["joints"]["right"]["center_lps_mm"], float)
    ai = SimpleNamespace(joints={s: SimpleNamespace(box=SimpleNamespace(center_lps_mm=c)) for s, c in
                                 (("left", joint), ("right", right))})
    reading, layout = win.reading, win.state.layout
    win.state.set_layout("2x2")
    v = win.views["axial"]
    try:
        win.reading = SimpleNamespace(ai=ai)  # the revealed AI result: only the joint centres are used
        win.state.set_crosshair(right)
        for _ in range(8):  # Ctrl+wheel x8 at the view's centre: about 3x
            pos = QtCore.QPointF(v.width() / 2, v.height() / 2)
            QtCore.QCoreApplication.sendEvent(v, QtGui.QWheelEvent(
                pos, v.mapToGlobal(pos), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120), QtCore.Qt.MouseButton.NoButton,
                QtCore.Qt.KeyboardModifier.ControlModifier, QtCore.Qt.ScrollPhase.NoScrollPhase, False))
        assert v.zoom > 2.5
        keys = [s for s in win.findChildren(QtGui.QShortcut) if s.key().toString() == "K"]
        assert len(keys) == 1
        keys[0].activated.emit()
        qapp.processEvents()
        p = v.world_to_widget(joint)
        assert p is not None
        assert abs(p.x() - v.width() / 2) < 0.1 * v.width() and abs(p.y() - v.height() / 2) < 0.1 * v.height()
    finally:
        win.reading = reading
        win.state.set_layout(layout)
        v.zoom, v.pan = 1.0, QtCore.QPointF(0, 0)
        v.update()


def test_the_crosshair_does_not_run_through_the_readout(win, qapp):
    """#13: the crosshair ran through the HU/position readout at full brightness."""
    v = win.views["axial"]
    v.smooth = False
    st = win.state
    st.set_layout("sij")
    qapp.processEvents()
    W, H = v.width(), v.height()
    pos = QtCore.QPointF(W * 0.5, H * 0.5)  # the cursor over the bone: a readout appears bottom left
    QtCore.QCoreApplication.sendEvent(v, QtGui.QMouseEvent(
        QtCore.QEvent.Type.MouseMove, pos, v.mapToGlobal(pos), QtCore.Qt.MouseButton.NoButton,
        QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier))
    centre = st.crosshair.copy()
    x_far = v.widget_to_world(QtCore.QPointF(W * 0.6, H * 0.5))
    x_text = v.widget_to_world(QtCore.QPointF(40.5, H * 0.5))  # a vertical crosshair line at x = 40 px
    try:
        st.set_crosshair(np.r_[x_far[0], centre[1:]])
        qapp.processEvents()
        away = rgb(v)
        st.set_crosshair(np.r_[x_text[0], centre[1:]])
        qapp.processEvents()
        through = rgb(v)
    finally:
        st.set_crosshair(centre)
    col = int(round(v.world_to_widget(np.r_[x_text[0], centre[1:]]).x()))
    # the readout's rows: its light grey text in the bottom-left corner, left of the line and just right of it
    text = (away.min(axis=2) > 180) & (np.ptp(away, axis=2) < 12)
    rows = np.nonzero(text[H - 60:, 6:col + 30].any(axis=1))[0] + H - 60
    assert len(rows) >= 5, "no readout under the cursor"
    diff = np.abs(through - away).max(axis=2)
    band = diff[rows.min():rows.max() + 1, col - 1:col + 2]
    line = diff[H // 4:H // 2, col - 1:col + 2]  # the same line higher up
    assert line.max() > 150  # the crosshair is drawn there ...
    assert band.max() < 0.6 * line.max()  # ... and only dimmed across the readout, which stays legible


def test_3d_view_has_an_orientation_marker_in_patient_directions(qtbot):
    """#13: the 3D surface had no orientation marker."""
    import pyvista as pv

    from sirad_viewer.qt.view3d import View3D
    from sirad_viewer.state.viewer import ViewerState

    v = View3D(ViewerState())
    qtbot.addWidget(v)
    v.resize(300, 300)
    v.show()
    try:
        v.set_mesh(pv.Sphere(radius=50.0))
        ren = v.plotter.renderer
        assert ren.axes_widget is not None and ren.axes_widget.GetEnabled()
        actor = ren.axes_actor
        assert (actor.GetXAxisLabelText(), actor.GetYAxisLabelText(), actor.GetZAxisLabelText()) == ("L", "P", "S")
    finally:
        v.plotter.close()
