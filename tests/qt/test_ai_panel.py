"""Grade first, then compare: blinding before the lock, locked pre-AI grades, overlays, cancel, report."""
from __future__ import annotations

import numpy as np
import pytest
from PyQt6 import QtCore, QtGui, QtWidgets

pytestmark = pytest.mark.qt


def rgb(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    return np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()].reshape(
        img.height(), img.width(), 3).copy()


@pytest.fixture()
def win(qtbot):
    from sirad_viewer.qt.app import MainWindow

    w = MainWindow(interactive=False, with_3d=False)
    w.settings.set("ai_autorun", True)
    qtbot.addWidget(w)
    w.resize(1500, 950)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    qtbot.waitActive(w)  # shortcuts need the active window
    yield w
    w.close()


def open_and_wait_for_ai(w, path):
    w.open_path(str(path))
    assert w.wait_until_ready(), w.info.toPlainText()
    assert w.wait_for_ai(), w.ai_panel.hidden_label.text()
    assert not w.reading.ai_pending  # the AI has finished in the background ...


def all_texts(w) -> str:
    out = list(w.ai_panel.visible_texts())
    for child in w.findChildren(QtWidgets.QWidget):
        for attr in ("text", "toolTip", "windowTitle", "toPlainText"):
            fn = getattr(child, attr, None)
            if callable(fn):
                try:
                    v = fn()
                except TypeError:
                    continue
                if isinstance(v, str):
                    out.append(v)
    out += [a.text() for a in w.findChildren(QtGui.QAction)]
    out.append(w.statusBar().currentMessage())
    return "\n".join(out)


def test_no_ai_result_is_reachable_before_the_lock(win, real_nifti, tmp_path):
    open_and_wait_for_ai(win, real_nifti)
    result = win.reading._ai
    assert result is not None
    # ... but nothing of it is reachable: not from the reading, the panel, the views or the actions
    assert win.reading.ai is None
    texts = all_texts(win)
    assert "AI grade" not in texts and "Patient (modified New York)" not in texts
    assert "hidden until you lock" in texts
    assert all(b.values is None for b in win.ai_panel.bars5.values())
    assert all(b.values is None for b in win.ai_panel.bars3.values())
    assert not win.ai_panel.result_box.isVisibleTo(win.ai_panel)
    assert not win.ai_panel.overlay_box.isEnabled()
    ov = win.state.overlays
    assert ov.heatmap is None and ov.labels is None and not ov.boxes
    before = win.state.crosshair.copy()
    win.jump_to_joint("left")
    win.set_side_by_side(True)
    win._on_overlay_control({"heatmap_visible": True})
    assert np.allclose(win.state.crosshair, before) and win.state.layout != "joints"
    assert win.state.overlays.heatmap is None
    assert win.write_report(str(tmp_path / "r.html")) is None and not (tmp_path / "r.html").exists()
    win.ai_panel.grading.lock_button.click()  # not enabled without grades: nothing happens
    assert win.reading.ai is None and not win.reading.locked


