"""Phantom CTs on real pelvic anatomy: atlas bone surfaces, planted lesions, scanner nuisances.

``make_atlas_phantom(AtlasSpec(atlas_dir=..., subject="10", left_grade=2, right_grade=0, seed=3))``
returns a :class:`~sirad_viewer.phantom.generator.Phantom` in the same form as the analytic
generator: a CT in HU, a label map (1 sacrum, 2 left hip bone, 3 right hip bone, 4 other bone)
and ``truth.json`` content (grades, lesions, joint centres, sacral axis, ...).

How a case is built:

1. the sacrum and hip bones: an atlas subject's surfaces or a shape-model sample
   (``subject="ssm:SEED"``), posed in the scanner (pose up to ±15° per axis) and voxelised with
   ``vtkPolyDataToImageStencil`` on a fine grid;
2. what the atlas lacks, placed relative to its bones: L4-L5 with discs, the lower sacrum and
   coccyx, the femora in the acetabula, the body outline with fat and muscle, pelvic fat, bowel
   with gas, bladder, psoas, iliac arteries and veins (with or without contrast), optional metal;
3. each sacroiliac joint: the real gap between the surfaces, kept at least at the case's joint
   width, in the auricular contact region (hip-bone vertices within 6 mm of the sacrum);
4. lesions along that joint surface from a continuous severity, so counts, sizes and extent
   overlap between neighbouring grades; mimics in grade 0-1 joints;
5. cortex and trabecular bone from the final bone masks, slice thickness, the reconstruction
   kernel, FBP-like noise and metal streaks (:mod:`.nuisance`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import SeriesMetadata, Volume
from sirad_viewer.phantom import atlas as A
from sirad_viewer.phantom.anatomy import LABEL_NAMES, LEFT_ILIUM, OTHER_BONE, RIGHT_ILIUM, SACRUM
from sirad_viewer.phantom.generator import PLANTED_IDENTITY, Phantom, _rotation
from sirad_viewer.phantom.nuisance import Nuisance, apply_kernel, draw_nuisance, fbp_noise, metal_streaks

log = logging.getLogger(__name__)

#: The shared atlas (``$SIRAD_SHARED/data/pelvis-atlas``, by default ``../shared`` beside the checkout).
DEFAULT_ATLAS = Path(os.environ.get("SIRAD_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "data" / "pelvis-atlas"
#: Subjects of the shared atlas never used for training (nor for the shape model).
DEFAULT_HOLDOUT = ("2", "13", "29", "40", "51", "65")
HIP_LABEL = {"left": LEFT_ILIUM, "right": RIGHT_ILIUM}
SIGN = {"left": 1.0, "right": -1.0}
#: Mimic rates per grade 0-1 joint (osteoarthritis, vacuum, accessory joint, narrowing); OCI per patient.
MIMIC_RATES = {"osteophyte": 0.25, "vacuum": 0.12, "accessory_sij": 0.10, "narrowing": 0.20, "oci": 0.08}


@dataclass
class AtlasSpec:
    """Everything that determines an atlas phantom. Same spec, same voxels."""

    left_grade: int = 0
    right_grade: int = 0
    seed: int = 0
    subject: str = "ssm:0"
    atlas_dir: str = str(DEFAULT_ATLAS)
    site: str = "atlas-mixed"
    crop: str = "none"  # none | pelvis | sij: limit the field of view (keeps the pixel size)
    max_voxels: int | None = None  # coarsen pixels and slices when the grid would be larger
    borderline_share: float = 0.0  # share of joints labelled with the neighbouring grade
    holdout: tuple[str, ...] = DEFAULT_HOLDOUT  # subjects the shape model must not see
    nuisance: dict[str, Any] = field(default_factory=dict)  # fixed nuisance values (see Nuisance)
    patient_name: str = PLANTED_IDENTITY["patient_name"]
    patient_id: str = PLANTED_IDENTITY["patient_id"]
    patient_birth_date: str = PLANTED_IDENTITY["patient_birth_date"]

    def __post_init__(self) -> None:
        for name in ("left_grade", "right_grade"):
            g = getattr(self, name)
            if int(g) != g or not 0 <= g <= 4:
                raise ValueError(f"{name} must be an integer grade 0-4, got {g!r}")
        if self.crop not in ("none", "pelvis", "sij"):
            raise ValueError(f"crop must be none, pelvis or sij, got {self.crop!r}")
        if not 0.0 <= self.borderline_share <= 0.5:
            raise ValueError(f"borderline share must be 0-0.5, got {self.borderline_share}")
        if self.max_voxels is not None and self.max_voxels < 32 ** 3:
            raise ValueError(f"max voxels must be at least {32 ** 3}, got {self.max_voxels}")
        self.subject = str(self.subject)
        self.holdout = tuple(str(s) for s in self.holdout)

    def draw_nuisance(self) -> Nuisance:
        return draw_nuisance(self.seed, self.site, **self.nuisance)

    @property
    def slice_thickness_mm(self) -> float:
        return self.draw_nuisance().slice_thickness_mm

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["holdout"] = list(self.holdout)
        return d


# ---------------------------------------------------------------------------------------------
# Grid and primitives
# ---------------------------------------------------------------------------------------------

@dataclass
class Grid:
    """Axis-aligned world grid: arrays are (z, y, x) = (slice, row, column), LPS."""

    origin: np.ndarray  # world (x, y, z) of voxel (0, 0, 0)
    spacing: np.ndarray  # (dx, dy, dz)
    shape: tuple[int, int, int]  # (nz, ny, nx)

    def sub(self, lo_w: np.ndarray, hi_w: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) of the world box [lo, hi], or None when outside the grid."""
        a = np.floor((lo_w - self.origin) / self.spacing).astype(int)
        b = np.ceil((hi_w - self.origin) / self.spacing).astype(int) + 1
        n = np.array(self.shape[::-1])
        a, b = np.clip(a, 0, n), np.clip(b, 0, n)
        if np.any(b <= a):
            return None
        return slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0])

    def points(self, sl: tuple[slice, slice, slice]) -> np.ndarray:
        """World points (nz, ny, nx, 3) float32 of a sub-box."""
        z = self.origin[2] + np.arange(sl[0].start, sl[0].stop) * self.spacing[2]
        y = self.origin[1] + np.arange(sl[1].start, sl[1].stop) * self.spacing[1]
        x = self.origin[0] + np.arange(sl[2].start, sl[2].stop) * self.spacing[0]
        zz, yy, xx = np.meshgrid(z.astype(np.float32), y.astype(np.float32), x.astype(np.float32), indexing="ij")
        return np.stack([xx, yy, zz], axis=-1)


