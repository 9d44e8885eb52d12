"""Frames: the 2D images a DICOM file contributes (single-frame or enhanced multi-frame)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sirad_viewer.errors import HeaderError, InputLimitError
from sirad_viewer.io import limits
from sirad_viewer.io.dicom.headers import Header


@dataclass
class Frame:
    """One 2D image: a single-frame file, or one frame of a multi-frame file."""

    header: "Header"
    index: int  # frame number inside the file (0 for single-frame files)
    position: np.ndarray | None  # ImagePositionPatient (LPS mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    slope: float
    intercept: float
    instance: int

    @property
    def name(self) -> str:
        n = self.header.source.name
        return f"{n} (frame {self.index + 1})" if self.header.n_frames > 1 else n



def _floats(v: Any, n: int) -> np.ndarray | None:
    if v is None:
        return None
    try:
        a = np.array([float(x) for x in v], dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.size == n and np.all(np.isfinite(a)) else None


def _seq_item(ds: Any, seq: str) -> Any:
    s = ds.get(seq)
    return s[0] if s else None


def frames_of(header: Header) -> list[Frame]:
    """The 2D frames a file contributes, with their geometry and rescale."""
    ds = header.ds
    n = header.n_frames
    if n > limits.MAX_FRAMES:
        raise InputLimitError(f"declares {n} frames; at most {limits.MAX_FRAMES} are read", path=header.source.name)
    inst = ds.get("InstanceNumber")
    try:
        instance = int(inst) if inst not in (None, "") else 0
    except (TypeError, ValueError):
        instance = 0

    def number(item: Any, keyword: str, default: float) -> float:
        v = item.get(keyword) if item is not None else None
        if v is None or v == "":
            return default
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if not math.isfinite(f) or abs(f) > 1e9:
            raise HeaderError(f"{keyword} is {str(v)[:40]!r}; a finite number is expected, so stored values "
                              "cannot be turned into HU", path=header.source.name)
        return f

    def rescale(item: Any) -> tuple[float, float]:
        slope = number(item, "RescaleSlope", 1.0)
        if slope == 0:
            raise HeaderError("RescaleSlope is 0: every pixel would have the same HU", path=header.source.name)
        return slope, number(item, "RescaleIntercept", 0.0)

    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    sfg = _seq_item(ds, "SharedFunctionalGroupsSequence")
    if n > 1 or pffg is not None:
        frames = []
        for i in range(n):
            per = pffg[i] if pffg is not None and i < len(pffg) else None

            def group(name: str) -> Any:
                for g in (per, sfg):
                    if g is not None and g.get(name):
                        return g.get(name)[0]
                return None

            pos_item = group("PlanePositionSequence")
            ori_item = group("PlaneOrientationSequence")
            meas = group("PixelMeasuresSequence")
            pvt = group("PixelValueTransformationSequence")
            pos = _floats(pos_item.get("ImagePositionPatient") if pos_item is not None else None, 3)
            ori = _floats(ori_item.get("ImageOrientationPatient") if ori_item is not None else
                          ds.get("ImageOrientationPatient"), 6)
            ps = _floats(meas.get("PixelSpacing") if meas is not None else ds.get("PixelSpacing"), 2)
            slope, icpt = rescale(pvt if pvt is not None else ds)
            frames.append(Frame(header, i, pos, ori, tuple(ps) if ps is not None else None,
                                slope, icpt, instance * 10000 + i))
        return frames
    pos = _floats(ds.get("ImagePositionPatient"), 3)
    ori = _floats(ds.get("ImageOrientationPatient"), 6)
    ps = _floats(ds.get("PixelSpacing"), 2)
    slope, icpt = rescale(ds)
    return [Frame(header, 0, pos, ori, tuple(ps) if ps is not None else None, slope, icpt, instance)]

