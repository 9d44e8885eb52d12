"""A lean DICOM header parser for the loader's hot path.

It reads only the top-level attributes the loader needs (about 35) from little-endian files
with a standard preamble and meta header, skips everything else by its length (nested
sequences included) and stops at the pixel data, whose offset it reports. Anything unusual
(big endian, deflated, no meta header, multi-frame functional groups, an exotic character set,
a malformed length) returns ``None`` and the caller uses pydicom instead, so this is purely a
speed-up, never a second opinion on what a file means.
"""
from __future__ import annotations

import struct
from typing import Any, BinaryIO

#: tag -> (keyword, VR) of the attributes kept.
WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"),
    0x00080080: ("InstitutionName", "LO"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00181210: ("ConvolutionKernel", "SH"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280102: ("HighBit", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
#: Seeing any of these means the file needs the full parser.
_BAIL_TAGS = {0x52009229, 0x52009230}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMPLICIT, _EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_CHARSETS = {"": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 192": "utf-8"}
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_TAG = struct.Struct("<HH")


class _Bail(Exception):
    """Internal: this file needs pydicom."""


class LiteDataset:
    """The few attributes :func:`parse` kept, with the bits of pydicom's Dataset API we use."""

    __slots__ = ("_values", "file_meta", "_sirad_has_pixels")

    def __init__(self, values: dict[str, Any], transfer_syntax: str) -> None:
        self._values = values
        self.file_meta = {"TransferSyntaxUID": transfer_syntax}
        self._sirad_has_pixels = False

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None


def _decode(raw: bytes, vr: str, encoding: str) -> Any:
    if vr == "US":
        if len(raw) == 2:
            return _U16.unpack(raw)[0]
        return [v for (v,) in struct.iter_unpack("<H", raw[: len(raw) // 2 * 2])]
    text = raw.decode(encoding, errors="replace").rstrip("\x00 ").lstrip(" ") if vr != "UI" else \
        raw.decode("ascii", errors="replace").rstrip("\x00 ")
    if vr in ("DS", "IS", "CS") and "\\" in text:
        return [t.strip() for t in text.split("\\")]
    if vr in ("DS", "IS"):
        return text.strip()
    return text


def _skip_undefined(buf: bytes, pos: int, implicit: bool) -> int:
    """Skip a sequence of undefined length starting at ``pos`` (just after its header)."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Bail()
        g, e = _TAG.unpack_from(buf, pos)
        length = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if (g, e) == (0xFFFE, 0xE0DD):  # sequence delimiter
            return pos
        if (g, e) != (0xFFFE, 0xE000):
            raise _Bail()
        if length != 0xFFFFFFFF:
            pos += length
            continue
        # item of undefined length: parse its elements until the item delimiter
        while True:
            if pos + 8 > n:
                raise _Bail()
            g, e = _TAG.unpack_from(buf, pos)
            if (g, e) == (0xFFFE, 0xE00D):
                pos += 8
                break
            pos, _, _ = _element(buf, pos, implicit)


def _element(buf: bytes, pos: int, implicit: bool) -> tuple[int, int, tuple[int, int] | None]:
    """Skip one element; return (next position, tag, (value start, value length) or None)."""
    if pos + 8 > len(buf):
        raise _Bail()
    g, e = _TAG.unpack_from(buf, pos)
    tag = (g << 16) | e
    if implicit:
        length = _U32.unpack_from(buf, pos + 4)[0]
        start = pos + 8
        is_sq = length == 0xFFFFFFFF
    else:
        vr = buf[pos + 4: pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise _Bail()
            length = _U32.unpack_from(buf, pos + 8)[0]
            start = pos + 12
        else:
            length = _U16.unpack_from(buf, pos + 6)[0]
            start = pos + 8
        is_sq = length == 0xFFFFFFFF
        if is_sq and vr not in (b"SQ", b"UN", b"OB", b"OW") and tag not in _PIXEL_TAGS:
            raise _Bail()
        if is_sq and vr == b"UN":
            raise _Bail()  # implicit-encoded sequence inside explicit data: let pydicom cope
    if tag in _PIXEL_TAGS:
        return start, tag, (start, length)
    if is_sq:
        return _skip_undefined(buf, start, implicit), tag, None
    return start + length, tag, (start, length)


def parse(fp: BinaryIO, file_size: int, *, first_read: int = 16384) -> tuple[LiteDataset, int | None] | None:
    """Parse a header; return ``(dataset, pixel_element_position)`` or None to fall back.

    ``pixel_element_position`` is the file offset where the pixel data element starts (its tag),
    None when the file ends without one. The element itself is read by
    :func:`sirad_viewer.io.dicom.headers.locate_pixel_data`, the one place that does.
    """
    buf = fp.read(first_read)
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    try:
        pos = 132
        ts = ""
        # File meta group: always explicit VR little endian.
        while pos + 8 <= len(buf):
            g, _ = _TAG.unpack_from(buf, pos)
            if g != 0x0002:
                break
            nxt, tag, val = _element(buf, pos, False)
            if tag == 0x00020010 and val:
                ts = buf[val[0]: val[0] + val[1]].decode("ascii", "replace").rstrip("\x00 ")
            pos = nxt
        if ts not in (_IMPLICIT, _EXPLICIT):
            return None
        implicit = ts == _IMPLICIT
        values: dict[str, Any] = {}
        encoding = "latin-1"
        while True:
            if pos + 12 > len(buf):
                more = fp.read(max(first_read, len(buf)))
                if not more:
                    return (_finish(values, ts), None) if pos >= len(buf) else None
                buf += more
                continue
            try:
                nxt, tag, val = _element(buf, pos, implicit)
            except _Bail:
                if len(buf) >= file_size:
                    return None
                buf += fp.read(max(first_read, len(buf)))
                continue
            if tag in _PIXEL_TAGS:
                return _finish(values, ts), pos
            if tag in _BAIL_TAGS:
                return None
            if nxt > len(buf):
                if nxt > file_size:
                    return None  # element runs past the end: let pydicom say what is wrong
                buf += fp.read(nxt - len(buf) + first_read)
            if val is not None and tag in WANTED:
                kw, vr = WANTED[tag]
                raw = buf[val[0]: val[0] + val[1]]
                if kw == "SpecificCharacterSet":
                    cs = raw.decode("ascii", "replace").strip("\x00 ")
                    if cs not in _CHARSETS:
                        return None
                    encoding = _CHARSETS[cs]
                values[kw] = _decode(raw, vr, encoding)
            pos = nxt
    except (_Bail, struct.error, UnicodeDecodeError):
        return None


def _finish(values: dict[str, Any], ts: str) -> LiteDataset:
    return LiteDataset(values, ts)
