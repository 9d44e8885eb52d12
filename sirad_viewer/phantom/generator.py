"""Synthetic pelvic CT phantoms with known sacroiliitis grades.

``make_phantom(PhantomSpec(left_grade=2, right_grade=3, seed=7))`` returns a
:class:`Phantom`: a CT :class:`~sirad_viewer.imaging.volume.Volume` in HU, a label map (sacrum,
left ilium, right ilium, other bone) on the same grid, and the ground truth (grades, every
planted lesion with its LPS position, the joint centres and the sacral long axis).

Grades follow the modified New York scale as a radiologist reads it on CT:

====  ======================================================================================
0     smooth cortical margins, even joint space (2.4-3.2 mm)
1     slight blurring of the subchondral cortex and irregular margins, no definite lesion
2     a few small erosions or patches of subchondral sclerosis, joint width preserved
3     multiple erosions, marked sclerosis, widening or narrowing, partial bony bridges
4     total ankylosis: the joint space is bridged by bone along its length
====  ======================================================================================

Variation is seeded: body and bone size, pose (a few degrees), table position, slice
thickness and spacing, pixel size, field of view, noise and reconstruction blur.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import SeriesMetadata, Volume
from sirad_viewer.phantom.anatomy import (JOINT_U, LABEL_NAMES, LEFT_ILIUM, OTHER_BONE, RIGHT_ILIUM, SACRUM,
                                          Anatomy, JointShape)

log = logging.getLogger(__name__)

SIDES = {"left": 1, "right": -1}

#: Identity planted in every phantom so privacy tests can look for it in exports.
PLANTED_IDENTITY = {
    "patient_name": "PHANTOM^PLANTED^SIRADTEST",
    "patient_id": "SIRAD-PRIV-0042",
    "patient_birth_date": "19610317",
}


@dataclass
class PhantomSpec:
    """Everything that determines a phantom. Same spec, same voxels."""

    left_grade: int = 0
    right_grade: int = 0
    seed: int = 0
    scale: float = 1.0
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about x (pitch), y (roll), z (yaw)
    table_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # patient position in the scanner
    matrix: int = 256
    fov_mm: float = 380.0
    slice_thickness_mm: float = 2.0
    slice_spacing_mm: float = 2.0
    z_range_mm: tuple[float, float] = (-115.0, 105.0)  # anatomical extent covered (sacrum near 0)
    noise_hu: float = 15.0
    blur_mm: float = 0.5
    kernel: str = "BONE"
    site: str = "phantom-A"
    patient_name: str = PLANTED_IDENTITY["patient_name"]
    patient_id: str = PLANTED_IDENTITY["patient_id"]
    patient_birth_date: str = PLANTED_IDENTITY["patient_birth_date"]

    def __post_init__(self) -> None:
        for name in ("left_grade", "right_grade"):
            g = getattr(self, name)
            if int(g) != g or not 0 <= g <= 4:
                raise ValueError(f"{name} must be an integer grade 0-4, got {g!r}")
        if not 0.3 <= self.slice_spacing_mm <= 10 or not 0.3 <= self.slice_thickness_mm <= 10:
            raise ValueError("slice thickness and spacing must be between 0.3 and 10 mm")
        if not 32 <= self.matrix <= 1024:
            raise ValueError(f"matrix must be between 32 and 1024, got {self.matrix}")

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.matrix

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Scanner-like profiles for phantom "sites" (used by phantom datasets to mimic other centres).
SITE_PROFILES: dict[str, dict[str, Any]] = {
    "phantom-A": {"thickness": (1.0, 2.0), "pixel": (0.7, 1.0), "noise": (8, 20), "blur": (0.3, 0.6), "kernel": "BONE"},
    "phantom-B": {"thickness": (2.0, 3.0), "pixel": (0.8, 1.2), "noise": (15, 35), "blur": (0.6, 1.0), "kernel": "STANDARD"},
    "phantom-C": {"thickness": (0.6, 1.25), "pixel": (0.6, 0.85), "noise": (20, 40), "blur": (0.25, 0.5), "kernel": "SHARP"},
}


def random_spec(seed: int, *, left_grade: int | None = None, right_grade: int | None = None,
                site: str = "phantom-A", matrix: int | None = None) -> PhantomSpec:
    """A seeded, varied spec: size, pose, table position, slice geometry, noise and blur."""
    if site not in SITE_PROFILES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITE_PROFILES)}")
    prof = SITE_PROFILES[site]
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])  # other site, other patients
    lg = int(rng.integers(0, 5)) if left_grade is None else left_grade
    rg = int(rng.integers(0, 5)) if right_grade is None else right_grade
    thickness = float(rng.uniform(*prof["thickness"]))
    spacing = float(thickness * rng.choice([0.5, 0.75, 1.0, 1.0]))
    spacing = max(0.6, min(3.0, spacing))
    pixel = float(rng.uniform(*prof["pixel"]))
    fov = float(rng.uniform(320.0, 420.0))  # always the whole pelvis
    # the site's pixel size sets the matrix unless the caller fixes it (small matrices: coarser pixels)
    m = int(matrix) if matrix is not None else int(np.clip(round(fov / pixel), 128, 512))
    return PhantomSpec(
        left_grade=lg, right_grade=rg, seed=seed, scale=float(rng.uniform(0.9, 1.1)),
        rotation_deg=tuple(float(v) for v in rng.uniform(-4, 4, size=3)),  # type: ignore[arg-type]
        table_offset_mm=(float(rng.uniform(-15, 15)), float(rng.uniform(-20, 10)), float(rng.uniform(-20, 20))),
        matrix=m, fov_mm=fov, slice_thickness_mm=thickness, slice_spacing_mm=spacing,
        noise_hu=float(rng.uniform(*prof["noise"])), blur_mm=float(rng.uniform(*prof["blur"])),
        kernel=prof["kernel"], site=site,
    )


@dataclass
class Lesion:
    """One planted lesion, in anatomical coordinates (converted to LPS in the ground truth)."""

    side: str
    kind: str  # erosion | sclerosis | bridge | irregularity | fusion | widening | narrowing
    bone: str  # ilium | sacrum | joint
    center_anat: np.ndarray
    radius_mm: float
    extent: dict[str, float] = field(default_factory=dict)


@dataclass
class Phantom:
    """A phantom CT, its label map and its ground truth."""

    volume: Volume
    labels: np.ndarray  # (S, R, C) uint8: 0 background, 1 sacrum, 2 left ilium, 3 right ilium, 4 other bone
    truth: dict[str, Any]
    spec: PhantomSpec

    def labels_volume(self) -> Volume:
        return Volume(array=self.labels.astype(np.int16), affine=self.volume.affine,
                      metadata=self.volume.metadata, sources=[])


# ---------------------------------------------------------------------------------------------
# Lesion planning
# ---------------------------------------------------------------------------------------------

def _joint_site(anat: Anatomy, rng: np.random.Generator, synovial: bool = True) -> tuple[float, float]:
    """A (u, w) point on the joint surface, in its synovial (anterior-inferior) part by default."""
    for _ in range(200):
        u = float(rng.uniform(JOINT_U[0] + 6, JOINT_U[1] - 8))
        ht = float(anat.half_thickness(np.asarray(u)))
        wn = float(rng.uniform(-0.85, 0.8))
        w = float(anat.mid_w(np.asarray(u)) + wn * ht)
        if bool(anat.synovial(np.asarray(u), np.asarray(w))) == synovial:
            return u, w
    return 0.0, float(anat.mid_w(np.asarray(0.0)))


def plan_joint(grade: int, side: int, rng: np.random.Generator) -> tuple[JointShape, list[dict[str, Any]]]:
    """Joint shape for a grade, plus lesion *recipes* placed once the anatomy exists."""
    j = JointShape(side=side, gap_mm=float(rng.uniform(2.4, 3.2)), ligament_gap_mm=float(rng.uniform(5.5, 8.0)),
                   phases=rng.uniform(0, 2 * np.pi, size=6))
    recipes: list[dict[str, Any]] = []
    if grade == 1:
        j.irregularity_mm = float(rng.uniform(0.5, 0.8))
        recipes.append({"kind": "irregularity", "blur": True})
    elif grade == 2:
        j.irregularity_mm = float(rng.uniform(0.6, 1.0))
        n = int(rng.integers(2, 5))
        for _ in range(n):
            if rng.random() < 0.6:
                recipes.append({"kind": "erosion", "r": float(rng.uniform(1.5, 2.5))})
            else:
                recipes.append({"kind": "sclerosis", "depth": float(rng.uniform(3.0, 6.0)),
                                "extent": float(rng.uniform(6.0, 12.0))})
    elif grade == 3:
        j.irregularity_mm = float(rng.uniform(1.0, 1.5))
        for _ in range(int(rng.integers(5, 10))):
            recipes.append({"kind": "erosion", "r": float(rng.uniform(2.0, 4.0))})
        for _ in range(int(rng.integers(2, 5))):
            recipes.append({"kind": "sclerosis", "depth": float(rng.uniform(6.0, 12.0)),
                            "extent": float(rng.uniform(12.0, 25.0))})
        lo = float(rng.uniform(JOINT_U[0], 0.0))
        j.gap_scale_region = (lo, lo + float(rng.uniform(30.0, 45.0)))
        if rng.random() < 0.5:
            j.gap_scaled_mm = float(rng.uniform(4.5, 6.5))
            recipes.append({"kind": "widening"})
        else:
            j.gap_scaled_mm = float(rng.uniform(1.0, 1.5))
            recipes.append({"kind": "narrowing"})
        for _ in range(int(rng.integers(1, 4))):
            recipes.append({"kind": "bridge", "r": float(rng.uniform(2.5, 4.0))})
    elif grade == 4:
        j.fused = True
        j.irregularity_mm = float(rng.uniform(0.5, 1.2))
        recipes.append({"kind": "fusion"})
        for _ in range(int(rng.integers(1, 3))):
            recipes.append({"kind": "sclerosis", "depth": float(rng.uniform(4.0, 8.0)),
                            "extent": float(rng.uniform(10.0, 20.0))})
    return j, recipes


def place_lesions(anat: Anatomy, recipes: list[dict[str, Any]], side: int, rng: np.random.Generator) -> list[Lesion]:
    name = "left" if side > 0 else "right"
    out: list[Lesion] = []
    fr = anat.frame
    for r in recipes:
        kind = r["kind"]
        if kind in ("erosion", "sclerosis", "bridge"):
            u, w = _joint_site(anat, rng)
            xs = float(anat.joint_surface_x(np.asarray(u), np.asarray(w), side))
            gap = float(anat.gap_width(np.asarray(u), np.asarray(w), side))
            bone = "ilium" if rng.random() < 0.7 else "sacrum"
            sgn = 1.0 if bone == "ilium" else -1.0
            if kind == "erosion":
                off = gap / 2.0 + 0.35 * r["r"]
                c = fr.point(side * (xs + sgn * off), u, w)
                out.append(Lesion(name, kind, bone, c, r["r"]))
            elif kind == "sclerosis":
                off = gap / 2.0 + r["depth"] / 2.0
                c = fr.point(side * (xs + sgn * off), u, w)
                out.append(Lesion(name, kind, bone, c, r["extent"] / 2.0,
                                  {"depth_mm": r["depth"], "extent_mm": r["extent"]}))
            else:
                c = fr.point(side * xs, u, w)
                out.append(Lesion(name, kind, "joint", c, r["r"]))
        else:
            u = 0.0
            w = float(anat.mid_w(np.asarray(u)) - 0.3 * anat.half_thickness(np.asarray(u)))
            xs = float(anat.joint_surface_x(np.asarray(u), np.asarray(w), side))
            out.append(Lesion(name, kind, "joint", fr.point(side * xs, u, w), 0.0))
    return out


# ---------------------------------------------------------------------------------------------
# Painting
# ---------------------------------------------------------------------------------------------

class _Painter:
    """Evaluates HU and labels at anatomical points."""

    def __init__(self, anat: Anatomy, lesions: list[Lesion], rng: np.random.Generator) -> None:
        self.anat = anat
        self.lesions = lesions
        k = 7
        dirs = rng.normal(size=(k, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.tex_f = dirs * (2 * np.pi / rng.uniform(2.5, 7.0, size=(k, 1)))
        self.tex_phi = rng.uniform(0, 2 * np.pi, size=k)
        self.cortex_mm = float(rng.uniform(1.3, 2.0))

    def texture(self, p: np.ndarray) -> np.ndarray:
        t = np.zeros(p.shape[:-1], dtype=np.float32)
        for f, ph in zip(self.tex_f, self.tex_phi):
            t += np.sin(p @ f + ph).astype(np.float32)
        return t / np.sqrt(len(self.tex_phi))

    def paint(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HU (float32) and label (uint8) at points ``p`` of shape (N, 3)."""
        a = self.anat
        n = p.shape[0]
        hu = np.full(n, -1000.0, dtype=np.float32)
        label = np.zeros(n, dtype=np.uint8)
        bd = a.body_depth(p)
        inside = bd > 0
        hu[inside] = -100.0
        hu[bd > a.fat_mm] = 45.0
        if not inside.any():
            return hu, label
        hu[inside & a.gas_mask(p)] = -950.0

        idx = np.nonzero(bd > -2)[0]
        q = p[idx]
        d_sac = _in_box(a.sacrum_depth, q, (-70, -30, -80), (70, 115, 70))
        d_l = _in_box(lambda t: a.ilium_depth(t, 1), q, (0, -100, -150), (150, 110, 75))
        d_r = _in_box(lambda t: a.ilium_depth(t, -1), q, (-150, -100, -150), (0, 110, 75))
        d_fl = _in_box(lambda t: a.femur_depth(t, 1), q, (40, -70, -320), (150, 50, -35))
        d_fr = _in_box(lambda t: a.femur_depth(t, -1), q, (-150, -70, -320), (-40, 50, -35))
        d_sp, d_disc = _in_box(a.spine_depth, q, (-70, -60, 25), (70, 110, 220), pair=True)
        d_co = _in_box(a.coccyx_depth, q, (-20, 30, -130), (20, 130, -30))
        d_other = np.maximum(np.maximum(d_fl, d_fr), np.maximum(d_sp, d_co))
        stack = np.stack([d_sac, d_l, d_r, d_other])
        best = np.argmax(stack, axis=0)
        depth = stack[best, np.arange(len(idx))]
        lab = np.where(depth > 0, np.array([SACRUM, LEFT_ILIUM, RIGHT_ILIUM, OTHER_BONE], dtype=np.uint8)[best], 0)

        x, u, w = a.frame.coords(q)
        local_hu = hu[idx]
        local_hu = np.where(d_disc > 0, 85.0, local_hu)
        # Joint gaps (only soft tissue: bone wins where shapes touch).
        joint_band = {}
        for side in (1, -1):
            xs = a.joint_surface_x(u, w, side)
            gap = a.gap_width(u, w, side)
            dist = side * x - xs  # signed lateral distance from the joint's mid-surface
            region = a.in_joint_region(u, w) & (side * x > 0)
            band = region & (np.abs(dist) < gap / 2.0 + 0.05)
            syn = a.synovial(u, w)
            local_hu = np.where(band & (depth <= 0), np.where(syn, 50.0, 70.0), local_hu)
            joint_band[side] = (region, dist, gap, syn)

        tex = self.texture(q)
        bone = depth > 0
        trab = 230.0 + 70.0 * tex
        cortex_hu = 1350.0 + 80.0 * tex
        cortex = bone & (depth < self.cortex_mm)
        bone_hu = np.where(cortex, cortex_hu, trab)

        for side in (1, -1):
            j = a.joints[side]
            region, dist, gap, syn = joint_band[side]
            near = region & (np.abs(dist) < gap / 2.0 + self.cortex_mm + 1.0)
            if j.fused:
                fuse = region & (np.abs(dist) < gap / 2.0 + 0.1) & (a.body_depth(q) > 0)
                # Ossified joint: bone across the gap, cortex along the old joint line gone,
                # a faint denser line remains (a ghost of the subchondral plates).
                bone_hu = np.where(near | fuse, trab + 90.0 * np.exp(-(dist / 1.5) ** 2), bone_hu)
                newlab = np.where(dist > 0, LEFT_ILIUM if side > 0 else RIGHT_ILIUM, SACRUM).astype(np.uint8)
                lab = np.where(fuse & (lab == 0), newlab, lab)
                bone = bone | fuse
            elif j.irregularity_mm > 0 and j.irregularity_mm < 0.9 and not any(
                    les.side == ("left" if side > 0 else "right") and les.kind in ("erosion", "sclerosis")
                    for les in self.lesions):
                # Grade 1: indistinct subchondral cortex.
                bone_hu = np.where(near & cortex, 0.55 * cortex_hu + 0.45 * trab, bone_hu)

        for les in self.lesions:
            side = 1 if les.side == "left" else -1
            rel = q - les.center_anat
            if les.kind == "erosion":
                r2 = np.sum(rel * rel, axis=1)
                cav = r2 < les.radius_mm ** 2
                rim = bone & ~cav & (r2 < (les.radius_mm + 1.3) ** 2)
                bone_hu = np.where(rim, np.maximum(bone_hu, 900.0 + 60.0 * tex), bone_hu)
                hit = cav & (bone | (lab > 0))
                bone = bone & ~cav
                lab = np.where(cav, 0, lab)
                local_hu = np.where(hit, 40.0, local_hu)
            elif les.kind == "sclerosis":
                depth_mm = les.extent["depth_mm"]
                region, dist, gap, syn = joint_band[side]
                sgn = 1.0 if les.bone == "ilium" else -1.0
                du = (q - les.center_anat) @ a.frame.u
                dw = (q - les.center_anat) @ a.frame.w
                dd = sgn * dist - gap / 2.0  # depth below the joint surface on that bone's side
                patch = (dd > 0) & (dd < depth_mm * (1.0 - (du / les.radius_mm) ** 2 - (dw / les.radius_mm) ** 2).clip(0))
                bone_hu = np.where(patch & bone, np.maximum(bone_hu, 820.0 + 90.0 * tex), bone_hu)
            elif les.kind == "bridge":
                region, dist, gap, syn = joint_band[side]
                du = (q - les.center_anat) @ a.frame.u
                dw = (q - les.center_anat) @ a.frame.w
                rr = np.sqrt(du ** 2 + dw ** 2)
                br = region & (rr < les.radius_mm) & (np.abs(dist) < gap / 2.0 + 1.5)
                edge = br & (rr > les.radius_mm - 1.2)
                bone_hu = np.where(br, np.where(edge, 1100.0, trab + 150.0), bone_hu)
                newlab = np.where(dist > 0, LEFT_ILIUM if side > 0 else RIGHT_ILIUM, SACRUM).astype(np.uint8)
                lab = np.where(br & (lab == 0), newlab, lab)
                bone = bone | br

        local_hu = np.where(bone, bone_hu, local_hu)
        hu[idx] = local_hu
        label[idx] = np.where(bone, lab, 0)
        return hu, label


