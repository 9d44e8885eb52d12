"""Discovery: every series of a mixed folder tree, broken files as failed rows with the loader's codes."""
from __future__ import annotations

import pytest

from sirad_viewer.batch.plan import discover
from sirad_viewer.batch.worker import grade_unit
from sirad_viewer.errors import LoadError


def test_folder_tree_every_series_once(archive):
    plan = discover(archive["nifti_a"].parents[1])
    by_source = {u.source: u for u in plan.units}
    assert set(by_source) == {str(archive["nifti_a"]), str(archive["nifti_b"]), str(archive["dicom"].parent),
                              str(archive["broken"] / "truncated.nii.gz"), str(archive["broken"])}
    dicom = by_source[str(archive["dicom"].parent)]
    assert dicom.kind == "dicom" and dicom.key == f"series:{dicom.series_uid}"
    assert by_source[str(archive["nifti_a"])].key.startswith(f"file:{archive['nifti_a']}:")
    assert [(r["source"], r["error_code"]) for r in plan.failed] == [(str(archive["broken"] / "notes.txt"), "not_dicom")]
    assert len({u.key for u in plan.units}) == len(plan.units)


def test_csv_source(archive, tmp_path):
    csv = tmp_path / "DATA.csv"
    csv.write_text(f"image,left\n{archive['nifti_a']},1\n{archive['dicom']},0\n{archive['nifti_a']},1\n"
                   f"{tmp_path / 'gone.nii.gz'},0\n")
    plan = discover(csv)
    assert [u.kind for u in plan.units] == ["file", "dicom"]
    assert plan.duplicates == 1
    assert [r["error_code"] for r in plan.failed] == ["not_found"]


def test_csv_without_image_column(tmp_path):
    (tmp_path / "x.csv").write_text("path\na\n")
    with pytest.raises(LoadError, match="no 'image' column"):
        discover(tmp_path / "x.csv")


def test_broken_series_fail_with_the_loaders_code(archive):
    """In-process (no cluster): the load fails before any model is needed."""
    plan = discover(archive["broken"])
    # A cut-off DICOM file may already be refused by the scan (a failed row of the plan) or by the load.
    rows = {u.source: grade_unit(u) for u in plan.units} | {r["source"]: r for r in plan.failed}
    assert rows[str(archive["broken"] / "truncated.nii.gz")]["error_code"] == "truncated_pixel_data"
    assert rows[str(archive["broken"] / "IM_truncated.dcm")]["error_code"] == "truncated_pixel_data"
    assert all(r["status"] == "failed" and r["message"] for r in rows.values())
