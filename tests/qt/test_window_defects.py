"""#13 defects of the main window checked through the paths a reader uses (the K key, the mouse
readout under the crosshair, the 3D view's marker), with nothing but the window's public calls, so
that the same tests run against the code before the fixes.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PyQt6 import QtCore, QtGui

from tests.qt.conftest import module_window

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, phantom_nifti):
    ph, path = phantom_nifti
    with module_window(qapp, tmp_path_factory.mktemp("defects"), path) as w:
        w.phantom = ph
        yield w


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
        marker = ren.axes_widget.GetOrientationMarker()  # anterior view: the A face, the others as it turns
        if hasattr(marker, "GetYMinusFaceText"):  # a labelled cube
            letters = {marker.GetXPlusFaceText(), marker.GetYPlusFaceText(), marker.GetZPlusFaceText(),
                       marker.GetYMinusFaceText()}
        else:  # an axes glyph
            letters = {marker.GetXAxisLabelText(), marker.GetYAxisLabelText(), marker.GetZAxisLabelText()}
        assert {"L", "P", "S"} <= letters
        img = v.render_image()
        h, w = img.shape[:2]
        corner = img[int(0.78 * h):, :int(0.22 * w)]
        assert (corner.max(axis=2) > 60).mean() > 0.2  # drawn, and big enough to read in a small panel
    finally:
        v.plotter.close()


def trigger_key(win, key: str) -> None:
    """What pressing ``key`` does in the window: the one action or shortcut bound to it."""
    hits = [a for a in win.findChildren(QtGui.QAction) if a.shortcut().toString() == key]
    hits += [s for s in win.findChildren(QtGui.QShortcut) if s.key().toString() == key]
    assert len(hits) == 1, f"{len(hits)} bindings of {key}"
    hit = hits[0]
    hit.trigger() if isinstance(hit, QtGui.QAction) else hit.activated.emit()
    QtCore.QCoreApplication.processEvents()


def near(img: np.ndarray, colour: str, tol: int = 40) -> np.ndarray:
    c = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return np.abs(img - c).max(axis=2) < tol


def test_zoom_keeps_the_point_under_the_cursor(win):
    """#13: Ctrl+wheel zoomed about the view's centre, not about the cursor."""
    v = win.views["coronal"]
    v.zoom, v.pan = 1.0, QtCore.QPointF(0, 0)
    pos = QtCore.QPointF(v.width() * 0.25, v.height() * 0.3)
    under = v.widget_to_world(pos)
    QtCore.QCoreApplication.sendEvent(v, QtGui.QWheelEvent(
        pos, v.mapToGlobal(pos), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120), QtCore.Qt.MouseButton.NoButton,
        QtCore.Qt.KeyboardModifier.ControlModifier, QtCore.Qt.ScrollPhase.NoScrollPhase, False))
    try:
        assert v.zoom > 1.1
        assert np.linalg.norm(v.widget_to_world(pos) - under) < 0.5  # mm
    finally:
        v.zoom, v.pan = 1.0, QtCore.QPointF(0, 0)


def test_the_crosshair_leaves_the_point_clear(win, qapp):
    """#13: the crosshair ran full length through the point, with no gap."""
    v = win.views["axial"]
    st = win.state
    win.state.set_layout("sij")
    qapp.processEvents()
    centre = st.crosshair.copy()
    c = v.world_to_widget(centre)
    x, y = int(round(c.x())), int(round(c.y()))
    on = rgb(v)
    try:
        st.set_crosshair(centre + np.array([60.0, 60.0, 0.0]))  # the lines elsewhere, same slice
        qapp.processEvents()
        moved = rgb(v)
    finally:
        st.set_crosshair(centre)
    diff = np.abs(on - moved).max(axis=2) > 0
    g = 6
    assert not diff[y - g:y + g + 1, x - g:x + g + 1].any()  # the point itself stays visible
    assert diff[y - 1:y + 2, x + 30:x + 90].any(axis=0).mean() > 0.3  # the crosshair beyond the gap


def test_c_hides_and_shows_the_crosshair(win, qapp):
    """#13: the crosshair could not be switched off."""
    v = win.views["axial"]
    win.state.set_layout("sij")
    qapp.processEvents()
    c = v.world_to_widget(win.state.crosshair)
    x, y = int(round(c.x())), int(round(c.y()))
    on = rgb(v)
    trigger_key(win, "C")
    off = rgb(v)
    trigger_key(win, "C")
    again = rgb(v)
    assert (np.abs(on - off).max(axis=2) > 0)[y - 1:y + 2, x + 30:x + 90].any(axis=0).mean() > 0.3
    assert np.array_equal(on, again)


