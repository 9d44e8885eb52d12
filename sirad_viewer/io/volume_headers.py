"""Headers of NIfTI, NRRD and MetaImage files, validated before any reader touches the voxels.

SimpleITK crashed (segfault/abort) on some declared types and dimensions, padded truncated or
over-declared files with zeros (0 HU), and follows detached data files anywhere. Here every
header value a reader trusts is checked (types, dimensions, voxel sizes, scaling, offsets), the
bytes present are compared with the bytes declared, and detached data files must be regular
files beside the header. Limits come from :mod:`sirad_viewer.io.limits`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sirad_viewer.errors import GeometryError, HeaderError, InputLimitError, LoadError
from sirad_viewer.io import limits

#: NIfTI datatypes a scalar CT can have (uint8, int16, int32, float32, float64, int8, uint16, uint32).
NIFTI_DATATYPES = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32}
#: NIfTI intents that make a voxel something other than one scalar (vectors, displacements, colours...).
NIFTI_NON_SCALAR_INTENTS = {1006, 1007, 1008, 1009, 1010, 1011, 1012, 2003, 2004, 2005}


# The fields check_nifti reads, at their offsets in the NIfTI-1 (348-byte) and NIfTI-2 (540-byte)
# headers (nifti1.h / nifti2.h; tests/io/test_nifti_header.py compares them with nibabel's). Read with
# numpy rather than nibabel because nibabel was only needed for these nine numbers and
# ``import nibabel`` (it imports pydicom, requests and scipy) cost every ``sirad grade`` 0.3-0.8 s of CPU.
_NIFTI1_FIELDS = {"sizeof_hdr": ("i4", 0), "dim": (("i2", 8), 40), "intent_code": ("i2", 68),
                  "datatype": ("i2", 70), "bitpix": ("i2", 72), "pixdim": (("f4", 8), 76),
                  "vox_offset": ("f4", 108), "scl_slope": ("f4", 112), "scl_inter": ("f4", 116)}
_NIFTI2_FIELDS = {"sizeof_hdr": ("i4", 0), "datatype": ("i2", 12), "bitpix": ("i2", 14), "dim": (("i8", 8), 16),
                  "pixdim": (("f8", 8), 104), "vox_offset": ("i8", 168), "scl_slope": ("f8", 176),
                  "scl_inter": ("f8", 184), "intent_code": ("i4", 504)}


def _header_dtype(fields: dict, size: int, order: str) -> np.dtype:
    def fmt(f: Any) -> Any:
        return (order + f[0], f[1]) if isinstance(f, tuple) else order + f

    return np.dtype({"names": list(fields), "formats": [fmt(f) for f, _ in fields.values()],
                     "offsets": [o for _, o in fields.values()], "itemsize": size})


def nifti_header_fields(raw: bytes) -> dict[str, Any] | None:
    """datatype, bitpix, intent_code, dim, pixdim, vox_offset, scl_slope, scl_inter of a NIfTI header.

    Also ``sizeof_hdr`` and ``byte_order`` (``"<"`` or ``">"``, the order the header and its voxels
    are stored in).

    ``raw`` holds the file's first (decompressed) bytes. NIfTI-2 when ``sizeof_hdr`` is 540 in either
    byte order, NIfTI-1 otherwise; the byte order is the one in which ``sizeof_hdr`` has its value,
    else the one that gives ``dim[0]`` in 1..7 (as nibabel guesses it). Values are returned as found,
    unchecked. ``None`` when ``raw`` is shorter than the header.
    """
    two = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    fields, size = (_NIFTI2_FIELDS, 540) if two else (_NIFTI1_FIELDS, 348)
    if len(raw) < size:
        return None
    if int.from_bytes(raw[:4], "little") == size:
        order = "<"
    elif int.from_bytes(raw[:4], "big") == size:
        order = ">"
    else:
        little = np.frombuffer(raw, _header_dtype(fields, size, "<"), count=1)[0]
        order = "<" if 1 <= int(little["dim"][0]) <= 7 else ">"
    rec = np.frombuffer(raw, _header_dtype(fields, size, order), count=1)[0]
    out: dict[str, Any] = {}
    for name in fields:
        v = rec[name]
        if name == "dim":
            out[name] = [int(x) for x in v]
        elif name == "pixdim":
            out[name] = [float(x) for x in v]
        elif name in ("vox_offset", "scl_slope", "scl_inter"):
            out[name] = float(v)
        else:
            out[name] = int(v)
    out["byte_order"] = order
    return out


def check_nifti(path: Path) -> dict[str, Any]:
    """Validate a NIfTI-1/2 header and the bytes present, before any reader touches the data.

    SimpleITK crashed (segfault/abort) on datatype 1792 (complex128) with intent 1007 (vector),
    and padded truncated or over-declared files with zeros, i.e. 0 HU. Here the header is read
    (header only, no data; :func:`nifti_header_fields`) and every value the readers trust is checked.
    Returns the header fields (for :func:`sirad_viewer.io.formats.read_volume_file`'s direct read).

    Raises
    ------
    LoadError
        ``unsupported``, ``bad_header``, ``bad_geometry``, ``too_large`` or ``truncated_pixel_data``.
    """
    import gzip
    import zlib

    gz = str(path).lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise LoadError(f"cannot be read as NIfTI: {exc}", code="undecodable_pixel_data", path=path) from exc
    hdr = nifti_header_fields(raw)
    if hdr is None:
        raise HeaderError(f"has a NIfTI header that cannot be read: {len(raw)} bytes, at least 348 (NIfTI-1) or "
                          "540 (NIfTI-2) expected", path=path)
    code, bitpix, intent = hdr["datatype"], hdr["bitpix"], hdr["intent_code"]
    dim, pixdim, vox_offset = hdr["dim"], hdr["pixdim"], hdr["vox_offset"]
    slope, inter = hdr["scl_slope"], hdr["scl_inter"]
    if code not in NIFTI_DATATYPES:
        raise LoadError(f"has NIfTI datatype {code}; a scalar CT needs one of {sorted(NIFTI_DATATYPES)}",
                        code="unsupported", path=path, context={"datatype": code})
    if bitpix != NIFTI_DATATYPES[code]:
        raise HeaderError(f"declares {bitpix} bits per voxel for datatype {code} ({NIFTI_DATATYPES[code]} expected)",
                          path=path)
    if intent in NIFTI_NON_SCALAR_INTENTS:
        raise LoadError(f"has NIfTI intent {intent} (not one scalar per voxel); a CT volume is expected",
                        code="unsupported", path=path)
    nd = dim[0]
    if not 2 <= nd <= 7 or any(d < 1 for d in dim[1:nd + 1]):
        raise HeaderError(f"declares dimensions {dim[:nd + 1] if 0 <= nd <= 7 else dim}", path=path)
    if any(d > 1 for d in dim[5:nd + 1]):
        raise LoadError(f"has {dim[5]} components per voxel; a scalar CT volume is expected", code="unsupported",
                        path=path)
    sizes = dim[1:4] if nd >= 3 else dim[1:3] + [1]
    n_vox = int(np.prod([int(v) for v in sizes], dtype=np.int64))
    n_vol = dim[4] if nd >= 4 else 1
    if max(sizes) > limits.MAX_FRAMES or n_vox > limits.MAX_VOXELS or n_vol > limits.MAX_FRAMES:
        raise InputLimitError(f"declares {'x'.join(map(str, sizes))} voxels x {n_vol} volume(s); at most "
                              f"{limits.MAX_VOXELS} voxels are read", path=path)
    sp = pixdim[1:4] if nd >= 3 else pixdim[1:3]
    if not all(np.isfinite(v) and 1e-3 <= abs(v) <= 1e3 for v in sp):
        raise GeometryError(f"has voxel sizes {sp} mm; finite sizes between 0.001 and 1000 mm are expected",
                            path=path)
    if not (np.isfinite(slope) and np.isfinite(inter)) or abs(slope) > 1e9 or abs(inter) > 1e9:
        raise HeaderError(f"scl_slope {slope:g} / scl_inter {inter:g} cannot turn stored values into HU", path=path)
    if not np.isfinite(vox_offset) or vox_offset < 0 or vox_offset > 1 << 30:
        raise HeaderError(f"vox_offset {vox_offset:g} is not a position in the file", path=path)
    needed = int(vox_offset) + n_vox * n_vol * bitpix // 8
    have = _nifti_bytes(path, gz, needed)
    if have < needed:
        raise LoadError(f"is truncated: header and voxels need {needed} bytes, {have} present (the missing part "
                        "would show as 0 HU)", code="truncated_pixel_data", path=path,
                        context={"expected_bytes": needed, "found_bytes": have})
    return hdr


def _nifti_bytes(path: Path, gz: bool, needed: int) -> int:
    """Bytes present (decompressed for .gz, counted by streaming; stops once ``needed`` are seen).

    A cut-off .gz stream counts every byte that decompresses before the cut: ``gzip.GzipFile.read``
    raises on a truncated stream and drops the partial chunk it had, which made a file cut after
    450 kB report "0 present". zlib's streaming object gives the bytes up to the break.
    """
    import zlib

    if not gz:
        return path.stat().st_size
    n = 0
    d = zlib.decompressobj(zlib.MAX_WBITS | 16)
    buf = b""
    with open(path, "rb") as fh:
        while n < needed:
            if not buf:
                buf = fh.read(1 << 20)
                if not buf:
                    break
            try:
                out = d.decompress(buf, 1 << 22)  # bounded output per call: a gzip bomb never sits in memory
            except zlib.error:
                break  # a damaged stream counts up to where it breaks
            n += len(out)
            buf = d.unconsumed_tail
            if d.eof:  # a further gzip member (concatenated .gz files are one stream)
                buf = d.unused_data
                d = zlib.decompressobj(zlib.MAX_WBITS | 16)
    return min(n, needed)


_META_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}
_NRRD_TYPES = {**{t: 1 for t in ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t")},
               **{t: 2 for t in ("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                 "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t")},
               **{t: 4 for t in ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                 "uint32_t", "float")},
               **{t: 8 for t in ("longlong", "long long", "long long int", "signed long long",
                                 "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long",
                                 "unsigned long long int", "uint64", "uint64_t", "double")}}
_HEADER_BYTES = 65536


def _numbers(text: str, path: Path, key: str, n: int | None = None, *, positive: bool = False) -> list[float]:
    import re

    parts = [t for t in re.split(r"[\s,()]+", text.strip()) if t and t.lower() != "none"]
    try:
        vals = [float(t) for t in parts]
    except ValueError:
        raise HeaderError(f"{key} {text.strip()[:60]!r} is not a list of numbers", path=path) from None
    if n is not None and len(vals) != n:
        raise HeaderError(f"{key} has {len(vals)} values, {n} expected", path=path)
    if not all(np.isfinite(v) and abs(v) <= 1e6 for v in vals) or (positive and not all(v > 0 for v in vals)):
        raise GeometryError(f"{key} {text.strip()[:60]!r} must be finite{' and positive' if positive else ''}",
                            path=path)
    return vals


def _sizes(text: str, path: Path, key: str, n: int) -> list[int]:
    try:
        sizes = [int(t) for t in text.split()]
    except ValueError:
        raise HeaderError(f"{key} {text.strip()[:60]!r} is not a list of integers", path=path) from None
    if len(sizes) != n or any(v < 1 for v in sizes):
        raise HeaderError(f"{key} {text.strip()[:60]!r}: {n} positive sizes expected", path=path)
    if int(np.prod(sizes[:3], dtype=np.int64)) > limits.MAX_VOXELS or max(sizes) > limits.MAX_SLICES or \
            int(np.prod(sizes, dtype=np.int64)) > 4 * limits.MAX_VOXELS:
        raise InputLimitError(f"declares {'x'.join(map(str, sizes))} voxels; at most {limits.MAX_VOXELS} are read",
                              path=path)
    return sizes


def _data_file(header_path: Path, name: str) -> Path:
    """A detached data file named by a header: a regular file in the header's folder (or below it)."""
    import os
    import stat

    if not name or "%" in name or name.upper().startswith("LIST") or "\x00" in name:
        raise LoadError(f"data file {name!r}: file lists and patterns are not read", code="unsupported",
                        path=header_path)
    root = os.path.realpath(header_path.parent)
    real = os.path.realpath(header_path.parent / name)
    if os.path.commonpath([root, real]) != root:
        raise LoadError(f"data file {name!r} lies outside the header's folder; it is not read", code="unsupported",
                        path=header_path)
    try:
        st = os.stat(real)
    except OSError:
        raise LoadError(f"data file {name!r} is missing", code="not_found", path=header_path) from None
    if not stat.S_ISREG(st.st_mode):
        raise LoadError(f"data file {name!r} is not a regular file", code="unsupported", path=header_path)
    return Path(real)


def check_text_header(path: Path) -> None:
    """Validate a MetaImage (.mha/.mhd) or NRRD (.nrrd/.nhdr) header before SimpleITK reads it.

    ITK aborted on ``NDims = 100000`` and would read a detached data file anywhere (``/dev/zero``);
    here dimensions, sizes, types, spacing and the data file are checked, and the bytes present
    are compared with the bytes declared for uncompressed data.
    """
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_BYTES)
    if path.name.lower().endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, head)
    else:
        _check_metaimage(path, head)


