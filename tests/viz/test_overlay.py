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
