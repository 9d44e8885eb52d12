"""DICOM series: scan, group, plan the geometry, read the pixels.

Done the standard's way (see pydicom ``pixels/processing.py`` and Slicer ``DICOMUtils.py``):

* slices are sorted by ``ImagePositionPatient`` projected on the slice normal, never by
  ``InstanceNumber`` or file name;
* each slice's own ``RescaleSlope``/``RescaleIntercept`` turns stored values into HU;
* quirks (uneven spacing, missing slices, gantry tilt, duplicate positions, mixed orientation,
  not CT, few slices) become :class:`~sirad_viewer.errors.VolumeWarning` objects with numbers,
  stating what was done about each;
* broken input raises :class:`~sirad_viewer.errors.LoadError` naming the file and the problem.
  Truncated pixel data is always an error, even where other readers pad it with zeros.

Speed: headers are parsed with pydicom up to (not into) the pixel data; uncompressed pixel bytes
are then read straight into the output array at their file offset. Compressed frames are decoded
by pydicom's plugins (pylibjpeg, openjpeg, libjpeg, RLE) in a thread pool.
"""
from __future__ import annotations

import io
import logging
import os
import struct
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from sirad_viewer.errors import CancelledError, LoadError, VolumeWarning
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import SeriesMetadata, Volume, resample_to
from sirad_viewer.io import fastheader

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

#: Modalities that never hold an image volume (structured reports, segmentations, plans, ...).
NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "PR", "KO",
                        "REG", "DOC", "PLAN", "RWV", "FID", "AU", "ECG", "HD"}

#: Fewer slices than this get the ``few_slices`` warning.
FEW_SLICES = 20
#: Relative spacing deviation above which a series counts as unevenly spaced.
SPACING_TOLERANCE = 0.05
#: Slice positions closer than this (mm) along the normal are duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: Angle (degrees) between slice stacking direction and slice normal that counts as gantry tilt.
TILT_TOLERANCE_DEG = 0.1

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_EXTRA_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                     b"UT", b"UV"}


def _noop_progress(fraction: float, message: str) -> None:  # pragma: no cover - trivial
    pass


def _never() -> bool:
    return False


# --------------------------------------------------------------------------------------------
# Sources: a file on disk or a member of a .zip
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where one DICOM file's bytes live: a path, or a member inside a zip archive."""

    path: str
    member: str | None = None

    def open(self) -> io.BufferedIOBase:
        if self.member is None:
            return open(self.path, "rb")
        with zipfile.ZipFile(self.path) as zf:
            return io.BytesIO(zf.read(self.member))

    def size(self) -> int:
        if self.member is None:
            return os.path.getsize(self.path)
        with zipfile.ZipFile(self.path) as zf:
            return zf.getinfo(self.member).file_size

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path

    def __str__(self) -> str:
        return self.name


def iter_sources(path: str | Path) -> Iterator[Source]:
    """All candidate files under ``path`` (recursive; zip archives are looked into)."""
    p = Path(path)
    if p.is_file():
        if zipfile.is_zipfile(p) and p.suffix.lower() == ".zip":
            with zipfile.ZipFile(p) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and not Path(info.filename).name.startswith("."):
                        yield Source(str(p), info.filename)
        else:
            yield Source(str(p))
        return
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            fp = Path(root) / f
            if fp.suffix.lower() == ".zip" and zipfile.is_zipfile(fp):
                yield from iter_sources(fp)
            else:
                yield Source(str(fp))


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------

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


