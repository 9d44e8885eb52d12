"""Every real malformed file gives a clear error or a clear warning, never a crash."""
from __future__ import annotations

import subprocess
import time
import sys
from pathlib import Path

import pytest

from sirad_viewer.errors import LoadError
from sirad_viewer.io import open_volume, scan

from tests.conftest import SHARED

MALFORMED = SHARED / "malformed"
FILES = sorted(p for p in MALFORMED.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")
               and p.name != "README.txt") if MALFORMED.exists() else []

ERROR_CODES = {"truncated_pixel_data", "not_dicom", "undecodable_pixel_data", "no_image", "unsupported"}

#: What a reader must be told about specific files (the rest: any clear error or a loadable volume).
EXPECTED = {
    "MR_truncated.dcm": "truncated_pixel_data",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated_pixel_data",
    "SC_rgb_small_odd.dcm": "unsupported",
    "GDCMJ2K_TextGBR.dcm": "unsupported",
    "OT-PAL-8-face.dcm": "unsupported",
    "rtplan_truncated.dcm": "no_image",
    "UN_sequence.dcm": "no_image",
    "JPEG2000-embedded-sequence-delimiter.dcm": "undecodable_pixel_data",
    "no_meta.dcm": "not_dicom",
}
LOADS = {"CT_small.dcm", "693_J2KR.dcm", "693_UNCR.dcm", "eCT_Supplemental.dcm", "MR_small_padded.dcm",
         "image_dfl.dcm", "J2K_pixelrep_mismatch.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm"}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_malformed_file_gives_clear_error_or_warning(path: Path, malformed_dir):
    try:
        vol = open_volume(path)
    except LoadError as exc:
        assert exc.code in ERROR_CODES, exc.code
        assert exc.path and Path(exc.path).name == path.name, "the message must name the file"
        assert len(exc.message) > 15
        if path.name in EXPECTED:
            assert exc.code == EXPECTED[path.name], exc.user_message()
        assert path.name not in LOADS, f"{path.name} should load: {exc.user_message()}"
        return
    assert path.name not in EXPECTED, f"{path.name} should fail with {EXPECTED.get(path.name)}"
    assert vol.array.size > 0
    # A single slice is always flagged: it cannot be read as a 3D joint.
    codes = {w.code for w in vol.warnings}
    assert "few_slices" in codes


def test_lossy_jpeg_is_flagged(malformed_dir):
    vol = open_volume(malformed_dir / "pydicom" / "693_J2KI.dcm")
    assert "lossy_compression" in {w.code for w in vol.warnings}


def test_enhanced_multiframe_ct_has_per_frame_geometry(malformed_dir):
    vol = open_volume(malformed_dir / "pydicom_data" / "eCT_Supplemental.dcm")
    assert vol.shape == (2, 512, 512)
    assert vol.metadata.modality == "CT"
    assert vol.array.min() < -500  # rescale from the functional groups applied (air in HU)


@pytest.mark.parametrize("name,code", [("pydicom/MR_truncated.dcm", "truncated_pixel_data"),
                                       ("pydicom/SC_rgb_small_odd.dcm", "unsupported")])
def test_cli_info_reports_one_line_and_exit_2(name, code, malformed_dir):
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "info", str(malformed_dir / name)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and Path(name).name in lines[0]
    assert "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------
# Hostile headers (issue 12): each outcome is a typed error, or a valid volume whose repairs are
# named in its warnings. Cases that could crash, hang or exhaust memory run in a limited worker.
# ------------------------------------------------------------------------------------------

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.dataelem import DataElement  # noqa: E402

from sirad_viewer.imaging import geometry as geo  # noqa: E402


def _ct_small(tmp_path, name="ct.dcm", **attrs) -> Path:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for kw, value in attrs.items():
        tag = pydicom.datadict.tag_for_keyword(kw)
        if isinstance(value, str) or isinstance(value, list):  # raw text, even where invalid
            value = "\\".join(value) if isinstance(value, list) else value
            ds[tag] = DataElement(tag, "LO", value)
        else:
            setattr(ds, kw, value)
    out = tmp_path / name
    ds.save_as(out, enforce_file_format=False)
    return out


