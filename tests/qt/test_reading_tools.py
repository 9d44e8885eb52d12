"""#13 under Xvfb: the reading views' defects (readout, header, zoom, text, crosshair, scrolling,
layout, oblique trace) and the reading tools (ruler, ROI, lesion marks, findings, F1).

One window, loaded once with a phantom, serves the module (loading is the slow part).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PyQt6 import QtCore, QtGui

from tests.qt.test_app import widget_grey

from tests.qt.conftest import module_window

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, small_phantom):
    from sirad_viewer.phantom import write_phantom

    tmp = tmp_path_factory.mktemp("tools")
    ph = small_phantom(0, 3, seed=1)
    path = write_phantom(ph, tmp / "ph", fmt="nifti")["ct"]
    with module_window(qapp, tmp, path) as w:
        w.phantom = ph
        w.reads = tmp / "reads.jsonl"
        yield w


def wheel(view, pos: QtCore.QPointF, dy: int = 120, mods=QtCore.Qt.KeyboardModifier.NoModifier):
    return QtGui.QWheelEvent(pos, view.mapToGlobal(pos), QtCore.QPoint(0, 0), QtCore.QPoint(0, dy),
                             QtCore.Qt.MouseButton.NoButton, mods, QtCore.Qt.ScrollPhase.NoScrollPhase, False)


def move_mouse(view, pos: QtCore.QPointF) -> None:
    ev = QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, pos, view.mapToGlobal(pos), QtCore.Qt.MouseButton.NoButton,
                           QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier)
    QtCore.QCoreApplication.sendEvent(view, ev)


def test_case_opens_in_the_hanging_protocol(win):
    st = win.state
    assert st.layout == "sij" and st.window.preset == "bone"


def test_sij_layout_gives_the_oblique_plane_a_wide_main_panel(win):
    """#13: the main oblique panel was tall and narrow (about 364x900)."""
    ob = win.views["oblique"]
    assert ob.width() > 1.5 * ob.height()
    for name in ("axial", "coronal", "sagittal"):
        assert ob.width() > 2 * win.views[name].width() and ob.height() > win.views[name].height()


def test_readout_follows_scrolling_and_a_new_case_starts_blank(win, qtbot):
    """#13: the HU/position readout did not update while scrolling and carried into a new case."""
    ax = win.views["axial"]
    pos = QtCore.QPointF(ax.width() * 0.5, ax.height() * 0.5)
    c = win.state.crosshair.copy()
    win.state.set_crosshair(np.r_[c[:2], ax.slice_image().origin[2]])  # on a slice centre
    move_mouse(ax, pos)
    before = ax.cursor_readout()
    z0 = win.state.crosshair[2]
    assert f"{ax.slice_image().origin[2]:.1f}) mm LPS" in before  # the slice shown
    ax.flush_scroll()
    QtCore.QCoreApplication.sendEvent(ax, wheel(ax, pos))
    qtbot.waitUntil(lambda: win.state.crosshair[2] != z0, timeout=2000)
    after = ax.cursor_readout()
    assert after != before and f"{ax.slice_image().origin[2]:.1f}) mm LPS" in after
    # a new case: no readout until the mouse moves over it
    from sirad_viewer.imaging import Volume

    old = win.state.volume
    win.state.set_volume(Volume(np.zeros((5, 5, 5), np.int16), np.eye(4)))
    assert ax.cursor_readout() == ""
    win.state.set_volume(old)
    win.state.apply_preset("bone")


def test_sagittal_header_position_has_the_sign_of_the_lps_readout(win):
    """#13: the sagittal header read +91.5 mm beside x = -91.5."""
    st = win.state
    st.set_crosshair(st.crosshair + np.array([-20.0, 0, 0]))
    x = st.crosshair[0]
    assert x < 0
    assert win.views["sagittal"].header_lines()[0].endswith(f"x {x:+.1f} mm")
    assert win.views["axial"].header_lines()[0].endswith(f"z {st.crosshair[2]:+.1f} mm")
    st.set_crosshair(st.crosshair + np.array([20.0, 0, 0]))


def test_ctrl_wheel_zooms_about_the_cursor(win):
    """#13: zoom anchored at the view centre, not at the cursor."""
    v = win.views["coronal"]
    v.reset_view()
    pos = QtCore.QPointF(v.width() * 0.25, v.height() * 0.3)
    under = v.widget_to_world(pos)
    QtCore.QCoreApplication.sendEvent(v, wheel(v, pos, mods=QtCore.Qt.KeyboardModifier.ControlModifier))
    assert v.zoom > 1.1
    assert np.allclose(v.widget_to_world(pos), under, atol=1e-6)
    v.reset_view()