def test_lock_reveals_and_the_pre_ai_grade_cannot_change(win, real_nifti, qtbot, tmp_path):
    from sirad_viewer.state.reading import ReadingError

    open_and_wait_for_ai(win, real_nifti)
    win.ai_panel.grading.setFocus()
    qtbot.keyClick(win, QtCore.Qt.Key.Key_1)  # right joint (highlighted first)
    qtbot.keyClick(win, QtCore.Qt.Key.Key_3)  # then the left
    assert (win.reading.pre.right, win.reading.pre.left) == (1, 3)
    assert win.reading.ai is None
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Return, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert win.reading.locked
    res = win.reading.ai
    assert res is not None
    texts = all_texts(win)
    assert f"AI grade {res.joints['right'].grade}" in texts and "Patient (modified New York)" in texts
    assert win.state.overlays.heatmap is not None and len(win.state.overlays.boxes) == 2
    # revising after the reveal is a separate post-AI grade; the pre-AI grade never changes
    win.ai_panel.grading.groups["right"].button(4).click()
    assert win.reading.pre.right == 1 and win.reading.post.right == 4
    with pytest.raises(ReadingError):
        win.reading.lock()
    # the reads log holds the locked grades and the revision
    from sirad_viewer.state.reading import latest_reading

    got = latest_reading(win.reading.log_path, win.reading.case)
    assert got["pre_ai"]["right"] == 1 and got["pre_ai"]["left"] == 3 and got["post_ai"]["right"] == 4
    # the report holds both
    out = win.write_report(str(tmp_path / "report.html"))
    html = out.read_text()
    assert "Reader, before AI (locked)</td><td>1 (suspicious changes)" in html
    assert "Reader, after AI</td><td>4 (total ankylosis)" in html
    assert "phantom" in html.lower() and html.count("data:image/png;base64") == 4
    # jump to a joint and the side-by-side mode
    win.jump_to_joint("left")
    assert np.allclose(win.state.crosshair, res.joints["left"].box.center_lps_mm, atol=3.0)
    win.set_side_by_side(True)
    assert win.state.layout == "joints" and win.views["joint-left"].isVisible()
    win.set_side_by_side(False)
    assert win.state.layout == "sij"


def test_heatmap_toggle_changes_pixels_only_where_the_heatmap_is(win, real_nifti, qtbot):
    open_and_wait_for_ai(win, real_nifti)
    win.reading.set_grade("right", 0)
    win.reading.set_grade("left", 0)
    win.lock_and_reveal()
    win.state.set_layout("1x1")
    win.active_view = "axial"
    win.state.set_layout("sij")
    win.state.set_crosshair(win.reading.ai.joints["right"].box.center_lps_mm)
    view = win.views["axial"]
    QtWidgets.QApplication.processEvents()
    on = rgb(view)
    qtbot.keyClick(win, QtCore.Qt.Key.Key_H)
    assert not win.state.overlays.heatmap_visible
    QtWidgets.QApplication.processEvents()
    off = rgb(view)
    diff = np.abs(on.astype(int) - off.astype(int)).sum(axis=2) > 30
    bar = diff.copy()
    bar[:, : view.width() - 40] = False
    assert bar.any()  # the colour bar is shown with the heatmap
    diff[:, view.width() - 130:] = False  # the colour bar and, below it, the joint-box legend
    assert diff.sum() > 200  # the heatmap was drawn ...
    # ... and only there: map the changed pixels back to the world and look the heatmap up
    ys, xs = np.nonzero(diff)
    hm = win.state.overlays.heatmap
    heat = []
    for y, x in zip(ys[::25], xs[::25]):
        w = view.widget_to_world(QtCore.QPointF(float(x), float(y)))
        if w is None:
            continue
        i = np.rint(hm.world_to_index(w)).astype(int)
        if np.all(i >= 0) and np.all(i < hm.shape):
            heat.append(hm.array[tuple(i)])
    heat = np.array(heat)
    assert len(heat) > 5 and np.mean(heat > 0.05) > 0.8
    qtbot.keyClick(win, QtCore.Qt.Key.Key_H)
    assert win.state.overlays.heatmap_visible


def test_cancel_stops_a_run(win, real_nifti):
    win.settings.set("ai_autorun", False)
    win.open_path(str(real_nifti))
    assert win.wait_until_ready()
    assert win.reading.ai_pending
    win.start_ai()
    win.cancel_ai()
    assert not win.wait_for_ai()
    assert win.reading.ai_pending and win.reading._ai is None
    assert "cancelled" in win.ai_panel.stage_label.text()
    assert win.ai_panel.run_button.isEnabled()


def test_ai_visible_at_once_setting_for_clinical_reading(win, real_nifti):
    win.settings.set("ai_visible_at_once", True)
    open_and_wait_for_ai(win, real_nifti)
    assert not win.reading.locked and win.reading.ai is not None
    assert win.state.overlays.heatmap is not None


