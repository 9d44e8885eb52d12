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
are plain array slices (no interpolation, no copy for axial); other planes are sampled on a
grid of the volume's finest in-plane spacing by ``Interp.LINEAR`` (default: trilinear),
``Interp.CUBIC`` (Catmull-Rom, sharper cortex, slower) or ``Interp.NEAREST``, optionally as a
slab (``thickness_mm`` with ``Slab.MEAN``, ``Slab.MIP`` or ``Slab.MINIP``).

Speed: the oblique coronal plane keeps the left-right direction along the volume's columns, so
each output row is a weighted sum of a few whole voxel rows (bilinear or bicubic in the
slice/row axes, then a constant sub-voxel shift along the columns). That path is written here
rather than calling ``scipy.ndimage.map_coordinates`` because it is several times faster for
this plane (513x513 in under 3 ms) and needs no spline pre-filter of the whole volume. Other
planes use a general trilinear sampler (cubic there falls back to map_coordinates on the
sub-volume the plane crosses).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from sirad_viewer.imaging.volume import Volume

AIR_HU = -1024


class Interp(str, enum.Enum):
    """How off-grid planes are sampled."""

    NEAREST = "nearest"
    LINEAR = "linear"
    CUBIC = "cubic"


class Slab(str, enum.Enum):
    """How a thick slab is projected onto the plane."""

    MEAN = "mean"
    MIP = "mip"
    MINIP = "minip"


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


def reslice(volume: Volume, plane: SlicePlane, *, pixel_mm: float | None = None, fov_mm: float | None = None,
            interp: Interp | str = Interp.LINEAR, thickness_mm: float = 0.0, slab: Slab | str = Slab.MEAN) -> SliceImage:
    """The volume's HU on ``plane``.

    Axis-aligned planes of the volume (without a slab) are array slices. Any other plane is
    sampled with ``interp`` on a square grid of ``pixel_mm`` (default: the finest voxel size)
    covering the volume's extent (or a ``fov_mm`` square centred on ``plane.point``).
    ``thickness_mm`` > 0 projects a slab centred on the plane: planes one finest-voxel apart
    along the normal, combined by ``slab`` (mean, maximum or minimum intensity).

    Returns
    -------
    SliceImage whose ``pixels`` have the volume's dtype, shape (H, W).
    """
    interp, slab = Interp(interp), Slab(slab)
    if pixel_mm is None and fov_mm is None and thickness_mm <= 0:
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
    if thickness_mm > 0:
        step = float(sp.min())
        n = max(1, int(round(thickness_mm / step)))
        offs = (np.arange(n) - (n - 1) / 2.0) * step
        acc: np.ndarray | None = None
        for o in offs:
            part = _sample(volume, origin + o * plane.normal, right_step, down_step, h, w, interp)
            if acc is None:
                acc = part.astype(np.float32) if slab is Slab.MEAN else part
            elif slab is Slab.MEAN:
                acc += part
            elif slab is Slab.MIP:
                np.maximum(acc, part, out=acc)
            else:
                np.minimum(acc, part, out=acc)
        assert acc is not None
        if slab is Slab.MEAN:
            acc = np.rint(acc / len(offs)).astype(volume.array.dtype)
        return SliceImage(acc, origin, right_step, down_step)
    return SliceImage(_sample(volume, origin, right_step, down_step, h, w, interp), origin, right_step, down_step)


def _sample(volume: Volume, origin: np.ndarray, right_step: np.ndarray, down_step: np.ndarray,
            h: int, w: int, interp: Interp) -> np.ndarray:
    inv = np.linalg.inv(volume.affine)
    i0 = inv[:3, :3] @ origin + inv[:3, 3]
    di_c = inv[:3, :3] @ right_step
    di_r = inv[:3, :3] @ down_step
    if interp is Interp.NEAREST:
        return _sample_nearest(volume, i0, di_c.astype(np.float32), di_r.astype(np.float32), h, w)
    if abs(di_c[0]) < 1e-6 and abs(di_c[1]) < 1e-6 and di_c[2] > 0 and abs(di_r[2]) < 1e-6:
        return _sample_rows(volume, i0, di_r, float(di_c[2]), h, w, cubic=interp is Interp.CUBIC)
    if interp is Interp.CUBIC:
        return _sample_scipy(volume, i0, di_c, di_r, h, w, order=3)
    return _sample_trilinear(volume, i0, di_c, di_r, h, w)


def _catmull_rom(f: np.ndarray) -> list[np.ndarray]:
    """Weights of the four taps at -1, 0, 1, 2 for fractions ``f`` (Catmull-Rom, interpolating)."""
    f2, f3 = f * f, f * f * f
    return [(-f3 + 2 * f2 - f) / 2, (3 * f3 - 5 * f2 + 2) / 2, (-3 * f3 + 4 * f2 + f) / 2, (f3 - f2) / 2]


