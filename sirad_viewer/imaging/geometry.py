"""Every index<->world and LPS<->RAS conversion of the project lives here.

Conventions
-----------
* World coordinates are patient-based **LPS** millimetres (DICOM): +x towards the patient's
  left, +y posterior, +z superior.
* Array axes are named **(slice, row, column)**. An affine is a 4x4 matrix that maps the index
  vector ``(slice, row, column, 1)`` to ``(x, y, z, 1)`` in LPS. Its first three columns are the
  steps, in mm, of one voxel along each axis; its last column is the centre of voxel (0, 0, 0).
* DICOM ``ImageOrientationPatient`` gives the row direction (along a row, i.e. increasing
  *column* index) and then the column direction (increasing *row* index); ``PixelSpacing`` is
  (distance between rows, distance between columns).
* SimpleITK and NIfTI index arrays the other way round (x = column first). The helpers below
  translate; nothing else in the project should.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: LPS <-> RAS is a flip of the first two world axes; the matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

AXIS_NAMES = ("slice", "row", "column")


def make_affine(
    origin: Sequence[float], directions: np.ndarray | Sequence[Sequence[float]], spacing: Sequence[float]
) -> np.ndarray:
    """Build an index->LPS affine.

    Parameters
    ----------
    origin : sequence of 3 float
        LPS position (mm) of the centre of voxel (0, 0, 0).
    directions : array of shape (3, 3)
        ``directions[a]`` is the unit LPS vector of array axis ``a`` (slice, row, column).
    spacing : sequence of 3 float
        Voxel size along (slice, row, column) in mm.

    Returns
    -------
    ndarray of shape (4, 4)
    """
    d = np.asarray(directions, dtype=float).reshape(3, 3)
    s = np.asarray(spacing, dtype=float).reshape(3)
    a = np.eye(4)
    a[:3, :3] = (d * s[:, None]).T
    a[:3, 3] = np.asarray(origin, dtype=float).reshape(3)
    return a


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along (slice, row, column)."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def affine_directions(affine: np.ndarray) -> np.ndarray:
    """Unit LPS vectors of the three array axes, as rows: shape (3, 3)."""
    m = np.asarray(affine)[:3, :3]
    return (m / np.linalg.norm(m, axis=0)).T


# The two maps below use einsum, not ``points @ m.T``: for an (N, 3) array numpy hands the product
# to BLAS, whose threaded (N x 3) @ (3 x 3) took 15-25 ms per 150k-point crop grid on the 2-core
# machine (0.1-0.3 s of CPU per ``sirad grade``); einsum's loop takes 3-6 ms. Results differ from
# the BLAS product by at most 1 ulp (grades and probabilities of the demo CT bit-identical).
def index_to_world(affine: np.ndarray, index: np.ndarray | Sequence[float]) -> np.ndarray:
    """Map (..., 3) indices (slice, row, column) to (..., 3) LPS mm."""
    a = np.asarray(affine, dtype=float)
    return np.einsum("...j,ij->...i", np.asarray(index, dtype=float), a[:3, :3]) + a[:3, 3]


def world_to_index(affine: np.ndarray, points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Map (..., 3) LPS mm to fractional (..., 3) indices (slice, row, column)."""
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    return np.einsum("...j,ij->...i", np.asarray(points, dtype=float), inv[:3, :3]) + inv[:3, 3]


