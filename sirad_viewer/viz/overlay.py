"""RGBA overlays for a slice: AI heatmap (colour map, opacity, threshold), bone labels, joint boxes.

Qt-free: :func:`compose` returns an (H, W, 4) uint8 image on the same pixel grid as the CT slice
it is drawn over, so the view just paints it with the same transform.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sirad_viewer.imaging import reslice as rs

# a perceptually ordered blue -> cyan -> green -> yellow -> red map (like turbo/jet)
_ANCHORS = np.array([[48, 18, 59], [40, 120, 240], [30, 200, 200], [110, 230, 80], [250, 200, 40], [230, 80, 20],
                     [122, 4, 3]], float)


def heat_lut() -> np.ndarray:
    """(256, 3) uint8 colours for values 0..1."""
    x = np.linspace(0, 1, len(_ANCHORS))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, _ANCHORS[:, c]) for c in range(3)], axis=1).astype(np.uint8)


HEAT_LUT = heat_lut()
LABEL_COLOURS = {1: (255, 170, 40), 2: (80, 220, 90), 3: (230, 60, 60), 4: (150, 120, 230)}
BOX_COLOURS = {"left": (80, 220, 90), "right": (230, 60, 60)}


def _edges(mask: np.ndarray) -> np.ndarray:
    e = np.zeros_like(mask)
    e[:-1] |= mask[:-1] != mask[1:]
    e[1:] |= mask[1:] != mask[:-1]
    e[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    e[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    return e & mask


def _resample_like(volume, image: rs.SliceImage) -> np.ndarray:
    """Values of ``volume`` (nearest neighbour) on the pixel grid of ``image``."""
    h, w = image.pixels.shape
    rows, cols = np.mgrid[0:h, 0:w]
    pts = image.origin + rows[..., None] * image.down_step + cols[..., None] * image.right_step
    idx = np.rint(volume.world_to_index(pts.reshape(-1, 3))).astype(np.int64)
    shape = np.asarray(volume.shape)
    ok = np.all((idx >= 0) & (idx < shape), axis=1)
    out = np.zeros(len(idx), volume.array.dtype)
    out[ok] = volume.array[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
    return out.reshape(h, w)


def slice_world(image: rs.SliceImage) -> np.ndarray:
    h, w = image.pixels.shape
    rows, cols = np.mgrid[0:h, 0:w]
    return image.origin + rows[..., None] * image.down_step + cols[..., None] * image.right_step


def compose(image: rs.SliceImage, overlays: Any) -> np.ndarray | None:
    """The RGBA overlay for ``image`` (a slice of the displayed CT), or None when nothing shows."""
    h, w = image.pixels.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    drawn = False
    if overlays.labels is not None and overlays.labels_mode != "off":
        lab = _resample_like(overlays.labels, image)
        for k, col in LABEL_COLOURS.items():
            m = lab == k
            if not m.any():
                continue
            if overlays.labels_mode == "outline":
                m = _edges(m)
                alpha = 230
            else:
                alpha = 90
            rgba[m, :3] = col
            rgba[m, 3] = alpha
            drawn = True
    if overlays.heatmap is not None and overlays.heatmap_visible:
        hm = _resample_like(overlays.heatmap, image).astype(np.float32)
        m = hm >= max(overlays.threshold, 1e-3)
        if m.any():
            colours = HEAT_LUT[np.clip((hm[m] * 255).astype(int), 0, 255)]
            a = overlays.opacity
            base = rgba[m].astype(np.float32)
            mixed_rgb = a * colours + (1 - a) * base[:, :3] * (base[:, 3:4] / 255.0)
            mixed_alpha = 255 * (a + (1 - a) * base[:, 3] / 255.0)
            rgba[m, :3] = np.clip(mixed_rgb / np.maximum(mixed_alpha[:, None] / 255.0, 1e-6), 0, 255).astype(np.uint8)
            rgba[m, 3] = mixed_alpha.astype(np.uint8)
            drawn = True
    if overlays.boxes and overlays.boxes_visible:
        world = None
        for box in overlays.boxes:
            world = slice_world(image) if world is None else world
            inside = box.contains(world.reshape(-1, 3)).reshape(h, w)
            e = _edges(inside)
            if e.any():
                # thicken the outline to two pixels so it survives down-scaling
                e[1:] |= e[:-1]
                rgba[e, :3] = BOX_COLOURS.get(box.side, (255, 255, 255))
                rgba[e, 3] = 255
                drawn = True
    return rgba if drawn else None


def stitch_heatmap(shape: tuple[int, int, int], blocks: Any) -> np.ndarray:
    """One CT-grid heatmap from the joints' Grad-CAM blocks, where they overlap the larger value wins.

    Parameters
    ----------
    shape : tuple of 3 int
        The CT grid, (slice, row, column).
    blocks : iterable of objects with ``offset`` (3 ints, index of the block's first voxel) and
        ``block`` (ndarray of shape (s, r, c), values 0..1); ``None`` entries are skipped.

    Returns
    -------
    heat : ndarray of shape ``shape``, float32
        Zero outside every block. A block reaching past the grid is cut at its edge.
    """
    heat = np.zeros(tuple(int(s) for s in shape), np.float32)
    for hm in blocks:
        if hm is None:
            continue
        o = [int(v) for v in hm.offset]
        b = np.asarray(hm.block, np.float32)
        dst = tuple(slice(max(o[i], 0), min(o[i] + b.shape[i], heat.shape[i])) for i in range(3))
        src = tuple(slice(dst[i].start - o[i], dst[i].stop - o[i]) for i in range(3))
        if any(d.stop <= d.start for d in dst):
            continue
        np.maximum(heat[dst], b[src], out=heat[dst])
    return heat
