"""Non-DICOM volume files: NIfTI, NRRD, MHA/MHD (through SimpleITK)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sirad_viewer.errors import GeometryError, LoadError, VolumeWarning
from sirad_viewer.io.volume_headers import check_image_information, check_nifti, check_text_header
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


def _plain_nifti_voxels(p: Path, hdr: dict, reader) -> np.ndarray | None:
    """The voxels of a plain uncompressed NIfTI file, memory-mapped; ``None`` when not plain.

    Plain: a single ``.nii`` file (not gzipped), int16 voxels in this machine's byte order, three
    dimensions, no scaling (``scl_slope`` 1 or 0 and ``scl_inter`` 0), data after the header, and
    SimpleITK's header read agrees (int16, scalar, the same size). Everything else goes through
    SimpleITK's full read. Written here, not with nibabel or SimpleITK, because SimpleITK reads the
    file into its own buffer and ``GetArrayFromImage`` copies it again: 0.47 s for a 512x512x300 CT
    against 0.03 s mapped (a copy with ``np.fromfile`` took 0.04-0.4 s, page faults on fresh memory).
    The geometry always comes from SimpleITK's header read (qform/sform rules), so both paths give
    the same Volume; ``tests/io/test_plain_nifti.py`` compares them on LPS, RAS and oblique files and
    checks each fall-back. Our own NIfTI writers replace files by renaming (never write into a mapped
    file); a program rewriting the file in place while it is open would change the pixels under us,
    as with nibabel's memory maps.
    """
    import sys

    import SimpleITK as sitk

    size = [int(v) for v in reader.GetSize()]
    little = sys.byteorder == "little"
    offset = hdr["vox_offset"]
    if (p.name.lower().endswith(".gz") or hdr["datatype"] != 4 or hdr["dim"][0] != 3
            or hdr["byte_order"] != ("<" if little else ">")
            or not (hdr["scl_slope"] in (0.0, 1.0) and hdr["scl_inter"] == 0.0)
            or offset != int(offset) or offset < hdr["sizeof_hdr"]
            or reader.GetDimension() != 3 or reader.GetPixelID() != sitk.sitkInt16
            or reader.GetNumberOfComponents() != 1 or size != hdr["dim"][1:4]):
        return None
    n = int(np.prod(size, dtype=np.int64))
    if p.stat().st_size < int(offset) + 2 * n:  # check_nifti counted the bytes; a file cut since then goes the careful way
        return None
    # copy-on-write mapping (nibabel's default for such files): pages are read when first touched, a
    # write stays in this process. np.asarray makes it a plain ndarray (the mapping lives on as its base).
    arr = np.asarray(np.memmap(p, dtype=np.int16, mode="c", offset=int(offset), shape=(n,)))
    return arr.reshape(size[::-1])  # NIfTI stores x fastest: (z, y, x) == (slice, row, column), as SimpleITK's


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
    hdr = None
    if p.name.lower().endswith((".nii", ".nii.gz")):
        hdr = check_nifti(p)
    else:
        check_text_header(p)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        check_image_information(reader, p)
        plain = _plain_nifti_voxels(p, hdr, reader) if hdr is not None else None
        img = reader.Execute() if plain is None else None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "error" in ln), first[-1] if first else "")
        raise LoadError(f"cannot be read as {format_name(p)}: {detail.strip()}",
                        code="undecodable_pixel_data", path=p) from exc
    if plain is not None:  # a plain .nii: its voxels read directly, its geometry from the same header read
        affine = geo.affine_from_sitk(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())
        if not np.isfinite(affine).all():
            raise GeometryError("has a non-finite origin, spacing or direction", path=p)
        return _volume(p, plain, affine, [])
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
    return _volume(p, arr, affine, warnings)


def _volume(p: Path, arr: np.ndarray, affine: np.ndarray, warnings: list[VolumeWarning]) -> Volume:
    """HU array checks and warnings common to every volume file (non-finite values, dtype, not CT, few slices)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        finite = arr[np.isfinite(arr)]
        fill = float(finite.min()) if finite.size else -1024.0
        arr = np.where(np.isfinite(arr), arr, np.float32(fill)).astype(np.float32)
        warnings.append(VolumeWarning(
            "non_finite_values", f"{n_bad} voxel(s) hold NaN or infinity; they were set to {fill:g} (the "
            "lowest finite value)", {"n_voxels": n_bad, "fill": fill}))
    if arr.dtype == np.int16:
        pass  # already the dtype wanted, whatever its values
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        arr = arr.astype(np.int16, copy=False) if -32768 <= lo and hi <= 32767 else arr.astype(np.float32)
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
