"""A small archive: NIfTI and DICOM phantoms (64 x 64 in-plane, 3 mm slices) plus broken files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def write_phantom_ct(out: Path, *, left: int, right: int, seed: int, fmt: str) -> Path:
    """Only the CT of a phantom (no label map, no truth.json: an archive has neither)."""
    from sirad_viewer.phantom import PhantomSpec, make_phantom, write_phantom

    tmp = out.parent / f".tmp-{out.name}"
    files = write_phantom(make_phantom(PhantomSpec(left_grade=left, right_grade=right, seed=seed, matrix=64,
                                                   slice_thickness_mm=3.0, slice_spacing_mm=3.0)), tmp, fmt=fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    ct = Path(files["ct"])
    target = out if fmt == "dicom" else out.with_suffix("").with_suffix(".nii.gz")
    shutil.move(str(ct), str(target))
    shutil.rmtree(tmp)
    return target


def make_archive(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    p = {
        "nifti_a": write_phantom_ct(root / "patient1" / "ct.nii.gz", left=3, right=2, seed=1, fmt="nifti"),
        "nifti_b": write_phantom_ct(root / "patient2" / "pelvis.nii.gz", left=0, right=0, seed=2, fmt="nifti"),
        "dicom": write_phantom_ct(root / "patient3" / "series1", left=1, right=0, seed=3, fmt="dicom"),
    }
    broken = root / "broken"
    broken.mkdir()
    (broken / "notes.txt").write_text("this is not a DICOM file\n")
    data = p["nifti_a"].read_bytes()
    (broken / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    import pydicom

    ds = pydicom.dcmread(sorted(p["dicom"].iterdir())[5])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()  # a series of its own, cut short on disk
    ds.save_as(broken / "IM_truncated.dcm")
    one = (broken / "IM_truncated.dcm").read_bytes()
    (broken / "IM_truncated.dcm").write_bytes(one[: len(one) - 3000])
    p["broken"] = broken
    return p


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> dict[str, Path]:
    return make_archive(tmp_path_factory.mktemp("archive") / "archive")


from tests.study.test_postgres import pg_url  # noqa: E402,F401 - the same throwaway PostgreSQL server
