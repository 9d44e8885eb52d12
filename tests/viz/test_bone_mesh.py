from __future__ import annotations

import numpy as np

from sirad_viewer.phantom.anatomy import LEFT_ILIUM, RIGHT_ILIUM
from sirad_viewer.viz.bone_mesh import bone_mesh


def test_bone_surface_is_in_lps_within_budget_and_labelled(small_phantom):
    ph = small_phantom(0, 0)
    mesh = bone_mesh(ph.volume, labels=ph.labels, max_triangles=20_000)
    assert 1_000 < mesh.n_cells <= 20_000
    b = ph.volume.bounds_world()
    pts = np.asarray(mesh.points)
    tol = 2 * ph.volume.spacing.max()  # decimation may move a vertex by about a voxel
    assert np.all(pts >= b[0] - tol) and np.all(pts <= b[1] + tol)
    lab = np.asarray(mesh.point_data["label"])
    assert np.median(pts[lab == LEFT_ILIUM, 0]) > 0 > np.median(pts[lab == RIGHT_ILIUM, 0])


def test_surface_follows_orientation_of_the_stored_array(small_phantom):
    """The same CT stored flipped gives the same surface in world coordinates."""
    from sirad_viewer.imaging import Volume
    from sirad_viewer.imaging import geometry as geo

    v = small_phantom(0, 0).volume
    flipped = Volume(np.ascontiguousarray(v.array[:, :, ::-1]),
                     geo.permute_affine(v.affine, v.shape, (0, 1, 2), (False, False, True)))
    a = bone_mesh(v, max_triangles=10_000)
    b = bone_mesh(flipped, max_triangles=10_000)
    assert np.allclose(np.asarray(a.center), np.asarray(b.center), atol=1.5)
