"""Fixtures for the PACS tests: a real Orthanc on 127.0.0.1 (started and stopped here) and two
small CT studies written as DICOM with planted fake identities."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sirad_viewer.imaging.volume import SeriesMetadata, Volume
from sirad_viewer.io.export import write_dicom_series
from sirad_viewer.io.pacs.local_orthanc import LocalOrthanc, find_dicomweb_plugin, find_orthanc, free_port

PATIENTS = {
    "A": dict(patient_name="DOE^JANE", patient_id="PAT-0001", study_date="20240105", accession_number="ACC-1",
              study_description="PELVIS CT"),
    "B": dict(patient_name="ROE^RICHARD", patient_id="PAT-0002", study_date="20230510", accession_number="ACC-2",
              study_description="ABDOMEN CT"),
}


def small_ct(n: int, *, thickness: float, seed: int, **meta) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, size=(n, 24, 24)).astype(np.int16)
    aff = np.array([[0, 0, 1.5, -18.0], [0, 1.5, 0, -18.0], [-thickness, 0, 0, 100.0], [0, 0, 0, 1]])
    return Volume(arr, aff, SeriesMetadata(modality="CT", **meta))


def write_study(root: Path, key: str) -> dict:
    """Study ``key``: a 12-slice 2 mm series and a 4-slice 5 mm series (A) or one 8-slice series (B)."""
    from pydicom.uid import generate_uid

    meta = dict(PATIENTS[key], study_instance_uid=str(generate_uid()), frame_of_reference_uid=str(generate_uid()))
    plan = [(12, 2.0, "AX 2mm"), (4, 5.0, "AX 5mm")] if key == "A" else [(8, 3.0, "AX 3mm")]
    series = []
    for k, (n, th, desc) in enumerate(plan):
        uid = str(generate_uid())
        v = small_ct(n, thickness=th, seed=k, series_instance_uid=uid, series_number=str(k + 1), **meta)
        files = write_dicom_series(v, root / key / desc.replace(" ", "_"), deidentify=False,
                                   slice_thickness_mm=th, series_description=desc)
        series.append({"uid": uid, "files": files, "n": n, "thickness": th, "description": desc})
    return {"study_uid": meta["study_instance_uid"], "series": series, **PATIENTS[key]}


@pytest.fixture(scope="session")
def pacs_studies(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pacs-src")
    return {k: write_study(root, k) for k in PATIENTS}


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory):
    if find_orthanc() is None or find_dicomweb_plugin() is None:
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (make system installs it)")
    move_port = free_port()
    srv = LocalOrthanc(modalities={"sirad": ("SIRAD", move_port)}, storage=tmp_path_factory.mktemp("orthanc"))
    srv.move_port = move_port  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def orthanc(orthanc_server, pacs_studies):
    """The server holding exactly the two test studies."""
    orthanc_server.clear()
    for s in pacs_studies.values():
        orthanc_server.upload([f for ser in s["series"] for f in ser["files"]])
    return orthanc_server


def nodes(srv) -> dict:
    from sirad_viewer.io.pacs import parse_node

    return {"dimse": parse_node(srv.dimse_node, move_port=srv.move_port, timeout_s=5),
            "dicomweb": parse_node(srv.dicomweb_url, timeout_s=5)}


__all__ = ["pacs_studies", "orthanc_server", "orthanc", "nodes", "write_study", "small_ct", "PATIENTS", "shutil"]
