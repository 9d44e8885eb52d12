"""Every real malformed file gives a clear error or a clear warning, never a crash."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sirad_viewer.errors import LoadError
from sirad_viewer.io import open_volume

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
