"""Measurements against the truth: ROI statistics equal numpy's on the same voxels; a ruler
across a phantom's joint gap reads the phantom's known width within one voxel."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.imaging import Volume
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging import measure
from sirad_viewer.state.annotations import Ruler


@pytest.fixture()
def noise() -> Volume:
    rng = np.random.default_rng(3)
    arr = rng.integers(-500, 1500, size=(20, 40, 50)).astype(np.int16)
    return Volume(arr, geo.make_affine([-20.0, -30.0, 5.0], np.eye(3)[::-1], [2.0, 0.8, 0.8]))


def test_roi_mean_equals_numpy_on_the_same_voxels(noise):
    k = 7
    center = noise.index_to_world([k, 21.0, 24.0])
    radius = 4.0
    stats = measure.roi_stats(noise, center, radius, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    # independently: voxels of slice k whose centres lie within 4 mm of the centre
    jj, ii = np.mgrid[0:40, 0:50]
    d = np.hypot((jj - 21.0) * 0.8, (ii - 24.0) * 0.8)
    expected = noise.array[k][d <= radius + 1e-6].astype(float)
    assert stats["n"] == expected.size > 50
    assert stats["mean"] == pytest.approx(expected.mean(), abs=1e-9)
    assert stats["sd"] == pytest.approx(expected.std(), abs=1e-9)
    assert (stats["min"], stats["max"]) == (expected.min(), expected.max())


def test_roi_on_an_oblique_plane_uses_the_plane_pixels_inside_the_circle(noise):
    from sirad_viewer.imaging import reslice as rs

    plane = rs.oblique_coronal(noise.center_world(), [0.0, -0.6, 0.8])
    stats = measure.roi_stats(noise, plane.point, 5.0, plane.right, plane.down)
    img = rs.reslice(noise, plane, fov_mm=12.8, pixel_mm=0.8)  # 17x17 pixels, the middle one on the centre
    h, w = img.pixels.shape
    rr, cc = np.mgrid[0:h, 0:w]
    world = img.origin + rr[..., None] * img.down_step + cc[..., None] * img.right_step
    inside = np.linalg.norm(world - plane.point, axis=-1) <= 5.0 + 1e-6
    assert stats["n"] == inside.sum()
    assert stats["mean"] == pytest.approx(img.pixels[inside].astype(float).mean(), abs=1e-9)


def test_ruler_across_the_phantom_joint_gap_reads_the_known_width(small_phantom):
    ph = small_phantom(0, 0)
    vol, truth = ph.volume, ph.truth
    ax = np.array(truth["sacral_axis"]["direction_lps"])
    across = np.cross(ax, np.array(truth["sacral_axis"]["thickness_direction_lps"]))
    across /= np.linalg.norm(across)  # the direction the phantom's gap width is defined along
    voxel = float(vol.spacing.max())
    for side in ("left", "right"):
        c = np.array(truth["joints"][side]["center_lps_mm"])
        t, hu = measure.line_profile(vol, c - 8 * across, c + 8 * across)
        # the reader puts the ruler's ends where the gap's edges are (half way from gap to bone)
        mid = len(t) // 2
        lo = mid - 40 + int(np.argmin(hu[mid - 40:mid + 40]))
        a, b = lo, lo
        while a > 0 and hu[a] < (hu[lo] + hu[:lo].max()) / 2:
            a -= 1
        while b < len(t) - 1 and hu[b] < (hu[lo] + hu[lo:].max()) / 2:
            b += 1
        p0, p1 = c - 8 * across + t[a] * across, c - 8 * across + t[b] * across
        ruler = Ruler(p0, p1)
        assert abs(ruler.length_mm - truth["joints"][side]["gap_mm"]) <= voxel, side