def test_the_oblique_plane_is_traced_on_the_sagittal_and_axial_views(win, qapp):
    """#13: there was no trace of the oblique plane on the sagittal or axial views."""
    from sirad_viewer.qt.slice_view import CROSS_COLOURS

    win.state.set_layout("sij")
    qapp.processEvents()
    for name in ("sagittal", "axial"):
        v = win.views[name]
        assert near(rgb(v), CROSS_COLOURS["oblique"]).sum() > 0.3 * min(v.width(), v.height()), name


def test_f1_opens_a_sheet_of_the_shortcuts(win, qapp):
    """#13: Help had only 'About', no shortcut sheet."""
    from PyQt6 import QtWidgets

    trigger_key(win, "F1")
    sheets = [d for d in win.findChildren(QtWidgets.QDialog) if d.isVisible()]
    assert len(sheets) == 1
    texts = [w.text() for w in sheets[0].findChildren(QtWidgets.QLabel)]
    for t in sheets[0].findChildren(QtWidgets.QTableWidget):
        texts += [t.item(r, c).text() for r in range(t.rowCount()) for c in range(t.columnCount()) if t.item(r, c)]
    for t in sheets[0].findChildren(QtWidgets.QTextEdit):
        texts.append(t.toPlainText())
    sheet = "\n".join(texts)
    sheets[0].close()
    for key in ("K", "J", "C", "Ctrl+Return", "F1"):  # keys a reader needs, each on the sheet
        assert key in sheet.split() or f"\n{key}\n" in f"\n{sheet}\n", key


def test_a_plane_57_degrees_from_craniocaudal_does_not_turn_the_oblique_view_axial(win):
    """#13: the AI-derived plane on the real CT was 57 degrees from craniocaudal: the oblique view
    looked axial, its edges labelled AS / PI. Superior must stay at the top of the view."""
    from sirad_viewer.qt.slice_view import direction_letters

    t = np.deg2rad(57.0)
    win.state.set_sacral_axis(np.array([0.0, -np.sin(t), np.cos(t)]), source="segmentation")
    down = win.state.plane("oblique").down
    assert direction_letters(-down)[0] == "S" and direction_letters(down)[0] == "I"


def _readout(v) -> np.ndarray:
    """The readout's light grey text, bottom left of ``v`` (left of the 'bottom' orientation letter)."""
    img = rgb(v)[v.height() - 60:, 6:int(0.4 * v.width())]
    return (img.min(axis=2) > 180) & (np.ptp(img, axis=2) < 12)


def _hover_centre(v) -> QtCore.QPointF:
    pos = QtCore.QPointF(v.width() * 0.5, v.height() * 0.5)
    QtCore.QCoreApplication.sendEvent(v, QtGui.QMouseEvent(
        QtCore.QEvent.Type.MouseMove, pos, v.mapToGlobal(pos), QtCore.Qt.MouseButton.NoButton,
        QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier))
    QtCore.QCoreApplication.processEvents()
    return pos


def test_the_readout_follows_scrolling(win, qapp, qtbot):
    """#13: the HU/position readout did not update while scrolling."""
    v = win.views["axial"]
    st = win.state
    st.set_layout("sij")
    qapp.processEvents()
    pos = _hover_centre(v)
    before = _readout(v)
    assert before.sum() > 30
    z0 = st.crosshair[2]
    QtCore.QCoreApplication.sendEvent(v, QtGui.QWheelEvent(
        pos, v.mapToGlobal(pos), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120), QtCore.Qt.MouseButton.NoButton,
        QtCore.Qt.KeyboardModifier.NoModifier, QtCore.Qt.ScrollPhase.NoScrollPhase, False))
    qtbot.waitUntil(lambda: st.crosshair[2] != z0, timeout=2000)
    qapp.processEvents()
    assert not np.array_equal(_readout(v), before)  # the position under the still cursor changed


def test_a_new_case_starts_without_the_last_cases_readout(win, qapp):
    """#13: the readout carried the last case's coordinates into a new case."""
    from sirad_viewer.imaging import Volume

    v = win.views["axial"]
    st = win.state
    st.set_layout("sij")
    qapp.processEvents()
    _hover_centre(v)
    assert _readout(v).sum() > 30
    old = st.volume
    try:
        st.set_volume(Volume(np.zeros((5, 5, 5), np.int16), np.eye(4)))  # a new case, the mouse not moved
        qapp.processEvents()
        assert _readout(v).sum() == 0
    finally:
        st.set_volume(old)
        st.apply_preset("bone")
        qapp.processEvents()