@dataclass
class Pose:
    """Canonical frame -> world: ``p_world = p @ R.T + t``."""

    rotation: np.ndarray
    translation: np.ndarray

    def to_world(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p) @ self.rotation.T + self.translation

    def to_canon(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p)
        dt = np.float32 if p.dtype == np.float32 else np.float64
        return (p - self.translation.astype(dt)) @ self.rotation.astype(dt)

    def dir_to_world(self, v: np.ndarray) -> np.ndarray:
        return self.rotation @ np.asarray(v)


@dataclass
class Prim:
    """A solid in canonical coordinates: ellipsoid, capsule or elliptic cylinder."""

    kind: str
    a: np.ndarray
    b: np.ndarray | None = None
    radii: tuple[float, ...] = (1.0,)
    axes: np.ndarray | None = None  # ellipsoid: rows = its axes; ellcyl: first row = cross-section x axis

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.radii)
        pts = [self.a] if self.b is None else [self.a, self.b]
        return np.min(pts, axis=0) - r, np.max(pts, axis=0) + r

    def inside(self, q: np.ndarray) -> np.ndarray:
        a = np.asarray(self.a, np.float32)
        if self.kind == "ellipsoid":
            ax = np.eye(3, dtype=np.float32) if self.axes is None else np.asarray(self.axes, np.float32)
            d = (q - a) @ (ax.T / np.asarray(self.radii, np.float32)[None, :])
            return np.einsum("...i,...i->...", d, d) <= 1.0
        ab = (np.asarray(self.b, np.float32) - a)
        L2 = float(ab @ ab)
        d = q - a
        t = (d @ ab) / np.float32(L2)
        if self.kind == "capsule":
            t = np.clip(t, 0.0, 1.0)
            d -= t[..., None] * ab
            return np.einsum("...i,...i->...", d, d) <= self.radii[0] ** 2
        # elliptic cylinder between a and b
        axis = ab / np.sqrt(L2)
        ex = np.asarray(self.axes[0], np.float32) if self.axes is not None else np.array([1, 0, 0], np.float32)
        ex = ex - (ex @ axis) * axis
        ex /= np.linalg.norm(ex)
        ey = np.cross(axis, ex).astype(np.float32)
        ex = ex.astype(np.float32)
        return ((t >= 0) & (t <= 1) & (((d @ ex) / self.radii[0]) ** 2 + ((d @ ey) / self.radii[1]) ** 2 <= 1.0))


def _paint(grid: Grid, pose: Pose, prim: Prim) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """(sub-box, mask) of a primitive on the grid."""
    lo, hi = prim.bbox()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cw = pose.to_world(corners)
    sl = grid.sub(cw.min(axis=0), cw.max(axis=0))
    if sl is None:
        return None
    q = pose.to_canon(grid.points(sl)).astype(np.float32)
    return sl, prim.inside(q)


