"""Writing volumes: NIfTI and CT DICOM series. Every export goes through :mod:`.deid` unless
the caller explicitly keeps identities (the phantom generator writes fake identities on purpose).

Exports never invent acquisition values: an attribute the source did not have (KVP, patient
position, study date and time, body part, ...) is left out or empty, never filled with a
plausible default. Side-cars name no source path.
"""
from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer import __version__
from sirad_viewer.errors import ExportError
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import SeriesMetadata, Volume, resample_to
from sirad_viewer.io.deid import DeidOptions, deidentify_dataset, deidentify_metadata, one_off_key, scrub_paths

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class Compression(str, Enum):
    """Transfer syntax of a written DICOM series."""

    NONE = "none"
    RLE = "rle"
    JPEG2000 = "j2k"
    JPEG_LOSSLESS = "jpeg-ls"


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (same suffix, so writers pick the same format),
    then rename it over ``path``. A volume read from ``path`` may be memory-mapped
    (:func:`sirad_viewer.io.formats.read_volume_file`): writing into that file in place would change
    or cut the pixels under it; a rename leaves the old file with its readers.
    """
    import os

    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name[: len(path.name) - len(suffix)]}.{os.getpid()}.part{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_nifti(volume: Volume, path: str | Path, *, deidentify: bool = True, sidecar: bool = True,
                key: bytes | None = None) -> Path:
    """Write a volume as NIfTI (RAS affine as the format asks) and a JSON side-car.

    The side-car holds the (de-identified) series metadata and the loader's warnings, never the
    source path. With ``key`` (the project's de-identification key) the side-car's UIDs are
    remapped consistently with ``sirad deidentify``; without it they are left out.
    """
    import nibabel as nib

    path = Path(path)
    if not str(path).endswith((".nii", ".nii.gz")):
        path = path.with_name(path.name + ".nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.transpose(volume.array, (2, 1, 0))  # (slice,row,col) -> (x=col, y=row, z=slice)
    img = nib.Nifti1Image(data, geo.affine_to_nifti(volume.affine))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    try:
        _replace_atomically(path, lambda tmp: nib.save(img, str(tmp)))
    except OSError as exc:
        raise ExportError(f"cannot be written: {exc}", path=path) from exc
    if sidecar:
        _write_sidecar(volume, path, deidentify=deidentify, key=key)
    return path


def _write_sidecar(volume: Volume, path: Path, *, deidentify: bool, key: bytes | None) -> None:
    meta = deidentify_metadata(volume.metadata, key=key) if deidentify else volume.metadata
    side = {
        "metadata": meta.to_dict(),
        "warnings": [{**w.to_dict(), "message": scrub_paths(w.message, volume.sources)} if deidentify
                     else w.to_dict() for w in volume.warnings],
        "written_by": f"sirad-viewer {__version__}",
        "deidentified": bool(deidentify),
    }
    sp = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    sp.write_text(json.dumps(side, indent=2))


def write_nifti_block(volume: Volume, block: np.ndarray, offset: Any, path: str | Path, *, deidentify: bool = True,
                      sidecar: bool = True, key: bytes | None = None) -> Path:
    """Write ``block``, the part of ``volume``'s grid that starts at index ``offset`` (slice, row, column),
    as a NIfTI of its own: same voxel size and orientation as the volume, its own origin, so every
    voxel keeps its world position and viewers (3D Slicer, ITK-SNAP, FSLeyes, ours) overlay it on
    the CT. Values are written as they are (no quantisation).

    Used for the heatmaps of ``sirad grade --heatmaps``: writing the whole CT grid (two CT-sized
    float32 .nii.gz, nearly all zeros) cost 1.1-1.6 s on a 512x512x300 CT. Written with SimpleITK,
    which the NIfTI reader has already imported (nibabel costs 0.3-0.8 s of CPU to import); an affine
    SimpleITK cannot hold (sheared: a tilted-gantry series) goes through :func:`write_nifti`.
    """
    block = np.asarray(block)
    o = np.asarray(offset, dtype=float).reshape(3)
    affine = np.array(volume.affine, dtype=float)
    affine[:3, 3] = (np.asarray(volume.affine, dtype=float) @ np.append(o, 1.0))[:3]
    sub = volume.with_array(block, affine)
    path = Path(path)
    if not str(path).endswith((".nii", ".nii.gz")):
        path = path.with_name(path.name + ".nii.gz")
    if not geo.is_orthogonal(affine, tol_deg=1e-4):
        return write_nifti(sub, path, deidentify=deidentify, sidecar=sidecar, key=key)
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(block))  # (slice, row, column) == SimpleITK's (z, y, x)
    origin, spacing, direction = geo.affine_to_sitk(affine)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    try:
        _replace_atomically(path, lambda tmp: sitk.WriteImage(img, str(tmp), useCompression=str(path).endswith(".gz")))
    except (RuntimeError, OSError) as exc:
        raise ExportError(f"cannot be written: {exc}", path=path) from exc
    if sidecar:
        _write_sidecar(sub, path, deidentify=deidentify, key=key)
    return path


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    compression: Compression | str = Compression.NONE,
    deidentify: bool = True,
    key: bytes | None = None,
    deid_options: DeidOptions | None = None,
    slice_thickness_mm: float | None = None,
    series_description: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> list[Path]:
    """Write a volume as a CT Image Storage series, one file per slice.

    Stored values are HU + 1024 as unsigned 16-bit with 12 bits stored (like most scanners;
    HU is clipped to -1024..3071), ``RescaleIntercept`` -1024. An oblique or sheared volume is
    written with its own orientation; the slice axis must be orthogonal to the image plane.

    Parameters
    ----------
    compression : Compression
        ``none`` (explicit VR little endian), ``rle``, ``j2k`` (JPEG 2000 lossless) or
        ``jpeg-ls`` (lossless).
    deidentify : bool
        Pass every data set through :func:`~sirad_viewer.io.deid.deidentify_dataset`. The
        phantom generator turns this off to plant fake identities on purpose.
    key : bytes, optional
        Project de-identification key: UIDs are remapped as ``sirad deidentify`` does. Without
        it a one-off random key is used, so the export links to nothing.
    deid_options : DeidOptions, optional
        Profile options (retain shifted dates, clean descriptions).

    Only values the volume's metadata holds are written; no acquisition value (KVP, patient
    position, dates, body part) is invented. SliceThickness is written only when known.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

    comp = Compression(compression)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not geo.is_orthogonal(volume.affine):
        raise ExportError("a sheared (gantry-tilted) volume cannot be written as DICOM; resample it first", path=out)
    meta: SeriesMetadata = volume.metadata
    dirs = volume.direction
    sp = volume.spacing
    row_dir, col_dir = dirs[2], dirs[1]  # DICOM: along a row = column axis; along a column = row axis
    normal = np.cross(row_dir, col_dir)
    if float(normal @ dirs[0]) < 0:
        # Slices are stacked against the normal: DICOM allows it (positions say where), fine.
        pass
    study_uid = meta.study_instance_uid or _new_uid()
    series_uid = meta.series_instance_uid or _new_uid()
    for_uid = meta.frame_of_reference_uid or _new_uid()
    hu = np.asarray(volume.array)
    stored = np.clip(np.rint(hu.astype(np.float32)) + 1024, 0, 4095).astype(np.uint16)
    tsyntax = {Compression.NONE: ExplicitVRLittleEndian, Compression.RLE: RLELossless,
               Compression.JPEG2000: JPEG2000Lossless, Compression.JPEG_LOSSLESS: JPEGLSLossless}[comp]
    export_key = key or one_off_key()
    paths: list[Path] = []
    n = volume.shape[0]
    for k in range(n):
        sop_uid = _new_uid()
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        fm.MediaStorageSOPInstanceUID = sop_uid
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        fm.ImplementationVersionName = f"SIRAD_{__version__}"[:16]
        ds = Dataset()
        ds.file_meta = fm
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # written by us, not by a scanner
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = meta.study_date  # type 2: empty when the source had none
        ds.StudyTime = ""
        ds.Modality = "CT"
        ds.Manufacturer = meta.manufacturer
        if meta.institution_name:
            ds.InstitutionName = meta.institution_name
        if meta.study_description:
            ds.StudyDescription = meta.study_description
        if series_description or meta.series_description:
            ds.SeriesDescription = series_description or meta.series_description
        ds.PatientName = meta.patient_name
        ds.PatientID = meta.patient_id
        ds.PatientBirthDate = meta.patient_birth_date
        ds.PatientSex = meta.patient_sex
        ds.AccessionNumber = meta.accession_number
        ds.ReferringPhysicianName = ""
        thickness = slice_thickness_mm or meta.slice_thickness_mm
        ds.SliceThickness = f"{thickness:.3f}" if thickness else ""
        ds.KVP = str(meta.extra["kvp"]) if meta.extra.get("kvp") else ""
        if meta.convolution_kernel:
            ds.ConvolutionKernel = meta.convolution_kernel
        # Type 2(C) attributes whose value the source did not give are written empty ("unknown"),
        # never guessed: PatientPosition (General Series, CT) and Laterality (a pelvis CT covers both sides).
        ds.PatientPosition = str(meta.extra.get("patient_position") or "")
        ds.Laterality = ""
        if meta.extra.get("body_part_examined"):
            ds.BodyPartExamined = str(meta.extra["body_part_examined"])
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.SeriesNumber = meta.series_number
        ds.InstanceNumber = str(k + 1)
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        pos = volume.index_to_world([k, 0, 0])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.SliceLocation = f"{float(pos @ normal):.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.PixelSpacing = [f"{sp[1]:.6f}", f"{sp[2]:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "500"
        ds.WindowWidth = "2000"
        for kw, val in (extra_tags or {}).items():
            setattr(ds, kw, val)
        ds.PixelData = stored[k].tobytes()
        if comp is not Compression.NONE:
            try:
                ds.compress(tsyntax, stored[k], encoding_plugin="" if comp is not Compression.JPEG2000 else "pylibjpeg")
            except Exception as exc:  # noqa: BLE001 - encoder plugins raise many types
                raise ExportError(f"{comp.value} compression failed: {exc}", path=out) from exc
        if deidentify:
            ds = deidentify_dataset(ds, key=export_key, options=deid_options)
        p = out / f"IM{k + 1:05d}.dcm"
        try:
            ds.save_as(p, enforce_file_format=True)
        except OSError as exc:
            raise ExportError(f"cannot be written: {exc}", path=p) from exc
        paths.append(p)
        if progress and (k % 16 == 0 or k == n - 1):
            progress((k + 1) / n, f"wrote {k + 1} of {n} slices")
    return paths


__all__ = ["Compression", "write_nifti", "write_dicom_series", "resample_to"]
