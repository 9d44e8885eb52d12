"""Joint localisation: a box around each sacroiliac joint and the sacral long axis, in LPS mm.

Works on the segmentation's canonical grid. A joint is where the sacrum and that side's ilium
meet: sacral voxels within a few millimetres of the ilium and iliac voxels within a few
millimetres of the sacrum. Fused joints (grade 4) still have this contact surface because the
segmentation splits the fused bone along the former joint line. The box is centred on the
contact surface, its axes are the surface's principal directions (long axis, anteroposterior
extent, normal) and its size covers the surface plus a margin.

The sacral long axis is the principal axis of the midline sacrum in the sagittal plane; the
viewer's oblique-coronal plane contains it.

"Left" is the patient's left: +x in LPS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sirad_viewer.errors import SiradError
from sirad_viewer.imaging import geometry as geo

SACRUM, LEFT_ILIUM, RIGHT_ILIUM = 1, 2, 3
SIDES = {"left": LEFT_ILIUM, "right": RIGHT_ILIUM}


class LocalisationError(SiradError):
    code = "joint_not_found"


@dataclass
class JointBox:
    """An oriented box around one sacroiliac joint (LPS mm)."""

    side: str
    center_lps_mm: np.ndarray  # (3,)
    axes_lps: np.ndarray  # (3, 3) rows: long axis, anteroposterior extent, joint normal (unit vectors)
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


def localise(labels: np.ndarray, affine: np.ndarray, *, contact_mm: float = 5.0, margin_mm: float = 8.0) -> Localisation:
    """Joint boxes and sacral axis from a label map on a grid placed by ``affine``.

    Raises
    ------
    LocalisationError
        When the sacrum or an ilium is missing, or they never come near each other.
    """
    from scipy import ndimage

    sp = geo.affine_spacing(affine)
    sac = _largest_component(labels == SACRUM)
    if sac.sum() * np.prod(sp) < 20_000:  # < 20 ml
        raise LocalisationError("no sacrum found; is the pelvis in the field of view?")
    d_sac = ndimage.distance_transform_edt(~sac, sampling=sp)
    joints: dict[str, JointBox] = {}
    warnings: list[str] = []
    for side, lab in SIDES.items():
        il = _largest_component(labels == lab)
        if il.sum() * np.prod(sp) < 10_000:
            raise LocalisationError(f"no {side} ilium found; is the whole pelvis in the field of view?")
        d_il = ndimage.distance_transform_edt(~il, sampling=sp)
        contact = (sac & (d_il <= contact_mm)) | (il & (d_sac <= contact_mm))
        n = int(contact.sum())
        if n < 10:
            raise LocalisationError(f"the sacrum and the {side} ilium do not meet; no {side} sacroiliac joint found")
        pts = _world(affine, np.argwhere(contact))
        c = pts.mean(axis=0)
        _, _, vt = np.linalg.svd(pts - c, full_matrices=False)
        axes = vt.copy()
        # stable signs: long axis points superior, AP axis posterior, normal points lateral (away from midline)
        if axes[0][2] < 0:
            axes[0] *= -1
        if axes[1][1] < 0:
            axes[1] *= -1
        axes[2] = np.cross(axes[0], axes[1])
        if axes[2][0] * (1 if side == "left" else -1) < 0:
            axes[1] *= -1
            axes[2] *= -1
        proj = (pts - c) @ axes.T
        ext = np.percentile(np.abs(proj), 98, axis=0) * 2.0 + 2.0 * margin_mm
        ext[2] = max(ext[2], 20.0)
        joints[side] = JointBox(side, c, axes, ext, n)
    if np.sign(joints["left"].center_lps_mm[0] - joints["right"].center_lps_mm[0]) != 1:
        warnings.append("the left joint does not lie to the patient's left of the right joint; check the CT orientation")
    # sacral long axis: midline sacrum (between the joints' x), principal axis in the y-z plane
    x_mid = (joints["left"].center_lps_mm[0] + joints["right"].center_lps_mm[0]) / 2.0
    pts = _world(affine, np.argwhere(sac))
    mid = pts[np.abs(pts[:, 0] - x_mid) < 12.0]
    if len(mid) < 20:
        mid = pts
    c = mid.mean(axis=0)
    yz = mid[:, 1:] - c[1:]
    _, _, vt = np.linalg.svd(yz, full_matrices=False)
    d = np.array([0.0, vt[0][0], vt[0][1]])
    if d[2] < 0:
        d = -d
    t = (mid - c) @ d
    sup = c + d * np.percentile(t, 98)
    inf = c + d * np.percentile(t, 2)
    sup[0] = inf[0] = x_mid
    return Localisation(joints, (sup, inf), warnings)