def _in_box(fn: Callable[[np.ndarray], Any], q: np.ndarray, lo: tuple[float, float, float],
            hi: tuple[float, float, float], *, pair: bool = False) -> Any:
    """Evaluate a depth function only for points inside an anatomical bounding box (-1e3 elsewhere)."""
    m = np.all((q >= np.asarray(lo)) & (q <= np.asarray(hi)), axis=1)
    out = np.full(len(q), -1e3)
    if not pair:
        if m.any():
            out[m] = fn(q[m])
        return out
    out2 = np.full(len(q), -1e3)
    if m.any():
        a, b = fn(q[m])
        out[m], out2[m] = a, b
    return out, out2


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Pose:
    """Anatomical frame -> scanner LPS: ``p_world = R @ (scale * p_anat) + t``."""

    rotation: np.ndarray
    scale: float
    translation: np.ndarray

    def to_world(self, p: np.ndarray) -> np.ndarray:
        return (self.scale * np.asarray(p)) @ self.rotation.T + self.translation

    def to_anat(self, p: np.ndarray) -> np.ndarray:
        return ((np.asarray(p) - self.translation) @ self.rotation) / self.scale

    def direction_to_world(self, v: np.ndarray) -> np.ndarray:
        return self.rotation @ np.asarray(v)