@pytest.fixture(scope="module")
def isolated():
    from tests.io.fuzzlib import Runner

    r = Runner(timeout_s=30)
    yield r
    r.close()


@pytest.mark.parametrize("attrs,code", [
    ({"RescaleSlope": "abc"}, "bad_header"),                  # was ValueError
    ({"RescaleSlope": "inf"}, "bad_header"),                  # loaded as +-inf HU
    ({"RescaleIntercept": "nan"}, "bad_header"),
    ({"Rows": 0}, "bad_header"),                              # was TypeError
    ({"PixelSpacing": ["0", "0"]}, "bad_geometry"),           # loaded with zero spacing
    ({"ImageOrientationPatient": ["1", "0", "0", "1", "0", "0"]}, "bad_geometry"),
    ({"BitsAllocated": 8}, "bad_header"),                     # 16-bit data read as 8-bit: wrong image
])
def test_hostile_header_values_are_typed_errors(tmp_path, attrs, code):
    p = _ct_small(tmp_path, **attrs)
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == code, ei.value.user_message()
    assert ei.value.path and ei.value.path.endswith("ct.dcm")


def test_negative_pixel_spacing_is_repaired_with_a_warning_not_mirrored(tmp_path):
    good = open_volume(_ct_small(tmp_path, "good.dcm"))
    vol = open_volume(_ct_small(tmp_path, PixelSpacing=["-0.661468", "-0.661468"]))
    assert "negative_spacing" in {w.code for w in vol.warnings}
    assert np.allclose(vol.affine, good.affine) and np.array_equal(vol.array, good.array)
    assert np.all(geo.affine_spacing(vol.affine) > 0)


