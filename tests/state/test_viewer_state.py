from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.imaging import reslice as rs
from sirad_viewer.state.viewer import ViewerState


def test_crosshair_is_shared_clamped_and_evented(small_phantom):
    st = ViewerState()
    seen = []
    st.crosshair_changed.connect(seen.append)
    st.set_volume(small_phantom(0, 0).volume)
    assert len(seen) == 1
    st.set_crosshair([1e6, 0, 0])
    assert st.crosshair[0] == pytest.approx(st.volume.bounds_world()[1][0])
    p = st.volume.center_world()
    st.set_crosshair(p)
    for name in ("axial", "coronal", "sagittal", "oblique"):
        assert abs(float(st.plane(name).distance(p))) < 1e-9  # every view passes through it


def test_scrolling_moves_one_slice(small_phantom):
    st = ViewerState()
    st.set_volume(small_phantom(0, 0).volume)
    z0 = st.crosshair[2]
    st.step_along(st.plane("axial"), 3)
    assert st.crosshair[2] - z0 == pytest.approx(3 * st.volume.spacing[0])
    x0 = st.crosshair[0]
    st.step_along(st.plane("sagittal"), 2)  # sagittal normal points to the patient's right
    assert st.crosshair[0] - x0 == pytest.approx(-2 * st.volume.spacing[2])


def test_oblique_plane_from_a_sagittal_drag_passes_through_the_phantom_sacrum(small_phantom):
    ph = small_phantom(0, 0, seed=3, matrix=256, fov_mm=300.0, slice_thickness_mm=1.0, slice_spacing_mm=1.0)
    st = ViewerState()
    st.set_volume(ph.volume)
    ax = ph.truth["sacral_axis"]
    sup, inf = np.array(ax["superior_point_lps_mm"]), np.array(ax["inferior_point_lps_mm"])
    st.set_sacral_axis_from_line(sup, inf)
    plane = st.plane("oblique")
    assert abs(plane.distance(sup)) < 1e-6 and abs(plane.distance(inf)) < 1e-6
    # The plane holds the left-right direction: moved (scrolled) to one joint, it meets the other.
    left = np.array(ph.truth["joints"]["left"]["center_lps_mm"])
    right = np.array(ph.truth["joints"]["right"]["center_lps_mm"])
    through = plane.moved_to(left)
    assert abs(through.distance(right)) < 2.0
    # and the oblique image there shows both joints: a soft-tissue gap between bright bone
    img = rs.reslice(st.volume, through)
    for c in (left, right):
        r, col = (int(round(v)) for v in img.pixel_of(c))
        row = img.pixels[r, col - 10: col + 11].astype(float)
        assert row.min() < 250 and row.max() > 600, row


def test_presets_and_layouts():
    st = ViewerState()
    st.apply_preset("soft-tissue")
    assert (st.window.width, st.window.level) == (400, 40)
    st.apply_preset("mine", {"mine": (900, 120)})
    assert st.window.preset == "mine"
    with pytest.raises(KeyError):
        st.set_layout("3x3")
    with pytest.raises(ValueError):
        st.set_sacral_axis_from_line([0, 0, 0], [0, 0, 1])
