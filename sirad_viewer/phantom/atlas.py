"""Real pelvic bone surfaces from an atlas folder, and the landmarks the phantoms need.

An atlas folder is laid out like ``../shared/data/pelvis-atlas``::

    surface/sacrum/Sacrum<ID>_cpd.vtk
    surface/left/LeftHip<ID>_cpd.vtk
    surface/right/RightHip<ID>_cpd.vtk

Every mesh of a bone has the same vertices in the same anatomical order (the meshes are in
correspondence) and each subject's three bones sit in that CT's own LPS coordinates, so the
sacroiliac joints are where they were in the patient.

:func:`load_atlas` reads and checks a folder; :func:`subject_shape` returns one subject's three
bones, moved into the *canonical frame* (LPS axes; origin midway between the two joint centres;
x from the right to the left joint centre); :class:`~sirad_viewer.phantom.ssm.ShapeModel` draws
new shapes in the same frame. :func:`landmarks` finds, on any such shape, the auricular contact
region of each joint, the joint centres and frames, the sacral axis and the acetabula.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)

BONES = ("sacrum", "left", "right")
_PATTERNS = {"sacrum": ("surface/sacrum", "Sacrum"), "left": ("surface/left", "LeftHip"),
             "right": ("surface/right", "RightHip")}
#: Distance (mm) within which a hip-bone vertex counts as part of the auricular contact region.
CONTACT_MM = 6.0


class AtlasError(SiradError):
    """An atlas folder is missing, incomplete or inconsistent."""

    code = "atlas_error"


@dataclass(frozen=True, eq=False)
class AtlasData:
    """All subjects of one atlas folder: ``verts`` of shape (n_subjects, 3 bones, V, 3), LPS mm."""

    root: str
    subjects: tuple[str, ...]
    verts: np.ndarray
    faces: tuple[np.ndarray, ...]  # per bone, (F, 3) int triangles shared by every subject (holes closed)

    def index(self, subject: str) -> int:
        try:
            return self.subjects.index(str(subject))
        except ValueError:
            raise AtlasError(f"subject {subject!r} is not in the atlas; it has {', '.join(self.subjects)}",
                             path=self.root, code="unknown_subject") from None


@dataclass
class Shape:
    """Three bone surfaces in the canonical frame: ``verts[b]`` of shape (V, 3) for b in BONES."""

    verts: dict[str, np.ndarray]
    faces: dict[str, np.ndarray]
    subject: str
    acetabulum_idx: dict[str, np.ndarray] | None = None  # hip vertices of each acetabular socket


def list_subjects(atlas_dir: str | Path) -> list[str]:
    """Subject ids that have all three bones in ``atlas_dir`` (numeric ids in numeric order)."""
    root = Path(atlas_dir)
    if not (root / "surface").is_dir():
        raise AtlasError("is not an atlas folder: 'surface/sacrum', 'surface/left' and 'surface/right' expected",
                         path=root, code="not_atlas")
    ids: set[str] | None = None
    for bone, (sub, prefix) in _PATTERNS.items():
        found = {m.group(1) for f in (root / sub).glob(f"{prefix}*_cpd.vtk")
                 if (m := re.fullmatch(rf"{prefix}(.+)_cpd\.vtk", f.name))}
        ids = found if ids is None else ids & found
    out = sorted(ids or set(), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    if len(out) < 1:
        raise AtlasError("has no subject with all three bones (sacrum, left and right hip)", path=root,
                         code="empty_atlas")
    return out


def _triangles(mesh) -> np.ndarray:  # noqa: ANN001 - pyvista PolyData
    tri = mesh.triangulate()
    return np.asarray(tri.faces).reshape(-1, 4)[:, 1:].astype(np.int64)


@functools.lru_cache(maxsize=4)
def _load(root: str) -> AtlasData:
    import pyvista as pv

    subjects = list_subjects(root)
    verts = []
    faces: list[np.ndarray] = []
    for s_i, sid in enumerate(subjects):
        row = []
        for b_i, bone in enumerate(BONES):
            sub, prefix = _PATTERNS[bone]
            path = Path(root) / sub / f"{prefix}{sid}_cpd.vtk"
            try:
                mesh = pv.read(path)
            except Exception as exc:  # vtk raises plain errors for broken files
                raise AtlasError(f"cannot be read as a VTK surface ({exc})", path=path, code="bad_mesh") from exc
            pts = np.asarray(mesh.points, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 3 or not np.isfinite(pts).all() or np.abs(pts).max() > 1e4:
                raise AtlasError("has missing, non-finite or out-of-range vertices", path=path, code="bad_mesh")
            if s_i == 0:
                # Close the few open edges once; the topology is shared by every subject.
                faces.append(_triangles(mesh.fill_holes(100.0)))
            elif len(pts) != len(verts[0][b_i]):
                raise AtlasError(f"has {len(pts)} vertices, the atlas's other {bone} meshes have "
                                 f"{len(verts[0][b_i])} (meshes must be in correspondence)", path=path,
                                 code="not_corresponded")
            row.append(pts)
        verts.append(row)
    n_v = {len(v) for v in verts[0]}
    if len(n_v) != 1:
        # Stackable array needs one vertex count; pad would break correspondence, so refuse.
        raise AtlasError(f"bones have different vertex counts {sorted(n_v)}", path=root, code="not_corresponded")
    return AtlasData(root=root, subjects=tuple(subjects), verts=np.asarray(verts), faces=tuple(faces))


def load_atlas(atlas_dir: str | Path) -> AtlasData:
    """Read (once per process) and check every subject of an atlas folder."""
    return _load(str(Path(atlas_dir).resolve()))


# ---------------------------------------------------------------------------------------------
# Canonical frame
# ---------------------------------------------------------------------------------------------

def _contact(hip: np.ndarray, sacrum: np.ndarray, within: float = CONTACT_MM) -> tuple[np.ndarray, np.ndarray]:
    """Hip-bone vertex indices within ``within`` mm of the sacrum, and their nearest sacrum vertices."""
    from scipy.spatial import cKDTree

    d, j = cKDTree(sacrum).query(hip, k=1)
    sel = np.nonzero(d < within)[0]
    if len(sel) < 10:
        sel = np.argsort(d)[:30]
    return sel, j[sel]


def joint_centres(verts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Centre of each joint's contact region: the contact midpoint nearest the region's centroid."""
    out = {}
    for side in ("left", "right"):
        hi, si = _contact(verts[side], verts["sacrum"])
        mids = (verts[side][hi] + verts["sacrum"][si]) / 2.0
        c = mids.mean(axis=0)
        out[side] = mids[np.argmin(np.linalg.norm(mids - c, axis=1))]
    return out