def test_flagged_result_shows_not_reliable_above_the_grades(qtbot):
    """An OOD-flagged result: the warning is shown, and above the grades (not in a footnote)."""
    from sirad_viewer.ai.localise import JointBox
    from sirad_viewer.ai.pipeline import GradeResult, JointResult
    from sirad_viewer.qt.ai_panel import AIPanel

    box = JointBox("left", np.zeros(3), np.eye(3), np.ones(3) * 30, 100)
    p = np.array([0.02, 0.03, 0.05, 0.1, 0.8])
    joints = {s: JointResult(s, box, p, np.log(p), [[0, 1], [2, 3], [4]],
                             ood={"score": 11.4, "threshold": 5.0, "flagged": True}) for s in ("left", "right")}

    class Loc:
        def sacral_axis_dict(self):
            return {}

    res = GradeResult({"name": "m", "version": "0"}, joints, Loc(), {}, "cpu")

    class Reading:  # a revealed reading, as the core's Reading exposes it
        ai, ai_allowed, ai_revealed, ai_error, ai_pending = res, True, True, None, False

    panel = AIPanel()
    qtbot.addWidget(panel)
    panel.reading = Reading()
    panel.refresh()
    panel.resize(420, 900)
    panel.show()
    qtbot.waitExposed(panel)
    assert "unlike the training data" in panel.ood_label.text() and panel.ood_label.isVisible()
    top = lambda w: w.mapTo(panel, QtCore.QPoint(0, 0)).y()  # noqa: E731
    assert top(panel.ood_label) < top(panel.joint_labels["right"]) < top(panel.patient_label)
    assert "not reliable" in panel.joint_labels["right"].text()
    assert panel.joint_labels["right"].text().index("not reliable") < panel.joint_labels["right"].text().index("AI grade 4")
    assert "(not reliable)" in panel.patient_label.text()


# --- #13 review: the panel in its dock: pinned disclaimer, warning before the grade, no clipping ------

class _Joint:
    def __init__(self, groups):
        self.groups = groups


class _FlaggedResult:
    """What the panel reads of a pipeline result (``to_dict`` and each joint's grade groups)."""

    joints = {"right": _Joint([[0, 1], [2], [3, 4]]), "left": _Joint([[0, 1], [2], [3, 4]])}

    def to_dict(self):
        ood = {"score": 7.4, "threshold": 5.6, "flagged": True}
        j = {"grade": 4, "probabilities": [0.02, 0.02, 0.04, 0.08, 0.84], "category3": 2, "category3_label": "3-4",
             "category3_probabilities": [0.04, 0.04, 0.92], "ood": ood}
        return {"ood_flagged": True, "joints": {"right": dict(j), "left": dict(j)},
                "reliability": "AI result unlike the training data \u2014 not reliable (right joint: OOD score 7.4 > "
                               "threshold 5.6; left joint: OOD score 7.4 > threshold 5.6)",
                "patient": {"as_positive": True, "probability": 0.97,
                            "explanation": "grade 3-4 on one side meets the modified New York criterion"},
                "timings_s": {"segmentation": 1.23, "grading": 0.45, "gradcam": 0.61}}


