"""Slice planes through a volume, and resampling a volume on them (numpy only).

A :class:`SlicePlane` is a point and two unit LPS vectors: ``right`` (screen right) and
``down`` (screen down). Radiological display conventions:

=========  ====================  =====================  ==========================
view       screen right          screen down            normal (scroll direction)
=========  ====================  =====================  ==========================
axial      patient left (+x)     posterior (+y)         superior (+z)
coronal    patient left (+x)     inferior (-z)          posterior (+y)... see below
sagittal   posterior (+y)        inferior (-z)          patient right (-x)
oblique    patient left (+x)     down the sacrum        through the sacrum
=========  ====================  =====================  ==========================

(So the patient's right is on the screen's left, anterior is up on axial and on the left on
sagittal.) :func:`reslice` returns a :class:`SliceImage`: a 2D array plus the LPS position of its
first pixel and the LPS step of one pixel along rows and columns, so views map the mouse to
the patient and back without knowing how the pixels were made.

For a canonical volume (see :meth:`Volume.reoriented`) the axial, coronal and sagittal planes
are plain array slices (no interpolation, no copy for axial); other planes are sampled by
nearest neighbour on a grid of the volume's finest in-plane spacing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sirad_viewer.imaging.volume import Volume

AIR_HU = -1024


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("zero-length direction")
    return v / n


@dataclass(frozen=True)
class SlicePlane:
    """A display plane: ``point`` on it, ``right`` and ``down`` unit LPS vectors (orthogonal)."""

    point: np.ndarray
    right: np.ndarray
    down: np.ndarray
    name: str = "oblique"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.right, self.down)

    def moved_to(self, point: np.ndarray) -> "SlicePlane":
        return SlicePlane(np.asarray(point, dtype=float), self.right, self.down, self.name)

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of (..., 3) LPS points from the plane, along the normal."""
        return (np.asarray(points, dtype=float) - self.point) @ self.normal


def axial(point: np.ndarray) -> SlicePlane:
    return SlicePlane(np.asarray(point, float), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), "axial")


def coronal(point: np.ndarray) -> SlicePlane:
    return SlicePlane(np.asarray(point, float), np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), "coronal")


def sagittal(point: np.ndarray) -> SlicePlane:
    return SlicePlane(np.asarray(point, float), np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), "sagittal")


def oblique_coronal(point: np.ndarray, sacral_axis: np.ndarray) -> SlicePlane:
    """The plane along the long axis of the sacrum that contains the left-right direction.

    Parameters
    ----------
    point : (3,) LPS point the plane passes through (on the sacral axis).
    sacral_axis : (3,) LPS direction of the sacrum's long axis (either sense).
    """
    axis = _unit(sacral_axis)
    if axis[2] < 0:
        axis = -axis  # point superiorly so that "down" runs inferiorly along the sacrum
    right = np.array([1.0, 0.0, 0.0]) - axis[0] * axis
    right = _unit(right)
    return SlicePlane(np.asarray(point, float), right, -axis, "oblique")


def oblique_from_sagittal_line(p_a: np.ndarray, p_b: np.ndarray) -> SlicePlane:
    """Oblique coronal plane from a line dragged on the sagittal view (two LPS points)."""
    p_a, p_b = np.asarray(p_a, float), np.asarray(p_b, float)
    return oblique_coronal((p_a + p_b) / 2.0, p_b - p_a)


@dataclass
class SliceImage:
    """Pixels of one plane and where they are: world(r, c) = origin + r * down_step + c * right_step."""

    pixels: np.ndarray  # (H, W) HU
    origin: np.ndarray  # LPS of pixel (0, 0) centre
    right_step: np.ndarray  # LPS vector from one column to the next
    down_step: np.ndarray  # LPS vector from one row to the next

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """(row height, column width) in mm."""
        return float(np.linalg.norm(self.down_step)), float(np.linalg.norm(self.right_step))

    def world(self, row: float, col: float) -> np.ndarray:
        return self.origin + row * self.down_step + col * self.right_step

    def pixel_of(self, point: np.ndarray) -> tuple[float, float]:
        """(row, col) of the LPS point's projection on the image."""
        d = np.asarray(point, float) - self.origin
        return (float(d @ self.down_step) / float(self.down_step @ self.down_step),
                float(d @ self.right_step) / float(self.right_step @ self.right_step))