def _voxelise(verts_w: np.ndarray, faces: np.ndarray, grid: Grid) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Bone mask of a closed triangle mesh (world coordinates) with vtkPolyDataToImageStencil."""
    import vtk
    from vtk.util import numpy_support as ns

    sl = grid.sub(verts_w.min(axis=0) - 1, verts_w.max(axis=0) + 1)
    if sl is None:
        return None
    import pyvista as pv

    poly = pv.PolyData.from_regular_faces(np.ascontiguousarray(verts_w, dtype=np.float64), faces)
    nz, ny, nx = (s.stop - s.start for s in sl)
    org = grid.origin + np.array([sl[2].start, sl[1].start, sl[0].start]) * grid.spacing
    st = vtk.vtkPolyDataToImageStencil()
    st.SetInputData(poly)
    st.SetOutputOrigin(*org)
    st.SetOutputSpacing(*grid.spacing)
    st.SetOutputWholeExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    conv = vtk.vtkImageStencilToImage()
    conv.SetInputConnection(st.GetOutputPort())
    conv.SetInsideValue(1)
    conv.SetOutsideValue(0)
    conv.SetOutputScalarTypeToUnsignedChar()
    conv.Update()
    arr = ns.vtk_to_numpy(conv.GetOutput().GetPointData().GetScalars()).reshape(nz, ny, nx)
    return sl, arr.astype(bool)


# ---------------------------------------------------------------------------------------------
# Lesion planning (a continuous severity; neighbouring grades overlap)
# ---------------------------------------------------------------------------------------------

def plan_joint(grade: int, rng: np.random.Generator, borderline_share: float) -> dict[str, Any]:
    """Severity, label grade and lesion recipe of one joint of true grade ``grade``."""
    label = grade
    if rng.random() < borderline_share:
        nb = grade + (1 if grade == 0 else -1 if grade == 4 else int(rng.choice([-1, 1])))
        sev = (grade + nb) / 2.0 + (grade - nb) * float(rng.uniform(0.02, 0.15))  # just on the true side
        label = nb
    else:
        sev = grade + float(rng.uniform(-0.45, 0.45)) if 0 < grade < 4 else (
            float(rng.uniform(0.0, 0.45)) if grade == 0 else float(rng.uniform(3.55, 4.0)))
    sev = float(np.clip(sev, 0.0, 4.0))
    p: dict[str, Any] = {"severity": sev, "true_grade": grade, "label_grade": label}
    # Indistinct margin patches: from grade 1 on, on part of the joint.
    n_blur = 0 if sev < 0.5 else int(rng.integers(1, 3)) if sev < 2.5 else int(rng.integers(0, 2))
    p["blur"] = [{"r": float(rng.uniform(7, 10 + 4 * min(sev, 2.5)))} for _ in range(n_blur)]
    lam_e = 0.0 if sev < 1.5 else 1.4 * (sev - 1.2) ** 1.3
    n_e = int(rng.poisson(lam_e)) if sev < 3.5 else int(rng.integers(0, 3))
    p["erosions"] = [{"r": float(np.clip(rng.normal(1.0 + 0.55 * sev, 0.4), 0.8, 4.5))} for _ in range(n_e)]
    lam_s = 0.0 if sev < 1.5 else 0.9 * (sev - 1.3)
    n_s = int(rng.poisson(lam_s)) if sev < 3.5 else int(rng.integers(0, 3))
    p["sclerosis"] = [{"r": float(rng.uniform(4, 3 + 4 * sev)), "depth": float(rng.uniform(1.5 + sev, 2.5 + 2.5 * sev))}
                      for _ in range(n_s)]
    if 1.5 <= sev < 3.5 and n_e + n_s == 0:  # a definite abnormality needs at least one lesion
        if rng.random() < 0.6:
            p["erosions"].append({"r": float(rng.uniform(1.2, 2.5))})
        else:
            p["sclerosis"].append({"r": float(rng.uniform(4.0, 9.0)), "depth": float(rng.uniform(2.5, 5.0))})
    lam_b = 0.0 if sev < 2.6 else 1.6 * (sev - 2.5)
    p["bridges"] = [{"r": float(rng.uniform(2.0, 2.5 + (sev - 2.5) * 3))} for _ in range(int(rng.poisson(lam_b)) if sev < 3.5 else 0)]
    p["width_change"] = None
    if sev >= 2.5 and sev < 3.5 and rng.random() < min(1.0, (sev - 2.3)):
        p["width_change"] = {"kind": str(rng.choice(["widening", "narrowing"])),
                             "r": float(rng.uniform(8, 10 + 10 * (sev - 2.5)))}
    p["fusion"] = float(np.clip((sev - 3.45) / 0.4, 0.0, 1.0)) if sev >= 3.45 else 0.0  # share of the joint fused
    return p


def plan_mimics(label_grade: int, true_grade: int, rng: np.random.Generator, age_narrowing: bool) -> list[str]:
    if max(label_grade, true_grade) > 1:
        return []
    out = [k for k in ("osteophyte", "vacuum", "accessory_sij") if rng.random() < MIMIC_RATES[k]]
    if age_narrowing:
        out.append("narrowing")
    return out


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------

def _shape_for(spec: AtlasSpec) -> A.Shape:
    at = A.load_atlas(spec.atlas_dir)
    if spec.subject.startswith("ssm:"):
        from sirad_viewer.phantom.ssm import build_shape_model

        try:
            seed = int(spec.subject[4:])
        except ValueError:
            raise ValueError(f"subject {spec.subject!r}: use an atlas id or ssm:SEED (an integer)") from None
        train = [s for s in at.subjects if s not in set(spec.holdout)]
        return build_shape_model(at, train).sample(seed)[0]
    return A.subject_shape(at, spec.subject)


def _plan_grid(nui: Nuisance, lm: A.Landmarks, pose: Pose, extras_lo: np.ndarray, extras_hi: np.ndarray,
               crop: str, max_voxels: int | None) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """(pixel, spacing, thickness, lo, hi) of the scanned region in world mm."""
    jc = (lm.joints["left"].center + lm.joints["right"].center) / 2.0
    ac_z = min(c[2] for c, _ in lm.acetabula.values())
    top_z = lm.sacral_top[2]
    # Scan range along z (canonical heights, then world through the pose at the midline).
    z_rng = {"abdomen-pelvis": (ac_z - 90.0, top_z + 110.0), "pelvis": (ac_z - 60.0, top_z + 45.0),
             "sij": (jc[2] - 55.0, top_z + 25.0)}
    cov = nui.coverage if crop == "none" else ("sij" if crop == "sij" or nui.coverage == "sij" else "pelvis")
    z0, z1 = z_rng[cov]
    zw = [pose.to_world(np.array([0.0, 0.0, z]))[2] for z in (z0, z1)]
    # In-plane: the display field of view around the table centre (world x, y = 0) ...
    half = nui.fov_mm / 2.0
    lo = np.array([-half, -half, min(zw)])
    hi = np.array([half, half, max(zw)])
    if cov == "sij" and nui.coverage == "sij":  # a 16 cm SIJ protocol is centred on the joints
        cw = pose.to_world(jc + np.array([0.0, 15.0, 0.0]))
        lo[:2], hi[:2] = cw[:2] - half, cw[:2] + half
    if crop != "none":
        # ... limited to the anatomy of interest (keeps the pixel size; smaller volumes for training)
        if crop == "sij":
            box_lo = np.array([lm.joints["right"].center[0] - 40, jc[1] - 55, z0])
            box_hi = np.array([lm.joints["left"].center[0] + 40, jc[1] + 55, z1])
        else:
            box_lo = np.array([lm.bbox[0][0] - 10, lm.bbox[0][1] - 10, z0])
            box_hi = np.array([lm.bbox[1][0] + 10, lm.bbox[1][1] + 30, z1])
        corners = np.array([[x, y, z] for x in (box_lo[0], box_hi[0]) for y in (box_lo[1], box_hi[1])
                            for z in (box_lo[2], box_hi[2])])
        cw = pose.to_world(corners)
        lo, hi = np.maximum(lo, cw.min(axis=0)), np.minimum(hi, cw.max(axis=0))
        lo[2], hi[2] = min(zw), max(zw)
    px, sp, th = nui.pixel_mm, nui.slice_spacing_mm, nui.slice_thickness_mm
    if max_voxels:
        n = np.prod((hi - lo) / np.array([px, px, sp]))
        if n > max_voxels:
            f = float((n / max_voxels) ** (1 / 3))
            px, sp, th = px * f, sp * f, max(th, sp * f)
    return px, sp, th, lo, hi


class _Builder:
    def __init__(self, spec: AtlasSpec, progress: Callable[[float, str], None] | None) -> None:
        self.spec = spec
        self.progress = progress or (lambda f, m: None)
        self.nui = spec.draw_nuisance()
        self.rng_anat = np.random.default_rng([spec.seed, zlib.crc32(spec.subject.encode()), 1])
        self.rng_les = np.random.default_rng([spec.seed, 2, spec.left_grade, spec.right_grade])
        self.rng_noise = np.random.default_rng([spec.seed, 3])

    # -- anatomy the atlas lacks ---------------------------------------------------------------
    def extras(self, lm: A.Landmarks) -> dict[str, list[Prim]]:
        r = self.rng_anat
        ax, th = lm.sacral_axis, lm.sacral_thickness
        ex = np.array([1.0, 0.0, 0.0])
        up = np.array([0.0, 0.0, 1.0])
        bones: list[Prim] = []
        sac: list[Prim] = []
        discs: list[Prim] = []
        # L5 and L4 (bodies on the S1 endplate, lordosis bringing them towards vertical), arches.
        d5 = ax + 0.8 * up
        d5 /= np.linalg.norm(d5)
        w5 = np.cross(d5, ex)
        w5 /= np.linalg.norm(w5)
        w5 = w5 if w5[1] > 0 else -w5
        base = lm.sacral_top + 12.0 * th
        c = base + d5 * 0.0
        for lvl, (h_body, h_disc, rx, ry) in enumerate(((26.0, 11.0, 26.0, 17.5), (27.0, 11.0, 25.0, 17.0))):
            hd = h_disc * r.uniform(0.8, 1.1)
            discs.append(Prim("ellcyl", c, c + d5 * hd, (rx, ry), ex[None]))
            b0 = c + d5 * hd
            b1 = b0 + d5 * h_body * r.uniform(0.95, 1.05)
            bones.append(Prim("ellcyl", b0, b1, (rx, ry), ex[None]))
            mid = (b0 + b1) / 2.0
            for s in (-1, 1):  # pedicles, transverse processes, facets
                pa = mid + ex * s * 11 + w5 * (ry - 2)
                pb = pa + w5 * 18
                bones.append(Prim("capsule", pa, pb, (5.5,)))
                bones.append(Prim("capsule", pb, pb + ex * s * (32 if lvl == 0 else 26) - d5 * 2, (5.0 if lvl == 0 else 4.0,)))
                bones.append(Prim("capsule", pb + d5 * 8, pb + w5 * 8 - d5 * 10, (5.0,)))
            lam = mid + w5 * (ry + 24)
            bones.append(Prim("capsule", lam - ex * 12, lam + ex * 12, (4.5,)))
            bones.append(Prim("ellipsoid", lam + w5 * 12, None, (4.5, 14.0, 8.0), np.stack([ex, w5, d5])))
            c = b1
            d5 = d5 + 0.35 * up
            d5 /= np.linalg.norm(d5)
            w5 = np.cross(d5, ex)
            w5 /= np.linalg.norm(w5)
            w5 = w5 if w5[1] > 0 else -w5
        self.l4_top = c
        # Lower sacrum (S4-S5, label sacrum) and coccyx (other bone): tapering, curving anteriorly.
        hw0 = lm.sacrum_bottom_halfwidth * 0.8
        coccyx: list[Prim] = []
        for s in np.arange(-2.0, 62.0, 1.5):
            cen = lm.sacral_bottom - ax * s - th * (0.004 * s * s) + th * 3.0
            frac = s / 62.0
            hw = hw0 * (1 - frac) + 5.0 * frac
            ht = 9.0 * (1 - frac) + 4.0 * frac
            a = -ax - th * (0.008 * s)
            a /= np.linalg.norm(a)
            axes = np.stack([ex, a, np.cross(ex, a)])
            prim = Prim("ellipsoid", cen, None, (hw, 3.0, ht), axes)
            if s < 30.0:
                sac.append(prim)
            elif s > 33.0:
                coccyx.append(prim)
        self.sacrum_tip = lm.sacral_bottom - ax * 30.0 - th * (0.004 * 900) + th * 3.0
        bones += coccyx
        # Femora: head in the acetabulum, neck, trochanters, shaft with marrow canal.
        femur_canal: list[Prim] = []
        self.fem: dict[str, tuple[np.ndarray, float, np.ndarray]] = {}
        for side, s in (("left", 1.0), ("right", -1.0)):
            ca, ra = lm.acetabula[side]
            rh = ra - r.uniform(2.0, 3.0)
            bones.append(Prim("ellipsoid", ca, None, (rh, rh, rh)))
            dn = np.array([s * 0.78, -0.2, -0.58])
            dn /= np.linalg.norm(dn)
            ne = ca + dn * 48.0
            bones.append(Prim("capsule", ca, ne, (0.62 * rh,)))
            bones.append(Prim("ellipsoid", ne + np.array([s * 6, 4, 10]), None, (13.0, 16.0, 22.0)))
            shaft_dir = np.array([-s * 0.12, 0.02, -1.0])
            shaft_dir /= np.linalg.norm(shaft_dir)
            sh0 = ne + np.array([0, 0, 5.0])
            sh1 = sh0 + shaft_dir * 260.0
            bones.append(Prim("ellcyl", sh0, sh1, (15.0, 14.0), ex[None]))
            bones.append(Prim("ellipsoid", sh0 + shaft_dir * 45 + np.array([-s * 12, 8, 0]), None, (8.0, 8.0, 10.0)))
            femur_canal.append(Prim("ellcyl", sh0 + shaft_dir * 70, sh1, (8.5, 8.0), ex[None]))
            self.fem[side] = (ca, rh, dn)
        return {"other": bones, "sacrum": sac, "discs": discs, "canal": femur_canal}

    def soft_tissue(self, lm: A.Landmarks) -> dict[str, Any]:
        r = self.rng_anat
        lo, hi = lm.bbox
        half_w = max(abs(lo[0]), abs(hi[0]))
        ant = lo[1] - r.uniform(15.0, 70.0)
        post = hi[1] + r.uniform(20.0, 45.0)
        a = half_w + r.uniform(20.0, 55.0)
        fat = r.uniform(10.0, 45.0)
        jc_y = (lm.joints["left"].center[1] + lm.joints["right"].center[1]) / 2
        ac_z = min(c[2] for c, _ in lm.acetabula.values())
        return {"a": a, "yc": (ant + post) / 2.0, "b": (post - ant) / 2.0, "fat": fat, "jc_y": jc_y, "ac_z": ac_z,
                "fat_hu": r.uniform(-115, -85), "muscle_hu": r.uniform(40, 60), "n_bowel": int(r.integers(5, 14)),
                "n_gas": int(r.integers(2, 9))}

    # -- main ------------------------------------------------------------------------------------
    def build(self) -> Phantom:
        from scipy import ndimage

        spec, nui = self.spec, self.nui
        shape = _shape_for(spec)
        lm = A.landmarks(shape)
        self.progress(0.05, "shape ready")
        pose = Pose(_rotation(nui.rotation_deg), np.array(nui.table_offset_mm, float) + np.array([0.0, 40.0, 0.0]))
        ext = self.extras(lm)
        st = self.soft_tissue(lm)
        px, sp, th, lo, hi = _plan_grid(nui, lm, pose, None, None, spec.crop, spec.max_voxels)  # type: ignore[arg-type]
        # Fine grid: in-plane = output pixel; along z a few sub-slices per output slice (thickness).
        m = int(np.ceil(sp / min(1.0, max(px, 0.6))))
        dzf = sp / m
        n_out = int(np.floor((hi[2] - lo[2]) / sp)) + 1
        nt = max(1, int(round(th / dzf)))
        pad = nt // 2 + 1
        nxy = np.maximum(np.floor((hi[:2] - lo[:2]) / px).astype(int) + 1, 16)
        nzf = (n_out - 1) * m + 1 + 2 * pad
        grid = Grid(origin=np.array([lo[0], lo[1], lo[2] - pad * dzf]), spacing=np.array([px, px, dzf]),
                    shape=(int(nzf), int(nxy[1]), int(nxy[0])))
        log.debug("atlas phantom grid %s at %.2f/%.2f mm", grid.shape, px, dzf)

        hu = np.full(grid.shape, -1000.0, np.float32)
        lab = np.zeros(grid.shape, np.uint8)
        self._soft(grid, pose, st, lm, hu)
        self.progress(0.25, "soft tissue")
        # Bones.
        bone = {k: np.zeros(grid.shape, bool) for k in ("sacrum", "left", "right", "other")}
        for b in A.BONES:
            vox = _voxelise(pose.to_world(shape.verts[b]), shape.faces[b], grid)
            if vox is not None:
                bone[b][vox[0]] |= vox[1]
        for key, prims in (("sacrum", ext["sacrum"]), ("other", ext["other"])):
            for p in prims:
                res = _paint(grid, pose, p)
                if res is not None:
                    bone[key][res[0]] |= res[1]
        for b in ("sacrum", "left", "right"):
            bone["other"] &= ~bone[b]
        for p in ext["discs"]:
            res = _paint(grid, pose, p)
            if res is not None:
                hu[res[0]] = np.where(res[1], 80.0, hu[res[0]])
        self.progress(0.45, "bones voxelised")
        # Joints: gap, lesions and mimics.
        plans = {}
        patient_oci = self.rng_les.random() < MIMIC_RATES["oci"]
        age_narrow = {s: self.rng_les.random() < MIMIC_RATES["narrowing"] for s in ("left", "right")}
        for side in ("left", "right"):
            g = spec.left_grade if side == "left" else spec.right_grade
            plans[side] = plan_joint(g, self.rng_les, spec.borderline_share)
            plans[side]["mimics"] = plan_mimics(plans[side]["label_grade"], g, self.rng_les, age_narrow[side])
            if patient_oci and "oci" not in plans[side]["mimics"] and max(g, plans[side]["label_grade"]) <= 1:
                plans[side]["mimics"].append("oci")
        joint_rec: dict[str, Any] = {}
        hu_ops: list[Callable[[np.ndarray], None]] = []
        lesions: list[dict[str, Any]] = []
        mimics: list[dict[str, Any]] = []
        for side in ("left", "right"):
            rec = self._joint(grid, pose, lm, side, plans[side], bone, hu_ops, lesions, mimics)
            joint_rec[side] = rec
        self.progress(0.6, "joints")
        # Bone HU from the final masks: cortex where the smoothed union mask falls off.
        anyb = bone["sacrum"] | bone["left"] | bone["right"] | bone["other"]
        lab[bone["other"]] = OTHER_BONE
        lab[bone["sacrum"]] = SACRUM
        lab[bone["left"]] = LEFT_ILIUM
        lab[bone["right"]] = RIGHT_ILIUM
        dens = nui.bone_density
        trab_hu = 220.0 + 100.0 * dens
        cort_hu = 1250.0 + 300.0 * dens
        zs, ys, xs = [np.nonzero(anyb.any(axis=ax_))[0] for ax_ in ((1, 2), (0, 2), (0, 1))]
        if len(zs):
            bb = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
            mb = anyb[bb]
            sig = 0.8 / grid.spacing[::-1]
            smooth = ndimage.gaussian_filter(mb.astype(np.float32), sigma=sig)
            cw = np.clip((0.93 - smooth) / 0.12, 0.0, 1.0)
            white = self.rng_anat.standard_normal(mb.shape, dtype=np.float32)
            tex = ndimage.gaussian_filter(white, 0.55 / grid.spacing[::-1]) - ndimage.gaussian_filter(white, 1.6 / grid.spacing[::-1])
            tex *= 1.0 / max(float(tex.std()), 1e-6)
            trab = trab_hu + 70.0 * tex
            val = trab + (cort_hu - trab) * cw
            sub = hu[bb]
            sub[mb] = val[mb]
            hu[bb] = sub
            canal = np.zeros(grid.shape, bool)
            for p in ext["canal"]:
                res = _paint(grid, pose, p)
                if res is not None:
                    canal[res[0]] |= res[1]
            hu[canal & anyb] = float(self.rng_anat.uniform(-40, 40))
        for op in hu_ops:
            op(hu)
        # Metal.
        metal = self._metal(grid, pose, lm, hu, lab)
        self.progress(0.75, "painted")
        # Slice thickness: average nt fine sub-slices around each output slice centre.
        if nt > 1:
            hu = ndimage.uniform_filter1d(hu, size=nt, axis=0, mode="nearest")
        idx = pad + np.arange(n_out) * m
        hu_out = hu[idx]
        lab_out = lab[idx]
        metal_out = metal[idx] if metal is not None else None
        del hu, lab
        hu_out = apply_kernel(hu_out, px, nui.blur_fwhm_mm, nui.sharpen)
        if metal_out is not None and metal_out.any():
            hu_out = metal_streaks(hu_out, metal_out, px, self.rng_noise)
        hu_out += fbp_noise(hu_out.shape, px, nui.effective_noise_hu, nui.blur_fwhm_mm, nui.sharpen, self.rng_noise)
        hu_out += nui.hu_offset
        hu_int = np.clip(np.rint(hu_out), -1024, 3071).astype(np.int16)
        origin = np.array([lo[0], lo[1], lo[2]])
        affine = geo.make_affine(origin, np.eye(3)[::-1], (sp, px, px))
        meta = SeriesMetadata(
            patient_name=spec.patient_name, patient_id=spec.patient_id, patient_birth_date=spec.patient_birth_date,
            patient_sex="O", study_description="SYNTHETIC PELVIS PHANTOM",
            series_description=f"Phantom {nui.kernel}",  # no grade or truth in any DICOM attribute
            modality="CT", manufacturer="SIRAD phantom", institution_name=f"SIRAD {nui.site}",
            slice_thickness_mm=th, convolution_kernel=nui.kernel,
            extra={"synthetic": True, "site": nui.site},
        )
        volume = Volume(array=hu_int, affine=affine, metadata=meta, warnings=[], sources=[])
        truth = self._truth(lm, pose, plans, lesions, mimics, joint_rec, (px, sp, th), shape)
        self.progress(1.0, "phantom ready")
        return Phantom(volume=volume, labels=lab_out, truth=truth, spec=spec)  # type: ignore[arg-type]

    def _soft(self, grid: Grid, pose: Pose, st: dict[str, Any], lm: A.Landmarks, hu: np.ndarray) -> None:
        r = self.rng_anat
        # Body, fat, muscle and pelvic fat vary slowly: evaluate them on a coarse grid (every 2nd
        # pixel, ~2 mm along z) and repeat; local structures below are painted at full resolution.
        sz = max(1, int(round(2.0 / grid.spacing[2])))
        coarse = Grid(grid.origin, grid.spacing * np.array([2, 2, sz]),
                      (-(-grid.shape[0] // sz), -(-grid.shape[1] // 2), -(-grid.shape[2] // 2)))
        q = pose.to_canon(coarse.points((slice(0, coarse.shape[0]), slice(0, coarse.shape[1]),
                                         slice(0, coarse.shape[2]))))
        x, y, z = q[..., 0], q[..., 1], q[..., 2]
        a = st["a"] + np.clip(st["ac_z"] + 20 - z, 0, 80) * 0.25  # a bit wider over the hips
        e = (np.abs(x) / a) ** 2.2 + (np.abs(y - st["yc"]) / st["b"]) ** 2.2
        ein = (np.abs(x) / (a - st["fat"])) ** 2.2 + (np.abs(y - st["yc"]) / (st["b"] - st["fat"])) ** 2.2
        cav = (((x / (0.6 * a)) ** 2 + ((y - (st["jc_y"] - 60)) / (0.4 * st["b"])) ** 2 <= 1)
               & (z > st["ac_z"] - 35 + 10 * np.sin(x / 25.0)))
        cls = np.zeros(e.shape, np.uint8)
        cls[e <= 1] = 1
        cls[ein <= 1] = 2
        cls[cav & (ein <= 1)] = 3
        del q, x, y, z, e, ein, cav
        cls = np.repeat(np.repeat(np.repeat(cls, sz, axis=0), 2, axis=1), 2, axis=2)[
            : grid.shape[0], : grid.shape[1], : grid.shape[2]]
        lut = np.array([-1000.0, st["fat_hu"], st["muscle_hu"], st["fat_hu"] + 15], np.float32)
        hu[...] = lut[cls]
        prims: list[tuple[Prim, float]] = []
        jc_y = st["jc_y"]
        for _ in range(st["n_bowel"]):
            c = np.array([r.uniform(-70, 70), jc_y - r.uniform(35, 95), r.uniform(st["ac_z"] - 10, 90)])
            rad = tuple(r.uniform(10, 22, size=3))
            prims.append((Prim("ellipsoid", c, None, rad), float(r.uniform(15, 40))))
        for _ in range(st["n_gas"]):
            c = np.array([r.uniform(-70, 70), jc_y - r.uniform(40, 100), r.uniform(st["ac_z"], 90)])
            rad = tuple(r.uniform(3, 14, size=3))
            prims.append((Prim("ellipsoid", c, None, rad), -950.0))
        prims.append((Prim("ellipsoid", np.array([0.0, jc_y - 95, st["ac_z"] - 5]), None,
                           tuple(r.uniform([25, 18, 18], [45, 35, 35]))), float(r.uniform(0, 15))))  # bladder
        # psoas / iliacus along the pelvic brim
        for s in (-1, 1):
            prims.append((Prim("capsule", np.array([s * 30.0, jc_y - 25, 90.0]), np.array([s * 55.0, jc_y - 60, st["ac_z"] + 15]),
                               (float(r.uniform(14, 20)),)), float(st["muscle_hu"])))
        # iliac vessels: common iliac from the bifurcation in front of L4/L5, external along the brim,
        # internal down into the pelvis beside the sacrum; veins behind and medial to the arteries.
        ca_hu, cv_hu = {"none": (40.0, 40.0), "arterial": (r.uniform(220, 380), r.uniform(60, 110)),
                        "venous": (r.uniform(130, 180), r.uniform(140, 200))}[self.nui.contrast]
        bif = np.array([0.0, jc_y - 45, 55.0])
        for s in (-1, 1):
            split = np.array([s * 38.0, jc_y - 38, 12.0])
            ext_end = np.array([s * 75.0, lm.acetabula["left" if s > 0 else "right"][0][1] - 18, st["ac_z"] - 20])
            int_end = np.array([s * 35.0, jc_y - 5, -40.0])
            for (p0, p1, rr) in ((bif, split, 5.5), (split, ext_end, 4.5), (split, int_end, 3.5)):
                prims.append((Prim("capsule", p0, p1, (rr,)), float(ca_hu)))
                off = np.array([-s * 4.0, 8.0, 0.0])
                prims.append((Prim("capsule", p0 + off, p1 + off, (rr + 2.0,)), float(cv_hu)))
        for prim, val in prims:
            res = _paint(grid, pose, prim)
            if res is not None:
                sub = hu[res[0]]
                inside_body = sub > -900
                sub[res[1] & inside_body] = val
                hu[res[0]] = sub

    def _joint(self, grid: Grid, pose: Pose, lm: A.Landmarks, side: str, plan: dict[str, Any],
               bone: dict[str, np.ndarray], hu_ops: list, lesions: list, mimics: list) -> dict[str, Any]:
        """Joint gap, mask-changing lesions; HU-only lesions are queued in ``hu_ops``."""
        from scipy import ndimage
        from scipy.spatial import cKDTree

        r = self.rng_les
        jf = lm.joints[side]
        ptsw = pose.to_world(jf.points)
        nrm_w = pose.dir_to_world(jf.normal)
        sl = grid.sub(ptsw.min(axis=0) - 14.0, ptsw.max(axis=0) + 14.0)
        if sl is None:
            return {"gap_mm": None}
        spc = grid.spacing[::-1]
        S, H = bone["sacrum"][sl].copy(), bone[side][sl].copy()
        sd_s = ndimage.distance_transform_edt(~S, sampling=spc) - ndimage.distance_transform_edt(S, sampling=spc)
        sd_h = ndimage.distance_transform_edt(~H, sampling=spc) - ndimage.distance_transform_edt(H, sampling=spc)
        t = (sd_s - sd_h) / 2.0  # >0 towards the hip bone; 0 on the joint's mid-surface
        q = grid.points(sl)
        dj, _ = cKDTree(ptsw).query(q.reshape(-1, 3), distance_upper_bound=12.0)
        dj = dj.reshape(S.shape)
        J = dj < 5.0  # the auricular contact region (and the gap inside it)
        zone = J & (sd_s + sd_h < 10.0)
        gap0 = float(r.uniform(2.0, 3.2))
        if "narrowing" in plan["mimics"]:
            gap0 = float(r.uniform(0.9, 1.5))
        width = np.full(S.shape, gap0, np.float32)
        rec: dict[str, Any] = {"gap_mm": round(gap0, 3)}
        wc = plan["width_change"]

        def pick(anterior: bool = False) -> int:
            """A contact point: anywhere, or in the anterior third (synovial part)."""
            if anterior:
                order = np.argsort(jf.points[:, 1])
                return int(order[r.integers(0, max(1, len(order) // 3))])
            return int(r.integers(0, len(jf.points)))

        def within(c: np.ndarray, rad: float) -> np.ndarray:
            return np.sum((q - c.astype(np.float32)) ** 2, axis=-1) < rad * rad

        if wc is not None:
            k = pick(True)
            reg = within(ptsw[k], wc["r"])
            new = float(r.uniform(4.5, 7.0)) if wc["kind"] == "widening" else float(r.uniform(0.4, 1.0))
            width[reg] = new
            lesions.append({"side": side, "kind": wc["kind"], "bone": "joint", "center_lps_mm": _r(ptsw[k]),
                            "radius_mm": round(wc["r"], 3), "width_mm": round(new, 3)})
        # open the gap to the case's width (the real gap stays where it is wider) ...
        clear = zone & (np.abs(t) < width / 2.0)
        S &= ~clear
        H &= ~clear
        # ... and narrow it where asked (bone grows from both sides towards the mid-surface)
        grow = zone & (np.abs(t) >= width / 2.0) & (width < 1.5) & ~S & ~H & (sd_s + sd_h < 6.0)
        S |= grow & (t < 0)
        H |= grow & (t > 0)
        gapmask = zone & ~S & ~H & (sd_s + sd_h < 8.0)
        # fusion (grade 4): bone across the joint over a share of the contact region (total for most)
        if plan["fusion"] > 0:
            k0 = pick()
            dk = np.linalg.norm(ptsw - ptsw[k0], axis=1)
            rad = float(np.quantile(dk, min(1.0, 0.35 + 0.65 * plan["fusion"]))) + 4.0
            reg = J & within(ptsw[k0], rad) & (sd_s + sd_h < 12.0)
            S |= reg & (t <= 0)
            H |= reg & (t > 0)
            lesions.append({"side": side, "kind": "fusion", "bone": "joint", "center_lps_mm": _r(ptsw[k0]),
                            "radius_mm": round(rad, 3), "extent": round(plan["fusion"], 3)})
            ghost = reg & (np.abs(t) < 3.0)
            ghost_w = np.exp(-(t / 1.5) ** 2).astype(np.float32)
            hu_ops.append(_ghost_op(sl, ghost, ghost_w, 60.0))
        for b in plan["bridges"]:
            k = pick()
            reg = J & within(ptsw[k], b["r"]) & (np.abs(t) < width / 2.0 + 1.5) & (sd_s + sd_h < 10.0)
            S |= reg & (t <= 0)
            H |= reg & (t > 0)
            lesions.append({"side": side, "kind": "bridge", "bone": "joint", "center_lps_mm": _r(ptsw[k]),
                            "radius_mm": round(b["r"], 3)})
        # erosions: a cavity open to the joint with a thin sclerotic rim
        for e in plan["erosions"]:
            k = pick(True)
            which = "ilium" if r.random() < 0.65 else "sacrum"
            sgn = 1.0 if which == "ilium" else -1.0
            c = ptsw[k] + nrm_w * sgn * (gap0 / 2.0 + 0.4 * e["r"])
            cav = within(c, e["r"])
            rim = within(c, e["r"] + 1.3) & ~cav
            tgt = H if which == "ilium" else S
            hit = cav & (tgt | gapmask)
            tgt &= ~cav
            hu_ops.append(_erosion_op(sl, hit, rim & tgt, float(r.uniform(30, 70)), float(r.uniform(750, 1000))))
            lesions.append({"side": side, "kind": "erosion", "bone": which, "center_lps_mm": _r(c),
                            "radius_mm": round(e["r"], 3)})
        # subchondral sclerosis: a lens below the joint surface on one bone
        for s_ in plan["sclerosis"]:
            k = pick(True)
            which = "ilium" if r.random() < 0.7 else "sacrum"
            depth = -(sd_h if which == "ilium" else sd_s)
            along = np.sqrt(np.sum((q - ptsw[k].astype(np.float32)) ** 2, axis=-1))
            prof = np.clip(1.0 - (along / s_["r"]) ** 2, 0, 1)
            patch = (along < s_["r"]) & (depth > 0) & (depth < s_["depth"] * np.sqrt(prof))
            hu_ops.append(_sclerosis_op(sl, patch, float(r.uniform(650, 1000))))
            lesions.append({"side": side, "kind": "sclerosis", "bone": which, "center_lps_mm": _r(ptsw[k]),
                            "radius_mm": round(s_["r"], 3), "depth_mm": round(s_["depth"], 3),
                            "extent_mm": round(2 * s_["r"], 3)})
        # grade 1 (and some 2-3): indistinct margin along part of the joint
        for bl in plan["blur"]:
            k = pick()
            reg = within(ptsw[k], bl["r"]) & (np.abs(t) < width / 2.0 + 3.0) & (sd_s + sd_h < 12.0)
            w = 0.85 * ndimage.gaussian_filter(reg.astype(np.float32), 1.0 / spc)
            hu_ops.append(_blur_op(sl, w, float(r.uniform(1.0, 1.6)) / spc))
            lesions.append({"side": side, "kind": "indistinct_margin", "bone": "joint", "center_lps_mm": _r(ptsw[k]),
                            "radius_mm": round(bl["r"], 3)})
        # mimics (grade 0-1 only, by construction of the plan)
        for mk in plan["mimics"]:
            if mk == "osteophyte":  # anterior OA spur, bridging the joint's anterior margin in some
                k = int(np.argmin(jf.points[:, 1] + r.uniform(0, 6, len(jf.points))))
                c = ptsw[k] + pose.dir_to_world(np.array([0.0, -1.0, 0.0])) * r.uniform(2.5, 5.0)
                prim = Prim("ellipsoid", pose.to_canon(c), None, (float(r.uniform(3, 5)), float(r.uniform(3, 5)),
                                                                  float(r.uniform(5, 9))))
                m = prim.inside(pose.to_canon(q).astype(np.float32))
                tt = (q - ptsw[k].astype(np.float32)) @ nrm_w.astype(np.float32)
                S |= m & (tt <= 0)
                H |= m & (tt > 0)
                mimics.append({"side": side, "kind": "osteophyte", "center_lps_mm": _r(c)})
            elif mk == "vacuum":
                k = pick(True)
                reg = gapmask & within(ptsw[k], float(r.uniform(5, 10))) & (np.abs(t) < width / 2.0 - 0.3)
                hu_ops.append(_set_op(sl, reg, -900.0))
                mimics.append({"side": side, "kind": "vacuum", "center_lps_mm": _r(ptsw[k])})
            elif mk == "oci":  # triangular iliac sclerosis, anterior-inferior, ilium only
                k = int(np.argmin(jf.points[:, 1] + jf.points[:, 2] * 0.5))
                along = np.sqrt(np.sum((q - ptsw[k].astype(np.float32)) ** 2, axis=-1))
                R = float(r.uniform(12, 20))
                depth = -sd_h
                patch = (along < R) & (depth > 0) & (depth < float(r.uniform(8, 16)) * (1 - along / R))
                hu_ops.append(_sclerosis_op(sl, patch, float(r.uniform(900, 1200))))
                mimics.append({"side": side, "kind": "osteitis_condensans_ilii", "center_lps_mm": _r(ptsw[k])})
            elif mk == "accessory_sij":  # small facet joint posterior to the auricular surface
                k = int(np.argmax(jf.points[:, 1]))
                c = ptsw[k] + pose.dir_to_world(np.array([0.0, 1.0, 0.3])) * float(r.uniform(8, 14))
                for sgn, tgt in ((1.0, H), (-1.0, S)):
                    cc = c + nrm_w * sgn * 3.5
                    m = within(cc, float(r.uniform(3.5, 5.0)))
                    tgt |= m
                mimics.append({"side": side, "kind": "accessory_sij", "center_lps_mm": _r(c)})
            elif mk == "narrowing":
                mimics.append({"side": side, "kind": "age_narrowing", "center_lps_mm": _r(pose.to_world(jf.center)),
                               "gap_mm": round(gap0, 3)})
        gapmask = zone & ~S & ~H & (sd_s + sd_h < 8.0)
        hu_ops.insert(0, _set_op(sl, gapmask, float(r.uniform(45, 70))))  # cartilage / fluid in the gap
        bone["sacrum"][sl] = S
        bone[side][sl] = H & ~S
        return rec

    def _metal(self, grid: Grid, pose: Pose, lm: A.Landmarks, hu: np.ndarray, lab: np.ndarray) -> np.ndarray | None:
        kind = self.nui.metal
        if kind == "none":
            return None
        r = np.random.default_rng([self.spec.seed, 4])
        metal = np.zeros(grid.shape, bool)
        prims: list[Prim] = []
        if kind.startswith("hip"):
            sides = ["left", "right"] if kind == "hip-both" else [kind.split("-")[1]]
            for side in sides:
                ca, rh, dn = self.fem[side]
                s = 1.0 if side == "left" else -1.0
                prims.append(Prim("ellipsoid", ca, None, (rh - 4, rh - 4, rh - 4)))  # head
                ne = ca + dn * 40.0
                prims.append(Prim("capsule", ca, ne, (7.0,)))
                prims.append(Prim("capsule", ne, ne + np.array([-s * 10, 0, -130.0]), (6.5,)))  # stem
        else:  # iliosacral / pedicle screws
            for side in ("left", "right"):
                if r.random() < 0.7:
                    jc = lm.joints[side].center
                    s = 1.0 if side == "left" else -1.0
                    a = jc + np.array([s * 40.0, 10.0, -5.0])
                    prims.append(Prim("capsule", a, jc - np.array([s * 25.0, 0, 0]), (3.2,)))
                else:
                    a = lm.sacral_top + lm.sacral_thickness * 55 + np.array([0, 0, 35.0]) + np.array([{"left": 15, "right": -15}[side], 0, 0])
                    prims.append(Prim("capsule", a, a - lm.sacral_thickness * 45, (3.0,)))
        for p in prims:
            res = _paint(grid, pose, p)
            if res is not None:
                metal[res[0]] |= res[1]
        hu[metal] = float(r.uniform(2800, 3071))
        lab[metal] = 0
        return metal

    def _truth(self, lm: A.Landmarks, pose: Pose, plans: dict[str, Any], lesions: list, mimics: list,
               joint_rec: dict[str, Any], geom: tuple[float, float, float], shape: A.Shape) -> dict[str, Any]:
        spec, nui = self.spec, self.nui
        joints = {}
        for side in ("left", "right"):
            jf = lm.joints[side]
            joints[side] = {
                "grade": plans[side]["label_grade"], "true_grade": plans[side]["true_grade"],
                "severity": round(plans[side]["severity"], 3),
                "borderline": plans[side]["label_grade"] != plans[side]["true_grade"],
                "center_lps_mm": _r(pose.to_world(jf.center)),
                "gap_mm": joint_rec[side].get("gap_mm"),
                "axes_lps": [_r(pose.dir_to_world(a), 6) for a in jf.axes],
                "contact_points": int(len(jf.points)),
                "mimics": [m["kind"] for m in mimics if m["side"] == side],
            }
        top = pose.to_world(lm.sacral_top)
        bottom = pose.to_world(self.sacrum_tip)
        axis = (top - bottom) / np.linalg.norm(top - bottom)
        thick = pose.dir_to_world(lm.sacral_thickness)
        thick = thick - (thick @ axis) * axis
        thick /= np.linalg.norm(thick)
        return {
            "grades": {"left": plans["left"]["label_grade"], "right": plans["right"]["label_grade"]},
            "true_grades": {"left": spec.left_grade, "right": spec.right_grade},
            "joints": joints,
            "lesions": lesions,
            "mimics": mimics,
            "sacral_axis": {
                "superior_point_lps_mm": _r(top), "inferior_point_lps_mm": _r(bottom),
                "direction_lps": _r(axis, 6), "thickness_direction_lps": _r(thick, 6),
            },
            "anatomy": "atlas",
            "subject": shape.subject,
            "nuisance": {**nui.to_dict(), "pixel_mm": round(geom[0], 4), "slice_spacing_mm": round(geom[1], 4),
                         "slice_thickness_mm": round(geom[2], 4), "effective_noise_hu": round(nui.effective_noise_hu, 3)},
            "labels": {str(k): v for k, v in LABEL_NAMES.items()},
            "spec": spec.to_dict(),
            "synthetic": True,
            "note": "Synthetic phantom on real atlas bone surfaces, generated by SIRAD Viewer; not patient data.",
        }


def _r(v: np.ndarray, nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in np.asarray(v).ravel()]


def _set_op(sl: tuple[slice, slice, slice], mask: np.ndarray, value: float) -> Callable[[np.ndarray], None]:
    def op(hu: np.ndarray) -> None:
        sub = hu[sl]
        sub[mask] = value
    return op


def _sclerosis_op(sl, mask, value):  # noqa: ANN001, ANN202
    def op(hu: np.ndarray) -> None:
        sub = hu[sl]
        sub[mask] = np.maximum(sub[mask], value + 0.15 * (sub[mask] - 250.0))
    return op


def _erosion_op(sl, cavity, rim, cav_hu, rim_hu):  # noqa: ANN001, ANN202
    def op(hu: np.ndarray) -> None:
        sub = hu[sl]
        sub[rim] = np.maximum(sub[rim], rim_hu)
        sub[cavity] = cav_hu
    return op


def _ghost_op(sl, mask, weight, amp):  # noqa: ANN001, ANN202
    def op(hu: np.ndarray) -> None:
        sub = hu[sl]
        sub[mask] = np.minimum(sub[mask], 420.0) + amp * weight[mask]
    return op


def _blur_op(sl, weight, sigma):  # noqa: ANN001, ANN202
    from scipy import ndimage

    def op(hu: np.ndarray) -> None:
        sub = hu[sl]
        bl = ndimage.gaussian_filter(sub, sigma)
        # indistinct: blurred and the subchondral cortex a little less dense
        bl = np.where(bl > 500, 500 + 0.6 * (bl - 500), bl)
        sub[...] = sub + weight * (bl - sub)
    return op


def make_atlas_phantom(spec: AtlasSpec, *, progress: Callable[[float, str], None] | None = None) -> Phantom:
    """Generate an atlas phantom. Deterministic for a given spec (and atlas folder)."""
    return _Builder(spec, progress).build()
