"""Non-DICOM volume files: NIfTI, NRRD, MHA/MHD (through SimpleITK)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sirad_viewer.errors import GeometryError, HeaderError, InputLimitError, LoadError, VolumeWarning
from sirad_viewer.io import limits
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import SeriesMetadata, Volume

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_volume_file(path: str | Path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def format_name(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        return "NIfTI"
    if name.endswith((".nrrd", ".nhdr")):
        return "NRRD"
    return "MetaImage"


#: NIfTI datatypes a scalar CT can have (uint8, int16, int32, float32, float64, int8, uint16, uint32).
NIFTI_DATATYPES = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32}
#: NIfTI intents that make a voxel something other than one scalar (vectors, displacements, colours...).
NIFTI_NON_SCALAR_INTENTS = {1006, 1007, 1008, 1009, 1010, 1011, 1012, 2003, 2004, 2005}


def check_nifti(path: Path) -> None:
    """Validate a NIfTI-1/2 header and the bytes present, before any reader touches the data.

    SimpleITK crashed (segfault/abort) on datatype 1792 (complex128) with intent 1007 (vector),
    and padded truncated or over-declared files with zeros, i.e. 0 HU. Here the header is read
    with nibabel (header only, no data) and every value the readers trust is checked.

    Raises
    ------
    LoadError
        ``unsupported``, ``bad_header``, ``bad_geometry``, ``too_large`` or ``truncated_pixel_data``.
    """
    import gzip

    import nibabel as nib

    gz = str(path).lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            raw = fh.read(540)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise LoadError(f"cannot be read as NIfTI: {exc}", code="undecodable_pixel_data", path=path) from exc
    try:
        if 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")):
            hdr = nib.Nifti2Header.from_fileobj(io.BytesIO(raw), check=False)
        else:
            hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
        code = int(hdr["datatype"])
        bitpix = int(hdr["bitpix"])
        intent = int(hdr["intent_code"])
        dim = [int(v) for v in hdr["dim"]]
        pixdim = [float(v) for v in hdr["pixdim"]]
        vox_offset = float(hdr["vox_offset"])
        slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a broken header
        raise HeaderError(f"has a NIfTI header that cannot be read: {exc}", path=path) from exc
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


def _nifti_bytes(path: Path, gz: bool, needed: int) -> int:
    """Bytes present (decompressed for .gz, counted by streaming; stops once ``needed`` are seen)."""
    import gzip
    import zlib

    if not gz:
        return path.stat().st_size
    n = 0
    try:
        with gzip.open(path, "rb") as fh:
            while n < needed:
                chunk = fh.read(min(1 << 22, needed - n))
                if not chunk:
                    break
                n += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # a damaged stream counts up to where it breaks
    return n


def _check_image_information(reader, p: Path) -> None:
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


def read_volume_file(path: str | Path) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file as a :class:`Volume` in HU.

    Raises
    ------
    LoadError
        ``not_found``, ``unsupported`` (not 3D, not scalar) or ``undecodable_pixel_data``.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise LoadError("does not exist", code="not_found", path=p)
    if not p.is_file():
        raise LoadError("is not a regular file", code="unsupported", path=p)
    if format_name(p) == "NIfTI":
        check_nifti(p)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        _check_image_information(reader, p)
        img = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "error" in ln), first[-1] if first else "")
        raise LoadError(f"cannot be read as {format_name(p)}: {detail.strip()}",
                        code="undecodable_pixel_data", path=p) from exc
    warnings: list[VolumeWarning] = []
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise LoadError(f"has {img.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT "
                        "volume is expected", code="unsupported", path=p)
    if img.GetDimension() == 4:
        n = img.GetSize()[3]
        img = img[:, :, :, 0]
        warnings.append(VolumeWarning("not_ct", f"the file holds {n} volumes (4D); only the first is shown",
                                      {"n_volumes": n}))
    elif img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    elif img.GetDimension() != 3:
        raise LoadError(f"is {img.GetDimension()}-dimensional; a 3D volume is expected", code="unsupported", path=p)
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) == (slice, row, column)
    affine = geo.affine_from_sitk(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    if not np.isfinite(affine).all():
        raise GeometryError("has a non-finite origin, spacing or direction", path=p)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        finite = arr[np.isfinite(arr)]
        fill = float(finite.min()) if finite.size else -1024.0
        arr = np.where(np.isfinite(arr), arr, np.float32(fill)).astype(np.float32)
        warnings.append(VolumeWarning(
            "non_finite_values", f"{n_bad} voxel(s) hold NaN or infinity; they were set to {fill:g} (the "
            "lowest finite value)", {"n_voxels": n_bad, "fill": fill}))
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        arr = arr.astype(np.int16) if -32768 <= lo and hi <= 32767 else arr.astype(np.float32)
    else:
        arr = arr.astype(np.float32, copy=False)
        if np.all(np.mod(arr[:: max(1, arr.shape[0] // 8)], 1) == 0):
            lo, hi = float(arr.min()), float(arr.max())
            if -32768 <= lo and hi <= 32767:
                arr = arr.astype(np.int16)
    if arr.size and float(arr.min()) >= 0:
        warnings.append(VolumeWarning(
            "not_ct", f"values range from {float(arr.min()):g} to {float(arr.max()):g} with nothing below "
            "0; this is probably not in Hounsfield units", {"min": float(arr.min()), "max": float(arr.max())}))
    if arr.shape[0] < 20:
        warnings.append(VolumeWarning("few_slices", f"only {arr.shape[0]} slice(s); at least 20 are needed to "
                                      "read the sacroiliac joints in 3D", {"n_slices": int(arr.shape[0])}))
    meta = SeriesMetadata(series_description=p.name, modality="", extra={"format": format_name(p)})
    return Volume(array=np.ascontiguousarray(arr), affine=affine, metadata=meta, warnings=warnings,
                  sources=[str(p)])