def _axis_aligned(volume: Volume, plane: SlicePlane) -> SliceImage | None:
    """Fast path: the plane runs along the array axes of the volume."""
    dirs = volume.direction  # rows: slice, row, column axes
    sp = volume.spacing
    right_ax = [a for a in range(3) if abs(abs(dirs[a] @ plane.right) - 1) < 1e-6]
    down_ax = [a for a in range(3) if abs(abs(dirs[a] @ plane.down) - 1) < 1e-6]
    if not right_ax or not down_ax:
        return None
    ra, da = right_ax[0], down_ax[0]
    na = 3 - ra - da
    idx = volume.world_to_index(plane.point)
    k = int(round(float(idx[na])))
    if not 0 <= k < volume.shape[na]:
        h, w = volume.shape[da], volume.shape[ra]
        pix = np.full((h, w), AIR_HU, dtype=volume.array.dtype)
    else:
        sl = [slice(None)] * 3
        sl[na] = k
        pix = volume.array[tuple(sl)]
        # remaining axes are in increasing order; put down first, right second
        if da > ra:
            pix = pix.T
    r_sign = 1 if dirs[ra] @ plane.right > 0 else -1
    d_sign = 1 if dirs[da] @ plane.down > 0 else -1
    if r_sign < 0:
        pix = pix[:, ::-1]
    if d_sign < 0:
        pix = pix[::-1, :]
    first = np.zeros(3)
    first[na] = k
    first[ra] = 0 if r_sign > 0 else volume.shape[ra] - 1
    first[da] = 0 if d_sign > 0 else volume.shape[da] - 1
    origin = volume.index_to_world(first)
    return SliceImage(pix, origin, plane.right * sp[ra], plane.down * sp[da])


def reslice(volume: Volume, plane: SlicePlane, *, pixel_mm: float | None = None, fov_mm: float | None = None) -> SliceImage:
    """The volume's HU on ``plane``.

    Axis-aligned planes of the volume are array slices. Any other plane is sampled by nearest
    neighbour on a square grid of ``pixel_mm`` (default: the finest voxel size) covering the
    volume's extent (or a ``fov_mm`` square centred on ``plane.point``).
    """
    if pixel_mm is None and fov_mm is None:
        fast = _axis_aligned(volume, plane)
        if fast is not None:
            return fast
    sp = volume.spacing
    px = float(pixel_mm or sp.min())
    if fov_mm is None:
        b = volume.bounds_world()
        corners = np.array([[b[i, 0], b[j, 1], b[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        rel = corners - plane.point
        u = rel @ plane.right
        v = rel @ plane.down
        u0, u1, v0, v1 = u.min(), u.max(), v.min(), v.max()
    else:
        u0 = v0 = -fov_mm / 2.0
        u1 = v1 = fov_mm / 2.0
    w = int(np.floor((u1 - u0) / px)) + 1
    h = int(np.floor((v1 - v0) / px)) + 1
    origin = plane.point + u0 * plane.right + v0 * plane.down
    right_step, down_step = plane.right * px, plane.down * px
    inv = np.linalg.inv(volume.affine)
    i0 = inv[:3, :3] @ origin + inv[:3, 3]
    di_c = (inv[:3, :3] @ right_step).astype(np.float32)
    di_r = (inv[:3, :3] @ down_step).astype(np.float32)
    cols = np.arange(w, dtype=np.float32)
    rows = np.arange(h, dtype=np.float32)
    shape = volume.shape
    big = volume.array.size >= 2 ** 31
    flat = np.zeros((h, w), dtype=np.int64 if big else np.int32)
    valid = np.ones((h, w), dtype=bool)
    stride = (shape[1] * shape[2], shape[2], 1)
    for a in range(3):
        # +0.5 then truncation == rounding for the valid (non-negative) range
        fa = np.add.outer(rows * di_r[a], cols * di_c[a] + np.float32(i0[a] + 0.5))
        valid &= (fa >= 0) & (fa < shape[a])  # test before truncating: int() rounds towards zero
        ia = fa.astype(flat.dtype)
        if stride[a] != 1:
            ia *= stride[a]
        flat += ia
    out = np.full((h, w), AIR_HU, dtype=volume.array.dtype)
    out[valid] = volume.array.reshape(-1)[flat[valid]]
    return SliceImage(out, origin, right_step, down_step)
