"""Pixels: read stored values (native straight from the file, compressed through GDCM/pydicom) into HU."""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.errors import CancelledError, HeaderError, InputLimitError, LoadError, VolumeWarning
from sirad_viewer.io import limits
from sirad_viewer.io.dicom.frames import Frame
from sirad_viewer.io.dicom.geometry import GeometryPlan
from sirad_viewer.io.dicom.quiet import quiet_libraries
from sirad_viewer.io.dicom.headers import _DEFLATED, _GDCM_FAST, _LOSSY_SYNTAXES, _NATIVE_SYNTAXES, Header

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


def _noop_progress(fraction: float, message: str) -> None:  # pragma: no cover - trivial
    pass


def _never() -> bool:
    return False


def _stored_dtype(ds: Any) -> np.dtype:
    ba = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return np.dtype(f"{'i' if signed else 'u'}{ba // 8}")


def _fix_bits(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Mask unused high bits (unsigned) or sign-extend (signed) when BitsStored < BitsAllocated."""
    ba = int(ds.get("BitsAllocated", 16) or 16)
    bs = int(ds.get("BitsStored", ba) or ba)
    if bs >= ba:
        return arr
    if arr.dtype.kind == "u":
        limit = (1 << bs) - 1
        if arr.size and int(arr.max()) > limit:
            np.bitwise_and(arr, limit, out=arr)
        return arr
    shift = ba - bs
    return (arr << shift) >> shift


class PixelReader:
    """Reads the stored values of frames, checking that every byte is there."""

    def read_native(self, header: Header, frame_indices: Sequence[int], out: np.ndarray) -> None:
        """Read uncompressed frames straight into ``out`` (shape (len(frame_indices), R, C))."""
        ds = header.ds
        rows, cols = int(ds.Rows), int(ds.Columns)
        dtype = _stored_dtype(ds)
        if header.transfer_syntax == "1.2.840.10008.1.2.2":
            dtype = dtype.newbyteorder(">")
        frame_bytes = rows * cols * dtype.itemsize
        expected = frame_bytes * header.n_frames
        declared = header.pixel_length if header.pixel_length is not None else expected
        available = header.file_size - int(header.pixel_offset or 0)
        if declared < expected or available < expected:
            found = min(declared, available)
            raise LoadError(
                f"pixel data is truncated: {expected} bytes expected ({rows}x{cols}x"
                f"{header.n_frames} frames of {dtype.itemsize * 8} bit), {found} found",
                code="truncated_pixel_data", path=header.source.name,
                context={"expected_bytes": expected, "found_bytes": found})
        buf = np.empty((len(frame_indices), rows, cols), dtype=dtype)
        with header.source.open() as fp:
            for k, fi in enumerate(frame_indices):
                fp.seek(int(header.pixel_offset) + fi * frame_bytes)
                n = fp.readinto(memoryview(buf[k]).cast("B"))  # type: ignore[arg-type]
                if n != frame_bytes:
                    raise LoadError(f"pixel data is truncated in frame {fi + 1}", code="truncated_pixel_data",
                                    path=header.source.name)
            if hasattr(fp, "verify"):  # a zip member: its CRC-32 is checked at its end
                fp.verify()
        if dtype.byteorder == ">":
            buf = buf.astype(dtype.newbyteorder("="))
        out[...] = _fix_bits(buf, ds) if out.dtype == buf.dtype else _fix_bits(buf, ds).astype(out.dtype)

    def read_gdcm(self, header: Header, slope: float, intercept: float) -> np.ndarray | None:
        """Decode one compressed single-frame file with GDCM (SimpleITK), which releases the GIL.

        GDCM applies the file's rescale; the stored values are recovered exactly from it so the
        rest of the loader treats every decoder alike. Returns None when GDCM cannot help, and
        the caller falls back to pydicom (whose messages name what is wrong).
        """
        if header.source.member is not None or header.n_frames != 1 or slope == 0:
            return None
        try:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(header.source.path)
            reader.SetOutputPixelType(sitk.sitkFloat64)
            img = reader.Execute()
            hu = sitk.GetArrayViewFromImage(img)
        except Exception:  # noqa: BLE001 - any GDCM failure: let pydicom decode and explain
            return None
        ds = header.ds
        if hu.shape[-2:] != (int(ds.Rows), int(ds.Columns)):
            return None
        stored = np.rint((np.asarray(hu).reshape(1, int(ds.Rows), int(ds.Columns)) - intercept) / slope)
        return stored.astype(_stored_dtype(ds).newbyteorder("="))

    def read_pydicom(self, header: Header) -> np.ndarray:
        """Decode every frame of a compressed (or otherwise unusual) file: (F, R, C) stored values."""
        import pydicom

        try:
            with header.source.open() as fp, quiet_libraries():
                ds = pydicom.dcmread(fp, force=True)
                if hasattr(fp, "verify"):  # a zip member: its CRC-32 is checked at its end
                    fp.verify()
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"cannot be read again for its pixels: {exc}", code="undecodable_pixel_data",
                            path=header.source.name) from exc
        ts = header.transfer_syntax
        if "PixelData" not in ds:
            raise LoadError("pixel data is truncated: the file ends inside the compressed pixel data "
                            "(its end-of-sequence delimiter is missing)", code="truncated_pixel_data",
                            path=header.source.name)
        try:
            if ts in _NATIVE_SYNTAXES or ts == _DEFLATED:
                self._check_native_length(ds, header)
            with quiet_libraries():
                arr = ds.pixel_array
        except LoadError:
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - decoder plugins raise many types, and the Rust
            # RLE decoder's panics (pyo3_runtime.PanicException) derive from BaseException.
            log.info("decoder failed on %s", header.source.name, exc_info=True)
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            if len(lines) > 1 and lines[0].endswith(":"):  # "exceptions were raised by all plugins:"
                lines = lines[1:]
            msg = "; ".join(lines) if lines else type(exc).__name__
            low = msg.lower()
            code = "truncated_pixel_data" if ("truncat" in low or "too short" in low or
                                              "end of" in low or "not enough" in low) else "undecodable_pixel_data"
            raise LoadError(f"pixel data could not be decoded ({_ts_name(ts)}): {msg}", code=code,
                            path=header.source.name) from exc
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise LoadError(f"decoded pixel data has shape {arr.shape}; greyscale frames expected",
                            code="unsupported", path=header.source.name)
        if arr.shape[0] != header.n_frames:
            raise LoadError(f"{arr.shape[0]} frames decoded, NumberOfFrames says {header.n_frames}",
                            code="undecodable_pixel_data", path=header.source.name)
        return arr

    @staticmethod
    def _check_native_length(ds: Any, header: Header) -> None:
        rows, cols = int(ds.Rows), int(ds.Columns)
        ba = int(ds.get("BitsAllocated", 16) or 16)
        expected = rows * cols * header.n_frames * ba // 8
        found = len(ds.PixelData) if "PixelData" in ds else 0
        if found < expected:
            raise LoadError(
                f"pixel data is truncated: {expected} bytes expected ({rows}x{cols}x{header.n_frames} "
                f"frames of {ba} bit), {found} found", code="truncated_pixel_data", path=header.source.name,
                context={"expected_bytes": expected, "found_bytes": found})


def _ts_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        return UID(uid).name
    except Exception:  # noqa: BLE001
        return uid


def read_frames(
    plan: GeometryPlan,
    *,
    progress: ProgressFn = _noop_progress,
    cancel: CancelFn = _never,
    threads: int | None = None,
) -> tuple[np.ndarray, list[VolumeWarning]]:
    """Read the plan's frames and convert them to HU.

    Returns
    -------
    hu : ndarray of shape (n_frames, R, C)
        int16 when every frame's rescale is an integer shift with slope 1 and the values fit,
        float32 otherwise.
    warnings : list of VolumeWarning
    """
    frames = plan.frames
    f0 = frames[0]
    rows, cols = int(f0.header.ds.Rows), int(f0.header.ds.Columns)
    warnings: list[VolumeWarning] = []
    for f in frames:
        ds = f.header.ds
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise LoadError(f"image size {ds.Rows}x{ds.Columns} differs from the series' {rows}x{cols}",
                            code="unsupported", path=f.header.source.name)
    integer_rescale = all(f.slope == 1.0 and float(f.intercept).is_integer() for f in frames)
    stored_dt = _stored_dtype(f0.header.ds)
    bs = int(f0.header.ds.get("BitsStored", stored_dt.itemsize * 8) or stored_dt.itemsize * 8)
    int16_ok = integer_rescale and stored_dt.itemsize <= 2 and (
        bs <= 15 or stored_dt.kind == "i") and all(-32768 <= f.intercept <= 32767 - (1 << min(bs, 15)) for f in frames)
    hu = np.empty((len(frames), rows, cols), dtype=np.int16 if int16_ok else np.float32)

    # Group frames per file so each file is opened once.
    by_header: dict[int, list[tuple[int, Frame]]] = defaultdict(list)
    headers: dict[int, Header] = {}
    for k, f in enumerate(frames):
        by_header[id(f.header)].append((k, f))
        headers[id(f.header)] = f.header
    lossy: set[str] = set()
    reader = PixelReader()
    total = len(by_header)
    done = [0]

    deadline = time.monotonic() + limits.MAX_DECODE_SECONDS

    def work(key: int) -> None:
        if cancel():
            raise CancelledError()
        if time.monotonic() > deadline:
            raise InputLimitError(f"decoding took more than {limits.MAX_DECODE_SECONDS:g} s; stopped",
                                  code="timeout", path=headers[key].source.name)
        header = headers[key]
        items = by_header[key]
        ts = header.transfer_syntax
        native = ts in _NATIVE_SYNTAXES and header.pixel_offset is not None and not header.encapsulated
        if native and stored_dt.itemsize in (1, 2, 4):
            stored = np.empty((len(items), rows, cols), dtype=_stored_dtype(header.ds))
            reader.read_native(header, [f.index for _, f in items], stored)
        else:
            if ts in _LOSSY_SYNTAXES:
                lossy.add(_LOSSY_SYNTAXES[ts])
            stored = None
            if ts in _GDCM_FAST and len(items) == 1:
                stored = reader.read_gdcm(header, items[0][1].slope, items[0][1].intercept)
            if stored is None:
                allf = reader.read_pydicom(header)
                stored = allf[[f.index for _, f in items]]
        for j, (k, f) in enumerate(items):
            s = stored[j]
            if int16_ok:
                if s.dtype == np.uint16:
                    s = s.view(np.int16)  # BitsStored <= 15: the values fit
                if f.intercept:
                    np.add(s, np.int16(f.intercept), out=hu[k], casting="unsafe")
                else:
                    hu[k] = s
            else:
                np.multiply(s, f.slope, out=hu[k], casting="unsafe")
                if f.intercept:
                    hu[k] += np.float32(f.intercept)
        done[0] += 1
        if done[0] % 16 == 0 or done[0] == total:
            progress(done[0] / total, f"read {done[0]} of {total} files")

    keys = list(by_header)
    n_threads = threads or min(8, (os.cpu_count() or 2) * 2)
    if len(keys) <= 2 or n_threads <= 1:
        for key in keys:
            work(key)
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for _ in pool.map(work, keys):
                pass
    if hu.dtype.kind == "f" and not np.isfinite(hu).all():
        bad = next(f for k, f in enumerate(frames) if not np.isfinite(hu[k]).all())
        raise HeaderError(f"RescaleSlope {bad.slope:g} and RescaleIntercept {bad.intercept:g} give HU values "
                          "beyond the floating-point range", path=bad.name)
    if lossy:
        warnings.append(VolumeWarning(
            "lossy_compression", f"pixel data is lossy-compressed ({', '.join(sorted(lossy))}); fine "
            "erosions may be blurred or lost", {"syntaxes": sorted(lossy)}))
    return hu, warnings