def make_phantom(spec: PhantomSpec, *, progress: Callable[[float, str], None] | None = None) -> Phantom:
    """Generate a phantom CT with known grades. Deterministic for a given spec."""
    from scipy import ndimage

    rng = np.random.default_rng(spec.seed * 7919 + spec.left_grade * 31 + spec.right_grade)
    joints: dict[int, JointShape] = {}
    recipes: dict[int, list[dict[str, Any]]] = {}
    for name, side in SIDES.items():
        grade = spec.left_grade if side > 0 else spec.right_grade
        joints[side], recipes[side] = plan_joint(grade, side, rng)
    anat = Anatomy(rng, joints)
    lesions = place_lesions(anat, recipes[1], 1, rng) + place_lesions(anat, recipes[-1], -1, rng)
    painter = _Painter(anat, lesions, rng)

    # Scanner z = 0 sits 60 mm above the sacral centre, like a table position on the iliac crest.
    pose = Pose(_rotation(spec.rotation_deg), spec.scale,
                np.array(spec.table_offset_mm, dtype=float) + np.array([0.0, 0.0, -40.0]))
    px = spec.pixel_mm
    m = spec.matrix
    z0, z1 = spec.z_range_mm
    zc = pose.to_world(np.array([0.0, 0.0, (z0 + z1) / 2]))[2]
    half = (z1 - z0) * spec.scale / 2.0
    n_slices = int(np.floor(2 * half / spec.slice_spacing_mm)) + 1
    origin = np.array([-(m - 1) / 2.0 * px, -(m - 1) / 2.0 * px, zc - half])
    affine = geo.make_affine(origin, np.eye(3)[::-1], (spec.slice_spacing_mm, px, px))  # SPL

    n_sub = max(1, int(round(spec.slice_thickness_mm / 1.0)))
    sub_offsets = (np.arange(n_sub) + 0.5) / n_sub * spec.slice_thickness_mm - spec.slice_thickness_mm / 2.0
    jj, ii = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    plane = np.stack([origin[0] + ii * px, origin[1] + jj * px], axis=-1).reshape(-1, 2)
    hu_vol = np.empty((n_slices, m, m), dtype=np.float32)
    lab_vol = np.empty((n_slices, m, m), dtype=np.uint8)
    # Only points inside (a margin around) the body ellipse need painting.
    for k in range(n_slices):
        z = origin[2] + k * spec.slice_spacing_mm
        acc = np.zeros(m * m, dtype=np.float32)
        lab_k = None
        for s_i, dz in enumerate(sub_offsets):
            pw = np.column_stack([plane, np.full(m * m, z + dz)])
            pa = pose.to_anat(pw)
            h, lab = painter.paint(pa)
            acc += h
            if s_i == n_sub // 2:
                lab_k = lab
        hu_vol[k] = (acc / n_sub).reshape(m, m)
        lab_vol[k] = lab_k.reshape(m, m)  # type: ignore[union-attr]
        if progress and (k % 8 == 0 or k == n_slices - 1):
            progress((k + 1) / n_slices * 0.9, f"painting slice {k + 1}/{n_slices}")

    # Reconstruction blur (in plane) and correlated noise.
    sig_px = spec.blur_mm / px
    if sig_px > 0.05:
        hu_vol = ndimage.gaussian_filter(hu_vol, sigma=(0.0, sig_px, sig_px))
    noise = rng.normal(0.0, 1.0, size=hu_vol.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.7, 0.7))
    noise *= spec.noise_hu / max(float(noise.std()), 1e-6)
    body = hu_vol > -900
    hu_vol += np.where(body, noise, 0.2 * noise)
    hu_int = np.clip(np.rint(hu_vol), -1024, 3071).astype(np.int16)
    if progress:
        progress(1.0, "phantom ready")

    meta = SeriesMetadata(
        patient_name=spec.patient_name, patient_id=spec.patient_id, patient_birth_date=spec.patient_birth_date,
        patient_sex="O", study_description="SYNTHETIC PELVIS PHANTOM",
        series_description=f"Synthetic phantom {spec.kernel}",  # no grade or seed: the seed gives the grades
        modality="CT", manufacturer="SIRAD phantom", institution_name=f"SIRAD {spec.site}",
        slice_thickness_mm=spec.slice_thickness_mm, convolution_kernel=spec.kernel,
        extra={"synthetic": True, "site": spec.site},
    )
    volume = Volume(array=hu_int, affine=affine, metadata=meta, warnings=[], sources=[])
    truth = _truth(spec, anat, lesions, pose)
    return Phantom(volume=volume, labels=lab_vol, truth=truth, spec=spec)


