"""Assemble a :class:`Volume` from a geometry plan: read the pixels, resample irregular stacks."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from sirad_viewer.errors import VolumeWarning
from sirad_viewer.imaging.volume import Volume
from sirad_viewer.io.dicom.geometry import GeometryPlan
from sirad_viewer.io.dicom.headers import metadata_of
from sirad_viewer.io.dicom.pixels import CancelFn, ProgressFn, _never, _noop_progress, read_frames


def volume_from_plan(
    plan: GeometryPlan, *, progress: ProgressFn = _noop_progress, cancel: CancelFn = _never,
    extra_warnings: Iterable[VolumeWarning] = (),
) -> Volume:
    """Read pixels for a plan and deliver a regular, orthogonal :class:`Volume`."""
    hu, pix_warnings = read_frames(plan, progress=lambda f, m: progress(0.9 * f, m), cancel=cancel)
    meta = metadata_of(plan.frames[0].header.ds)
    warnings = list(extra_warnings) + list(plan.warnings) + pix_warnings
    header_warnings = {w.code: w for f in plan.frames for w in f.header.warnings}
    warnings.extend(header_warnings.values())
    vol = Volume(array=hu, affine=plan.affine, metadata=meta, warnings=warnings,
                 sources=[f.name for f in plan.frames])
    if plan.needs_resampling:
        progress(0.92, "resampling onto a regular grid")
        vol = _resample_stack(vol, plan)
    progress(1.0, "loaded")
    return vol


def _resample_stack(vol: Volume, plan: GeometryPlan) -> Volume:
    """Put frames at irregular / tilted positions onto the plan's regular orthogonal grid.

    Each target slice is a linear blend of the two stored frames around it, along the stack;
    for a tilted stack the in-plane shift of each frame is undone first.
    """
    from scipy import ndimage

    d = plan.positions_mm
    n_t, rows, cols = plan.target_shape
    tgt = plan.target_affine
    spacing = float(np.linalg.norm(tgt[:3, 0]))
    normal = tgt[:3, 0] / spacing
    out_dtype = vol.array.dtype
    out = np.empty(plan.target_shape, dtype=np.float32)
    positions = np.stack([f.position for f in plan.frames]) if plan.frames[0].position is not None else None
    col_step, row_step = tgt[:3, 1], tgt[:3, 2]
    m2 = np.stack([col_step, row_step], axis=1)  # 3x2: in-plane (row idx, col idx) -> mm
    for t in range(n_t):
        z = d[0] + t * spacing
        i = int(np.clip(np.searchsorted(d, z, side="right") - 1, 0, len(d) - 2)) if len(d) > 1 else 0
        j = min(i + 1, len(d) - 1)
        w = 0.0 if j == i else float(np.clip((z - d[i]) / (d[j] - d[i]), 0.0, 1.0))
        target_origin = tgt[:3, 3] + normal * (t * spacing)
        acc = np.zeros((rows, cols), dtype=np.float32)
        for k, wk in ((i, 1.0 - w), (j, w)):
            if wk == 0.0:
                continue
            sl = vol.array[k].astype(np.float32)
            if positions is not None:
                # Where does the target slice's pixel grid sit on stored frame k? Pure in-plane shift.
                delta = target_origin - positions[k]
                shift_rc, *_ = np.linalg.lstsq(m2, delta - normal * (delta @ normal), rcond=None)
                if np.any(np.abs(shift_rc) > 1e-3):
                    sl = ndimage.shift(sl, -shift_rc, order=1, mode="constant", cval=-1024.0)
            acc += np.float32(wk) * sl
        out[t] = acc
    if np.issubdtype(out_dtype, np.integer):
        out = np.rint(out).astype(out_dtype)
    return vol.with_array(out, tgt)


