"""The direct read of plain uncompressed NIfTI files gives the same Volume as SimpleITK's full read.

``formats._plain_nifti_voxels`` reads int16 voxels of a plain ``.nii`` straight into an array
(the geometry still comes from SimpleITK's header read); everything else (gzip, scaling,
another byte order or type, 4D) falls back to SimpleITK. Each case is compared with a
reference read by SimpleITK alone.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from sirad_viewer.errors import LoadError
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.io import formats, open_volume

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")


def _write(tmp_path: Path, affine_ras: np.ndarray, name: str = "ct.nii", dtype=np.int16, **patch) -> Path:
    """A small CT-like NIfTI written by nibabel; ``patch`` = {field: (struct format, offset, value)}."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 1800, size=(7, 6, 25)).astype(dtype)  # (x, y, z) on disk
    img = nib.Nifti1Image(data, affine_ras)
    img.header.set_data_dtype(dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    p = tmp_path / name
    nib.save(img, p)
    if patch:
        raw = bytearray(p.read_bytes())
        for fmt, off, value in patch.values():
            struct.pack_into(fmt, raw, off, value)
        p.write_bytes(bytes(raw))
    return p


def _reference(p: Path) -> tuple[np.ndarray, np.ndarray]:
    img = sitk.ReadImage(str(p))
    return sitk.GetArrayFromImage(img), geo.affine_from_sitk(img.GetOrigin(), img.GetSpacing(), img.GetDirection())


def _plain_used(p: Path) -> bool:
    """Whether read_volume_file takes the direct path for ``p``."""
    from sirad_viewer.io.volume_headers import check_nifti

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    return formats._plain_nifti_voxels(p, check_nifti(p), reader) is not None


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


AFFINES = {
    "ras": np.diag([0.8, 0.9, 2.0, 1.0]),
    "lps_stored": np.diag([-0.8, -0.9, 2.0, 1.0]),
    "flipped_slices": np.diag([0.8, 0.9, -2.0, 1.0]),
    "oblique": np.vstack([np.hstack([_rotation(17.0) @ np.diag([0.8, 0.9, 2.0]), [[10.0], [-20.0], [5.0]]]),
                          [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_plain_nifti_reads_as_simpleitk_does(tmp_path, kind):
    p = _write(tmp_path, AFFINES[kind])
    assert _plain_used(p)
    vol = formats.read_volume_file(p)
    arr, aff = _reference(p)
    assert vol.array.dtype == np.int16 and vol.array.flags.c_contiguous and vol.array.flags.writeable
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-9)
    assert [w.code for w in vol.warnings] == []


def test_plain_nifti_keeps_the_not_ct_and_few_slices_warnings(tmp_path):
    p = _write(tmp_path, AFFINES["ras"])
    raw = bytearray(p.read_bytes())
    raw[352:] = np.abs(np.frombuffer(bytes(raw[352:]), np.int16)).astype(np.int16).tobytes()  # nothing below 0
    p.write_bytes(bytes(raw))
    assert _plain_used(p)
    codes = [w.code for w in formats.read_volume_file(p).warnings]
    assert "not_ct" in codes and "few_slices" not in codes  # 25 slices


@pytest.mark.parametrize("slope,inter", [(2.0, -1024.0), (0.5, 0.0), (1.0, 10.0)])
def test_scaled_nifti_falls_back_and_applies_the_scaling(tmp_path, slope, inter):
    p = _write(tmp_path, AFFINES["ras"], slope=("<f", 112, slope), inter=("<f", 116, inter))
    assert not _plain_used(p)
    vol = open_volume(p)
    stored = np.asanyarray(nib.load(p).dataobj.get_unscaled()).transpose(2, 1, 0)
    np.testing.assert_allclose(np.asarray(vol.array, float), stored * slope + inter, atol=1e-3)


def test_zero_slope_means_unscaled_on_both_paths(tmp_path):
    p = _write(tmp_path, AFFINES["ras"], slope=("<f", 112, 0.0))
    assert _plain_used(p)
    arr, _ = _reference(p)
    np.testing.assert_array_equal(formats.read_volume_file(p).array, arr)


def test_big_endian_gzip_float_and_4d_files_fall_back(tmp_path):
    import gzip

    plain = _write(tmp_path, AFFINES["ras"])
    gz = tmp_path / "ct.nii.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    img = nib.load(plain)
    big = tmp_path / "big.nii"
    be = nib.Nifti1Image(np.asarray(img.dataobj).astype(">i2"), img.affine,
                         img.header.as_byteswapped(">") if hasattr(img.header, "as_byteswapped") else None)
    be.header.set_data_dtype(">i2")
    nib.save(be, big)
    flt = _write(tmp_path, AFFINES["ras"], name="f.nii", dtype=np.float32)
    four = tmp_path / "four.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), four)
    ref, _ = _reference(plain)
    for p in (gz, big, flt, four):
        assert not _plain_used(p), p.name
        vol = formats.read_volume_file(p)
        np.testing.assert_array_equal(np.asarray(vol.array, float), ref.astype(float), err_msg=p.name)
    assert nib.load(big).header.endianness == ">"


def test_typed_errors_stay_on_plain_files(tmp_path):
    p = _write(tmp_path, AFFINES["ras"])
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == "truncated_pixel_data"
    q = _write(tmp_path, AFFINES["ras"], name="huge.nii", dim1=("<h", 42, 32767), dim2=("<h", 44, 32767),
               dim3=("<h", 46, 32767))
    with pytest.raises(LoadError) as ei:
        open_volume(q)
    assert ei.value.code == "too_large"


def test_mapped_volume_is_private_and_survives_its_file_being_rewritten(tmp_path):
    """The mapped pixels are copy-on-write, and our writers replace a file by renaming, so exporting
    over the source file neither changes nor cuts a volume already loaded from it."""
    from sirad_viewer.io.export import write_nifti

    p = _write(tmp_path, AFFINES["ras"])
    before = p.read_bytes()
    vol = formats.read_volume_file(p)
    keep = vol.array.copy()
    vol.array[0, 0, 0] += 1  # a private copy of that page: the file is unchanged
    assert p.read_bytes() == before
    vol.array[0, 0, 0] -= 1
    small = vol.with_array(np.zeros((2, 2, 2), np.int16))
    write_nifti(small, p, sidecar=False)  # a 2x2x2 file where the 25-slice one was
    assert formats.read_volume_file(p).shape == (2, 2, 2)
    np.testing.assert_array_equal(vol.array, keep)  # still readable, still the old pixels
    assert not list(tmp_path.glob(".*part*"))