def _truth(spec: PhantomSpec, anat: Anatomy, lesions: list[Lesion], pose: Pose) -> dict[str, Any]:
    fr = anat.frame
    joints = {}
    for name, side in SIDES.items():
        u = (JOINT_U[0] + JOINT_U[1]) / 2.0 - 6.0
        w = float(anat.mid_w(np.asarray(u)) - 0.25 * anat.half_thickness(np.asarray(u)))
        xs = float(anat.joint_surface_x(np.asarray(u), np.asarray(w), side))
        joints[name] = {
            "grade": spec.left_grade if side > 0 else spec.right_grade,
            "center_lps_mm": [round(float(v), 3) for v in pose.to_world(fr.point(side * xs, u, w))],
            "gap_mm": round(anat.joints[side].gap_mm, 3),
        }
    top = pose.to_world(fr.point(0.0, 50.0, float(anat.mid_w(np.asarray(50.0)))))
    bottom = pose.to_world(fr.point(0.0, -65.0, float(anat.mid_w(np.asarray(-65.0)))))
    axis = (top - bottom) / np.linalg.norm(top - bottom)
    return {
        "grades": {"left": spec.left_grade, "right": spec.right_grade},
        "joints": joints,
        "lesions": [
            {"side": les.side, "kind": les.kind, "bone": les.bone,
             "center_lps_mm": [round(float(v), 3) for v in pose.to_world(les.center_anat)],
             "radius_mm": round(les.radius_mm * pose.scale, 3),
             **{k: round(v * pose.scale, 3) for k, v in les.extent.items()}}
            for les in lesions
        ],
        "sacral_axis": {
            "superior_point_lps_mm": [round(float(v), 3) for v in top],
            "inferior_point_lps_mm": [round(float(v), 3) for v in bottom],
            "direction_lps": [round(float(v), 6) for v in axis],
            "thickness_direction_lps": [round(float(v), 6) for v in pose.direction_to_world(fr.w)],
        },
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "spec": spec.to_dict(),
        "synthetic": True,
        "note": "Synthetic phantom generated by SIRAD Viewer; not patient data.",
    }


