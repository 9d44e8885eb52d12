"""The undo timeline of view changes and annotation edits (#13 tool 7), without Qt."""
from __future__ import annotations

import numpy as np

from sirad_viewer.state.history import ANNOTATION, UndoHistory


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _state():
    from sirad_viewer.imaging.volume import Volume
    from sirad_viewer.state.viewer import ViewerState

    st = ViewerState()
    st.set_volume(Volume(np.zeros((20, 30, 40), np.int16), np.eye(4)))
    return st


def test_a_burst_of_one_kind_is_one_step_and_undo_redo_walk_back_and_forth():
    clock = FakeClock()
    h = UndoHistory(coalesce_s=0.5, clock=clock)
    st = _state()
    start = st.view_snapshot()
    plane = st.plane("axial")
    for _ in range(20):  # a wheel burst: 20 steps 30 ms apart
        before = st.view_snapshot()
        st.step_along(plane, 1)
        h.record_view(before, "scroll")
        clock.t += 0.03
    after_scroll = st.view_snapshot()
    assert len(h) == 1 and not np.allclose(after_scroll.crosshair, start.crosshair)
    clock.t += 2.0  # a pause, then a window drag: a new step
    for k in range(10):
        before = st.view_snapshot()
        st.set_window(2000 + 50 * k, 500)
        h.record_view(before, "window")
        clock.t += 0.05
    h.record_annotation()
    assert len(h) == 3
    # undo: the annotation marker, then the whole drag, then the whole burst
    assert h.undo(st.view_snapshot()).kind == ANNOTATION
    step = h.undo(st.view_snapshot())
    st.restore_view(step.view)
    assert st.window.width == 2000 and np.allclose(st.crosshair, after_scroll.crosshair)
    step = h.undo(st.view_snapshot())
    st.restore_view(step.view)
    assert np.allclose(st.crosshair, start.crosshair) and h.undo(st.view_snapshot()) is None
    # redo goes forward again, in order
    st.restore_view(h.redo(st.view_snapshot()).view)
    assert np.allclose(st.crosshair, after_scroll.crosshair) and st.window.width == 2000
    st.restore_view(h.redo(st.view_snapshot()).view)
    assert st.window.width == 2450
    assert h.redo(st.view_snapshot()).kind == ANNOTATION and not h.can_redo
    # a new change after an undo drops the redo branch
    h.undo(st.view_snapshot())
    h.record_view(st.view_snapshot(), "zoom")
    assert not h.can_redo


def test_changes_of_different_kinds_or_after_a_pause_are_separate_steps():
    clock = FakeClock()
    h = UndoHistory(coalesce_s=0.5, clock=clock)
    st = _state()
    assert h.record_view(st.view_snapshot(), "scroll")
    clock.t += 0.1
    assert h.record_view(st.view_snapshot(), "zoom")  # another kind
    clock.t += 0.1
    assert not h.record_view(st.view_snapshot(), "zoom")
    clock.t += 0.6
    assert h.record_view(st.view_snapshot(), "zoom")  # after a pause
    h.end_burst()
    assert h.record_view(st.view_snapshot(), "zoom")  # a new gesture
    assert len(h) == 4


def test_restore_view_puts_back_layout_window_and_the_oblique_plane():
    st = _state()
    snap = st.view_snapshot({"axial": (2.0, 10.0, -5.0)})
    st.set_layout("2x2")
    st.apply_preset("soft-tissue")
    st.set_sacral_axis(np.array([0.0, -0.5, 0.866]), source="reader")
    st.set_crosshair(st.crosshair + 5)
    seen = []
    st.oblique_changed.connect(lambda *_: seen.append("oblique"))
    st.restore_view(snap)
    assert st.layout == snap.layout and st.window.preset == "bone" and st.sacral_axis is None
    assert np.allclose(st.crosshair, snap.crosshair) and "oblique" in seen
    assert snap.views == {"axial": (2.0, 10.0, -5.0)} and snap.same_as(st.view_snapshot({"axial": (2.0, 10.0, -5.0)}))