@dataclass
class Header:
    """What the loader needs from one DICOM file, read without touching the pixel data."""

    source: Source
    ds: Any  # pydicom Dataset (header only)
    transfer_syntax: str
    pixel_offset: int | None  # offset of the pixel *value* (after the element header)
    pixel_length: int | None  # declared length, None if undefined (encapsulated)
    file_size: int
    warnings: list[VolumeWarning] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        try:
            return max(1, int(self.ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def encapsulated(self) -> bool:
        return self.pixel_length is None

    @property
    def modality(self) -> str:
        return str(self.ds.get("Modality", "") or "").upper()


def _tsyntax_of(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    # No meta header: pydicom guessed the encoding while reading.
    implicit = getattr(ds, "is_implicit_VR", getattr(ds, "original_encoding", (True, True))[0])
    little = getattr(ds, "is_little_endian", True)
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


def read_header(source: Source) -> Header:
    """Parse one file up to its pixel data.

    Raises
    ------
    LoadError
        ``not_dicom`` when the bytes are not DICOM at all.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    warnings: list[VolumeWarning] = []
    try:
        fp = source.open()
    except OSError as exc:
        raise LoadError(f"cannot be read: {exc.strerror or exc}", code="not_found", path=source.name) from exc
    with fp:
        size = source.size()
        fast = fastheader.parse(fp, size)
        if fast is not None:
            lite, offset, length = fast
            return Header(source=source, ds=lite, transfer_syntax=lite.file_meta["TransferSyntaxUID"],
                          pixel_offset=offset, pixel_length=length, file_size=size)
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            except Exception as exc:  # noqa: BLE001 - any parser failure means "not DICOM"
                raise LoadError("is not a DICOM file (no 'DICM' prefix and no readable data elements)",
                                code="not_dicom", path=source.name) from exc
            if not _looks_like_dicom(ds):
                raise LoadError("is not a DICOM file (no 'DICM' prefix and no recognisable DICOM attributes)",
                                code="not_dicom", path=source.name)
            warnings.append(VolumeWarning(
                "no_file_meta",
                f"{source.name} has no DICOM file meta header (preamble/'DICM'); it was read by guessing "
                "the encoding from the data", {"file": source.name}))
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"has a DICOM header that cannot be parsed: {exc}", code="not_dicom",
                            path=source.name) from exc
        pixel_offset = pixel_length = None
        ts = _tsyntax_of(ds)
        pos = fp.tell()
        head = fp.read(12)
        has_pixels = False
        if len(head) >= 8:
            little = ts != "1.2.840.10008.1.2.2"
            grp, elem = struct.unpack("<HH" if little else ">HH", head[:4])
            tag = (grp << 16) | elem
            if tag in _PIXEL_TAGS:
                has_pixels = True
                implicit = ts == "1.2.840.10008.1.2"
                if implicit:
                    (length,) = struct.unpack("<I", head[4:8])
                    hdr = 8
                else:
                    vr = head[4:6]
                    if vr in _EXTRA_LENGTH_VRS:
                        (length,) = struct.unpack("<I" if little else ">I", head[8:12])
                        hdr = 12
                    else:
                        (length,) = struct.unpack("<H" if little else ">H", head[6:8])
                        hdr = 8
                pixel_offset = pos + hdr
                pixel_length = None if length == 0xFFFFFFFF else int(length)
        if ts == _DEFLATED:
            # The stream after the meta header is zlib-compressed: file offsets mean nothing.
            fp.seek(0)
            try:
                full = pydicom.dcmread(fp, force=True)
                has_pixels = "PixelData" in full
            except Exception as exc:  # noqa: BLE001
                raise LoadError(f"deflated data set cannot be inflated: {exc}", code="undecodable_pixel_data",
                                path=source.name) from exc
            pixel_offset = pixel_length = None
        if not has_pixels:
            pixel_offset = pixel_length = None
    header = Header(source=source, ds=ds, transfer_syntax=ts, pixel_offset=pixel_offset,
                    pixel_length=pixel_length, file_size=size, warnings=warnings)
    header.ds._sirad_has_pixels = has_pixels  # noqa: SLF001 - private marker
    return header


def _looks_like_dicom(ds: Any) -> bool:
    keys = {"SOPClassUID", "Modality", "Rows", "Columns", "PatientID", "StudyInstanceUID",
            "SeriesInstanceUID", "ImageType", "SOPInstanceUID"}
    found = sum(1 for k in keys if k in ds)
    return found >= 2


def has_pixels(header: Header) -> bool:
    return bool(getattr(header.ds, "_sirad_has_pixels", False))


def image_problem(header: Header) -> tuple[str, str] | None:
    """Why this file cannot be part of a CT volume: ``(code, message)``, or None when it can."""
    ds = header.ds
    mod = header.modality
    if mod in NON_IMAGE_MODALITIES:
        return "no_image", f"is a {mod} object, not an image"
    if not has_pixels(header):
        return "no_image", "holds no pixel data (not an image)"
    if "Rows" not in ds or "Columns" not in ds:
        return "no_image", "has pixel data but no Rows/Columns"
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if spp != 1 or pi not in ("MONOCHROME1", "MONOCHROME2"):
        return "unsupported", (f"is a colour image ({pi}, {spp} samples per pixel); "
                               "only greyscale CT can be read as a volume")
    ba = int(ds.get("BitsAllocated", 16) or 16)
    if ba not in (8, 16, 32):
        return "unsupported", f"has {ba} bits allocated per pixel; 8, 16 or 32 expected"
    return None


def is_localizer(header: Header) -> bool:
    it = [str(v).upper() for v in (header.ds.get("ImageType") or [])]
    return "LOCALIZER" in it or "SCOUT" in it or "TOPOGRAM" in it


# --------------------------------------------------------------------------------------------
# Frames from headers (single-frame files and enhanced multi-frame)
# --------------------------------------------------------------------------------------------

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
    inst = ds.get("InstanceNumber")
    try:
        instance = int(inst) if inst not in (None, "") else 0
    except (TypeError, ValueError):
        instance = 0

    def rescale(item: Any) -> tuple[float, float]:
        slope = item.get("RescaleSlope") if item is not None else None
        icpt = item.get("RescaleIntercept") if item is not None else None
        return (float(slope) if slope not in (None, "") else 1.0,
                float(icpt) if icpt not in (None, "") else 0.0)

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


# --------------------------------------------------------------------------------------------
# Series grouping and geometry plan
# --------------------------------------------------------------------------------------------

def series_key(header: Header) -> tuple:
    """Files with equal keys belong to one series.

    ``SeriesInstanceUID`` when present; series with an empty or missing UID are told apart by
    study UID, series number, description, modality and frame of reference instead.
    """
    ds = header.ds
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    size = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    if uid:
        return ("uid", uid, size)
    return ("nouid", str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SeriesNumber", "") or ""),
            str(ds.get("SeriesDescription", "") or ""), header.modality,
            str(ds.get("FrameOfReferenceUID", "") or ""), size)


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
    rows = int(f0.header.ds.Rows)
    cols = int(f0.header.ds.Columns)
    geometry_known = f0.orientation is not None and all(f.position is not None for f in frames)
    if f0.pixel_spacing is not None:
        ps = f0.pixel_spacing
    else:
        ps = (1.0, 1.0)
        warnings.append(VolumeWarning(
            "missing_geometry", "PixelSpacing is missing; 1 mm pixels are assumed, so distances "
            "and sizes shown are not real millimetres", {}))
    if f0.orientation is not None:
        row_dir = f0.orientation[:3] / np.linalg.norm(f0.orientation[:3])
        col_dir = f0.orientation[3:] / np.linalg.norm(f0.orientation[3:])
    else:
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    normal = np.cross(row_dir, col_dir)

    if geometry_known:
        d = np.array([float(f.position @ normal) for f in frames])
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
            spacing = float(st) if st not in (None, "") and float(st) > 0 else 1.0
        except (TypeError, ValueError):
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
        target_shape = (n_target, rows, cols)
        target_affine[:3, 0] = normal * spacing
        if tilt_deg > TILT_TOLERANCE_DEG:
            # Keep the in-plane grid of the first slice, cover the tilted stack's extent in plane.
            target_affine[:3, 3] = positions[0]
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


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------

_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: Lossless syntaxes GDCM decodes faster than the pydicom plugins (and off the GIL).
_GDCM_FAST = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70",
              "1.2.840.10008.1.2.4.57"}
_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline", "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000 (lossy)",
}


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
            with header.source.open() as fp:
                ds = pydicom.dcmread(fp, force=True)
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
            arr = ds.pixel_array
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
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

    def work(key: int) -> None:
        if cancel():
            raise CancelledError()
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
    if lossy:
        warnings.append(VolumeWarning(
            "lossy_compression", f"pixel data is lossy-compressed ({', '.join(sorted(lossy))}); fine "
            "erosions may be blurred or lost", {"syntaxes": sorted(lossy)}))
    return hu, warnings


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------

def metadata_of(ds: Any) -> SeriesMetadata:
    def s(name: str) -> str:
        v = ds.get(name, "")
        return "" if v is None else str(v)

    st = ds.get("SliceThickness")
    try:
        thickness = float(st) if st not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    return SeriesMetadata(
        patient_name=s("PatientName"), patient_id=s("PatientID"), patient_birth_date=s("PatientBirthDate"),
        patient_sex=s("PatientSex"), study_instance_uid=s("StudyInstanceUID"), study_date=s("StudyDate"),
        study_description=s("StudyDescription"), accession_number=s("AccessionNumber"),
        series_instance_uid=s("SeriesInstanceUID"), series_number=s("SeriesNumber"),
        series_description=s("SeriesDescription"), modality=s("Modality"),
        frame_of_reference_uid=s("FrameOfReferenceUID"), manufacturer=s("Manufacturer"),
        institution_name=s("InstitutionName"), slice_thickness_mm=thickness,
        convolution_kernel=s("ConvolutionKernel"),
    )


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


# Keep resample_to importable from here for callers that resample DICOM volumes.
__all__ = ["Source", "Header", "Frame", "GeometryPlan", "iter_sources", "read_header", "frames_of",
           "series_key", "plan_geometry", "read_frames", "volume_from_plan", "image_problem",
           "is_localizer", "metadata_of", "resample_to"]
