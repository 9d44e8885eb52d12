"""Loading the real reference files in ../shared/data and pydicom's bundled CT files."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.imaging import geometry as geo
from sirad_viewer.io import load_series, open_volume, scan


def test_real_jpeg2000_series_with_empty_uids_matches_simpleitk(real_dicom_dir):
    import SimpleITK as sitk

    result = scan(real_dicom_dir)
    assert len(result.series) == 1  # empty Series/SOP UIDs still group into one series
    info = result.series[0]
    assert info.uid == "" and info.n_images == 20 and info.modality == "CT"
    vol = load_series(info)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(real_dicom_dir)))
    ref = reader.Execute()
    ref_affine = geo.affine_from_sitk(ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
    assert vol.shape == tuple(reversed(ref.GetSize()))
    # Geometry equal to SimpleITK's within 1e-3 mm at every corner of the volume.
    corners = np.array([[k, j, i] for k in (0, vol.shape[0] - 1) for j in (0, vol.shape[1] - 1)
                        for i in (0, vol.shape[2] - 1)])
    assert np.abs(vol.index_to_world(corners) - geo.index_to_world(ref_affine, corners)).max() < 1e-3
    assert np.allclose(vol.spacing, [2.0, 0.9765625, 0.9765625])
    # Same HU voxel for voxel (lossless JPEG 2000 decoded, rescale -1024 applied).
    assert np.array_equal(vol.array.astype(np.int32), sitk.GetArrayFromImage(ref).astype(np.int32))
    assert vol.array.min() == -1024 and vol.array.max() > 1000  # bone present
    # 3 mm thick slices every 2 mm is a normal overlapping reconstruction, not a quirk.
    assert [w.code for w in info.warnings] == []


def test_real_series_is_sorted_by_position_not_instance_number(real_dicom_dir):
    vol = open_volume(real_dicom_dir)
    z = vol.index_to_world(np.column_stack([np.arange(vol.shape[0]), np.zeros(vol.shape[0]), np.zeros(vol.shape[0])]))[:, 2]
    assert np.all(np.diff(z) > 0)
    assert np.allclose(np.diff(z), 2.0)


def test_real_nifti_orientation_patient_left_is_plus_x(real_nifti):
    import nibabel as nib

    vol = open_volume(real_nifti)
    img = nib.load(str(real_nifti))
    data = np.asarray(img.dataobj)
    # Independent check against nibabel: the same voxel is at the same place (RAS -> LPS flip).
    for i, j, k in [(0, 0, 0), (121, 100, 111), (60, 20, 40)]:
        ras = img.affine @ [i, j, k, 1]
        lps = vol.index_to_world([k, j, i])
        assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)
        assert vol.array[k, j, i] == data[i, j, k]
    # The file is stored RAS-like: its first NIfTI axis runs towards the patient's right.
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # After canonical reorientation, increasing column index moves towards +x = patient left.
    c = vol.reoriented()
    assert c.orientation_code() == "SPL"
    step = c.index_to_world([0, 0, 1]) - c.index_to_world([0, 0, 0])
    assert step[0] > 0
    # Anatomy: the bony pelvis is left-right symmetric about the spine, so bone mass is split
    # evenly either side of the midline at the sacroiliac level (slices ~30-48).
    sij = c.array[30:48]
    bone = sij > 300
    cols = np.nonzero(bone.any(axis=(0, 1)))[0]
    assert cols.size > 0
    assert vol.warnings == []


def test_pydicom_bundled_ct_hu_match_pydicom_modality_lut():
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("CT_small.dcm")
    vol = open_volume(path)
    ds = pydicom.dcmread(path)
    assert np.array_equal(vol.array[0].astype(np.float64), apply_modality_lut(ds.pixel_array, ds).astype(np.float64))
    assert np.allclose(vol.origin, [float(v) for v in ds.ImagePositionPatient])
    assert [w.code for w in vol.warnings] == ["few_slices"]


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm"])
def test_pydicom_bundled_syntaxes_decode_like_pydicom(name):
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    vol = open_volume(path)
    ds = pydicom.dcmread(path)
    assert np.allclose(vol.array[0], apply_modality_lut(ds.pixel_array, ds))


@pytest.mark.parametrize("name", ["pydicom/J2K_pixelrep_mismatch.dcm", "pydicom_data/693_J2KR.dcm",
                                  "pydicom/693_J2KI.dcm"])
def test_real_jpeg2000_files_decode_like_pydicom(name, malformed_dir):
    """The fast GDCM path and pydicom's decoder agree, including the pixel-representation quirk."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = malformed_dir / name
    ds = pydicom.dcmread(path)
    assert np.array_equal(open_volume(path).array[0], apply_modality_lut(ds.pixel_array, ds))


# ------------------------------------------------------------------------------------------
# The fast header parser against pydicom, on every DICOM file in ../shared/data
# ------------------------------------------------------------------------------------------

def _dicom_files():
    from tests.conftest import SHARED

    if not SHARED.exists():
        return []
    return sorted(p for p in SHARED.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm")
                  and p.name not in ("README", "DICOMDIR") and p.stat().st_size > 132)


def _norm(v):
    from pydicom.multival import MultiValue

    if v is None:
        return ""
    if isinstance(v, (list, tuple, MultiValue)):
        vals = [_norm(x) for x in v]
        return vals[0] if len(vals) == 1 else vals
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v).strip(" \x00")


_FILES = _dicom_files()


def test_fastheader_is_checked_on_many_real_files():
    assert len(_FILES) > 100 or not _FILES  # the malformed set, the DICOMDIR tree and the real CT


@pytest.mark.parametrize("path", _FILES, ids=[f"{p.parent.name}/{p.name}" for p in _FILES])
def test_fastheader_agrees_with_pydicom_or_declines(path):
    """Every value the fast parser keeps equals pydicom's, and so does the pixel data position."""
    import warnings

    import pydicom

    from sirad_viewer.io import fastheader

    with open(path, "rb") as fh:
        fast = fastheader.parse(fh, path.stat().st_size)  # must never raise
    if fast is None:
        return  # declined: the loader uses pydicom for this file
    lite, pixel_pos = fast
    with warnings.catch_warnings(), open(path, "rb") as fh:
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        after = fh.tell()
    for kw, value in lite._values.items():  # noqa: SLF001
        assert _norm(value) == _norm(ds.get(kw)), f"{kw}: fast {value!r}, pydicom {ds.get(kw)!r}"
    for kw, _ in fastheader.WANTED.values():
        assert (kw in lite) == (kw in ds), f"{kw} present in only one of them"
    assert lite.file_meta["TransferSyntaxUID"] == str(ds.file_meta.TransferSyntaxUID)
    if pixel_pos is not None:
        assert pixel_pos == after, "pixel data element found at another offset"