def canonical_transform(verts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rotation ``R`` and origin ``o`` with ``p_canonical = (p - o) @ R``.

    x runs from the right to the left joint centre, z is the subject's superior direction made
    orthogonal to x, y = z × x (posterior); the origin is midway between the joint centres.
    """
    jc = joint_centres(verts)
    x = jc["left"] - jc["right"]
    x /= np.linalg.norm(x)
    z = np.array([0.0, 0.0, 1.0]) - x[2] * x
    z /= np.linalg.norm(z)
    y = np.cross(z, x)
    return np.column_stack([x, y, z]), (jc["left"] + jc["right"]) / 2.0


def subject_shape(atlas: AtlasData, subject: str) -> Shape:
    """One atlas subject's bones in the canonical frame (its own pelvic tilt kept)."""
    i = atlas.index(subject)
    verts = {b: atlas.verts[i, k] for k, b in enumerate(BONES)}
    r, o = canonical_transform(verts)
    return Shape(verts={b: (v - o) @ r for b, v in verts.items()},
                 faces={b: atlas.faces[k] for k, b in enumerate(BONES)}, subject=str(subject),
                 acetabulum_idx=acetabulum_indices(atlas))


@functools.lru_cache(maxsize=4)
def acetabulum_indices(atlas: AtlasData) -> dict[str, np.ndarray]:
    """Vertex indices of each acetabular socket, found once on the atlas's first subject."""
    i = 0
    verts = {b: atlas.verts[i, k] for k, b in enumerate(BONES)}
    r, o = canonical_transform(verts)
    out = {}
    for side, sgn in (("left", 1), ("right", -1)):
        k = BONES.index(side)
        v = (verts[side] - o) @ r
        c, rad = _acetabulum(v, atlas.faces[k], sgn, np.random.default_rng(0))
        n = _vertex_normals(v, atlas.faces[k])
        d = v - c
        dist = np.linalg.norm(d, axis=1)
        out[side] = np.nonzero((np.abs(dist - rad) < 3.0) & (np.sum(n * (-d), axis=1) / (dist + 1e-9) > 0.5))[0]
    return out


# ---------------------------------------------------------------------------------------------
# Landmarks
# ---------------------------------------------------------------------------------------------

@dataclass
class JointFrame:
    """One sacroiliac joint: contact region and a local frame.

    ``hip_idx`` / ``sacrum_idx``: contact vertex indices; ``points`` (N, 3): contact midpoints;
    ``center`` (3,); ``axes`` (3, 3) rows: long axis, short axis, normal (towards the hip bone).
    """

    side: str
    hip_idx: np.ndarray
    sacrum_idx: np.ndarray
    points: np.ndarray
    center: np.ndarray
    axes: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return self.axes[2]


@dataclass
class Landmarks:
    joints: dict[str, JointFrame]
    sacral_top: np.ndarray  # S1 endplate centre
    sacral_bottom: np.ndarray  # lower end of the atlas sacrum (S3) on the midline
    sacral_axis: np.ndarray  # unit, inferior -> superior
    sacral_thickness: np.ndarray  # unit, anterior -> posterior, orthogonal to the axis and x
    sacrum_bottom_halfwidth: float
    acetabula: dict[str, tuple[np.ndarray, float]]  # centre, radius
    bbox: tuple[np.ndarray, np.ndarray]  # of the three bones


def _fit_sphere(p: np.ndarray) -> tuple[np.ndarray, float]:
    a = np.column_stack([2 * p, np.ones(len(p))])
    b = np.sum(p * p, axis=1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    c = sol[:3]
    return c, float(np.sqrt(max(sol[3] + c @ c, 1e-6)))


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.zeros_like(v)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    # outward: normals should point away from the centroid on average
    if np.mean(np.sum((v - v.mean(axis=0)) * n, axis=1)) < 0:
        n = -n
    return n


def _acetabulum(v: np.ndarray, f: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The acetabular socket as a sphere: a small RANSAC over lateral, inferior, concave vertices.

    Written here because it is a 30-line fit on 5000 points with constraints no library offers.
    """
    n = _vertex_normals(v, f)
    zlo, zhi = v[:, 2].min(), v[:, 2].max()
    cand = np.nonzero((n[:, 0] * side > 0.2) & (v[:, 2] < zlo + 0.5 * (zhi - zlo)))[0]
    if len(cand) < 20:
        cand = np.arange(len(v))
    best, best_n = None, -1
    for _ in range(300):
        s = rng.choice(cand, size=4, replace=False)
        try:
            c, r = _fit_sphere(v[s])
        except np.linalg.LinAlgError:
            continue
        if not 18.0 <= r <= 34.0:
            continue
        d = v[cand] - c
        dist = np.linalg.norm(d, axis=1)
        concave = np.sum(n[cand] * (-d), axis=1) / (dist + 1e-9) > 0.6
        k = int(np.sum((np.abs(dist - r) < 2.5) & concave))
        if k > best_n:
            best, best_n = (c, r), k
    if best is None:
        c = v[cand].mean(axis=0)
        return c, 25.0
    c, r = best
    d = v[cand] - c
    dist = np.linalg.norm(d, axis=1)
    inl = cand[(np.abs(dist - r) < 3.0) & (np.sum(n[cand] * (-d), axis=1) / (dist + 1e-9) > 0.5)]
    if len(inl) >= 10:
        c2, r2 = _fit_sphere(v[inl])
        if 18.0 <= r2 <= 34.0:
            c, r = c2, r2
    return c, float(r)


def landmarks(shape: Shape) -> Landmarks:
    """Joint regions and frames, sacral axis and acetabula of a shape in the canonical frame."""
    v = shape.verts
    joints = {}
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        hi, si = _contact(v[side], v["sacrum"])
        pts = (v[side][hi] + v["sacrum"][si]) / 2.0
        c = pts.mean(axis=0)
        center = pts[np.argmin(np.linalg.norm(pts - c, axis=1))]
        _, _, vt = np.linalg.svd(pts - c, full_matrices=False)
        axes = vt.copy()
        if axes[2, 0] * sgn < 0:
            axes[2] = -axes[2]
        if axes[0, 2] < 0:  # long axis points superior
            axes[0] = -axes[0]
        axes[1] = np.cross(axes[2], axes[0])
        joints[side] = JointFrame(side, hi, si, pts, center, axes)
    s = v["sacrum"]
    mid = s[np.abs(s[:, 0]) < 15.0]
    # Midline sacrum: lower end = its lowest vertices; S1 endplate = the anterior half of the top.
    bottom = mid[mid[:, 2] < mid[:, 2].min() + 8.0].mean(axis=0)
    top_band = mid[mid[:, 2] > mid[:, 2].max() - 25.0]
    ant = top_band[top_band[:, 1] < np.median(top_band[:, 1])]
    top = ant[ant[:, 2] > ant[:, 2].max() - 10.0].mean(axis=0)
    axis = top - bottom
    axis /= np.linalg.norm(axis)
    thick = np.cross(axis, np.array([1.0, 0.0, 0.0]))
    thick /= np.linalg.norm(thick)
    if thick[1] < 0:
        thick = -thick
    low = s[(s - bottom) @ axis < 12.0]
    halfw = float(max(12.0, np.percentile(np.abs(low[:, 0]), 95)))
    rng = np.random.default_rng(0)  # the fit itself is deterministic given the shape
    acet = {}
    for side, sgn in (("left", 1), ("right", -1)):
        idx = (shape.acetabulum_idx or {}).get(side)
        fit = _fit_sphere(v[side][idx]) if idx is not None and len(idx) >= 10 else None
        acet[side] = fit if fit is not None and 18.0 <= fit[1] <= 34.0 else _acetabulum(v[side], shape.faces[side], sgn, rng)
    allv = np.concatenate(list(v.values()))
    return Landmarks(joints=joints, sacral_top=top, sacral_bottom=bottom, sacral_axis=axis,
                     sacral_thickness=thick, sacrum_bottom_halfwidth=halfw, acetabula=acet,
                     bbox=(allv.min(axis=0), allv.max(axis=0)))