def test_parallel_orientation_does_not_drop_slices_as_duplicates(tmp_path):
    from tests.io.test_quirks import edit, write

    _, files = write(tmp_path)
    for f in files:
        edit(f, ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    with pytest.raises(LoadError) as ei:
        open_volume(tmp_path)
    assert ei.value.code == "bad_geometry" and "orientation" in ei.value.message


def test_slice_a_kilometre_away_is_refused_before_allocating(tmp_path):
    from tests.io.test_quirks import edit, write

    _, files = write(tmp_path)
    edit(files[-1], ImagePositionPatient=[-20.0, -15.0, 1e6])
    # Planning alone used to promise a (500000, 32, 40) grid (24 GiB once read).
    with pytest.raises(LoadError) as ei:
        scan(tmp_path)
    assert ei.value.code in ("too_large", "bad_geometry"), ei.value.user_message()
    assert "IM00024" in ei.value.path


def test_huge_number_of_frames_is_refused_quickly(tmp_path, isolated):
    p = _ct_small(tmp_path, NumberOfFrames="2147483647")
    t0 = time.monotonic()
    res = isolated.run(p)
    assert res["outcome"] == "typed_error" and res["detail"] in ("too_large", "bad_header"), res
    assert time.monotonic() - t0 < 30


def test_rle_decoder_panic_is_a_typed_error(tmp_path):
    from pydicom.data import get_testdata_file

    raw = bytearray(Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes())
    assert raw[2266] == 0
    raw[2266] = 130  # one byte of an RLE segment: the Rust decoder panics (index out of bounds)
    p = tmp_path / "rle.dcm"
    p.write_bytes(bytes(raw))
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == "undecodable_pixel_data"


def _nifti(tmp_path, name="v.nii", **header) -> Path:
    import nibabel as nib

    arr = (np.arange(6 * 10 * 12, dtype=np.int16).reshape(12, 10, 6) - 500)
    img = nib.Nifti1Image(arr, np.diag([-0.8, -0.8, 2.0, 1.0]))
    p = tmp_path / name
    nib.save(img, p)
    if header:
        import struct as st

        b = bytearray(p.read_bytes())
        for field_name, (fmt, off, value) in header.items():
            st.pack_into(fmt, b, off, value)
        p.write_bytes(bytes(b))
    return p


def test_nifti_complex_vector_datatype_is_refused_not_a_segfault(tmp_path, isolated):
    p = _nifti(tmp_path, datatype=("<h", 70, 1792), bitpix=("<h", 72, 128), intent=("<h", 68, 1007))
    res = isolated.run(p)
    assert res == {"outcome": "typed_error", "detail": "unsupported"}, res


def test_truncated_nifti_is_an_error_not_zeros(tmp_path):
    p = _nifti(tmp_path)
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == "truncated_pixel_data"


def test_over_declared_nifti_is_an_error_not_zeros(tmp_path):
    p = _nifti(tmp_path, dim3=("<h", 46, 9))  # 9 slices declared, 6 stored
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == "truncated_pixel_data"


def test_truncated_nifti_gz_is_an_error(tmp_path):
    import gzip

    p = _nifti(tmp_path)
    gz = tmp_path / "v.nii.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()[:-300]))
    with pytest.raises(LoadError) as ei:
        open_volume(gz)
    assert ei.value.code == "truncated_pixel_data"


def test_handled_decoder_error_prints_one_line_and_no_library_traceback(tmp_path):
    from pydicom.data import get_testdata_file

    raw = bytearray(Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes())
    raw[2197] = 8  # RLE segment length wrong: every decoder plugin fails
    p = tmp_path / "rle.dcm"
    p.write_bytes(bytes(raw))
    r = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "info", str(p)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "rle.dcm" in lines[0], r.stderr
    # -v shows what the libraries said, tracebacks included.
    r = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "-v", "info", str(p)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" in r.stderr and "pydicom" in r.stderr


def _mha(tmp_path, name="v.mha") -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray((np.arange(6 * 10 * 12, dtype=np.int16).reshape(6, 10, 12) - 500))
    p = tmp_path / name
    sitk.WriteImage(img, str(p), False)
    return p


def test_metaimage_with_absurd_ndims_is_refused_not_an_abort(tmp_path, isolated):
    p = _mha(tmp_path)
    data = p.read_bytes().replace(b"NDims = 3", b"NDims = 100000", 1)  # ITK aborted (SIGABRT)
    p.write_bytes(data)
    res = isolated.run(p)
    assert res["outcome"] == "typed_error", res


def test_metaimage_data_file_outside_its_folder_is_not_read(tmp_path):
    (tmp_path / "case").mkdir()
    p = _mha(tmp_path / "case", "v.mhd")
    raw = [f for f in (tmp_path / "case").iterdir() if f.suffix == ".raw"][0]
    text = p.read_text().replace(f"ElementDataFile = {raw.name}", "ElementDataFile = /dev/zero")
    p.write_text(text)
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert "outside" in ei.value.message
    p.write_text(text.replace("/dev/zero", raw.name))
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == "truncated_pixel_data"


def test_unknown_value_representation_is_a_header_error(tmp_path, malformed_dir):
    """Found by fuzzing: a flipped VR made pydicom raise NotImplementedError on first access."""
    raw = (malformed_dir / "pydicom_data" / "693_J2KR.dcm").read_bytes()
    tag = b"\x28\x00\x52\x10DS"  # RescaleIntercept, explicit VR little endian
    assert raw.count(tag) == 1
    p = tmp_path / "vr.dcm"
    p.write_bytes(raw.replace(tag, b"\x28\x00\x52\x10TS"))
    with pytest.raises(LoadError) as ei:
        open_volume(p)
    assert ei.value.code == "bad_header" and "Value Representation" in ei.value.message


def test_deflated_data_set_is_bounded_before_pydicom_inflates_it(malformed_dir, monkeypatch):
    from sirad_viewer.io import limits

    path = malformed_dir / "pydicom" / "image_dfl.dcm"
    assert open_volume(path).array.size > 0  # within the limit it loads
    monkeypatch.setattr(limits, "MAX_DEFLATED_BYTES", 10_000)  # a deflate bomb in miniature
    with pytest.raises(LoadError) as ei:
        open_volume(path)
    assert ei.value.code == "too_large" and "deflated" in ei.value.message