def _sample_rows(volume: Volume, i0: np.ndarray, di_r: np.ndarray, scale: float, h: int, w: int, *, cubic: bool) -> np.ndarray:
    """Planes whose columns run along the volume's columns (the oblique coronal); ``scale``: voxels per pixel."""
    arr = volume.array
    S, R, C = arr.shape
    rows = np.arange(h, dtype=np.float64)
    k = i0[0] + rows * di_r[0]
    j = i0[1] + rows * di_r[1]
    valid = (k >= -0.5) & (k < S - 0.5) & (j >= -0.5) & (j < R - 0.5)
    kc, jc = np.clip(k, 0, S - 1), np.clip(j, 0, R - 1)
    k0, j0 = np.floor(kc).astype(np.intp), np.floor(jc).astype(np.intp)
    fk, fj = (kc - k0).astype(np.float32), (jc - j0).astype(np.float32)
    if cubic:
        taps = (-1, 0, 1, 2)
        wk, wj = _catmull_rom(fk), _catmull_rom(fj)
    else:
        taps = (0, 1)
        wk, wj = [1 - fk, fk], [1 - fj, fj]
    lines = np.zeros((h, C), np.float32)
    for a, dk in enumerate(taps):
        ka = np.clip(k0 + dk, 0, S - 1)
        for b, dj in enumerate(taps):
            wgt = (wk[a] * wj[b])[:, None]
            lines += arr[ka, np.clip(j0 + dj, 0, R - 1)] * wgt
    # then along the columns: the same taps and weights for every row
    cpos = i0[2] + np.arange(w) * scale
    col_ok = (cpos >= -0.5) & (cpos < C - 0.5)
    cc = np.clip(cpos, 0, C - 1)
    c0 = np.floor(cc).astype(np.intp)
    fc = (cc - c0).astype(np.float32)
    wc = _catmull_rom(fc) if cubic else [1 - fc, fc]
    out = np.zeros((h, w), np.float32)
    for t, dc in enumerate(taps):
        idx = np.clip(c0 + dc, 0, C - 1)
        if idx[0] + w - 1 == idx[-1] and np.all(np.diff(idx) == 1):
            out += lines[:, idx[0]:idx[0] + w] * wc[t]
        else:
            out += lines[:, idx] * wc[t]
    res = np.rint(out).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else out.astype(arr.dtype)
    res[~valid] = AIR_HU
    res[:, ~col_ok] = AIR_HU
    return res


def _sample_trilinear(volume: Volume, i0: np.ndarray, di_c: np.ndarray, di_r: np.ndarray, h: int, w: int) -> np.ndarray:
    arr = volume.array
    shape = arr.shape
    cols = np.arange(w, dtype=np.float32)
    rows = np.arange(h, dtype=np.float32)
    valid = np.ones((h, w), dtype=bool)
    base = np.zeros((h, w), dtype=np.intp)
    fr = []
    stride = (shape[1] * shape[2], shape[2], 1)
    hi = []
    for a in range(3):
        fa = np.add.outer(rows * np.float32(di_r[a]), cols * np.float32(di_c[a]) + np.float32(i0[a]))
        valid &= (fa >= -0.5) & (fa < shape[a] - 0.5)
        np.clip(fa, 0, shape[a] - 1, out=fa)
        ia = np.floor(fa)
        fr.append(fa - ia)
        ia = ia.astype(np.intp)
        hi.append(np.where(ia + 1 < shape[a], stride[a], 0))
        base += ia * stride[a]
    flat = arr.reshape(-1)
    out = np.zeros((h, w), np.float32)
    for dk in (0, 1):
        wk = fr[0] if dk else 1 - fr[0]
        for dj in (0, 1):
            wj = fr[1] if dj else 1 - fr[1]
            for di in (0, 1):
                wi = fr[2] if di else 1 - fr[2]
                idx = base + dk * hi[0] + dj * hi[1] + di * hi[2]
                out += flat[idx] * (wk * wj * wi)
    res = np.rint(out).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else out.astype(arr.dtype)
    res[~valid] = AIR_HU
    return res


def _sample_scipy(volume: Volume, i0: np.ndarray, di_c: np.ndarray, di_r: np.ndarray, h: int, w: int, *, order: int) -> np.ndarray:
    from scipy import ndimage

    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    idx = i0[:, None, None] + rr[None] * di_r[:, None, None] + cc[None] * di_c[:, None, None]
    shape = np.asarray(volume.shape)
    valid = np.all((idx >= -0.5) & (idx < shape[:, None, None] - 0.5), axis=0)
    if not valid.any():
        return np.full((h, w), AIR_HU, volume.array.dtype)
    # only the sub-volume the plane crosses is spline-filtered
    lo = np.maximum(np.floor(idx[:, valid].min(axis=1)).astype(int) - 3, 0)
    hi = np.minimum(np.ceil(idx[:, valid].max(axis=1)).astype(int) + 4, shape)
    sub = volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    vals = ndimage.map_coordinates(sub, idx - lo[:, None, None], order=order, mode="nearest")
    res = np.rint(vals).astype(volume.array.dtype) if np.issubdtype(volume.array.dtype, np.integer) else vals.astype(volume.array.dtype)
    res[~valid] = AIR_HU
    return res


def _sample_nearest(volume: Volume, i0: np.ndarray, di_c: np.ndarray, di_r: np.ndarray, h: int, w: int) -> np.ndarray:
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
    return out
