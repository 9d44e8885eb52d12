"""A prior CT of the same pelvis, rotated and shifted by a known amount, is registered back."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.imaging.registration import register_rigid


def _rot(deg: float, axis: int) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.mark.slow
def test_rigid_registration_recovers_a_known_pose(small_phantom):
    cur = small_phantom(0, 0).volume.resampled(4.0)
    rot = _rot(6.0, 2) @ _rot(4.0, 0)
    shift = np.array([8.0, -5.0, 6.0])
    # the prior: the same anatomy, where current point p sits at rot @ (p - c) + c + shift
    c = cur.center_world()
    aff = np.eye(4)
    aff[:3, :3] = rot @ cur.affine[:3, :3]
    aff[:3, 3] = rot @ (cur.affine[:3, 3] - c) + c + shift
    prior = cur.with_array(cur.array, aff)  # same voxels, moved in space
    tx = register_rigid(cur, prior)
    probe = c + np.array([[40.0, 0, 0], [-40.0, 20, 0], [0, -30, 30]])
    want = (probe - c) @ rot.T + c + shift
    err = np.linalg.norm(tx.apply(probe) - want, axis=1)
    assert err.max() < 2.0, err  # within half a (4 mm) voxel
    assert np.allclose(tx.inverse().apply(tx.apply(probe)), probe)
