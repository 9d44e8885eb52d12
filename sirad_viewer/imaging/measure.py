"""Measurements on a volume: HU statistics inside a circular ROI on any plane (numpy only).

On a plane that runs along the volume's array axes the ROI's statistics are over the voxels of
the slice through the ROI's centre whose centres lie inside the circle (so they equal numpy's
on the same voxels). On any other plane they are over the plane's pixels (linear
interpolation, finest voxel size, a grid with a pixel on the centre) inside the circle.
"""
from __future__ import annotations

import numpy as np

from sirad_viewer.imaging import reslice as rs
from sirad_viewer.imaging.volume import Volume


def roi_pixels(volume: Volume, center: np.ndarray, radius_mm: float, right: np.ndarray, down: np.ndarray) -> np.ndarray:
    """HU values inside the circle (1D array); see the module docstring for which samples."""
    if not np.isfinite(radius_mm) or radius_mm <= 0:
        raise ValueError(f"ROI radius {radius_mm!r} mm: expected a positive number")
    plane = rs.SlicePlane(np.asarray(center, float), np.asarray(right, float), np.asarray(down, float), "roi")
    img = rs._axis_aligned(volume, plane)
    if img is None:
        px = float(volume.spacing.min())
        n = int(np.ceil(radius_mm / px)) + 1  # a (2n+1)^2 grid with its middle pixel on the centre
        img = rs.reslice(volume, plane, fov_mm=2 * n * px, pixel_mm=px)
        inside_volume = True
    else:
        inside_volume = bool(np.all(np.abs(volume.world_to_index(center) - np.clip(
            volume.world_to_index(center), 0, np.array(volume.shape) - 1)) < 0.5))
    h, w = img.pixels.shape
    rr, cc = np.mgrid[0:h, 0:w]
    world = img.origin + rr[..., None] * img.down_step + cc[..., None] * img.right_step
    d = world - np.asarray(center, float)
    d -= np.outer((d.reshape(-1, 3) @ plane.normal), plane.normal).reshape(d.shape)  # project into the plane
    mask = np.linalg.norm(d, axis=-1) <= radius_mm + 1e-6  # a pixel on the circle is inside
    if not inside_volume:
        return np.zeros(0, dtype=img.pixels.dtype)
    return img.pixels[mask]


def roi_stats(volume: Volume, center: np.ndarray, radius_mm: float, right: np.ndarray, down: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation, minimum, maximum HU and the sample count ``n`` inside a circle."""
    v = roi_pixels(volume, center, radius_mm, right, down).astype(np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0.0}
    return {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": float(v.size)}


def line_profile(volume: Volume, p0: np.ndarray, p1: np.ndarray, *, step_mm: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """HU along the segment p0 -> p1 (linear interpolation): (distances from p0 in mm, HU)."""
    from scipy import ndimage

    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    t = np.arange(0.0, length + 1e-9, step_mm)
    pts = p0 + np.outer(t / max(length, 1e-9), p1 - p0)
    idx = volume.world_to_index(pts).T
    hu = ndimage.map_coordinates(volume.array.astype(np.float32), idx, order=1, mode="nearest")
    return t, hu