def test_center_on_puts_a_joint_in_the_middle_of_a_zoomed_view(win):
    """#13: after K the left joint sat at the edge of the zoomed view."""
    v = win.views["axial"]
    v.zoom = 3.0
    joint = np.array(win.phantom.truth["joints"]["left"]["center_lps_mm"])
    joint[2] = win.state.crosshair[2]
    v.center_on(joint)
    p = v.world_to_widget(joint)
    assert abs(p.x() - v.width() / 2) < 1 and abs(p.y() - v.height() / 2) < 1
    v.reset_view()


@pytest.mark.parametrize("size", [(364, 900), (300, 260), (900, 364)])
def test_text_blocks_never_overlap(win, size):
    """#13: '+33.4 mSA' in the oblique header, patient text over the header in the SIJ layout."""
    from sirad_viewer.qt.slice_view import SliceView

    v = SliceView(win.state, "oblique")
    v.resize(*size)
    v._cursor_pos = QtCore.QPointF(size[0] / 2, size[1] / 2)
    win.state.set_oblique_render(slab_mm=5.0)
    try:
        boxes = [r for r, _, _ in v.text_boxes().values()]
        assert len(boxes) >= 7  # header, patient, four letters, readout
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.intersects(b), (a, b)
    finally:
        win.state.set_oblique_render(slab_mm=0.0)


def test_crosshair_has_a_gap_and_can_be_hidden(win, qtbot):
    """#13: the crosshair was always on, full length, with no gap."""
    from sirad_viewer.qt.slice_view import CROSS_GAP_PX

    v = win.views["axial"]
    v.smooth = False
    on = widget_grey(v).astype(int)
    win.state.set_crosshair_visible(False)
    qtbot.wait(10)
    off = widget_grey(v).astype(int)
    win.state.set_crosshair_visible(True)
    c = v.world_to_widget(win.state.crosshair)
    x, y = int(round(c.x())), int(round(c.y()))
    diff = np.abs(on - off) > 0
    g = CROSS_GAP_PX - 3
    assert not diff[y - g:y + g + 1, x - g:x + g + 1].any()  # the point itself stays clear
    far = slice(x + CROSS_GAP_PX + 20, x + CROSS_GAP_PX + 80)
    assert diff[y - 1:y + 2, far].any(axis=0).mean() > 0.3  # dashed line beyond the gap


def test_a_wheel_burst_moves_once(win, qtbot):
    """#13: 20 wheel steps queued 20 re-slices; they are coalesced into one move."""
    v = win.views["axial"]
    st = win.state
    z0 = st.crosshair[2]
    moves = []
    st.crosshair_changed.connect(moves.append)
    try:
        pos = QtCore.QPointF(v.width() / 2, v.height() / 2)
        for _ in range(20):
            QtCore.QCoreApplication.postEvent(v, wheel(v, pos, -120))
        qtbot.waitUntil(lambda: st.crosshair[2] != z0, timeout=3000)
        qtbot.wait(20)
    finally:
        st.crosshair_changed.disconnect(moves.append)
    assert len(moves) == 1
    assert st.crosshair[2] == pytest.approx(max(z0 - 20 * st.volume.spacing[0], st.volume.bounds_world()[0][2]))
    st.set_crosshair(np.r_[st.crosshair[:2], z0])


def test_oblique_trace_on_sagittal_and_its_handle_rotates_the_plane(win, qtbot):
    """#13: no trace of the oblique plane on the sagittal or axial view, so it could not be checked."""
    sag, ax = win.views["sagittal"], win.views["axial"]
    assert sag.oblique_trace() is not None and ax.oblique_trace() is not None
    st = win.state
    before = st.plane("oblique").down.copy()
    h = sag.oblique_handles()[1]
    target = h + QtCore.QPointF(30, 0)
    qtbot.mousePress(sag, QtCore.Qt.MouseButton.LeftButton, pos=h.toPoint())
    qtbot.mouseMove(sag, target.toPoint())
    qtbot.mouseRelease(sag, QtCore.Qt.MouseButton.LeftButton, pos=target.toPoint())
    assert st.sacral_axis_source == "reader"
    assert np.degrees(np.arccos(abs(float(before @ st.plane("oblique").down)))) > 3


