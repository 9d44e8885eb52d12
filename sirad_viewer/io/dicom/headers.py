"""DICOM headers: parse one file up to (not into) its pixel data, and say what it holds.

The pixel data element is found in ONE place, :func:`locate_pixel_data`; the fast header parser
(:mod:`sirad_viewer.io.fastheader`) reports the same location for the files it understands.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any

from sirad_viewer.errors import HeaderError, InputLimitError, LoadError, VolumeWarning
from sirad_viewer.imaging.volume import SeriesMetadata
from sirad_viewer.io import fastheader, limits
from sirad_viewer.io.dicom.quiet import quiet_libraries
from sirad_viewer.io.dicom.sources import Source

log = logging.getLogger(__name__)

#: Modalities that never hold an image volume (structured reports, segmentations, plans, ...).
NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "PR", "KO",
                        "REG", "DOC", "PLAN", "RWV", "FID", "AU", "ECG", "HD"}

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_EXTRA_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                     b"UT", b"UV"}

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
_NATIVE_SYNTAXES = {IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE}
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: Lossless syntaxes GDCM decodes faster than the pydicom plugins (and off the GIL).
_GDCM_FAST = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70",
              "1.2.840.10008.1.2.4.57"}
_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline", "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000 (lossy)",
}


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


def locate_pixel_data(fp: Any, transfer_syntax: str) -> tuple[int, int | None] | None:
    """Find the pixel data element at the current position of ``fp``: the one place that does.

    Returns
    -------
    (offset, length) or None
        ``offset`` of the pixel *value* (after the element header) and its declared ``length``
        (None when undefined, i.e. encapsulated); None when no pixel data element starts here.
    """
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    little = transfer_syntax != EXPLICIT_BE
    grp, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    if (grp << 16) | elem not in _PIXEL_TAGS:
        return None
    if transfer_syntax == IMPLICIT_LE:
        (length,) = struct.unpack("<I", head[4:8])
        hdr = 8
    elif head[4:6] in _EXTRA_LENGTH_VRS:
        if len(head) < 12:
            return None
        (length,) = struct.unpack("<I" if little else ">I", head[8:12])
        hdr = 12
    else:
        (length,) = struct.unpack("<H" if little else ">H", head[6:8])
        hdr = 8
    return pos + hdr, (None if length == 0xFFFFFFFF else int(length))


def read_header(source: Source) -> Header:
    """Parse one file up to its pixel data (library log records kept quiet; ``-v`` shows them).

    Raises
    ------
    LoadError
        ``not_dicom`` when the bytes are not DICOM at all, ``bad_header`` for unreadable values.
    """
    with quiet_libraries():
        return _read_header(source)


def _read_header(source: Source) -> Header:
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
            lite, element_pos = fast
            ts = lite.file_meta["TransferSyntaxUID"]
            loc = None
            if element_pos is not None:
                fp.seek(element_pos)
                loc = locate_pixel_data(fp, ts)
            lite._sirad_has_pixels = loc is not None  # noqa: SLF001 - private marker
            offset, length = loc if loc is not None else (None, None)
            return Header(source=source, ds=lite, transfer_syntax=ts, pixel_offset=offset,
                          pixel_length=length, file_size=size)
        fp.seek(0)
        head = fp.read(132)
        if head[128:132] != b"DICM" and not _plausible_raw_start(head[:8]):
            raise LoadError("is not a DICOM file (no 'DICM' prefix, and it does not start with a DICOM "
                            "data element)", code="not_dicom", path=source.name)
        if head[128:132] == b"DICM":
            _check_deflated_size(fp, source)
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            fp.seek(0)
            if not _plausible_raw_start(fp.read(8)):
                raise LoadError("is not a DICOM file (no 'DICM' prefix, and it does not start with a DICOM "
                                "data element)", code="not_dicom", path=source.name) from None
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
        try:
            # pydicom converts values on first access; do it here, where a bad value (unknown VR,
            # undecodable text) is reported as this file's problem, not as a foreign exception later.
            # Only what the loader reads (the rest stays raw, converting all of it costs time).
            for keyword, _ in fastheader.WANTED.values():
                ds.get(keyword)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for one bad element
            raise HeaderError(f"has a data element that cannot be read: {type(exc).__name__}: {exc}",
                              path=source.name) from exc
        ts = _tsyntax_of(ds)
        loc = locate_pixel_data(fp, ts)
        has_pixels = loc is not None
        pixel_offset, pixel_length = loc if loc is not None else (None, None)
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


def _check_deflated_size(fp: Any, source: Source) -> None:
    """Refuse a deflated data set that inflates beyond the limit (pydicom inflates it whole).

    Counted by streaming inflation after the file meta group (``fp`` is just past 'DICM').
    """
    import zlib

    meta = fp.read(12)
    if len(meta) < 12 or meta[:4] != b"\x02\x00\x00\x00":
        return  # no group length: pydicom parses (or refuses) the meta group itself
    (group_len,) = struct.unpack("<I", meta[8:12])
    block = fp.read(min(group_len, 4096))
    if _DEFLATED.encode() not in block:
        return
    fp.seek(132 + 12 + group_len)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while True:
            chunk = fp.read(1 << 20)
            if not chunk:
                break
            data = inflater.decompress(chunk, 1 << 24)
            while True:
                total += len(data)
                if total > limits.MAX_DEFLATED_BYTES:
                    raise InputLimitError(f"deflated data set inflates to more than {limits.MAX_DEFLATED_BYTES >> 20} "
                                          "MiB; refused", path=source.name)
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, 1 << 24)
    except zlib.error as exc:
        raise LoadError(f"deflated data set cannot be inflated: {exc}", code="undecodable_pixel_data",
                        path=source.name) from exc


def _plausible_raw_start(head: bytes) -> bool:
    """Whether bytes without a 'DICM' prefix start like a data set (a low group, a sane length).

    pydicom's ``force=True`` reads anything, and on a long run of zeros it reads (0000,0000)
    elements for minutes; this gate keeps it to files that begin like DICOM.
    """
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        grp, elem = struct.unpack(order + "HH", head[:4])
        if grp in (0x0002, 0x0008) and elem < 0x1000:
            return True
    return False


def _looks_like_dicom(ds: Any) -> bool:
    keys = {"SOPClassUID", "Modality", "Rows", "Columns", "PatientID", "StudyInstanceUID",
            "SeriesInstanceUID", "ImageType", "SOPInstanceUID"}
    found = sum(1 for k in keys if k in ds)
    return found >= 2


def has_pixels(header: Header) -> bool:
    return bool(getattr(header.ds, "_sirad_has_pixels", False))


def _int_value(ds: Any, keyword: str, default: int | None = None) -> int | None:
    """An integer attribute, ``default`` when absent; raises ValueError when not an integer."""
    v = ds.get(keyword, default)
    if v is None or v == "":
        return default
    if isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, str):
        raise ValueError(f"{keyword} has {len(v)} values; one expected")
    f = float(v)
    if not f.is_integer():
        raise ValueError(f"{keyword} is {v!r}; an integer is expected")
    return int(f)


def image_problem(header: Header) -> tuple[str, str] | None:
    """Why this file cannot be part of a CT volume: ``(code, message)``, or None when it can.

    Also validates, before anything is allocated, every header value the pixel reader trusts:
    Rows, Columns, bits, number of frames, and the declared pixel data length against the bytes
    in the file (codes ``bad_header``, ``too_large``, ``truncated_pixel_data``).
    """
    ds = header.ds
    mod = header.modality
    if mod in NON_IMAGE_MODALITIES:
        return "no_image", f"is a {mod} object, not an image"
    if not has_pixels(header):
        return "no_image", "holds no pixel data (not an image)"
    if "Rows" not in ds or "Columns" not in ds:
        return "no_image", "has pixel data but no Rows/Columns"
    try:
        spp = _int_value(ds, "SamplesPerPixel", 1)
        rows, cols = _int_value(ds, "Rows"), _int_value(ds, "Columns")
        ba = _int_value(ds, "BitsAllocated", 16) or 16
        bs = _int_value(ds, "BitsStored", ba)
        pr = _int_value(ds, "PixelRepresentation", 0)
        n_frames = _int_value(ds, "NumberOfFrames", 1)
    except (TypeError, ValueError) as exc:
        return "bad_header", f"has an invalid image attribute: {exc}"
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if spp != 1 or pi not in ("MONOCHROME1", "MONOCHROME2"):
        return "unsupported", (f"is a colour image ({pi}, {spp} samples per pixel); "
                               "only greyscale CT can be read as a volume")
    if ba not in (8, 16, 32):
        return "unsupported", f"has {ba} bits allocated per pixel; 8, 16 or 32 expected"
    if not rows or not cols or rows < 1 or cols < 1:
        return "bad_header", f"declares an image of {rows} x {cols} pixels"
    if rows > limits.MAX_MATRIX or cols > limits.MAX_MATRIX:
        return "too_large", f"declares {rows} x {cols} pixels; at most {limits.MAX_MATRIX} per side are read"
    if bs is None or not 1 <= bs <= ba:
        return "bad_header", f"BitsStored {bs} does not fit in BitsAllocated {ba}"
    if pr not in (0, 1):
        return "bad_header", f"PixelRepresentation is {pr}; 0 (unsigned) or 1 (signed) expected"
    if n_frames is None or n_frames < 1:
        return "bad_header", f"NumberOfFrames is {ds.get('NumberOfFrames')!r}; at least 1 expected"
    if n_frames > limits.MAX_FRAMES:
        return "too_large", f"declares {n_frames} frames; at most {limits.MAX_FRAMES} are read"
    frame_bytes = rows * cols * ba // 8
    if header.transfer_syntax in _NATIVE_SYNTAXES and not header.encapsulated:
        expected = frame_bytes * n_frames
        declared = int(header.pixel_length or 0)
        available = header.file_size - int(header.pixel_offset or 0)
        found = min(declared, available)
        if found < expected:
            return "truncated_pixel_data", (
                f"pixel data is truncated: {expected} bytes expected ({rows}x{cols}x{n_frames} frames of "
                f"{ba} bit), {found} found")
        if declared >= 2 * expected:
            return "bad_header", (
                f"pixel data holds {declared} bytes but Rows x Columns x NumberOfFrames x BitsAllocated "
                f"({rows}x{cols}x{n_frames}x{ba} bit) account for {expected}: the header does not describe "
                "the data (wrong BitsAllocated or frame count), so the image would be wrong")
    elif header.encapsulated and n_frames * 8 > header.file_size:
        # Every compressed frame needs at least an 8-byte item header.
        return "truncated_pixel_data", (f"declares {n_frames} compressed frames but the file holds only "
                                        f"{header.file_size} bytes")
    if n_frames * rows * cols > limits.MAX_VOXELS:
        return "too_large", f"declares {n_frames * rows * cols} voxels; at most {limits.MAX_VOXELS} are read"
    return None


def is_localizer(header: Header) -> bool:
    it = [str(v).upper() for v in (header.ds.get("ImageType") or [])]
    return "LOCALIZER" in it or "SCOUT" in it or "TOPOGRAM" in it



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