def _check_metaimage(path: Path, head: bytes) -> None:
    fields: dict[str, str] = {}
    header_len = None
    pos = 0
    for line in head.split(b"\n"):
        pos += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        k = key.strip().lower()
        fields[k] = value.strip()
        if k == "elementdatafile":
            header_len = pos
            break
    if header_len is None:
        raise HeaderError("MetaImage header has no ElementDataFile line in its first 64 KiB", path=path)
    try:
        nd = int(fields.get("ndims", ""))
    except ValueError:
        raise HeaderError(f"NDims {fields.get('ndims')!r} is not an integer", path=path) from None
    if not 2 <= nd <= 4:
        raise LoadError(f"NDims is {nd}; a 2D to 4D image is expected", code="unsupported", path=path)
    sizes = _sizes(fields.get("dimsize", ""), path, "DimSize", nd)
    if int(fields.get("elementnumberofchannels", "1") or 1) != 1:
        raise LoadError("has several channels per voxel; a scalar CT volume is expected", code="unsupported", path=path)
    etype = fields.get("elementtype", "").upper()
    if etype not in _META_TYPES:
        raise LoadError(f"ElementType {etype!r} is not a scalar type", code="unsupported", path=path)
    for key in ("elementspacing", "elementsize"):
        if key in fields:
            _numbers(fields[key], path, key, nd, positive=True)
    for key in ("offset", "position", "origin"):
        if key in fields:
            _numbers(fields[key], path, key, nd)
    for key in ("transformmatrix", "rotation", "orientation"):
        if key in fields:
            _numbers(fields[key], path, key, nd * nd)
    data = fields["elementdatafile"]
    compressed = fields.get("compresseddata", "false").lower() == "true"
    if data.upper() == "LOCAL":
        available = path.stat().st_size - header_len
    else:
        available = _data_file(path, data).stat().st_size
    needed = int(np.prod(sizes, dtype=np.int64)) * _META_TYPES[etype]
    if not compressed and available < needed:
        raise LoadError(f"is truncated: {needed} bytes of voxels declared, {available} present",
                        code="truncated_pixel_data", path=path, context={"expected_bytes": needed,
                                                                         "found_bytes": available})