@pytest.fixture()
def revealed_panel(qtbot, tmp_path):
    """The main window at its default size with a locked reading whose (flagged) AI result is revealed."""
    from sirad_viewer.qt.app import MainWindow
    from sirad_viewer.state.reading import Reading

    w = MainWindow(interactive=False, with_3d=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    r = Reading("case-x", log_path=tmp_path / "reads.jsonl")
    r.set_grade("right", 1)
    r.set_grade("left", 1)
    r.lock()
    r.receive_ai(_FlaggedResult())
    w.ai_panel.bind(r)
    for _ in range(3):
        QtWidgets.QApplication.processEvents()
    yield w
    w.ai_panel.bind(None)
    w.close()


def _in(widget, outer) -> QtCore.QRect:
    return QtCore.QRect(widget.mapTo(outer, QtCore.QPoint(0, 0)), widget.size())


def test_disclaimer_stays_in_view_when_the_results_scroll(revealed_panel, qtbot):
    """#13: the disclaimer scrolled out of view above the results."""
    w = revealed_panel
    p = w.ai_panel
    dock = w.ai_dock
    scrollers = [s for s in dock.findChildren(QtWidgets.QScrollArea) if s.verticalScrollBar().maximum() > 0]
    assert scrollers, "the results fit without scrolling at this size: the test would prove nothing"
    for s in scrollers:
        s.verticalScrollBar().setValue(s.verticalScrollBar().maximum())
    QtWidgets.QApplication.processEvents()
    # scrolled to the end: the last result is in view, and so is the whole disclaimer
    assert p.timing_label.visibleRegion().boundingRect().height() > 0
    disc = [lab for lab in p.findChildren(QtWidgets.QLabel) if lab.text().startswith("Demo model trained")]
    assert len(disc) == 1
    vis = disc[0].visibleRegion().boundingRect()
    assert vis.height() == disc[0].height() and vis.width() == disc[0].width(), vis
    assert dock.rect().contains(_in(disc[0], dock))


def test_ood_warning_comes_before_the_grade(revealed_panel):
    """#13: the out-of-distribution warning must be seen before the grade."""
    w = revealed_panel
    p = w.ai_panel
    labels = [lab for lab in p.findChildren(QtWidgets.QLabel) if lab.isVisibleTo(p) and lab.text()]
    warn = [lab for lab in labels if "not reliable" in lab.text() and "OOD score" in lab.text()]
    grade = list(p.joint_labels.values())
    assert warn and all("AI grade" in g.text() for g in grade)
    y_warn = warn[0].mapTo(w, QtCore.QPoint(0, 0)).y()
    assert all(y_warn < g.mapTo(w, QtCore.QPoint(0, 0)).y() for g in grade)
    # pinned: whatever the scroll position, the warning stays where the disclaimer is
    for s in w.ai_dock.findChildren(QtWidgets.QScrollArea):
        s.verticalScrollBar().setValue(s.verticalScrollBar().maximum())
    QtWidgets.QApplication.processEvents()
    assert warn[0].visibleRegion().boundingRect().height() == warn[0].height()
    # and in each joint's own line the flag precedes the grade
    for g in grade:
        t = g.text()
        assert t.index("not reliable") < t.index("AI grade")


def test_nothing_is_clipped_at_the_default_dock_width(revealed_panel):
    """#13: the OOD warning, '... Right SIJ: AI grade 4 (...' and the grading panel's confidence box and
    'Locked' button ran past the dock's right edge."""
    w = revealed_panel
    p = w.ai_panel
    dock = w.ai_dock
    right = dock.width()
    for child in p.findChildren(QtWidgets.QWidget):
        if not child.isVisibleTo(p) or isinstance(child, (QtWidgets.QScrollBar,)) or child.width() == 0:
            continue
        r = _in(child, dock)
        assert r.right() <= right, (type(child).__name__, getattr(child, "text", lambda: "")(), r, right)
        if isinstance(child, QtWidgets.QLabel) and not child.wordWrap() and child.text():
            assert child.sizeHint().width() <= child.width() + 1, child.text()
    assert p.grading.lock_button.text() == "Locked"
    assert _in(p.grading.confidence, dock).right() <= right


def test_categories_are_named_in_words(revealed_panel):
    """#13: '3-category 4' was cryptic; the groups come from the model (here 0-1 / 2 / 3-4)."""
    p = revealed_panel.ai_panel
    t = p.joint_labels["right"].text()
    assert "grades 3-4, marked damage or ankylosis" in t and "3-category" not in t
    cats = p.category_labels["right"].text()
    assert "grades 0-1, normal or suspicious" in cats and "grade 2, minimal abnormality" in cats
    assert p.bars3["right"].labels == ["0-1", "2", "3-4"]
