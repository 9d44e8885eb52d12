"""Slice overlays: heatmap with threshold and opacity, label outlines or fill, joint-box outlines."""
from __future__ import annotations

import numpy as np

from sirad_viewer.imaging import reslice as rs
from sirad_viewer.imaging.geometry import make_affine
from sirad_viewer.imaging.volume import Volume
from sirad_viewer.state.viewer import Overlays
from sirad_viewer.viz.overlay import compose


def _vol(arr):
    return Volume(arr, make_affine([0, 0, 0], np.eye(3)[::-1], [1, 1, 1]))


def test_heatmap_threshold_opacity_and_labels():
    ct = _vol(np.zeros((8, 40, 40), np.int16))
    heat = np.zeros((8, 40, 40), np.float32)
    heat[:, 10:20, 10:20] = 0.9
    heat[:, 25:30, 25:30] = 0.1
    lab = np.zeros((8, 40, 40), np.uint8)
    lab[:, 5:35, 30:38] = 2
    img = rs.reslice(ct, rs.axial(ct.index_to_world([4, 20, 20])))
    assert compose(img, Overlays()) is None
    ov = Overlays(heatmap=_vol(heat), threshold=0.2, opacity=0.5)
    out = compose(img, ov)
    assert out[15, 15, 3] > 100 and out[27, 27, 3] == 0  # below the threshold: transparent
    ov.heatmap_visible = False
    assert compose(img, ov) is None
    ov.labels, ov.labels_mode = _vol(lab), "outline"
    out = compose(img, ov)
    assert out[20, 34, 3] == 0 and out[5, 34, 3] > 0  # outline: the edge, not the inside
    ov.labels_mode = "fill"
    assert compose(img, ov)[20, 34, 3] > 0


def test_joint_box_outline():
    from sirad_viewer.ai.localise import JointBox

    ct = _vol(np.zeros((8, 40, 40), np.int16))
    img = rs.reslice(ct, rs.axial(ct.index_to_world([4, 20, 20])))
    c = ct.index_to_world([4, 20, 20])
    ov = Overlays(boxes=[JointBox("left", c, np.eye(3), np.array([10.0, 10.0, 20.0]), 1)])
    out = compose(img, ov)
    assert out is not None and out[20, 20, 3] == 0 and out[..., 3].sum() > 0


def test_stitched_heatmap_takes_the_larger_value_and_cuts_blocks_at_the_grid():
    from types import SimpleNamespace

    from sirad_viewer.viz.overlay import stitch_heatmap

    a = SimpleNamespace(offset=(0, 1, 1), block=np.full((2, 3, 3), 0.4, np.float32))
    b = SimpleNamespace(offset=(1, 2, 2), block=np.full((2, 3, 3), 0.7, np.float32))
    edge = SimpleNamespace(offset=(3, 8, -1), block=np.full((2, 4, 3), 0.9, np.float32))  # reaches past the grid
    heat = stitch_heatmap((4, 10, 10), [a, None, b, edge])
    assert heat.shape == (4, 10, 10) and heat.dtype == np.float32
    assert heat[0, 1, 1] == np.float32(0.4) and heat[1, 2, 2] == np.float32(0.7)  # overlap: the larger wins
    assert heat[2, 3, 3] == np.float32(0.7) and heat[0, 0, 0] == 0
    assert heat[3, 9, 0] == np.float32(0.9) and heat[3, 9, 1] == np.float32(0.9) and heat[3, 9, 2] == 0
    assert np.count_nonzero(heat) == 2 * 3 * 3 + 2 * 3 * 3 - 1 * 2 * 2 + 2 * 2  # nothing else is touched
