"""Series geometry: sort frames on the slice normal, check spacing, tilt and duplicates (numpy only)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from sirad_viewer.errors import GeometryError, InputLimitError, VolumeWarning
from sirad_viewer.io import limits

if TYPE_CHECKING:
    from sirad_viewer.io.dicom.frames import Frame

#: Fewer slices than this get the ``few_slices`` warning.
FEW_SLICES = 20
#: Relative spacing deviation above which a series counts as unevenly spaced.
SPACING_TOLERANCE = 0.05
#: Slice positions closer than this (mm) along the normal are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: Angle (degrees) between slice stacking direction and slice normal that counts as gantry tilt.
TILT_TOLERANCE_DEG = 0.1
#: |cos| between the row and column directions above which they are not perpendicular.
ORTHOGONALITY_TOLERANCE = 0.01
#: Pixel spacing outside this range (mm) is not a CT image.
PIXEL_SPACING_RANGE_MM = (1e-3, 1e3)


@dataclass
class GeometryPlan:
    """Sorted frames and the affine they form, plus what had to be fixed."""

    frames: list[Frame]
    affine: np.ndarray  # affine of the frames as stored (may be sheared or irregular)
    positions_mm: np.ndarray  # distance of each frame along the slice normal
    target_affine: np.ndarray  # regular orthogonal grid the volume will be delivered on
    target_shape: tuple[int, int, int]
    needs_resampling: bool
    warnings: list[VolumeWarning]


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"


def _vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"


def _checked_orientation(ori: np.ndarray, where: str, warnings: list[VolumeWarning]) -> tuple[np.ndarray, np.ndarray]:
    """Unit row and column directions from ImageOrientationPatient; refuses what has no normal."""
    row, col = np.asarray(ori[:3], float), np.asarray(ori[3:], float)
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if not (np.isfinite(nr) and np.isfinite(nc)) or nr < 1e-6 or nc < 1e-6:
        raise GeometryError(f"ImageOrientationPatient {_vec(ori)} has a zero or non-finite direction",
                            path=where)
    row, col = row / nr, col / nc
    cos = abs(float(row @ col))
    if cos > ORTHOGONALITY_TOLERANCE:
        raise GeometryError(
            f"ImageOrientationPatient {_vec(ori)}: the row and column directions are not perpendicular "
            f"({np.degrees(np.arccos(min(cos, 1.0))):.1f} degrees apart), so the slice orientation is unknown",
            path=where, context={"orientation": [float(x) for x in ori]})
    if abs(nr - 1) > 0.01 or abs(nc - 1) > 0.01:
        warnings.append(VolumeWarning(
            "orientation_normalised", f"ImageOrientationPatient {_vec(ori)} has direction lengths {nr:.3g} and "
            f"{nc:.3g} instead of 1; they were normalised", {"norms": [nr, nc]}))
    return row, col


def plan_geometry(frames: Sequence[Frame], *, series_name: str = "") -> GeometryPlan:
    """Sort frames by position on the slice normal and check spacing, tilt and duplicates."""
    warnings: list[VolumeWarning] = []
    frames = list(frames)
    # Orientation: keep the majority orientation, report the rest.
    oris = [tuple(np.round(f.orientation, 4)) if f.orientation is not None else None for f in frames]
    counts = Counter(oris)
    main_ori, n_main = counts.most_common(1)[0]
    if len(counts) > 1:
        left = len(frames) - n_main
        warnings.append(VolumeWarning(
            "mixed_orientation",
            f"{left} of {len(frames)} images have another orientation than the rest "
            f"({len(counts)} orientations found); they were left out of the volume",
            {"n_left_out": left, "n_orientations": len(counts)}))
        frames = [f for f, o in zip(frames, oris) if o == main_ori]

    f0 = frames[0]
    where = f0.name
    rows = int(f0.header.ds.Rows)
    cols = int(f0.header.ds.Columns)
    geometry_known = f0.orientation is not None and all(f.position is not None for f in frames)
    if f0.pixel_spacing is not None:
        ps = f0.pixel_spacing
        if min(ps) == 0:
            raise GeometryError(f"PixelSpacing is {_fmt(ps[0])}\\{_fmt(ps[1])} mm: zero spacing cannot "
                                "describe an image", path=where, context={"pixel_spacing": list(ps)})
        if min(ps) < 0:
            warnings.append(VolumeWarning(
                "negative_spacing", f"PixelSpacing is {_fmt(ps[0])}\\{_fmt(ps[1])} mm in {where}: negative "
                "values are not allowed; their magnitude was used (directions come from "
                "ImageOrientationPatient, so the image is not mirrored)", {"pixel_spacing": list(ps)}))
            ps = (abs(ps[0]), abs(ps[1]))
        lo, hi = PIXEL_SPACING_RANGE_MM
        if not (lo <= ps[0] <= hi and lo <= ps[1] <= hi):
            raise GeometryError(f"PixelSpacing is {ps[0]:g}\\{ps[1]:g} mm; between {lo:g} and {hi:g} mm "
                                "is expected", path=where, context={"pixel_spacing": list(ps)})
    else:
        ps = (1.0, 1.0)
        warnings.append(VolumeWarning(
            "missing_geometry", "PixelSpacing is missing; 1 mm pixels are assumed, so distances "
            "and sizes shown are not real millimetres", {}))
    if f0.orientation is not None:
        row_dir, col_dir = _checked_orientation(f0.orientation, where, warnings)
    else:
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    normal = np.cross(row_dir, col_dir)

    if geometry_known:
        coords = np.stack([f.position for f in frames])
        if np.abs(coords).max() > limits.MAX_COORD_MM:
            k = int(np.abs(coords).max(axis=1).argmax())
            raise GeometryError(f"ImagePositionPatient {_vec(coords[k])} mm is more than "
                                f"{limits.MAX_COORD_MM / 1000:g} m from the origin", path=frames[k].name)
        d = coords @ normal
        extent = float(d.max() - d.min())
        if extent > limits.MAX_EXTENT_MM:
            far = frames[int(np.abs(d - np.median(d)).argmax())].name
            raise InputLimitError(
                f"slices span {_fmt(extent)} mm along the slice normal (e.g. {far}); at most "
                f"{_fmt(limits.MAX_EXTENT_MM)} mm are read: a position is wrong", path=where,
                context={"extent_mm": extent})
        order = np.lexsort((np.array([f.instance for f in frames]), d))
        frames = [frames[i] for i in order]
        d = d[order]
        # Duplicates
        keep = [0]
        dropped: list[tuple[str, str]] = []
        for i in range(1, len(frames)):
            if abs(d[i] - d[keep[-1]]) < DUPLICATE_TOLERANCE_MM:
                dropped.append((frames[i].name, frames[keep[-1]].name))
            else:
                keep.append(i)
        if dropped:
            ex = dropped[0]
            warnings.append(VolumeWarning(
                "duplicate_positions",
                f"{len(dropped)} image(s) share their slice position with another image "
                f"(e.g. {ex[0]} and {ex[1]}); the duplicates were dropped, keeping the lowest "
                "instance number", {"n_dropped": len(dropped), "files": [a for a, _ in dropped]}))
            frames = [frames[i] for i in keep]
            d = d[keep]
        positions = np.stack([f.position for f in frames])
    else:
        frames.sort(key=lambda f: f.instance)
        d = np.arange(len(frames), dtype=float)
        positions = None
        if len(frames) > 1 or f0.orientation is None:
            warnings.append(VolumeWarning(
                "missing_geometry",
                "ImagePositionPatient/ImageOrientationPatient are missing; images were stacked by "
                "instance number with 1 mm between slices, so the 3D geometry is not real",
                {}))

    n = len(frames)
    if n >= 2:
        steps = np.diff(d)
        spacing = float(np.median(steps))
    else:
        st = f0.header.ds.get("SliceThickness")
        try:
            spacing = float(st) if st not in (None, "") else 1.0
        except (TypeError, ValueError):
            spacing = 1.0
        if not 0 < spacing <= PIXEL_SPACING_RANGE_MM[1]:
            warnings.append(VolumeWarning(
                "missing_geometry", f"SliceThickness {str(st)[:20]!r} is not a usable slice spacing; 1 mm "
                "is assumed", {}))
            spacing = 1.0
        steps = np.array([])

    # Slice stacking direction: from first to last position (captures gantry tilt).
    stack_dir = normal.copy()
    tilt_deg = 0.0
    if positions is not None and n >= 2 and (d[-1] - d[0]) > 0:
        v = (positions[-1] - positions[0]) / (d[-1] - d[0])  # mm moved per mm along the normal
        stack_dir_unit = v / np.linalg.norm(v)
        tilt_deg = float(np.degrees(np.arccos(np.clip(stack_dir_unit @ normal, -1.0, 1.0))))
        if tilt_deg > TILT_TOLERANCE_DEG:
            stack_dir = v  # not unit: per mm of normal distance
    affine = np.eye(4)
    affine[:3, 0] = stack_dir * spacing if tilt_deg > TILT_TOLERANCE_DEG else normal * spacing
    affine[:3, 1] = col_dir * ps[0]
    affine[:3, 2] = row_dir * ps[1]
    affine[:3, 3] = positions[0] if positions is not None else np.zeros(3)

    needs_resampling = False
    if n >= 3 and spacing > 0:
        ratio = steps / spacing
        gaps = np.where(ratio > 1.5)[0]
        irregular = np.abs(ratio - 1.0) > SPACING_TOLERANCE
        missing_gaps = [int(i) for i in gaps if abs(ratio[i] - round(ratio[i])) < 0.2]
        if missing_gaps:
            n_missing = int(sum(round(ratio[i]) - 1 for i in missing_gaps))
            i = missing_gaps[0]
            warnings.append(VolumeWarning(
                "missing_slices",
                f"{n_missing} slice(s) missing: {_fmt(spacing)} mm expected, {_fmt(steps[i])} mm found "
                f"between {frames[i].name} and {frames[i + 1].name}"
                + (f" and {len(missing_gaps) - 1} more gap(s)" if len(missing_gaps) > 1 else "")
                + f"; the gap was filled by linear interpolation onto a regular {_fmt(spacing)} mm grid",
                {"n_missing": n_missing, "expected_mm": spacing, "found_mm": float(steps[i])}))
            needs_resampling = True
        other = [int(i) for i in np.where(irregular)[0] if int(i) not in missing_gaps]
        if other:
            i = max(other, key=lambda k: abs(ratio[k] - 1))
            warnings.append(VolumeWarning(
                "uneven_spacing",
                f"slice spacing varies from {_fmt(float(steps.min()))} to {_fmt(float(steps.max()))} mm "
                f"(median {_fmt(spacing)} mm; {_fmt(float(steps[i]))} mm between {frames[i].name} and "
                f"{frames[i + 1].name}); resampled onto a regular {_fmt(spacing)} mm grid",
                {"min_mm": float(steps.min()), "max_mm": float(steps.max()), "median_mm": spacing}))
            needs_resampling = True
    if tilt_deg > TILT_TOLERANCE_DEG:
        shift = float(np.linalg.norm(stack_dir * spacing - normal * spacing))
        warnings.append(VolumeWarning(
            "gantry_tilt",
            f"gantry tilt of {tilt_deg:.1f} degrees (each slice is shifted {shift:.2f} mm in plane "
            "relative to the previous one); the tilt was corrected by resampling onto an "
            "orthogonal grid", {"tilt_deg": tilt_deg}))
        needs_resampling = True

    target_shape = (n, rows, cols)
    target_affine = affine.copy()
    if needs_resampling:
        extent = d[-1] - d[0]
        n_target = int(round(extent / spacing)) + 1
        if n_target > limits.MAX_SLICES:
            raise InputLimitError(f"regular grid would need {n_target} slices of {_fmt(spacing)} mm over "
                                  f"{_fmt(extent)} mm; at most {limits.MAX_SLICES} are read", path=where)
        target_shape = (n_target, rows, cols)
        target_affine[:3, 0] = normal * spacing
        if tilt_deg > TILT_TOLERANCE_DEG:
            # Keep the in-plane grid of the first slice, cover the tilted stack's extent in plane.
            target_affine[:3, 3] = positions[0]
    if target_shape[0] * rows * cols > limits.MAX_VOXELS:
        raise InputLimitError(f"volume of {target_shape[0]}x{rows}x{cols} voxels; at most {limits.MAX_VOXELS} "
                              "are read", path=where)
    mod = f0.header.modality
    if mod and mod != "CT":
        warnings.append(VolumeWarning(
            "not_ct", f"modality is {mod}, not CT: values are not Hounsfield units and the bone "
            "window and AI grading do not apply", {"modality": mod}))
    elif not mod:
        warnings.append(VolumeWarning("not_ct", "modality is not stated; values are assumed to be "
                                      "Hounsfield units", {"modality": ""}))
    if target_shape[0] < FEW_SLICES:
        warnings.append(VolumeWarning(
            "few_slices", f"only {target_shape[0]} slice(s); at least {FEW_SLICES} are needed to read "
            "the sacroiliac joints in 3D", {"n_slices": target_shape[0]}))
    return GeometryPlan(frames=frames, affine=affine, positions_mm=d, target_affine=target_affine,
                        target_shape=target_shape, needs_resampling=needs_resampling, warnings=warnings)

