from __future__ import annotations

import itertools

import numpy as np
import pytest

from sirad_viewer.imaging import Volume
from sirad_viewer.imaging import geometry as geo


def random_affine(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return geo.make_affine(rng.normal(scale=100, size=3), q.T, rng.uniform(0.5, 3.0, size=3))


def test_index_world_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = random_affine(rng)
        idx = rng.uniform(-5, 300, size=(50, 3))
        assert np.allclose(geo.world_to_index(a, geo.index_to_world(a, idx)), idx, atol=1e-9)


def test_lps_ras_is_an_involution_and_flips_x_y():
    p = np.array([[10.0, -20.0, 30.0]])
    assert np.allclose(geo.lps_to_ras(p), [[-10.0, 20.0, 30.0]])
    assert np.allclose(geo.ras_to_lps(geo.lps_to_ras(p)), p)


def test_nifti_and_sitk_affine_round_trips():
    rng = np.random.default_rng(1)
    for _ in range(10):
        a = random_affine(rng)
        assert np.allclose(geo.affine_from_nifti(geo.affine_to_nifti(a)), a)
        o, s, d = geo.affine_to_sitk(a)
        assert np.allclose(geo.affine_from_sitk(o, s, d), a)


def test_nifti_affine_maps_same_voxel_to_same_point():
    """Voxel (x=i, y=j, z=k) of a NIfTI array is voxel (slice=k, row=j, column=i) of ours."""
    ras = np.array([[-0.8, 0, 0, 100.0], [0, 0.8, 0, -50.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    ours = geo.affine_from_nifti(ras)
    i, j, k = 7, 11, 3
    p_ras = ras @ [i, j, k, 1]
    p_lps = geo.index_to_world(ours, [k, j, i])
    assert np.allclose(geo.lps_to_ras(p_lps), p_ras[:3])


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", list(itertools.product([False, True], repeat=3)))
def test_reorientation_keeps_every_voxel_at_its_world_position(perm, flips):
    rng = np.random.default_rng(2)
    arr = rng.integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)
    base = Volume(arr, geo.make_affine([1.0, 2.0, 3.0], np.eye(3)[::-1], [2.0, 1.0, 0.5]))
    # store the same data permuted/flipped, with the matching affine
    stored = np.transpose(arr, perm)
    stored_aff = geo.permute_affine(base.affine, arr.shape, perm, (False, False, False))
    axes = tuple(i for i, f in enumerate(flips) if f)
    stored_aff = geo.permute_affine(stored_aff, stored.shape, (0, 1, 2), flips)
    stored = np.flip(stored, axes) if axes else stored
    v = Volume(np.ascontiguousarray(stored), stored_aff).reoriented()
    assert v.orientation_code() == "SPL"
    assert np.array_equal(v.array, arr)
    assert np.allclose(v.affine, base.affine)


def test_resampling_keeps_world_positions():
    z, y, x = np.meshgrid(np.arange(20), np.arange(30), np.arange(40), indexing="ij")
    arr = (3 * z + 2 * y + x).astype(np.float32)  # linear: interpolation is exact
    v = Volume(arr, geo.make_affine([5.0, -3.0, 7.0], np.eye(3)[::-1], [2.0, 1.0, 1.0]))
    r = v.resampled([1.0, 0.5, 0.5])
    assert r.shape == (39, 59, 79)
    idx = np.array([[3, 7, 11], [10, 20, 30], [38, 58, 78]])
    src = v.world_to_index(r.index_to_world(idx))
    expected = 3 * src[:, 0] + 2 * src[:, 1] + src[:, 2]
    assert np.allclose(r.array[tuple(idx.T)], expected, atol=1e-3)
