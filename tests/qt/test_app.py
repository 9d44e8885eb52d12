"""The reading window under Xvfb: loading, slice views, W/L pixels, crosshair, 3D, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PyQt6 import QtCore, QtGui

from sirad_viewer.imaging.display import window_lut

pytestmark = pytest.mark.qt


def widget_grey(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_Grayscale8)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    return np.frombuffer(ptr, dtype=np.uint8).reshape(img.height(), img.bytesPerLine())[:, : img.width()].copy()


@pytest.fixture()
def window(qtbot):
    from sirad_viewer.qt.app import MainWindow

    win = MainWindow(interactive=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()


def load(win, path) -> None:
    win.open_path(str(path))
    assert win.wait_until_ready(), win.info.toPlainText()


def test_rendered_pixels_are_the_windowed_hu(window, phantom_nifti, qtbot):
    ph, path = phantom_nifti
    load(window, path)
    view = window.views["axial"]
    view.smooth = False
    vol = window.state.volume
    for width, level in ((2000, 500), (400, 40)):
        window.state.set_window(width, level)
        qtbot.wait(10)
        grey = widget_grey(view)
        img = view.slice_image()
        lut = window_lut(width, level)
        t = view.image_transform()
        checked = 0
        for r, c in [(40, 40), (80, 80), (100, 60), (70, 120), (80, 81)]:
            p = t.map(QtCore.QPointF(c + 0.5, r + 0.5))
            x, y = int(p.x()), int(p.y())
            hu = int(img.pixels[r, c])
            assert abs(int(grey[y, x]) - int(lut[hu + 32768])) <= 1, (r, c, hu)
            checked += 1
        assert checked == 5
    assert img.pixels.shape == vol.shape[1:]


def test_scroll_and_keys_move_through_slices_and_link_views(window, phantom_nifti, qtbot):
    _, path = phantom_nifti
    load(window, path)
    st = window.state
    axial = window.views["axial"]
    z0 = st.crosshair[2]
    pos = QtCore.QPointF(axial.width() / 2, axial.height() / 2)
    ev = QtGui.QWheelEvent(pos, axial.mapToGlobal(pos), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120),
                           QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier,
                           QtCore.Qt.ScrollPhase.NoScrollPhase, False)
    QtCore.QCoreApplication.sendEvent(axial, ev)
    qtbot.waitUntil(lambda: st.crosshair[2] != z0, timeout=2000)  # wheel steps are coalesced (#13)
    assert st.crosshair[2] == pytest.approx(z0 + st.volume.spacing[0])
    qtbot.keyClick(axial, QtCore.Qt.Key.Key_PageDown)
    assert st.crosshair[2] == pytest.approx(z0 - 9 * st.volume.spacing[0])
    # click in the axial view: the crosshair moves there and every view follows
    target = QtCore.QPoint(int(axial.width() * 0.3), int(axial.height() * 0.6))
    qtbot.mouseClick(axial, QtCore.Qt.MouseButton.LeftButton, pos=target)
    w = axial.widget_to_world(QtCore.QPointF(target))
    assert np.allclose(st.crosshair[:2], w[:2], atol=1e-6)
    for name in ("coronal", "sagittal", "oblique"):
        assert abs(float(window.views[name].plane().distance(st.crosshair))) < 1e-6
    cor = window.views["coronal"]
    assert cor.slice_image() is not None
    p = cor.world_to_widget(st.crosshair)
    assert p is not None and abs(p.x() - (cor.width() * 0.3)) < cor.width() * 0.3  # the cross is drawn in view


def test_right_drag_changes_window_level(window, phantom_nifti, qtbot):
    _, path = phantom_nifti
    load(window, path)
    v = window.views["axial"]
    before = window.state.window
    qtbot.mousePress(v, QtCore.Qt.MouseButton.RightButton, pos=QtCore.QPoint(100, 100))
    qtbot.mouseMove(v, QtCore.QPoint(160, 60))
    qtbot.mouseRelease(v, QtCore.Qt.MouseButton.RightButton, pos=QtCore.QPoint(160, 60))
    after = window.state.window
    assert after.width > before.width and after.level > before.level and after.preset == "custom"


def test_sagittal_drag_sets_the_oblique_plane(window, phantom_nifti, qtbot):
    ph, path = phantom_nifti
    load(window, path)
    sag = window.views["sagittal"]
    ax = ph.truth["sacral_axis"]
    a = sag.world_to_widget(np.array(ax["superior_point_lps_mm"]))
    b = sag.world_to_widget(np.array(ax["inferior_point_lps_mm"]))
    window.start_axis_mode()
    qtbot.mousePress(sag, QtCore.Qt.MouseButton.LeftButton, pos=a.toPoint())
    qtbot.mouseMove(sag, b.toPoint())
    qtbot.mouseRelease(sag, QtCore.Qt.MouseButton.LeftButton, pos=b.toPoint())
    st = window.state
    assert st.sacral_axis is not None and st.sacral_axis_source == "reader"
    truth_dir = np.array(ax["direction_lps"])
    assert abs(float(np.dot(st.sacral_axis, truth_dir))) > 0.99  # within ~8 degrees, pixel-snapped


def test_3d_view_shows_bone_and_a_click_moves_the_crosshair(window, phantom_nifti, qtbot):
    _, path = phantom_nifti
    load(window, path)
    v3 = window.view3d
    assert v3 is not None and window.mesh is not None and window.mesh.n_cells <= 200_000
    ren = v3.plotter.renderer
    target = np.asarray(window.mesh.center)
    # project the sacrum region (mesh centre shifted to a surface point) to the display
    pts = np.asarray(window.mesh.points)
    surf_pt = pts[np.argmin(np.linalg.norm(pts - target, axis=1))]
    ren.SetWorldPoint(*surf_pt, 1.0)
    ren.WorldToDisplay()
    x, y, _ = ren.GetDisplayPoint()
    img = v3.render_image()
    h = img.shape[0]
    assert img[int(h - 1 - y), int(x)].max() > 60  # bone-coloured, not the black background
    assert (img.max(axis=2) < 30).mean() > 0.2  # and the background around it stays black
    picked = v3.pick_at(int(x), int(y))
    assert picked is not None
    assert np.linalg.norm(window.state.crosshair - picked) < 1e-6
    assert np.min(np.linalg.norm(pts - picked, axis=1)) < 5.0  # on the bone surface


def test_layouts_and_settings_persist(window, tmp_path):
    window.state.set_layout("1x1")
    visible = [n for n, v in window.views.items() if v.isVisible()]
    assert visible == ["oblique"]
    window.state.set_layout("2x2")
    assert sorted(n for n, v in window.views.items() if v.isVisible()) == ["3d", "axial", "coronal", "sagittal"]
    assert window.settings.get("layout") == "2x2"
    window.settings.save_preset("sij-wide", 2500, 450)
    assert window.settings.presets["sij-wide"] == (2500.0, 450.0)


def test_screenshot_export_and_recent_files(window, phantom_nifti, tmp_path):
    _, path = phantom_nifti
    load(window, path)
    out = tmp_path / "layout.png"
    assert window.export_layout(str(out))
    img = QtGui.QImage(str(out))
    assert img.width() > 500 and img.height() > 300
    assert window.export_view(str(tmp_path / "axial.png"), "axial")
    assert window.settings.recent[0] == str(path)


def test_patient_text_can_be_hidden(window, phantom_nifti, qtbot):
    _, path = phantom_nifti
    load(window, path)
    v = window.views["axial"]
    with_text = widget_grey(v)
    window.state.set_show_patient_text(False)
    qtbot.wait(10)
    without = widget_grey(v)
    top_right = (slice(0, 40), slice(v.width() - 260, v.width()))
    assert (with_text[top_right] != without[top_right]).any()


def test_broken_file_gives_a_message_not_a_crash(window, tmp_path, monkeypatch):
    from sirad_viewer.qt import app as appmod

    shown = []
    monkeypatch.setattr(appmod, "show_error", lambda parent, exc: shown.append(exc))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 200)
    window.open_path(str(bad))
    assert not window.wait_until_ready(20_000)
    assert shown and "bad.dcm" in shown[0].user_message()
    assert "bad.dcm" in window.info.toPlainText()
    assert window.state.volume is None


def test_cancel_stops_loading(window, tmp_path, small_phantom):
    from sirad_viewer.io.export import write_dicom_series

    write_dicom_series(small_phantom(0, 0).volume, tmp_path / "series", deidentify=False)
    errors = []
    window.load_failed.connect(errors.append)
    window.open_path(str(tmp_path / "series"))
    window.cancel()
    assert not window.wait_until_ready(30_000)
    assert errors and getattr(errors[0], "code", "") == "cancelled"
    assert window.state.volume is None


def test_demo_case_opens_in_the_sij_layout(window, real_nifti):
    load(window, real_nifti)
    assert window.state.layout == "sij"
    assert window.state.volume.shape == (112, 101, 122)
    grey = widget_grey(window.views["oblique"])
    assert grey.std() > 20