def test_ruler_and_roi_with_the_mouse_on_the_oblique_view(win, qtbot):
    from sirad_viewer.imaging.measure import roi_stats
    from sirad_viewer.state.annotations import CircleROI, Ruler

    st = win.state
    v = win.views["oblique"]
    n0 = len(st.annotations.items)
    a, b = QtCore.QPoint(v.width() // 2 - 80, v.height() // 2), QtCore.QPoint(v.width() // 2 + 60, v.height() // 2 + 20)
    st.set_tool("ruler")
    qtbot.mousePress(v, QtCore.Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(v, b)
    qtbot.mouseRelease(v, QtCore.Qt.MouseButton.LeftButton, pos=b)
    ruler = st.annotations.items[-1]
    assert isinstance(ruler, Ruler) and len(st.annotations.items) == n0 + 1
    wa, wb = v.widget_to_world(QtCore.QPointF(a)), v.widget_to_world(QtCore.QPointF(b))
    assert ruler.length_mm == pytest.approx(float(np.linalg.norm(wb - wa)), rel=1e-6)
    assert abs(float(v.plane().distance(ruler.p0))) < 1e-6  # on the oblique plane, in LPS mm
    st.set_tool("roi")
    c, e = QtCore.QPoint(v.width() // 2, v.height() // 2 + 60), QtCore.QPoint(v.width() // 2 + 25, v.height() // 2 + 60)
    qtbot.mousePress(v, QtCore.Qt.MouseButton.LeftButton, pos=c)
    qtbot.mouseMove(v, e)
    qtbot.mouseRelease(v, QtCore.Qt.MouseButton.LeftButton, pos=e)
    roi = st.annotations.items[-1]
    assert isinstance(roi, CircleROI) and roi.stats["n"] > 10
    ref = roi_stats(st.volume, roi.center, roi.radius_mm, roi.right, roi.down)
    assert roi.stats["mean"] == pytest.approx(ref["mean"])
    assert "HU" in roi.label()
    st.set_tool("navigate")
    # saved with the case's reads, undoable
    recs = [json.loads(x) for x in win.reads.read_text().splitlines()]
    last = [r for r in recs if r["event"] == "annotations"][-1]
    assert [i["kind"] for i in last["annotations"]["items"]][-2:] == ["ruler", "roi"]
    assert st.annotations.undo() and st.annotations.items[-1] is not roi


def test_lesion_marks_tick_the_findings_and_suggest_a_grade(win, qtbot):
    st = win.state
    panel = win.reading_tools.findings
    st.set_tool("lesion", lesion_kind="partial ankylosis", side="left")
    v = win.views["oblique"]
    p = QtCore.QPoint(v.width() // 2 + 40, v.height() // 2)
    qtbot.mouseClick(v, QtCore.Qt.MouseButton.LeftButton, pos=p)
    st.set_tool("navigate")
    assert panel.suggest["left"].text() == "grade 3"
    from sirad_viewer.state.annotations import LesionKind

    assert panel.checks[("left", LesionKind.PARTIAL_ANKYLOSIS)].isChecked()
    panel.checks[("right", LesionKind.SCLEROSIS)].setChecked(True)
    assert st.annotations.suggested_grade("right") == 2 and panel.suggest["right"].text() == "grade 2"
    assert win.reading.pre.right is None  # the reader's grade stays the reader's


def test_a_mark_on_the_patients_left_is_a_left_mark_whatever_the_dropdown(win, qtbot):
    """#13: with the joint dropdown on "right", E and a click on the patient's left half of the
    oblique view made "R erosion" and ticked the right joint's checklist."""
    from sirad_viewer.state.annotations import LesionKind

    st = win.state
    panel = win.reading_tools.findings
    st.set_tool("lesion", lesion_kind="erosion", side="right")
    assert panel.side.currentText() == "right"
    v = win.views["oblique"]
    target = st.crosshair.copy()
    target[0] = st.volume.center_world()[0] + 40.0  # +x in LPS: the patient's left
    pos = v.world_to_widget(target)
    assert pos is not None
    qtbot.mouseClick(v, QtCore.Qt.MouseButton.LeftButton, pos=QtCore.QPoint(int(pos.x()), int(pos.y())))
    st.set_tool("navigate")
    mark = st.annotations.items[-1]
    assert mark.kind == "lesion" and mark.label() == "L erosion"
    assert panel.side.currentText() == "left"  # the dropdown follows the click
    assert panel.checks[("left", LesionKind.EROSION)].isChecked()
    assert not panel.checks[("right", LesionKind.EROSION)].isChecked()
    st.annotations.remove(mark.id)


def test_f1_shows_the_shortcut_sheet(win):
    act = win.reading_tools.help_action
    assert act.shortcut().toString() == "F1"
    act.trigger()
    sheet = win.reading_tools.sheet
    assert sheet is not None and sheet.isVisible()
    assert "Ctrl+Z" in sheet.text() and "ruler" in sheet.text()
    sheet.close()


class _Box:
    def __init__(self, side: str) -> None:
        self.side = side
        self.center_lps_mm = np.zeros(3)

    def contains(self, points: np.ndarray) -> np.ndarray:
        return np.zeros(len(points), bool)


def test_heatmap_and_box_colours_have_a_legend(win, qtbot):
    """#13: heatmap and box colours had no legend."""
    from sirad_viewer.viz.overlay import BOX_COLOURS

    st = win.state
    v = win.views["axial"]
    st.set_overlays(heatmap=st.volume.with_array(np.zeros(st.volume.shape, np.float32)),
                    boxes=[_Box("right"), _Box("left")])
    try:
        qtbot.wait(10)
        img = v.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
        ptr = img.constBits()
        ptr.setsize(img.sizeInBytes())
        rgb = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()]
        rgb = rgb.reshape(img.height(), img.width(), 3)
        for side in ("right", "left"):
            hit = np.all(np.abs(rgb.astype(int) - BOX_COLOURS[side]) <= 2, axis=-1)
            assert hit[:, v.width() // 2:].sum() > 10, side  # the legend's coloured square, right of centre
    finally:
        st.clear_overlays()


def test_key_image_and_findings_go_into_the_case_report(win):
    from sirad_viewer.viz.report import _findings_html

    item = win.reading_tools.capture_key_image()
    assert item is not None and "W 2000" in item["title"] and len(item["png_b64"]) > 1000
    html = "".join(_findings_html(dict(annotations=win.state.annotations.to_dict(),
                                       key_images=win.reading_tools.key_images)))
    assert "Reader's key images" in html and "data:image/png;base64," in html
    assert "Reader's findings and measurements" in html and "partial ankylosis" in html


def test_prior_side_by_side_linked_in_patient_coordinates(win, qtbot):
    st = win.state
    prior, tx = _moved_prior(win)  # the same anatomy, moved: as a registration would find
    cmp_ = win.reading_tools.prior
    cmp_.show(prior, tx)
    qtbot.wait(20)
    try:
        assert st.layout == "prior" and cmp_.view.isVisible() and win.views["oblique"].isVisible()
        st.set_crosshair(np.array(win.phantom.truth["joints"]["left"]["center_lps_mm"]))
        assert np.allclose(cmp_.state.crosshair, tx.apply(st.crosshair), atol=1e-6)
        # the same anatomy under both crosshairs
        from sirad_viewer.imaging.reslice import reslice

        a = reslice(st.volume, st.plane("oblique"), fov_mm=40, pixel_mm=1.0).pixels.astype(float)
        b = reslice(cmp_.state.volume, cmp_.state.plane("oblique"), fov_mm=40, pixel_mm=1.0).pixels.astype(float)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
        cmp_.set_mirrored(True)
        v = cmp_.view
        p = v.world_to_widget(cmp_.state.crosshair)
        assert np.allclose(v.widget_to_world(p), cmp_.state.crosshair, atol=1e-6)
    finally:
        cmp_.set_mirrored(False)
        cmp_.close_prior()
    assert st.layout == "sij"


def _lum(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    rgb = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()]
    return rgb.reshape(img.height(), img.width(), 3).astype(float) @ np.array([0.299, 0.587, 0.114])


@pytest.fixture()
def dark(qapp):
    from sirad_viewer.qt.app import DARK_QSS

    qapp.setStyleSheet(DARK_QSS)  # the theme the viewer runs with
    yield
    qapp.setStyleSheet("")


def test_findings_check_boxes_are_visible_on_the_dark_theme(win, dark):
    """#13 review: the checklist's boxes were nearly invisible (dark grey on near-black)."""
    panel = win.reading_tools.findings
    QtCore.QCoreApplication.processEvents()
    key = next(iter(panel.checks))
    cb = panel.checks[key]
    assert not cb.isChecked()
    bg = float(np.median(_lum(panel.suggest["right"])))  # the panel's own background
    assert bg < 60  # dark
    off = _lum(cb)
    # the empty box's outline stands out from the background (at least 100 of 255 levels)
    assert off.max() - bg >= 100, (off.max(), bg)
    cb.blockSignals(True)
    cb.setChecked(True)
    try:
        on = _lum(cb)
    finally:
        cb.setChecked(False)
        cb.blockSignals(False)
    # ticked and empty look clearly different (a filled box, not a faint mark)
    assert np.abs(on - off).mean() >= 10 and (np.abs(on - off) > 60).sum() >= 40


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_corner_overlays_never_overlap_at_any_view_size(win, name):
    """#13 review: in the small views of the 2x2/SIJ layouts the box legend ('AI box, right SIJ') ran
    into the 50 mm scale bar. Every overlay (texts, scale bar, colour bar and its labels, legend)
    keeps its own rectangle, inside the view, at every size from 200x200 up."""
    from sirad_viewer.qt.slice_view import SliceView

    st = win.state
    st.set_overlays(heatmap=st.volume.with_array(np.zeros(st.volume.shape, np.float32)),
                    boxes=[_Box("right"), _Box("left")])
    v = SliceView(st, name)
    try:
        for size in [(200, 200), (220, 260), (258, 270), (300, 200), (200, 340), (364, 900), (520, 360),
                     (640, 480), (900, 364), (1000, 540), (1200, 900)]:
            v.resize(*size)
            v._cursor_pos = QtCore.QPointF(size[0] / 2, size[1] / 2)
            rects = v.overlay_rects()
            for must in ("scalebar", "legend_right", "legend_left", "colourbar", "header", "readout", "bottom"):
                assert must in rects, (size, must)
            names = list(rects)
            inside = QtCore.QRectF(0, 0, *size)
            for i, a in enumerate(names):
                assert inside.contains(rects[a]), (size, a, rects[a])
                for b in names[i + 1:]:
                    assert not rects[a].intersects(rects[b]), (size, a, rects[a], b, rects[b])
    finally:
        st.clear_overlays()


def _key(win, seq: str) -> None:
    """Press a shortcut the way the window receives it (the action bound to it)."""
    acts = [a for a in win.findChildren(QtGui.QAction) if a.shortcut().toString() == seq and a.isEnabled()]
    assert acts, seq
    acts[0].trigger()


def test_view_changes_are_undone_and_redone_a_wheel_burst_as_one_step(win, qtbot):
    """#13 tool 7: undo covered annotations only; zoom, pan, window, slice position, layout and the
    oblique plane could not be undone."""
    st = win.state
    v = win.views["axial"]
    if hasattr(win.reading_tools, "undo"):
        win.reading_tools.undo.reset()
        win.reading_tools.undo.history.coalesce_s = 0.35  # a burst: events closer than this
    qtbot.wait(5)
    start = (st.crosshair.copy(), st.window, st.layout, v.zoom)
    axis0 = None if st.sacral_axis is None else st.sacral_axis.copy()
    c = QtCore.QPointF(v.width() / 2, v.height() / 2)
    for _ in range(12):  # a wheel burst: one undo step
        QtCore.QCoreApplication.sendEvent(v, wheel(v, c, 120))
        QtCore.QCoreApplication.processEvents()
    scrolled = st.crosshair.copy()
    assert not np.allclose(scrolled, start[0])
    qtbot.wait(500)  # a pause: the next change is a new step
    for _ in range(3):  # ctrl+wheel zoom burst
        QtCore.QCoreApplication.sendEvent(v, wheel(v, c, 120, QtCore.Qt.KeyboardModifier.ControlModifier))
    zoomed = v.zoom
    qtbot.wait(500)
    st.apply_preset("soft-tissue")
    qtbot.wait(500)
    st.set_layout("2x2")
    qtbot.wait(500)
    st.set_sacral_axis(np.array([0.0, -0.6, 0.8]), source="reader")
    qtbot.wait(5)
    from sirad_viewer.state.annotations import Ruler

    n0 = len(st.annotations.items)
    st.annotations.add(Ruler(st.crosshair.copy(), st.crosshair + 10))
    _key(win, "Ctrl+Z")
    assert len(st.annotations.items) == n0  # the ruler
    _key(win, "Ctrl+Z")
    assert (st.sacral_axis is None) if axis0 is None else np.allclose(st.sacral_axis, axis0)
    _key(win, "Ctrl+Z")
    assert st.layout == start[2]
    _key(win, "Ctrl+Z")
    assert st.window == start[1]
    _key(win, "Ctrl+Z")
    assert v.zoom == pytest.approx(start[3]) and np.allclose(st.crosshair, scrolled)
    _key(win, "Ctrl+Z")  # the whole burst at once
    assert np.allclose(st.crosshair, start[0])
    # and forward again
    _key(win, "Ctrl+Shift+Z")
    assert np.allclose(st.crosshair, scrolled)
    _key(win, "Ctrl+Shift+Z")
    assert v.zoom == pytest.approx(zoomed)
    for _ in range(4):
        _key(win, "Ctrl+Shift+Z")
    assert st.layout == "2x2" and len(st.annotations.items) == n0 + 1 and st.window.preset == "soft-tissue"
    # leave the shared window as the other tests expect it
    st.annotations.undo()
    st.set_layout(start[2])
    st.apply_preset("bone")
    st.sacral_axis = axis0
    st.oblique_changed.emit()
    st.set_crosshair(start[0])
    v.reset_view()
    win.reading_tools.undo.reset()
    win.reading_tools.undo.history.coalesce_s = 0.6
    assert len(win.reading_tools.undo.history) == 0


def _moved_prior(win):
    from sirad_viewer.imaging.registration import RigidTransform

    cur = win.state.volume
    t = np.deg2rad(5.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    c = cur.center_world()
    shift = np.array([10.0, -6.0, 4.0])
    aff = np.eye(4)
    aff[:3, :3] = rot @ cur.affine[:3, :3]
    aff[:3, 3] = rot @ (cur.affine[:3, 3] - c) + c + shift
    return cur.with_array(cur.array, aff), RigidTransform(rot, c + shift - rot @ c)


def _click(view, pos: QtCore.QPointF) -> None:
    for kind in (QtCore.QEvent.Type.MouseButtonPress, QtCore.QEvent.Type.MouseButtonRelease):
        ev = QtGui.QMouseEvent(kind, pos, view.mapToGlobal(pos), QtCore.Qt.MouseButton.LeftButton,
                               QtCore.Qt.MouseButton.LeftButton if kind == QtCore.QEvent.Type.MouseButtonPress
                               else QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier)
        QtCore.QCoreApplication.sendEvent(view, ev)


@pytest.mark.parametrize("mirrored", [False, True])
def test_scrolling_and_clicking_in_the_prior_drive_the_current_view(win, qtbot, mirrored):
    """#13 review: scrolling in the prior view moved only the prior (the current one stayed); linked
    both ways in patient coordinates after the registration, mirrored or not."""
    st = win.state
    prior, tx = _moved_prior(win)
    cmp_ = win.reading_tools.prior
    cmp_.show(prior, tx)
    qtbot.wait(20)
    try:
        cmp_.set_mirrored(mirrored)
        v = cmp_.view
        st.set_crosshair(np.array(win.phantom.truth["joints"]["left"]["center_lps_mm"]))
        start = st.crosshair.copy()
        n = st.plane("oblique").normal
        c = QtCore.QPointF(v.width() / 2, v.height() / 2)
        for _ in range(3):  # a wheel burst in the prior view
            QtCore.QCoreApplication.sendEvent(v, wheel(v, c, 120))
        qtbot.waitUntil(lambda: not np.allclose(st.crosshair, start), timeout=2000)
        moved = st.crosshair - start
        assert float(moved @ n) > 1.0 and np.linalg.norm(moved - n * float(moved @ n)) < 1e-6  # along the normal
        assert np.allclose(cmp_.state.crosshair, tx.apply(st.crosshair), atol=1e-6)  # and the prior follows
        before = st.crosshair.copy()
        QtCore.QCoreApplication.sendEvent(v, QtGui.QKeyEvent(QtCore.QEvent.Type.KeyPress, QtCore.Qt.Key.Key_Down,
                                                             QtCore.Qt.KeyboardModifier.NoModifier))
        assert float((st.crosshair - before) @ n) < -0.5
        # a click on the prior puts the current crosshair on the same anatomy
        target = st.crosshair + 15.0 * st.plane("oblique").right
        pos = v.world_to_widget(tx.apply(target))
        centre = v.world_to_widget(cmp_.state.crosshair)
        # mirrored, the anatomy on the patient's left is drawn on the other side of the centre
        assert (pos.x() < centre.x()) == mirrored
        _click(v, pos)
        assert np.allclose(st.crosshair, target, atol=0.6), (st.crosshair, target)
        assert np.allclose(cmp_.state.crosshair, tx.apply(st.crosshair), atol=1e-6)
    finally:
        cmp_.set_mirrored(False)
        cmp_.close_prior()
