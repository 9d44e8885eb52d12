"""Stored HU -> display: window/level through a lookup table (numpy only)."""
from __future__ import annotations

import numpy as np

#: Named window presets (width, level) in HU.
PRESETS: dict[str, tuple[float, float]] = {
    "bone": (2000.0, 500.0),
    "bone-narrow": (1500.0, 300.0),
    "soft-tissue": (400.0, 40.0),
}

_LUT_OFFSET = 32768


def window_lut(width: float, level: float) -> np.ndarray:
    """A 65536-entry uint8 table indexed by ``HU + 32768`` (DICOM PS3.3 C.11.2.1.2 linear VOI)."""
    hu = np.arange(-_LUT_OFFSET, _LUT_OFFSET, dtype=np.float64)
    w = max(float(width), 1.0)
    out = ((hu - (level - 0.5)) / (w - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_window(hu: np.ndarray, width: float, level: float, *, lut: np.ndarray | None = None) -> np.ndarray:
    """Map HU to 0-255 grey. int16 input goes through the lookup table; floats are computed."""
    if hu.dtype == np.int16:
        table = window_lut(width, level) if lut is None else lut
        # HU + 32768 is the int16's bit pattern with the sign bit flipped: no int32 temporary.
        return table[np.bitwise_xor(hu.view(np.uint16), np.uint16(0x8000))]
    w = max(float(width), 1.0)
    out = ((hu.astype(np.float32) - (level - 0.5)) / (w - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
