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


def _axis(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([0.0, -np.sin(t), np.cos(t)])


def test_a_proposed_oblique_plane_far_from_the_sacrum_is_refused_with_a_warning():
    """#13: the AI-derived plane on the real CT was 57 degrees from craniocaudal."""
    from sirad_viewer.imaging import Volume

    st = ViewerState()
    st.set_volume(Volume(np.zeros((10, 10, 10), np.int16), np.eye(4)))
    st.set_sacral_axis(_axis(57.0), source="segmentation")
    assert st.sacral_axis is None and "57°" in st.oblique_warning and "default" in st.oblique_warning
    st.set_sacral_axis_from_line(np.zeros(3), 40 * _axis(33.0))  # the reader's own axis
    st.set_sacral_axis(_axis(57.0), source="segmentation")
    assert np.allclose(st.sacral_axis, _axis(33.0)) and "your axis" in st.oblique_warning
    st.set_sacral_axis(_axis(35.0) + np.array([0.6, 0, 0]), source="segmentation")  # leaning sideways
    assert np.allclose(st.sacral_axis, _axis(33.0))
    st.set_sacral_axis(_axis(30.0), source="segmentation")
    assert np.allclose(st.sacral_axis, _axis(30.0)) and st.oblique_warning == ""


def test_a_new_case_carries_no_annotations_and_oblique_render_settings_are_checked():
    from sirad_viewer.imaging import Volume
    from sirad_viewer.state.annotations import Ruler

    st = ViewerState()
    st.set_volume(Volume(np.zeros((10, 10, 10), np.int16), np.eye(4)))
    st.annotations.add(Ruler(np.zeros(3), np.ones(3)))
    st.set_volume(Volume(np.zeros((10, 10, 10), np.int16), np.eye(4)))
    assert st.annotations.items == []
    st.set_oblique_render(interp="cubic", slab_mm=5, slab_mode="mip")
    assert (st.oblique_interp, st.oblique_slab_mm, st.oblique_slab_mode) == ("cubic", 5.0, "mip")
    with pytest.raises(ValueError):
        st.set_oblique_render(slab_mm=-1)
    with pytest.raises(ValueError):
        st.set_oblique_render(interp="sinc")
