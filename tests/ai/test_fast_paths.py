"""The fast paths of the grading pipeline give the results of the plain ones.

Plain (reference) versions, written here as they were before the speed-ups: the crop sampled with
``map_coordinates`` at every crop point, the heatmap mapped over the whole block the rotated crop
covers and then masked to the joint box, block means by float32 average pooling, joint contact by
distance transforms of the whole coarse grid, the CT read by SimpleITK. Each fast path is compared
with its plain version, and the whole pipeline once with all of them swapped in.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai import grid as G
from sirad_viewer.ai import localise as L


def plain_extract_crop(volume, center_lps, side, spec, *, pad=0, fill_hu=-1024.0, axes=None):
    pts = spec.points(center_lps, side, pad=pad, axes=axes)
    idx = volume.world_to_index(pts.reshape(-1, 3))
    out = ndimage.map_coordinates(np.asarray(volume.array), idx.T, order=1, mode="constant", cval=fill_hu,
                                  prefilter=False, output=np.float32)
    return out.reshape(pts.shape[:-1])


def plain_cam_to_ct(cam, volume, center_lps, side, spec, region=None, *, target_grade=0, axes=None):
    hm = _orig_cam_to_ct(cam, volume, center_lps, side, spec, None, target_grade=target_grade, axes=axes)
    block = hm.block.copy()
    if region is not None:  # the whole block around the rotated crop, masked to the region
        idx = np.argwhere(np.ones(block.shape, bool)) + hm.offset
        block *= region.contains(volume.index_to_world(idx)).reshape(block.shape)
        if block.max() > 0:
            block /= block.max()
    return GR.Heatmap(side, int(target_grade), block, hm.offset, volume.shape)


_orig_cam_to_ct = GR.cam_to_ct


def plain_near(feature, target, sp, r_mm):
    if not feature.any():
        return np.zeros(target.shape, bool)
    return target & (ndimage.distance_transform_edt(~feature, sampling=sp) <= r_mm)


def plain_block_mean_int(arr, s, ks):
    return G._block_mean_float(arr, s, ks)


@pytest.fixture(scope="module")
def phantom(small_phantom):
    return small_phantom(left=1, right=3, seed=5)


@pytest.fixture(scope="module")
def box(phantom):
    from sirad_viewer.ai.localise import JointBox

    a = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))[0].T  # an oblique frame
    return JointBox("left", phantom.volume.center_world() + np.array([35.0, 10.0, 0.0]), a,
                    np.array([55.0, 33.0, 21.0]), 100)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("frame", ["joint", "world"])
def test_crop_equals_point_sampling(phantom, box, side, frame):
    spec = GR.CropSpec(np.array([1.5, 1.2, 1.0]), np.array([20, 18, 16]), (-200.0, 1500.0), True, frame == "joint")
    axes = box.axes_lps if frame == "joint" else None
    for pad in (0, 3):
        fast = GR.extract_crop(phantom.volume, box.center_lps_mm, side, spec, pad=pad, axes=axes)
        plain = plain_extract_crop(phantom.volume, box.center_lps_mm, side, spec, pad=pad, axes=axes)
        assert fast.shape == plain.shape == tuple(spec.size + 2 * pad)
        np.testing.assert_allclose(fast, plain, atol=1e-3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_heatmap_on_the_region_block_equals_the_masked_whole_block(phantom, box, side):
    spec = GR.CropSpec(np.array([1.5, 1.5, 1.5]), np.array([32, 32, 32]), (-200.0, 1500.0), True, True)
    cam = ndimage.gaussian_filter(np.random.default_rng(1).random((32, 32, 32)).astype(np.float32), 2.0)
    fast = GR.cam_to_ct(cam, phantom.volume, box.center_lps_mm, side, spec, box, target_grade=2, axes=box.axes_lps)
    plain = plain_cam_to_ct(cam, phantom.volume, box.center_lps_mm, side, spec, box, target_grade=2, axes=box.axes_lps)
    assert fast.block.size < plain.block.size / 2  # the region's block, not the rotated crop's
    np.testing.assert_allclose(fast.full(), plain.full(), atol=1e-5)
    assert fast.full().max() == pytest.approx(1.0)


def test_integer_block_mean_equals_float_pooling(phantom):
    vol = phantom.volume
    assert vol.array.dtype == np.int16
    for target in (4.0, 6.0):
        f = np.maximum(1, np.floor(target / vol.spacing + 1e-6).astype(int))
        s = [(n // k) * k for n, k in zip(vol.shape, f)]
        ks = tuple(int(k) for k in f)
        np.testing.assert_allclose(G._block_mean_int(vol.array, s, ks), G._block_mean_float(vol.array, s, ks),
                                   atol=1e-3)


def test_contact_on_sub_boxes_equals_whole_grid_distances():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(8, 30, 3))
        a = ndimage.binary_dilation(rng.random(shape) < 0.003, iterations=int(rng.integers(1, 4)))
        b = ndimage.binary_dilation(rng.random(shape) < 0.003, iterations=int(rng.integers(1, 4)))
        sp, r = rng.uniform(0.5, 4.0, 3), float(rng.uniform(1.0, 8.0))
        np.testing.assert_array_equal(L._near(a, b, sp, r), plain_near(a, b, sp, r))


def test_pipeline_fast_equals_plain(phantom, tmp_path, monkeypatch):
    """Grades equal, probabilities within 1e-5, heatmaps within 1e-4: CT written as plain .nii and read back."""
    from sirad_viewer.ai.pipeline import Grader
    from sirad_viewer.io import formats, open_volume
    from sirad_viewer.io.export import write_nifti

    p = write_nifti(phantom.volume, tmp_path / "ct.nii", sidecar=False)
    grader = Grader(device="cpu")
    fast = grader(open_volume(p), heatmaps=True)
    with monkeypatch.context() as m:
        m.setattr(formats, "_plain_nifti_voxels", lambda *a: None)
        m.setattr(GR, "extract_crop", plain_extract_crop)
        m.setattr(GR, "cam_to_ct", plain_cam_to_ct)
        m.setattr(G, "_block_mean_int", plain_block_mean_int)
        m.setattr(L, "_near", plain_near)
        vol = open_volume(p)
        plain = grader(vol, heatmaps=True)
    for side in ("left", "right"):
        a, b = fast.joints[side], plain.joints[side]
        assert a.grade == b.grade
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        np.testing.assert_allclose(a.box.center_lps_mm, b.box.center_lps_mm, atol=1e-6)
        np.testing.assert_allclose(a.heatmap.full(), b.heatmap.full(), atol=1e-4)
