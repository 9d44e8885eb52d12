"""Bone-surface colours (per label, and the AI heatmap painted on) without a display."""
from __future__ import annotations

import numpy as np

from sirad_viewer.imaging.geometry import make_affine
from sirad_viewer.imaging.volume import Volume
from sirad_viewer.viz.mesh_colour import BONE_COLOUR, LABEL_COLOURS, base_colours, heatmap_colours, hex_rgb


def test_base_colours_per_label_and_bone_colour_for_unknown_labels():
    assert (base_colours(3) == np.array(hex_rgb(BONE_COLOUR), np.uint8)).all()
    rgb = base_colours(3, np.array([2, 0, 99]))
    assert tuple(rgb[0]) == hex_rgb(LABEL_COLOURS[2])
    assert tuple(rgb[1]) == hex_rgb(BONE_COLOUR) == tuple(rgb[2])


def test_heatmap_colours_only_points_above_threshold_blended_by_opacity():
    heat = np.zeros((10, 10, 10), np.float32)
    heat[:, :, 5:] = 1.0  # hot in the columns 5..9
    hv = Volume(heat, make_affine([0, 0, 0], np.eye(3)[::-1], [1, 1, 1]))
    base = base_colours(3)
    # index (slice, row, col) -> world: column is x, row is y, slice is z (affine above)
    pts = hv.index_to_world(np.array([[5, 5, 1], [5, 5, 8], [5, 5, 30]], float))
    out = heatmap_colours(pts, base, hv, threshold=0.5, opacity=0.6)
    assert out.dtype == np.uint8 and out.shape == (3, 3)
    assert (out[0] == base[0]).all()  # cold point: unchanged
    assert (out[2] == base[2]).all()  # outside the heatmap's grid: unchanged
    from sirad_viewer.viz.overlay import HEAT_LUT

    expected = (0.6 * HEAT_LUT[255].astype(np.float32) + 0.4 * base[1].astype(np.float32)).astype(np.uint8)
    assert (out[1] == expected).all()
    assert (heatmap_colours(pts, base, None) == base).all()  # None clears
