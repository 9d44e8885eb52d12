"""Joint localisation: a box around each sacroiliac joint and the sacral long axis, in LPS mm.

Works on the segmentation's canonical grid. A joint is where the sacrum and that side's ilium
meet: sacral voxels within a few millimetres of the ilium and iliac voxels within a few
millimetres of the sacrum. Fused joints (grade 4) still have this contact surface because the
segmentation splits the fused bone along the former joint line.

Robustness on real CTs (where a coarse segmenter makes mistakes):

- only the densest 60 mm of each side's contact along the pelvis' craniocaudal direction, and
  then along the joint's own long and anteroposterior axes, counts (a real auricular surface is
  about 50-60 mm long), so contact of a lumbar arch or transverse
  process with the iliac crest, or a speck of mislabelled bone, cannot stretch the box;
- the sacrum ends a little above the joints: sacral label above that level is a lumbar
  vertebra mislabelled (``Localisation.sacrum_limit``; :meth:`CoarseSegmentation.limit_sacrum`
  relabels it), and it is left out of the sacral axis.

Each box's axes are the joint's own frame: the normal of the contact surface (pointing
lateral), the sacral long axis projected into the joint plane (pointing superior), and the
anteroposterior direction in that plane (pointing posterior). The frame follows the pelvis
when the patient lies rotated, which is what the grader's crops rely on. The box's size covers
the trimmed contact surface plus a small margin.

The sacral long axis is the principal axis of the midline sacrum in the pelvis' midsagittal
plane (perpendicular to the line joining the joints); the viewer's oblique-coronal plane
contains it.

"Left" is the patient's left: +x in LPS.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sirad_viewer.errors import SiradError
from sirad_viewer.imaging import geometry as geo

log = logging.getLogger(__name__)
SACRUM, LEFT_ILIUM, RIGHT_ILIUM = 1, 2, 3
SIDES = {"left": LEFT_ILIUM, "right": RIGHT_ILIUM}
# bumped whenever the boxes a CT gets change (caches of crops and logits are keyed by it)
LOCALISATION_VERSION = "4-planes"  # 3: the curvature frame stays on the coarse joint centre; 4: so does "coarse"
# refine_joint(long_axis="curvature"): the bend's direction is signed to point within 90 degrees of
# this direction in the coarse box's plane, counted from its long axis (superior) towards posterior
CURVATURE_REFERENCE_DEG = 110.0  # where the fewest training joints lie near +-90 degrees from it


class LocalisationError(SiradError):
    code = "joint_not_found"


@dataclass
class JointBox:
    """An oriented box around one sacroiliac joint (LPS mm)."""

    side: str
    center_lps_mm: np.ndarray  # (3,)
    axes_lps: np.ndarray  # (3, 3) rows: long axis (superior), anteroposterior (posterior), normal (lateral)
    size_mm: np.ndarray  # (3,) full edge lengths along the rows of axes_lps
    contact_voxels: int

    def contains(self, points_lps: np.ndarray) -> np.ndarray:
        d = (np.asarray(points_lps) - self.center_lps_mm) @ self.axes_lps.T
        return np.all(np.abs(d) <= self.size_mm / 2.0, axis=-1)

    def corners(self) -> np.ndarray:
        """(8, 3) LPS corners (for drawing)."""
        h = self.size_mm / 2.0
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
        return self.center_lps_mm + (signs * h) @ self.axes_lps

    def to_dict(self) -> dict[str, Any]:
        return {"center_lps_mm": [round(float(v), 2) for v in self.center_lps_mm],
                "axes_lps": [[round(float(v), 4) for v in row] for row in self.axes_lps],
                "size_mm": [round(float(v), 1) for v in self.size_mm]}


@dataclass
class Localisation:
    joints: dict[str, JointBox]
    sacral_axis: tuple[np.ndarray, np.ndarray]  # superior point, inferior point (LPS mm)
    warnings: list[str]
    # (point, unit normal): sacral label beyond this plane (on the normal's side) is lumbar spine
    sacrum_limit: tuple[np.ndarray, np.ndarray] | None = None

    def sacral_axis_dict(self) -> dict[str, Any]:
        sup, inf = self.sacral_axis
        d = (sup - inf) / max(np.linalg.norm(sup - inf), 1e-9)
        return {"superior_point_lps_mm": [round(float(v), 2) for v in sup],
                "inferior_point_lps_mm": [round(float(v), 2) for v in inf],
                "direction_lps": [round(float(v), 4) for v in d]}


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return geo.index_to_world(affine, idx.astype(float))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected piece (drops specks a network may scatter far from the bone)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def _near(feature: np.ndarray, target: np.ndarray, sp: np.ndarray, r_mm: float) -> np.ndarray:
    """``target & (distance to feature <= r_mm)``, the same voxels as a distance transform of the whole grid.

    The Euclidean distance transform runs only on the box where a target voxel can lie within
    ``r_mm`` of the feature (both bounding boxes, ``r_mm`` apart at most), widened by ``r_mm`` so
    that every feature voxel within ``r_mm`` of that box is in it: the distances found there are
    the whole grid's (nearest-feature distances computed the same way), at a fraction of the cost
    (three transforms of the whole coarse grid were half of the localisation's time).
    """
    from scipy import ndimage

    out = np.zeros(target.shape, bool)
    if not feature.any() or not target.any():
        return out
    pad = np.ceil(r_mm / np.asarray(sp, float)).astype(int) + 1
    shape = np.asarray(target.shape)

    def bbox(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spans = [np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        return np.array([s[0] for s in spans]), np.array([s[-1] + 1 for s in spans])

    (f_lo, f_hi), (t_lo, t_hi) = bbox(feature), bbox(target)
    lo, hi = np.maximum(t_lo, f_lo - pad), np.minimum(t_hi, f_hi + pad)
    if (hi <= lo).any():
        return out
    d_lo, d_hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, shape)
    dom = feature[d_lo[0]:d_hi[0], d_lo[1]:d_hi[1], d_lo[2]:d_hi[2]]
    if not dom.any():
        return out
    d = ndimage.distance_transform_edt(~dom, sampling=sp)
    a, b = lo - d_lo, hi - d_lo
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    out[box] = target[box] & (d[a[0]:b[0], a[1]:b[1], a[2]:b[2]] <= r_mm)
    return out


def _robust_window(pts: np.ndarray, direction: np.ndarray, length_mm: float) -> np.ndarray:
    """Mask of the points inside the ``length_mm`` window along ``direction`` that holds the most of them.

    A joint's contact surface is one sheet about 50-60 mm long; a few contact voxels far from
    it (a lumbar arch or transverse process next to the iliac crest, a speck of mislabelled
    bone) must not stretch the box. Ties go to the window nearest the median.
    """
    t = (pts - np.median(pts, axis=0)) @ direction
    order = np.sort(t)
    hi_idx = np.searchsorted(order, order + length_mm, side="right")
    counts = hi_idx - np.arange(len(order))
    best = np.flatnonzero(counts == counts.max())
    starts = order[best]
    s = starts[np.argmin(np.abs(starts + length_mm / 2.0))]
    return (t >= s) & (t <= s + length_mm)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def localise(labels: np.ndarray, affine: np.ndarray, *, contact_mm: float = 5.0, margin_mm: float = 4.0,
             window_mm: float = 60.0, sacrum_above_mm: float = 15.0) -> Localisation:
    """Joint boxes and sacral axis from a label map on a grid placed by ``affine``.

    Parameters
    ----------
    labels : ndarray of shape (S, R, C), 0 background, 1 sacrum, 2 left ilium, 3 right ilium
    contact_mm : how close sacrum and ilium must come to count as joint surface
    margin_mm : added on each side of the trimmed contact surface
    window_mm : the length of contact surface kept along the craniocaudal direction
    sacrum_above_mm : sacral label more than this above the joints' upper end is not sacrum

    Raises
    ------
    LocalisationError
        When the sacrum or an ilium is missing, or they never come near each other.
    """
    sp = geo.affine_spacing(affine)
    sac = _largest_component(labels == SACRUM)
    if sac.sum() * np.prod(sp) < 20_000:  # < 20 ml
        raise LocalisationError("no sacrum found; is the pelvis in the field of view?")
    raw: dict[str, np.ndarray] = {}
    for side, lab in SIDES.items():
        il = _largest_component(labels == lab)
        if il.sum() * np.prod(sp) < 10_000:
            raise LocalisationError(f"no {side} ilium found; is the whole pelvis in the field of view?")
        contact = _near(il, sac, sp, contact_mm) | _near(sac, il, sp, contact_mm)
        if int(contact.sum()) < 10:
            raise LocalisationError(f"the sacrum and the {side} ilium do not meet; no {side} sacroiliac joint found")
        raw[side] = _world(affine, np.argwhere(contact))
    warnings: list[str] = []
    # the pelvis' own frame: left-right through the joints, craniocaudal perpendicular to it
    c_l, c_r = np.median(raw["left"], axis=0), np.median(raw["right"], axis=0)
    if c_l[0] - c_r[0] <= 0:
        warnings.append("the left joint does not lie to the patient's left of the right joint; check the CT orientation")
    lr = _unit(c_l - c_r) if np.linalg.norm(c_l - c_r) > 1e-6 else np.array([1.0, 0.0, 0.0])
    up = _unit(np.array([0.0, 0.0, 1.0]) - lr[2] * lr)
    post = np.cross(up, lr)  # LPS: z x x = +y (posterior)
    pts = {s: p[_robust_window(p, up, window_mm)] for s, p in raw.items()}
    # the sacrum ends a little above the joints: what lies higher is lumbar spine
    mid = (c_l + c_r) / 2.0
    top = max(float(((p - mid) @ up).max()) for p in pts.values())
    limit_point = mid + up * (top + sacrum_above_mm)
    sac_idx = np.argwhere(sac)
    sac_pts = _world(affine, sac_idx)
    keep = (sac_pts - limit_point) @ up <= 0.0
    if (~keep).any():
        warnings.append(f"{int((~keep).sum())} voxels labelled sacrum lie more than {sacrum_above_mm:.0f} mm above the "
                        "joints (lumbar spine) and were not taken as sacrum")
    sac_pts = sac_pts[keep]
    # sacral long axis: midline sacrum, principal axis within the midsagittal plane
    m = sac_pts[np.abs((sac_pts - mid) @ lr) < 12.0]
    if len(m) < 20:
        m = sac_pts
    c = m.mean(axis=0)
    q = (m - c) - np.outer((m - c) @ lr, lr)
    _, _, vt = np.linalg.svd(q, full_matrices=False)
    d = _unit(vt[0] - (vt[0] @ lr) * lr)
    if d @ up < 0:
        d = -d
    t = (m - c) @ d
    sup = c + d * np.percentile(t, 98)
    inf = c + d * np.percentile(t, 2)
    sup -= ((sup - mid) @ lr) * lr  # on the midsagittal plane
    inf -= ((inf - mid) @ lr) * lr
    joints: dict[str, JointBox] = {}
    for side, p in pts.items():
        c = p.mean(axis=0)
        _, _, vt = np.linalg.svd(p - c, full_matrices=False)
        normal = vt[2] * (1.0 if (vt[2] @ lr) * (1 if side == "left" else -1) >= 0 else -1.0)
        long = d - (d @ normal) * normal
        if np.linalg.norm(long) < 0.3:  # sacral axis nearly along the normal: fall back to the surface's own
            long = vt[0] - (vt[0] @ normal) * normal
        long = _unit(long)
        if long @ up < 0:
            long = -long
        ap = _unit(np.cross(normal, long))
        if ap @ post < 0:
            ap = -ap
        axes = np.stack([long, ap, normal])
        # the densest window_mm along the joint's own long and anteroposterior axes (robust length)
        p = p[_robust_window(p, long, window_mm) & _robust_window(p, ap, window_mm)]
        c = p.mean(axis=0)
        proj = (p - c) @ axes.T
        lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
        centre = c + ((lo + hi) / 2.0) @ axes
        ext = (hi - lo) + 2.0 * margin_mm
        ext[2] = max(ext[2], 20.0)
        joints[side] = JointBox(side, centre, axes, ext, len(p))
    return Localisation(joints, (sup, inf), warnings, (limit_point, up))


# --- sub-millimetre joint frame from the CT itself ----------------------------------------------


def _frame_samples(volume, centre: np.ndarray, axes: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray
                   ) -> np.ndarray:
    """CT values (HU, float32) at ``centre + u*axes[0] + v*axes[1] + w*axes[2]``, shape (len(u), len(v), len(w))."""
    from scipy import ndimage

    pts = (centre + u[:, None, None, None] * axes[0] + v[None, :, None, None] * axes[1]
           + w[None, None, :, None] * axes[2])
    idx = volume.world_to_index(pts.reshape(-1, 3))
    shape = np.asarray(volume.shape)
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 2, 0, shape)
    block = volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if block.size == 0:
        return np.full(pts.shape[:-1], -1024.0, np.float32)
    out = ndimage.map_coordinates(np.asarray(block, np.float32), (idx - lo).T, order=1, mode="constant",
                                  cval=-1024.0, prefilter=False, output=np.float32)
    return out.reshape(pts.shape[:-1])


def _gap_points(prof: np.ndarray, w: np.ndarray, *, search_mm: float, cortex_mm: float, min_depth_hu: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``prof`` (U, V, W): the joint gap's position along ``w`` and its depth (0 where none).

    The gap is the darkest point within ``search_mm`` of the current plane that has bright bone
    (a cortex) within ``cortex_mm`` on both sides; its depth is how much darker it is than the
    dimmer of the two cortices. The position is refined to sub-sample precision by a parabola.
    """
    dw = float(w[1] - w[0])
    k = max(1, int(round(cortex_mm / dw)))
    n = prof.shape[-1]
    from scipy import ndimage

    # brightest value within k samples strictly before / after each sample
    left = ndimage.maximum_filter1d(prof, size=k, axis=-1, origin=(k - 1) // 2, mode="nearest")
    left = np.concatenate([np.full(prof.shape[:-1] + (1,), -1024.0, np.float32), left[..., :-1]], axis=-1)
    right = ndimage.maximum_filter1d(prof[..., ::-1], size=k, axis=-1, origin=(k - 1) // 2, mode="nearest")
    right = np.concatenate([np.full(prof.shape[:-1] + (1,), -1024.0, np.float32), right[..., :-1]], axis=-1)[..., ::-1]
    depth = np.minimum(left, right) - prof
    depth[..., np.abs(w) > search_mm] = -np.inf
    depth[..., :k] = -np.inf
    depth[..., n - k:] = -np.inf
    j = np.argmax(depth, axis=-1)
    best = np.take_along_axis(depth, j[..., None], -1)[..., 0]
    jj = np.clip(j, 1, n - 2)
    a = np.take_along_axis(prof, (jj - 1)[..., None], -1)[..., 0]
    b = np.take_along_axis(prof, jj[..., None], -1)[..., 0]
    c = np.take_along_axis(prof, (jj + 1)[..., None], -1)[..., 0]
    curv = a - 2 * b + c
    frac = np.where(curv > 1e-3, 0.5 * (a - c) / np.maximum(curv, 1e-3), 0.0)
    pos = w[0] + (jj + np.clip(frac, -0.5, 0.5)) * dw
    weight = np.where(np.isfinite(best) & (best >= min_depth_hu), best, 0.0)
    return pos, weight


def _huber_plane(X: np.ndarray, y: np.ndarray, weights: np.ndarray, *, k: float = 1.345, iterations: int = 20
                 ) -> tuple[np.ndarray | None, float]:
    """Plane ``y = a + X @ b`` by iteratively reweighted least squares with Huber weights; (a, b...), scale.

    Written here rather than scikit-learn's ``HuberRegressor`` because importing scikit-learn
    costs about a second of the grader's cold start; this is the textbook IRLS (scale from the
    median absolute deviation), a dozen lines.
    """
    A = np.column_stack([np.ones(len(X)), X])
    w = np.asarray(weights, float)
    coef, scale = None, 1.0
    for _ in range(iterations):
        sw = np.sqrt(w)
        try:
            new, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
        except np.linalg.LinAlgError:
            return None, scale
        r = y - A @ new
        scale = max(1.4826 * float(np.median(np.abs(r))), 0.05)
        w = weights * np.minimum(1.0, k * scale / np.maximum(np.abs(r), 1e-9))
        if coef is not None and np.max(np.abs(new - coef)) < 1e-4:
            coef = new
            break
        coef = new
    return coef, scale


def refine_joint(volume, box: JointBox, *, half_mm: float = 40.0, step_mm: float = 1.5, search_mm: float = 8.0,
                 iterations: int = 6, min_depth_hu: float = 200.0, min_points: int = 60,
                 long_axis: str = "outline", near_mm: float = 12.0, max_shift_mm: float = 16.0,
                 max_shift_ap_mm: float = 6.0) -> tuple[JointBox, str | None]:
    """The joint box re-fitted to the joint space seen in the CT at full resolution.

    The coarse box comes from a label map on a 4 mm grid: its centre and axes move by millimetres
    and degrees when the same pelvis lies differently in the scanner, which is enough to change a
    48^3 crop at 1.5 mm. Here the joint itself fixes the frame: along the box's normal, each column
    through the auricular surface crosses two bright cortices with the dark joint space between
    them (:func:`_gap_points`). A plane fitted robustly to those gap points (:func:`_huber_plane`,
    weighted by the gap's contrast) gives the normal and the plane's position; the
    centre is the weighted centroid of the gap points on it, and the long axis the principal axis
    of those points (oriented superior as the coarse one). Repeated a few times on the new frame.

    ``long_axis`` picks the in-plane axis: ``"outline"`` (the principal axis of the surface's
    outline, as the bundles before 0.3.0 were trained on) or ``"curvature"`` (the direction in which
    the auricular surface bends most: the eigenvector of the largest-magnitude eigenvalue of the
    Hessian of a quadratic fitted robustly to the gap points). Where the surface is nearly round in
    its own plane its outline fixes the axis only to about 2 degrees, while its bend fixes it to a
    few tenths (``tools/rotation_check.py``).

    With ``"curvature"`` the refined box stays on the segmentation's joint: of the patches of gap
    points only those reaching within ``near_mm`` of the coarse centre count (elsewhere in the
    80 mm window a wider dark line between bone, e.g. at the ligamentous part or the hip, can hold
    more contrast than a narrow or ankylosed joint), and where the gap points' centroid still ends
    outside the ellipse of half-axes ``max_shift_mm`` (along the coarse box's long axis) and
    ``max_shift_ap_mm`` (anteroposterior) around the coarse centre, the centre is the coarse one
    projected onto the fitted plane (the fitted axes are kept). Without both, the centre walked up to
    50 mm along the surface, away from the true joint centre on held-out phantoms.

    Returns the refined box and ``None``, or the coarse box and the reason it was kept (a joint
    with too little visible joint space, e.g. ankylosed or at very low resolution).
    """
    from scipy import ndimage

    if long_axis not in ("outline", "curvature", "coarse"):
        raise ValueError(f"long_axis must be 'outline', 'curvature' or 'coarse', not {long_axis!r}")
    centre = np.asarray(box.center_lps_mm, float).copy()
    axes = np.asarray(box.axes_lps, float).copy()
    anchored = long_axis in ("curvature", "coarse")
    anchor = centre.copy()
    phi = np.radians(CURVATURE_REFERENCE_DEG)
    ref = np.cos(phi) * axes[0] + np.sin(phi) * axes[1]  # sign reference of the curvature axis
    g = np.arange(-half_mm, half_mm + 1e-6, step_mm)
    w = np.arange(-search_mm - 4.0, search_mm + 4.0 + 1e-6, 0.5)
    for _ in range(iterations):
        prof = _frame_samples(volume, centre, axes, g, g, w)
        prof = ndimage.gaussian_filter(prof, (1.0, 1.0, 0.8))
        pos, weight = _gap_points(prof, w, search_mm=search_mm, cortex_mm=4.0, min_depth_hu=min_depth_hu)
        uu, vv = np.meshgrid(g, g, indexing="ij")
        # a round window: a square one would pull the surface's principal axis towards its own sides
        ok = (weight > 0) & (uu ** 2 + vv ** 2 <= half_mm ** 2)
        if int(ok.sum()) < min_points:
            return box, (f"the {box.side} joint space is not visible over enough of the joint ({int(ok.sum())} of "
                         f"{ok.size} columns); its box comes from the segmentation alone")
        # one joint surface: the connected patch of gap points holding the most contrast (other
        # dark lines between bright bone nearby, e.g. a vessel canal or the hip, fall away)
        lab, n = ndimage.label(ok, structure=np.ones((3, 3)))
        if anchored:  # only patches that reach the segmentation's joint centre
            au, av = (anchor - centre) @ axes[0], (anchor - centre) @ axes[1]
            near = np.unique(lab[ok & ((uu - au) ** 2 + (vv - av) ** 2 <= near_mm ** 2)])
            near = near[near > 0]
            if len(near) == 0:
                return box, (f"no {box.side} joint space is visible within {near_mm:.0f} mm of the segmentation's joint "
                             "centre; its box comes from the segmentation alone")
            sums = ndimage.sum(weight, lab, index=near)
            ok = lab == int(near[int(np.argmax(sums))])
        elif n > 1:
            sums = ndimage.sum(weight, lab, index=np.arange(1, n + 1))
            ok = lab == (1 + int(np.argmax(sums)))
        if int(ok.sum()) < min_points:
            return box, (f"the {box.side} joint space is not visible over enough of the joint ({int(ok.sum())} "
                         "columns); its box comes from the segmentation alone")
        X = np.stack([uu[ok], vv[ok]], axis=1)
        y, sw = pos[ok], weight[ok]
        coef, scale = _huber_plane(X, y, sw)
        if coef is None:
            return box, f"the {box.side} joint plane could not be fitted; its box comes from the segmentation alone"
        a0, bu, bv = coef
        resid = np.abs(y - (a0 + X @ coef[1:]))
        inl = resid <= max(1.5, 2.5 * scale)
        if int(inl.sum()) < min_points:
            return box, f"the {box.side} joint plane fits too few points; its box comes from the segmentation alone"
        n_new = _unit(axes[2] - bu * axes[0] - bv * axes[1])
        # weights that change smoothly with the image (a thresholded patch would jump a column at a
        # time): the gap's contrast ramped from the threshold, tapered towards the round window's rim
        q = X[inl]
        r = np.hypot(q[:, 0], q[:, 1])
        taper = np.clip((half_mm - r) / 10.0, 0.0, 1.0) ** 2
        wts = np.clip((sw[inl] - min_depth_hu) / min_depth_hu, 0.0, 1.0) * taper + 1e-9
        cq = (q * wts[:, None]).sum(0) / wts.sum()
        # principal axis of the joint surface within its plane (weighted)
        cov = np.cov((q - cq).T, aweights=wts)
        evals, evecs = np.linalg.eigh(cov)
        e = evecs[:, -1]
        if long_axis == "curvature":
            e = _curvature_direction(q, y[inl], wts, e)
        long_dir = e[0] * axes[0] + e[1] * axes[1]
        if long_axis == "coarse":
            long_dir = np.asarray(box.axes_lps[0], float)
        p_c = centre + cq[0] * axes[0] + cq[1] * axes[1] + (a0 + bu * cq[0] + bv * cq[1]) * axes[2]
        long = _unit(long_dir - (long_dir @ n_new) * n_new)
        if long_axis == "curvature":
            # the bend's direction has no sign of its own: point it along a fixed reference in the
            # coarse box's (superior, posterior) plane, and keep the frame's handedness per side
            # (right-handed on the right, its mirror image on the left) instead of a sign test that
            # would flip where the axis lies near the anteroposterior direction
            if long @ ref < 0:
                long = -long
            ap = _unit(np.cross(n_new, long)) * (1.0 if box.side == "right" else -1.0)
        else:
            if long @ axes[0] < 0:
                long = -long
            ap = _unit(np.cross(n_new, long))
            if ap @ axes[1] < 0:
                ap = -ap
        new_axes = np.stack([long, ap, n_new])
        moved = float(np.linalg.norm(p_c - centre))
        turned = float(np.degrees(np.arccos(np.clip(np.min(np.sum(new_axes * axes, axis=1)), -1.0, 1.0))))
        centre, axes = p_c, new_axes
        if moved < 0.05 and turned < 0.05:
            break
    if anchored:
        off = anchor - centre
        ba = np.asarray(box.axes_lps, float)
        # an ellipse in the coarse box's plane: long along the joint, where the coarse centre itself moves
        # most when the pelvis turns (11 mm for a 15-degree turn of a held-out phantom)
        if np.hypot(off @ ba[0] / max_shift_mm, off @ ba[1] / max_shift_ap_mm) > 1.0:
            centre = anchor - float(off @ axes[2]) * axes[2]
    return JointBox(box.side, centre, axes, box.size_mm.copy(), box.contact_voxels), None


def _curvature_direction(q: np.ndarray, y: np.ndarray, wts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """In-plane unit direction (2,) in which the gap surface ``y(u, v)`` bends most.

    A weighted quadratic ``y = a + b.q + q' H q / 2`` (least squares with the gap weights; the
    points are already the plane fit's inliers) and the eigenvector of ``H`` with the
    largest-magnitude eigenvalue; ``fallback`` when the fit is degenerate.
    """
    u, v = q[:, 0], q[:, 1]
    A = np.column_stack([np.ones(len(u)), u, v, u * u, u * v, v * v])
    sw = np.sqrt(wts)
    try:
        c, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
    except np.linalg.LinAlgError:
        return fallback
    h = np.array([[2 * c[3], c[4]], [c[4], 2 * c[5]]])
    if not np.all(np.isfinite(h)) or np.abs(h).max() < 1e-9:
        return fallback
    ev, evec = np.linalg.eigh(h)
    return evec[:, int(np.argmax(np.abs(ev)))]


# refine_joints(long_axis="planes"): the two refined joint planes must differ by at least this much for
# the line where they meet to be well defined (the auricular surfaces of a pelvis meet at 25-70 degrees)
PLANES_MIN_DEG = 15.0


def refine_joints(volume, loc: Localisation, *, long_axis: str = "outline") -> Localisation:
    """``loc`` with each joint box re-fitted to the CT at full resolution (:func:`refine_joint`).

    ``long_axis="planes"``: each joint is refined as with ``"coarse"`` (centre anchored to the
    segmentation's joint, normal from the joint space), then both boxes take as their long axis the
    line where the two refined joint planes meet (the cross product of the two normals), pointing
    superior. Each normal is fixed by the CT to a few tenths of a degree, so that line is too, and it
    lies in both planes by construction; the segmentation's own long axis (the sacral axis projected)
    turns by 1-5 degrees when the pelvis turns by 15, which decorrelates the crop's rim. Where a joint
    could not be refined, or the planes are too nearly parallel (:data:`PLANES_MIN_DEG`), both keep
    the ``"coarse"`` axis and a warning says so.
    """
    joints, warns = {}, list(loc.warnings)
    refined = {}
    for side, box in loc.joints.items():
        joints[side], why = refine_joint(volume, box, long_axis="coarse" if long_axis == "planes" else long_axis)
        refined[side] = why is None
        if why:
            warns.append(why)
    if long_axis == "planes" and set(joints) == {"left", "right"}:
        nl, nr = joints["left"].axes_lps[2], joints["right"].axes_lps[2]
        line = np.cross(nl, nr)
        deg = float(np.degrees(np.arcsin(np.clip(np.linalg.norm(line), 0.0, 1.0))))
        if not all(refined.values()):
            warns.append("the joints' long axis comes from the segmentation: a joint space was not visible")
        elif deg < PLANES_MIN_DEG:
            warns.append(f"the two joint planes differ by only {deg:.0f} degrees; the joints' long axis comes from "
                         "the segmentation")
        else:
            line = _unit(line)
            for side, b in joints.items():
                ax = np.asarray(b.axes_lps, float)
                long = _unit(line - (line @ ax[2]) * ax[2])
                if long @ ax[0] < 0:
                    long = -long
                ap = _unit(np.cross(ax[2], long))
                if ap @ ax[1] < 0:
                    ap = -ap
                joints[side] = JointBox(side, b.center_lps_mm, np.stack([long, ap, ax[2]]), b.size_mm.copy(),
                                        b.contact_voxels)
    return Localisation(joints, loc.sacral_axis, warns, loc.sacrum_limit)
