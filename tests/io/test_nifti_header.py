"""The NIfTI header fields read with numpy (no nibabel on the ``sirad grade`` path) equal nibabel's."""
from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sirad_viewer.io.volume_headers import nifti_header_fields

nib = pytest.importorskip("nibabel")

FIELDS = ("datatype", "bitpix", "intent_code", "dim", "pixdim", "vox_offset", "scl_slope", "scl_inter")


def _header_bytes(kind: str, order: str) -> bytes:
    cls = nib.Nifti2Image if kind == "nifti2" else nib.Nifti1Image
    rng = np.random.default_rng(1)
    img = cls(rng.normal(size=(7, 5, 3)).astype(np.float32), np.diag([0.8, 0.7, 2.5, 1.0]))
    hdr = img.header
    hdr.set_intent(1002, (), name="")  # a 'statistic' intent: any non-zero value will do
    hdr.set_slope_inter(1.5, -1024.0)
    hdr["vox_offset"] = 352 if kind == "nifti1" else 544
    hdr["pixdim"][4] = 3.25
    if order == ">":
        hdr = hdr.as_byteswapped(">")
    buf = io.BytesIO()
    hdr.write_to(buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["nifti1", "nifti2"])
@pytest.mark.parametrize("order", ["<", ">"])
def test_header_fields_equal_nibabel(kind, order):
    raw = _header_bytes(kind, order)
    ref_cls = nib.Nifti2Header if kind == "nifti2" else nib.Nifti1Header
    ref = ref_cls.from_fileobj(io.BytesIO(raw), check=False)
    got = nifti_header_fields(raw + b"\0" * 200)
    assert got is not None
    assert ref.endianness == order
    for f in FIELDS:
        want = ref[f]
        if f in ("dim", "pixdim"):
            assert got[f] == [float(v) if f == "pixdim" else int(v) for v in want], f
        else:
            assert got[f] == (float(want) if f in ("vox_offset", "scl_slope", "scl_inter") else int(want)), f
    assert got["intent_code"] == 1002 and got["scl_inter"] == -1024.0


def test_short_header_is_none():
    assert nifti_header_fields(b"\x5c\x01\x00\x00" + b"\0" * 100) is None


DEMO_CT = Path(__file__).resolve().parents[2] / "resources" / "demo" / "example_ct.nii.gz"


def test_real_ct_header():
    p = DEMO_CT
    if not p.exists():
        pytest.skip("demo CT not present")
    with gzip.open(p, "rb") as fh:
        raw = fh.read(540)
    ref = nib.load(str(p)).header
    got = nifti_header_fields(raw)
    assert got["dim"] == [int(v) for v in ref["dim"]] and got["datatype"] == int(ref["datatype"])
    assert np.allclose(got["pixdim"], ref["pixdim"])


def test_sirad_grade_import_path_has_no_nibabel_pydicom_scipy_monai():
    """What `sirad grade` imports up to the checked NIfTI header: nothing heavy that it does not use."""
    if not DEMO_CT.exists():
        pytest.skip("demo CT not present")
    code = ("import sys; import sirad_viewer.cli as c; p = c.build_parser(); "
            "from sirad_viewer.ai.pipeline import Grader, find_bundle, write_heatmaps; "
            "from sirad_viewer.io import load_series, scan; from sirad_viewer.ai.totalseg import resolve_segmenter; "
            f"from sirad_viewer.io.volume_headers import check_nifti; check_nifti(__import__('pathlib').Path({str(DEMO_CT)!r})); "
            "bad = [m for m in ('nibabel', 'pydicom', 'requests', 'scipy', 'monai', 'sirad_viewer.phantom.generator')"
            " if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
