"""Colours of the bone surface: per bone label, and the AI heatmap painted onto it (Qt-free).

The 3D view only hands the result to the renderer (``mesh.point_data["rgb"]``); what colour a
point gets is decided here, so it is tested without a display.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sirad_viewer.viz.overlay import HEAT_LUT

BONE_COLOUR = "#e9dfc9"
LABEL_COLOURS = {1: "#e0c080", 2: "#7fb2e5", 3: "#e58a7f", 4: "#d8d8d8"}


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> (r, g, b) ints 0..255."""
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def base_colours(n_points: int, labels: np.ndarray | None = None) -> np.ndarray:
    """(n_points, 3) uint8: the bone colour, or each point's bone label colour when labels are given."""
    if labels is None:
        return np.tile(np.array(hex_rgb(BONE_COLOUR), np.uint8), (int(n_points), 1))
    lut = {k: hex_rgb(v) for k, v in LABEL_COLOURS.items()}
    bone = hex_rgb(BONE_COLOUR)
    return np.array([lut.get(int(v), bone) for v in np.asarray(labels).ravel()], dtype=np.uint8).reshape(-1, 3)


def heatmap_colours(points: np.ndarray, base: np.ndarray, heatmap: Any | None, *, threshold: float = 0.2,
                    opacity: float = 0.6) -> np.ndarray:
    """Blend the heatmap's colour into ``base`` where the heatmap reaches ``threshold``.

    Parameters
    ----------
    points : ndarray of shape (N, 3)
        Surface points in LPS mm.
    base : ndarray of shape (N, 3), uint8
        Their colours without the heatmap (see :func:`base_colours`).
    heatmap : Volume or None
        Values 0..1 on a CT grid, sampled linearly at the points (0 outside); None returns ``base``.
    threshold, opacity : float
        Points below ``threshold`` (at least 1e-3) keep their colour; others get
        ``opacity * heat colour + (1 - opacity) * base``.

    Returns
    -------
    rgb : ndarray of shape (N, 3), uint8
    """
    rgb = np.asarray(base, np.float32).copy()
    if heatmap is None or not len(rgb):
        return rgb.astype(np.uint8)
    from scipy import ndimage

    idx = heatmap.world_to_index(np.asarray(points, float))
    heat = ndimage.map_coordinates(heatmap.array.astype(np.float32), idx.T, order=1, mode="constant", cval=0.0,
                                   prefilter=False)
    m = heat >= max(threshold, 1e-3)
    col = HEAT_LUT[np.clip((heat[m] * 255).astype(int), 0, 255)].astype(np.float32)
    rgb[m] = opacity * col + (1 - opacity) * rgb[m]
    return rgb.astype(np.uint8)
