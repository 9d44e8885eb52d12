"""Exports never carry the planted identity."""
from __future__ import annotations

import numpy as np

from sirad_viewer.io import open_volume
from sirad_viewer.io.deid import deidentify_metadata, remap_uid
from sirad_viewer.io.export import write_dicom_series, write_nifti
from sirad_viewer.phantom import PLANTED_IDENTITY


def all_bytes(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_dicom_export_removes_planted_identity(tmp_path, small_phantom):
    ph = small_phantom(0, 1)
    src = tmp_path / "src"
    write_dicom_series(ph.volume, src, deidentify=False)
    raw = all_bytes(src)
    assert PLANTED_IDENTITY["patient_name"].encode() in raw  # planted on purpose
    vol = open_volume(src)
    out = tmp_path / "export"
    write_dicom_series(vol, out)  # default: de-identified
    data = all_bytes(out)
    for value in PLANTED_IDENTITY.values():
        assert value.encode() not in data
    back = open_volume(out)
    assert np.array_equal(back.array, vol.array)
    assert back.metadata.patient_name == "ANONYMOUS"
    assert back.metadata.series_instance_uid != vol.metadata.series_instance_uid
    assert back.metadata.series_instance_uid == remap_uid(vol.metadata.series_instance_uid)


def test_nifti_export_sidecar_is_deidentified(tmp_path, small_phantom):
    ph = small_phantom(0, 1)
    write_nifti(ph.volume, tmp_path / "ct.nii.gz")
    data = all_bytes(tmp_path)
    for value in PLANTED_IDENTITY.values():
        assert value.encode() not in data


def test_metadata_deidentification_keeps_clinical_geometry_fields(small_phantom):
    meta = small_phantom(0, 0).volume.metadata
    d = deidentify_metadata(meta)
    assert d.patient_name == "ANONYMOUS" and d.patient_birth_date == "" and d.institution_name == ""
    assert d.slice_thickness_mm == meta.slice_thickness_mm and d.modality == "CT"