def write_phantom(phantom: Phantom, out_dir: str | Path, *, fmt: str = "nifti", compression: str = "none") -> dict[str, str]:
    """Write CT (NIfTI file or DICOM series), label map (NIfTI) and ``truth.json``.

    The planted fake identity is written on purpose (DICOM tags, and ``truth.json``) so that
    privacy tests can check that exports remove it.
    """
    from sirad_viewer.io.export import write_dicom_series, write_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if fmt == "nifti":
        files["ct"] = str(write_nifti(phantom.volume, out / "ct.nii.gz", deidentify=False, sidecar=False))
    elif fmt == "dicom":
        write_dicom_series(phantom.volume, out / "dicom", compression=compression, deidentify=False,
                           slice_thickness_mm=phantom.spec.slice_thickness_mm)
        files["ct"] = str(out / "dicom")
    else:
        raise ValueError(f"unknown format {fmt!r}: use 'nifti' or 'dicom'")
    files["labels"] = str(write_nifti(phantom.labels_volume(), out / "labels.nii.gz", deidentify=True, sidecar=False))
    truth = dict(phantom.truth)
    truth["planted_identity"] = {"patient_name": phantom.spec.patient_name, "patient_id": phantom.spec.patient_id,
                                 "patient_birth_date": phantom.spec.patient_birth_date}
    truth["files"] = {k: Path(v).name for k, v in files.items()}
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    files["truth"] = str(out / "truth.json")
    return files
