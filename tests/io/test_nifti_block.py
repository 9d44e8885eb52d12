"""write_nifti_block: a sub-block of a CT grid written with its own origin keeps every voxel's
world position and value (the heatmaps of ``sirad grade --heatmaps``)."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.imaging.geometry import make_affine
from sirad_viewer.imaging.volume import Volume
from sirad_viewer.io.export import write_nifti_block
from sirad_viewer.io.formats import read_volume_file


def _rotation(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("deg", [0.0, 17.0])
def test_block_keeps_world_positions_and_values(tmp_path, deg):
    dirs = (_rotation(deg) @ np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]).T).T  # slice, row, column axes
    ct = Volume(array=np.zeros((40, 50, 60), np.int16) - 1000,
                affine=make_affine([-12.5, 30.0, 101.0], dirs, [2.5, 0.7, 0.8]))
    rng = np.random.default_rng(3)
    block = rng.random((9, 11, 13)).astype(np.float32)
    offset = np.array([5, 20, 31])
    p = write_nifti_block(ct, block, offset, tmp_path / "heatmap_left.nii.gz")
    assert p.exists() and (tmp_path / "heatmap_left.json").exists()
    back = read_volume_file(p)
    assert back.shape == block.shape
    np.testing.assert_array_equal(back.array, block)  # float32 written as is
    # every block voxel sits where the same voxel of the CT grid is
    idx = np.array([[0, 0, 0], [8, 10, 12], [3, 7, 2]])
    world_back = (back.affine @ np.c_[idx, np.ones(3)].T)[:3].T
    world_ct = (ct.affine @ np.c_[idx + offset, np.ones(3)].T)[:3].T
    np.testing.assert_allclose(world_back, world_ct, atol=1e-4)


def test_block_reads_the_same_in_nibabel(tmp_path):
    nib = pytest.importorskip("nibabel")
    from sirad_viewer.imaging.geometry import affine_to_nifti

    ct = Volume(array=np.zeros((30, 40, 50), np.int16),
                affine=make_affine([5.0, -7.0, 11.0], np.eye(3)[::-1], [2.0, 0.9, 0.8]))
    block = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) / 120
    p = write_nifti_block(ct, block, [10, 3, 7], tmp_path / "h.nii.gz")
    img = nib.load(str(p))
    ref = ct.with_array(block, ct.affine.copy())
    ref.affine[:3, 3] = (ct.affine @ np.array([10, 3, 7, 1.0]))[:3]
    np.testing.assert_allclose(img.affine, affine_to_nifti(ref.affine), atol=1e-4)  # RAS, x = column
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.transpose(block, (2, 1, 0)))
    assert int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0


def test_sheared_grid_falls_back_to_nibabel_and_keeps_the_shear(tmp_path):
    """A tilted-gantry grid (sheared affine), which SimpleITK cannot hold, is written by nibabel."""
    nib = pytest.importorskip("nibabel")
    from sirad_viewer.imaging.geometry import affine_to_nifti

    affine = make_affine([0.0, 0.0, 0.0], np.eye(3)[::-1], [2.0, 0.8, 0.8])
    affine[1, 0] = 0.5  # the slice axis leans in y: 14 degrees of gantry tilt
    ct = Volume(array=np.zeros((20, 30, 40), np.int16), affine=affine)
    block = np.full((3, 4, 5), 0.25, np.float32)
    p = write_nifti_block(ct, block, [2, 3, 4], tmp_path / "h.nii.gz")
    want = affine.copy()
    want[:3, 3] = (affine @ np.array([2, 3, 4, 1.0]))[:3]
    np.testing.assert_allclose(nib.load(str(p)).affine, affine_to_nifti(want), atol=1e-4)