def lps_to_ras(points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Flip x and y of (..., 3) points: LPS -> RAS (and back: the map is an involution)."""
    p = np.array(points, dtype=float, copy=True)
    p[..., 0] *= -1
    p[..., 1] *= -1
    return p


ras_to_lps = lps_to_ras


def is_orthogonal(affine: np.ndarray, *, tol_deg: float = 0.01) -> bool:
    """True when the three axes are mutually perpendicular (no shear, e.g. no gantry tilt)."""
    d = affine_directions(affine)
    limit = np.sin(np.deg2rad(tol_deg))
    return all(abs(float(d[i] @ d[j])) <= limit for i, j in ((0, 1), (0, 2), (1, 2)))


# --- NIfTI / SimpleITK -----------------------------------------------------------------------

def affine_from_nifti(ras_affine: np.ndarray) -> np.ndarray:
    """Convert a NIfTI affine (array indices x,y,z -> RAS) to ours ((slice,row,col) -> LPS).

    The caller transposes the NIfTI data array from (x, y, z) to (z, y, x) to match.
    """
    a = LPS_TO_RAS @ np.asarray(ras_affine, dtype=float)
    out = np.eye(4)
    out[:3, :3] = a[:3, :3][:, ::-1]  # columns x, y, z -> z, y, x
    out[:3, 3] = a[:3, 3]
    return out


def affine_to_nifti(affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`affine_from_nifti`."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(affine)[:3, :3][:, ::-1]
    a[:3, 3] = np.asarray(affine)[:3, 3]
    return LPS_TO_RAS @ a


def affine_from_sitk(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Build our affine from SimpleITK's ``GetOrigin/GetSpacing/GetDirection`` (all LPS, x first).

    SimpleITK's direction is a row-major 3x3 whose *columns* are the x, y, z index axes.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    dirs = np.stack([d[:, 2], d[:, 1], d[:, 0]])  # slice, row, column
    sp = np.asarray(spacing, dtype=float)[::-1]
    return make_affine(origin, dirs, sp)


def affine_to_sitk(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Return ``(origin, spacing, direction)`` for SimpleITK from our affine (orthogonal only)."""
    dirs = affine_directions(affine)  # rows: slice, row, column
    sp = affine_spacing(affine)
    d = np.stack([dirs[2], dirs[1], dirs[0]], axis=1)  # columns x, y, z
    origin = tuple(float(v) for v in np.asarray(affine)[:3, 3])
    return origin, tuple(float(v) for v in sp[::-1]), tuple(float(v) for v in d.reshape(-1))


# --- orientation -----------------------------------------------------------------------------

_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


def orientation_code(affine: np.ndarray) -> str:
    """Three letters: the LPS direction each array axis (slice, row, column) points to most.

    ``"SPL"`` is the canonical axial orientation: slices run inferior->superior, rows run
    anterior->posterior, columns run right->left (patient's left is +x).
    """
    letters = []
    for v in affine_directions(affine):
        a = int(np.argmax(np.abs(v)))
        letters.append(_LPS_LETTERS[a][1 if v[a] > 0 else 0])
    return "".join(letters)


def canonical_permutation(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Axis permutation and flips that bring an array closest to the canonical axial layout.

    Canonical: axis 0 (slice) along +z (superior), axis 1 (row) along +y (posterior), axis 2
    (column) along +x (patient left). Returns ``(perm, flip)`` with ``perm[new_axis] = old_axis``
    and ``flip[new_axis]`` telling whether that new axis has to be reversed.
    """
    dirs = affine_directions(affine)
    target = (2, 1, 0)  # world axis for new axes slice, row, column
    # Greedy assignment on the largest absolute cosine is exact for any non-degenerate frame.
    cos = np.abs(dirs)  # [old_axis, world_axis]
    perm = [-1, -1, -1]
    used_old: set[int] = set()
    order = sorted(((cos[o, w], o, w) for o in range(3) for w in range(3)), reverse=True)
    world_to_old: dict[int, int] = {}
    for _, o, w in order:
        if o in used_old or w in world_to_old:
            continue
        world_to_old[w] = o
        used_old.add(o)
    for new_axis, w in enumerate(target):
        perm[new_axis] = world_to_old[w]
    flip = tuple(bool(dirs[perm[n], target[n]] < 0) for n in range(3))
    return (perm[0], perm[1], perm[2]), (flip[0], flip[1], flip[2])


def permute_affine(affine: np.ndarray, shape: Sequence[int], perm: Sequence[int], flip: Sequence[bool]) -> np.ndarray:
    """Affine of ``np.flip(np.transpose(a, perm), flipped_axes)`` given the affine of ``a``."""
    a = np.asarray(affine, dtype=float)
    out = np.eye(4)
    origin = a[:3, 3].copy()
    for new_axis, old_axis in enumerate(perm):
        col = a[:3, old_axis].copy()
        if flip[new_axis]:
            origin = origin + col * (shape[old_axis] - 1)
            col = -col
        out[:3, new_axis] = col
    out[:3, 3] = origin
    return out
