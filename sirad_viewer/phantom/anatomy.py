"""Analytic pelvis anatomy for the synthetic phantoms.

Everything is defined in an *anatomical frame* (mm, LPS axes: +x patient left, +y posterior,
+z superior) centred near the sacrum; :mod:`.generator` places that frame in the scanner with a
pose. Each bone is a set of :class:`Part` objects whose ``depth`` function returns, for points,
an approximate signed depth in mm (positive inside, about the distance to the surface near it),
so cortex, trabecular bone and lesions can be painted by depth.

The sacrum is built in its own frame along its long axis (``u``), across (``x``) and through its
thickness (``w``). The sacroiliac joint is the thin gap between the sacrum's lateral (auricular)
surface and the ilium: undulating, about 2.5-3 mm wide in its anterior-inferior synovial part,
wider and filled with interosseous ligament in its posterior-superior part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SACRUM, LEFT_ILIUM, RIGHT_ILIUM, OTHER_BONE = 1, 2, 3, 4
LABEL_NAMES = {0: "background", SACRUM: "sacrum", LEFT_ILIUM: "left ilium", RIGHT_ILIUM: "right ilium",
               OTHER_BONE: "other bone"}

#: Extent of the sacrum along its long axis (mm, u coordinate).
U_MIN, U_MAX = -65.0, 50.0
#: Extent of the auricular (joint) surface along u, and of its synovial part.
JOINT_U = (-42.0, 38.0)


def _clamp01(v: np.ndarray) -> np.ndarray:
    return np.clip(v, 0.0, 1.0)


@dataclass
class SacralFrame:
    """Sacrum-aligned coordinates: origin ``o``, long axis ``u`` (superior-anterior), thickness
    axis ``w`` (posterior-superior), ``x`` left."""

    tilt_deg: float = 38.0
    origin: np.ndarray = field(default_factory=lambda: np.array([0.0, 38.0, 0.0]))

    @property
    def u(self) -> np.ndarray:
        t = np.deg2rad(self.tilt_deg)
        return np.array([0.0, -np.sin(t), np.cos(t)])

    @property
    def w(self) -> np.ndarray:
        t = np.deg2rad(self.tilt_deg)
        return np.array([0.0, np.cos(t), np.sin(t)])

    def coords(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, u, w) of points ``p`` of shape (..., 3)."""
        q = p - self.origin
        return p[..., 0], q @ self.u, q @ self.w

    def point(self, x: float, u: float, w: float) -> np.ndarray:
        return self.origin + np.array([x, 0.0, 0.0]) + u * self.u + w * self.w


@dataclass
class JointShape:
    """Geometry of one sacroiliac joint (side +1 left, -1 right) and what grading changed."""

    side: int
    gap_mm: float = 2.8
    ligament_gap_mm: float = 7.0
    irregularity_mm: float = 0.0
    phases: np.ndarray = field(default_factory=lambda: np.zeros(6))
    gap_scale_region: tuple[float, float] | None = None  # u-range where the gap is changed
    gap_scaled_mm: float | None = None
    fused: bool = False