def _check_nrrd(path: Path, head: bytes) -> None:
    if not head.startswith(b"NRRD"):
        raise LoadError("is not an NRRD file (no 'NRRD' magic)", code="undecodable_pixel_data", path=path)
    end = head.find(b"\n\n")
    if end < 0 and path.suffix.lower() == ".nhdr":
        end = len(head)
    if end < 0:
        raise HeaderError("NRRD header does not end within its first 64 KiB", path=path)
    fields: dict[str, str] = {}
    for line in head[:end].decode("latin-1").split("\n")[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    try:
        nd = int(fields.get("dimension", ""))
    except ValueError:
        raise HeaderError(f"dimension {fields.get('dimension')!r} is not an integer", path=path) from None
    if not 2 <= nd <= 4:
        raise LoadError(f"dimension is {nd}; a 2D to 4D image is expected", code="unsupported", path=path)
    sizes = _sizes(fields.get("sizes", ""), path, "sizes", nd)
    typ = fields.get("type", "").lower()
    if typ not in _NRRD_TYPES:
        raise LoadError(f"type {typ!r} is not a scalar type", code="unsupported", path=path)
    for key in ("spacings",):
        if key in fields:
            _numbers(fields[key], path, key, None, positive=True)
    for key in ("space directions", "space origin"):
        if key in fields:
            _numbers(fields[key], path, key)
    enc = fields.get("encoding", "raw").lower()
    data = fields.get("data file") or fields.get("datafile")
    if data:
        available = _data_file(path, data).stat().st_size
    else:
        available = path.stat().st_size - (end + 2)
    needed = int(np.prod(sizes, dtype=np.int64)) * _NRRD_TYPES[typ]
    if enc == "raw" and available < needed:
        raise LoadError(f"is truncated: {needed} bytes of voxels declared, {available} present",
                        code="truncated_pixel_data", path=path, context={"expected_bytes": needed,
                                                                         "found_bytes": available})


def check_image_information(reader, p: Path) -> None:
    """Declared size, components and geometry of any SimpleITK-readable file, before reading voxels."""
    size = list(reader.GetSize())
    if reader.GetNumberOfComponents() != 1:
        raise LoadError(f"has {reader.GetNumberOfComponents()} components per voxel; a scalar CT volume is "
                        "expected", code="unsupported", path=p)
    if any(v < 1 for v in size):
        raise HeaderError(f"declares size {size}", path=p)
    n_vox = int(np.prod(size[:3], dtype=np.int64))
    if n_vox > limits.MAX_VOXELS or max(size) > limits.MAX_SLICES or int(np.prod(size, dtype=np.int64)) > 4 * limits.MAX_VOXELS:
        raise InputLimitError(f"declares {'x'.join(map(str, size))} voxels; at most {limits.MAX_VOXELS} are read",
                              path=p)
    sp = list(reader.GetSpacing())
    if not all(np.isfinite(v) and v > 0 for v in sp[:3]):
        raise GeometryError(f"has voxel spacing {sp}; positive finite spacing is expected", path=p)
    d = np.asarray(reader.GetDirection(), float)
    if not np.isfinite(d).all() or not np.isfinite(reader.GetOrigin()).all():
        raise GeometryError("has a non-finite origin or direction", path=p)
    n = reader.GetDimension()
    m = d.reshape(n, n)
    if abs(abs(np.linalg.det(m)) - 1) > 1e-2:
        raise GeometryError("has a direction matrix that is not a rotation (axes parallel or not unit length)",
                            path=p)