class Anatomy:
    """The pelvis: body, spine, sacrum, ilia, femora. All functions take (N, 3) anatomical points."""

    def __init__(self, rng: np.random.Generator, joints: dict[int, JointShape]) -> None:
        self.rng = rng
        self.frame = SacralFrame(tilt_deg=float(rng.uniform(33, 43)))
        self.joints = joints
        self.body_axes = np.array([rng.uniform(150, 180), rng.uniform(105, 125)])
        self.fat_mm = float(rng.uniform(12, 30))
        self.hw_top = float(rng.uniform(46, 54))
        self.hw_bottom = float(rng.uniform(18, 24))
        self.ht_top = float(rng.uniform(22, 28))
        self.ht_bottom = float(rng.uniform(8, 12))
        self.gas = [(np.array([rng.uniform(-70, 70), rng.uniform(-90, -30), rng.uniform(-60, 60)]),
                     rng.uniform(8, 22, size=3)) for _ in range(int(rng.integers(2, 6)))]

    # --- sacral geometry -----------------------------------------------------------------
    def half_width(self, u: np.ndarray) -> np.ndarray:
        t = _clamp01((u - U_MIN) / (U_MAX - U_MIN))
        return self.hw_bottom + (self.hw_top - self.hw_bottom) * t ** 1.2

    def half_thickness(self, u: np.ndarray) -> np.ndarray:
        t = _clamp01((u - U_MIN) / (U_MAX - U_MIN))
        return self.ht_bottom + (self.ht_top - self.ht_bottom) * t

    @staticmethod
    def mid_w(u: np.ndarray) -> np.ndarray:
        """The sacrum is concave anteriorly: its mid-surface bows posteriorly at both ends."""
        return 0.0035 * u ** 2 - 4.0

    def joint_surface_x(self, u: np.ndarray, w: np.ndarray, side: int) -> np.ndarray:
        """|x| of the middle of the joint gap: the undulating auricular surface."""
        ht = self.half_thickness(u)
        wn = (w - self.mid_w(u)) / ht
        j = self.joints[side]
        base = self.half_width(u) + 2.5 * np.sin(1.6 * wn + 0.3 * side) + 1.5 * np.sin(u / 11.0)
        if j.irregularity_mm > 0:
            ph = j.phases
            base = base + j.irregularity_mm * (np.sin(u / 2.3 + ph[0]) * np.sin(w / 2.9 + ph[1])
                                               + 0.6 * np.sin(u / 1.4 + ph[2]) + 0.5 * np.sin(w / 1.7 + ph[3]))
        return base

    def in_joint_region(self, u: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Where the sacrum and ilium face each other across a joint (auricular region)."""
        return (u > JOINT_U[0]) & (u < JOINT_U[1]) & (np.abs(w - self.mid_w(u)) < self.half_thickness(u) + 4)

    def synovial(self, u: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Anterior-inferior part of the joint (where erosions are graded); the rest is ligamentous."""
        ht = self.half_thickness(u)
        wn = (w - self.mid_w(u)) / ht
        # Ligamentous part: posterior third, more of it superiorly (the L-shaped auricular surface).
        lig_start = 0.35 - 0.5 * _clamp01((u - 5.0) / 30.0)
        return wn < lig_start

    def gap_width(self, u: np.ndarray, w: np.ndarray, side: int) -> np.ndarray:
        j = self.joints[side]
        syn = self.synovial(u, w)
        g = np.where(syn, j.gap_mm, j.ligament_gap_mm)
        if j.gap_scale_region is not None and j.gap_scaled_mm is not None:
            lo, hi = j.gap_scale_region
            g = np.where(syn & (u > lo) & (u < hi), j.gap_scaled_mm, g)
        return g

    # --- depths --------------------------------------------------------------------------
    def sacrum_depth(self, p: np.ndarray) -> np.ndarray:
        x, u, w = self.frame.coords(p)
        ht = self.half_thickness(u)
        dw = ht - np.abs(w - self.mid_w(u))
        side = np.where(x >= 0, 1, -1)
        xs = np.where(side > 0, self.joint_surface_x(u, w, 1), self.joint_surface_x(u, w, -1))
        gap = np.where(side > 0, self.gap_width(u, w, 1), self.gap_width(u, w, -1))
        in_joint = self.in_joint_region(u, w)
        # Outside the joint region the lateral border is the free ala / sacral margin.
        xb = np.where(in_joint, xs - gap / 2.0, self.half_width(u) - 1.0)
        dx = xb - np.abs(x)
        du = np.minimum(u - U_MIN, U_MAX - u)
        d = np.minimum(np.minimum(dx, dw), du)
        # Sacral canal (posterior, along u) and four pairs of anterior foramina.
        canal = 1.0 - np.sqrt((x / 7.0) ** 2 + ((w - self.mid_w(u) - 0.45 * ht) / 5.0) ** 2)
        d = np.where((canal > 0) & (u > -40), np.minimum(d, -canal * 5.0), d)
        for uf in (30.0, 11.0, -8.0, -26.0):
            xf = 0.42 * self.half_width(np.asarray(uf))
            r = 4.5 if uf > 0 else 3.5
            hole = r - np.sqrt((np.abs(x) - xf) ** 2 + (u - uf) ** 2)
            d = np.where(hole > 0, np.minimum(d, -hole), d)
        return d

    def ilium_depth(self, p: np.ndarray, side: int) -> np.ndarray:
        """Depth in the innominate bone of one side (ilium, acetabulum roof, ischium, pubis)."""
        s = float(side)
        x, u, w = self.frame.coords(p)
        xa = s * x  # lateral positive on this side
        # 1. auricular block facing the sacrum
        xs = self.joint_surface_x(u, w, side)
        gap = self.gap_width(u, w, side)
        # Facing the sacrum across the joint; outside the auricular surface the interosseous
        # ligament keeps the ilium well clear of the sacrum (no bony contact there).
        med = np.where(self.in_joint_region(u, w), xa - (xs + gap / 2.0), xa - (self.half_width(u) + 6.0))
        lat = (xs + 38.0) - xa
        du = np.minimum(u - (JOINT_U[0] - 4), (JOINT_U[1] + 6) - u)
        dw = (self.half_thickness(u) + 8.0) - np.abs(w - self.mid_w(u) - 2.0)
        block = np.minimum(np.minimum(med, lat), np.minimum(du, dw))
        # 2. iliac wing: a curved plate from the joint (posterior) sweeping anterolaterally to the
        #    anterior superior spine, concave medially (iliac fossa), narrowing towards the hip.
        z = p[..., 2]
        tz = _clamp01((z + 45.0) / 105.0)  # 0 above the acetabulum, 1 at the crest
        cy = -20.0 - 5.0 * tz
        axx = 92.0 + 33.0 * tz
        ayy = 48.0 + 32.0 * tz
        r = np.sqrt((p[..., 0] / axx) ** 2 + ((p[..., 1] - cy) / ayy) ** 2)
        post = _clamp01((p[..., 1] + 20.0) / 70.0)
        half_t = 3.5 + 7.5 * post  # thin fossa, thick posterior ilium
        shell = half_t - np.abs(r - 1.0) * 0.5 * (axx + ayy)
        crest = 64.0 - z - 0.004 * p[..., 1] ** 2
        notch = np.sqrt((p[..., 1] - 48.0) ** 2 + ((z + 48.0) * 1.3) ** 2) - 36.0  # greater sciatic notch
        # posteriorly the wing joins the auricular block laterally; it never reaches the joint
        medial_limit = 30.0 + 34.0 * _clamp01((p[..., 1] + 10.0) / 30.0)
        wing = np.minimum(np.minimum(shell, crest), np.minimum(notch, s * p[..., 0] - medial_limit))
        wing = np.minimum(wing, np.minimum(p[..., 1] + 62.0, 70.0 - p[..., 1]))
        # the anterior wing ends laterally (anterior superior iliac spine), never near the midline
        wing = np.minimum(wing, s * p[..., 0] - 30.0 - 1.3 * np.maximum(0.0, -(p[..., 1] + 5.0)))
        wing = np.minimum(wing, z + 75.0)
        # 3. body of the ilium and acetabular roof around the femoral head
        f = self.femoral_head_center(side)
        body = 30.0 - np.linalg.norm((p - (f + np.array([-s * 10.0, 8.0, 18.0]))) / np.array([1.0, 1.2, 1.3]), axis=-1)
        cup = np.linalg.norm(p - f, axis=-1) - 26.5
        body = np.minimum(body, cup)
        # 4. pubic ramus and ischium as capsules
        pubis = self._capsule(p, f + np.array([-s * 5.0, -18.0, -2.0]), np.array([s * 4.0, -78.0, -78.0]), 9.0)
        isch = self._capsule(p, f + np.array([-s * 2.0, 20.0, -10.0]), np.array([s * 58.0, 28.0, -120.0]), 11.0)
        ramus = self._capsule(p, np.array([s * 58.0, 28.0, -120.0]), np.array([s * 8.0, -70.0, -100.0]), 7.0)
        limbs = np.maximum(np.maximum(pubis, isch), ramus)
        limbs = np.minimum(limbs, cup)
        d = np.maximum(np.maximum(block, wing), np.maximum(body, limbs))
        return np.minimum(d, xa - 2.0)  # never cross the midline

    def femoral_head_center(self, side: int) -> np.ndarray:
        return np.array([side * 88.0, -22.0, -72.0])

    @staticmethod
    def _capsule(p: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
        ab = b - a
        t = _clamp01(((p - a) @ ab) / float(ab @ ab))
        closest = a + t[..., None] * ab
        return r - np.linalg.norm(p - closest, axis=-1)

    def femur_depth(self, p: np.ndarray, side: int) -> np.ndarray:
        f = self.femoral_head_center(side)
        head = 23.5 - np.linalg.norm(p - f, axis=-1)
        troch = f + np.array([side * 30.0, 8.0, -22.0])
        neck = self._capsule(p, f, troch, 14.0)
        shaft = self._capsule(p, troch, troch + np.array([-side * 8.0, 4.0, -200.0]), 15.0)
        gt = 17.0 - np.linalg.norm((p - troch - np.array([side * 6.0, 6.0, 6.0])) / np.array([1.0, 1.1, 1.4]), axis=-1)
        return np.maximum(np.maximum(head, neck), np.maximum(shaft, gt))

    def spine_depth(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth in lumbar vertebrae L3-L5 and, separately, in their discs."""
        fr = self.frame
        top = fr.point(0.0, U_MAX, self.mid_w(np.asarray(U_MAX)) - 2.0)
        bone = np.full(p.shape[:-1], -1e3)
        disc = np.full(p.shape[:-1], -1e3)
        centre = top.copy()
        tilt = fr.tilt_deg
        for level in range(3):  # L5, L4, L3
            tilt = tilt * 0.45
            t = np.deg2rad(tilt)
            axis = np.array([0.0, -np.sin(t), np.cos(t)])
            d0 = centre + axis * 0.5
            d1 = centre + axis * 9.0
            disc = np.maximum(disc, self._elliptic_cylinder(p, d0, d1, axis, 24.0, 18.0))
            b0 = d1 + axis * 0.5
            b1 = b0 + axis * 27.0
            body = self._elliptic_cylinder(p, b0, b1, axis, 24.0, 18.0)
            mid = (b0 + b1) / 2
            post = mid + np.array([0.0, 1.0, 0.0]) * 34.0
            arch = self._capsule(p, mid + np.array([-16.0, 20.0, 0.0]), mid + np.array([16.0, 20.0, 0.0]), 6.0)
            spinous = self._capsule(p, post, post + np.array([0.0, 22.0, -8.0]), 6.0)
            tp = self._capsule(p, mid + np.array([-45.0, 16.0, 0.0]), mid + np.array([45.0, 16.0, 0.0]), 4.5)
            canal = 9.0 - np.linalg.norm((p - (mid + np.array([0.0, 28.0, 0.0])))[..., :2] / np.array([1.0, 0.8]), axis=-1)
            elems = np.maximum(np.maximum(arch, spinous), tp)
            elems = np.where(canal > 0, np.minimum(elems, -canal), elems)
            bone = np.maximum(bone, np.maximum(body, elems))
            centre = b1
        return bone, disc

    @staticmethod
    def _elliptic_cylinder(p: np.ndarray, a: np.ndarray, b: np.ndarray, axis: np.ndarray, rx: float, ry: float) -> np.ndarray:
        q = p - a
        h = q @ axis
        length = float(np.linalg.norm(b - a))
        radial = q - h[..., None] * axis
        side_perp = np.cross(axis, np.array([1.0, 0.0, 0.0]))
        rxn = radial[..., 0] / rx
        ryn = (radial @ side_perp) / ry
        rad = (1.0 - np.sqrt(rxn ** 2 + ryn ** 2)) * min(rx, ry)
        return np.minimum(rad, np.minimum(h, length - h))

    def coccyx_depth(self, p: np.ndarray) -> np.ndarray:
        fr = self.frame
        a = fr.point(0.0, U_MIN - 2.0, self.mid_w(np.asarray(U_MIN)))
        b = a - fr.u * 22.0 + fr.w * 8.0
        return self._capsule(p, a, b, 6.0)

    def body_depth(self, p: np.ndarray) -> np.ndarray:
        ax, ay = self.body_axes
        r = np.sqrt((p[..., 0] / ax) ** 2 + ((p[..., 1] - 5.0) / ay) ** 2)
        return (1.0 - r) * min(ax, ay)

    def gas_mask(self, p: np.ndarray) -> np.ndarray:
        m = np.zeros(p.shape[:-1], dtype=bool)
        for c, axes in self.gas:
            m |= np.sum(((p - c) / axes) ** 2, axis=-1) < 1.0
        return m


DepthFn = Callable[[np.ndarray], np.ndarray]
