"""Query/retrieve/store against a real Orthanc (DIMSE and DICOMweb), started by the fixtures."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from sirad_viewer.errors import CancelledError
from sirad_viewer.io import pacs
from sirad_viewer.io.pacs import PacsError, Query, parse_node
from sirad_viewer.io.pacs.cache import StudyCache
from sirad_viewer.io.pacs.local_orthanc import free_port
from tests.io.pacs_fixtures import nodes, orthanc, orthanc_server, pacs_studies, small_ct, write_study  # noqa: F401

PROTOCOLS = ("dimse", "dicomweb")


def test_parse_node_keeps_credentials_out_of_text():
    n = parse_node("https://alice:s3cret@pacs.example:8443/dicom-web/", token="tok-123")
    assert n.url == "https://pacs.example:8443/dicom-web" and n.password == "s3cret" and n.username == "alice"
    assert "s3cret" not in str(n) and "s3cret" not in repr(n) and "tok-123" not in repr(n)
    d = parse_node("ORTHANC@10.0.0.5:4242", calling_aet="ME")
    assert (d.aet, d.host, d.port, d.calling_aet) == ("ORTHANC", "10.0.0.5", 4242, "ME")
    for bad in ("ORTHANC@host", "host:4242", "ftp://x/dicom-web", "A@h:99999"):
        with pytest.raises(PacsError) as e:
            parse_node(bad)
        assert e.value.code == "bad_node"
    with pytest.raises(PacsError):
        Query(study_date="2024-01-01")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_echo(orthanc, proto):
    assert pacs.echo(nodes(orthanc)[proto]) < 5


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_find_with_filters(orthanc, pacs_studies, proto):
    node = nodes(orthanc)[proto]
    a = pacs_studies["A"]
    every = pacs.find(node)
    assert {s.patient_id for s in every} == {"PAT-0001", "PAT-0002"}
    (sa,) = pacs.find(node, Query(patient_id="PAT-0001"))
    assert (sa.study_uid, sa.patient_name, sa.study_date, sa.accession, sa.description) == (
        a["study_uid"], "DOE^JANE", "20240105", "ACC-1", "PELVIS CT")
    assert sa.modalities == ["CT"]
    got = {s.series_uid: (s.description, s.modality, s.n_images, s.slice_thickness_mm) for s in sa.series}
    assert got == {s["uid"]: (s["description"], "CT", s["n"], s["thickness"]) for s in a["series"]}
    assert [s.patient_id for s in pacs.find(node, Query(name="DOE*"))] == ["PAT-0001"]
    assert [s.patient_id for s in pacs.find(node, Query(study_date="20230101-20231231"))] == ["PAT-0002"]
    assert [s.patient_id for s in pacs.find(node, Query(accession="ACC-2"))] == ["PAT-0002"]
    assert pacs.find(node, Query(modality="MR")) == []
    assert len(pacs.find(node, Query(modality="CT"))) == 2


@pytest.mark.parametrize("proto,method", [("dimse", "get"), ("dimse", "move"), ("dicomweb", "get")])
def test_retrieve_study_and_series(orthanc, pacs_studies, tmp_path, proto, method):
    node = nodes(orthanc)[proto]
    a = pacs_studies["A"]
    seen = []
    res = pacs.retrieve(node, a["study_uid"], tmp_path / "study", method=method,
                        progress=lambda f, m: seen.append(f))
    assert len(res.files) == res.expected == 16 and seen and seen[-1] == 1.0
    ds = pydicom.dcmread(res.files[0])
    assert (ds.PatientID, str(ds.PatientName)) == ("PAT-0001", "DOE^JANE")  # same patient: identity kept
    one = a["series"][1]
    res = pacs.retrieve(node, a["study_uid"], tmp_path / "series", series_uids=[one["uid"]], method=method)
    assert len(res.files) == 4
    assert {pydicom.dcmread(f).SeriesInstanceUID for f in res.files} == {one["uid"]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_store(orthanc, tmp_path, proto):
    node = nodes(orthanc)[proto]
    c = write_study(tmp_path, "B")  # a new study of patient B
    assert pacs.store(node, [tmp_path / "B"]) == 8
    (found,) = pacs.find(node, Query(study_uid=c["study_uid"]))
    assert found.series[0].n_images == 8 and found.patient_id == "PAT-0002"


def test_refused_association_names_the_node(orthanc):
    node = parse_node(f"WRONGAET@127.0.0.1:{orthanc.dicom_port}", timeout_s=5)
    with pytest.raises(PacsError) as e:
        pacs.echo(node)
    assert e.value.code == "refused" and "WRONGAET@127.0.0.1" in e.value.user_message()


@pytest.mark.parametrize("text", ["DEAD@127.0.0.1:{port}", "http://127.0.0.1:{port}/dicom-web"])
def test_dead_node_fails_fast_and_clearly(text):
    port = free_port()  # nothing listens there
    node = parse_node(text.format(port=port), timeout_s=5, password="pw-secret")
    t = time.perf_counter()
    with pytest.raises(PacsError) as e:
        pacs.find(node)
    assert time.perf_counter() - t < 2.0
    assert e.value.code == "unreachable" and f"127.0.0.1:{port}" in e.value.user_message()
    assert "pw-secret" not in e.value.user_message()


@pytest.mark.parametrize("proto,method", [("dimse", "get"), ("dimse", "move"), ("dicomweb", "get")])
def test_retrieve_cancelled_halfway_keeps_nothing(orthanc, pacs_studies, tmp_path, proto, method):
    node = nodes(orthanc)[proto]
    fractions: list[float] = []
    with pytest.raises(CancelledError):
        pacs.retrieve(node, pacs_studies["A"]["study_uid"], tmp_path / "study", method=method,
                      progress=lambda f, m: fractions.append(f), cancel=lambda: len(fractions) >= 5)
    assert 0 < fractions[-1] < 1  # it was stopped halfway, not before or after
    assert not (tmp_path / "study").exists()
    assert list(tmp_path.iterdir()) == []


def test_partial_retrieve_is_an_error_not_a_study(orthanc, pacs_studies, tmp_path, monkeypatch):
    from sirad_viewer.io.pacs import dimse

    real_get = dimse.get

    def lossy_get(*a, **kw):  # the PACS "succeeds" but one file never arrives
        files = real_get(*a, **kw)
        files[0].unlink()
        return files[1:]

    monkeypatch.setattr(dimse, "get", lossy_get)
    with pytest.raises(PacsError) as e:
        pacs.retrieve(nodes(orthanc)["dimse"], pacs_studies["A"]["study_uid"], tmp_path / "study")
    assert e.value.code == "partial" and "15 of 16" in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_no_patient_identifier_or_password_in_logs(orthanc, pacs_studies, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    n = nodes(orthanc)
    secret = parse_node(orthanc.dicomweb_url, username="u", password="pw-secret-9")  # Orthanc ignores auth
    for node in (n["dimse"], n["dicomweb"], secret):
        pacs.find(node, Query(patient_id="PAT-0001", name="DOE*"))
        pacs.retrieve(node, pacs_studies["A"]["study_uid"], tmp_path / node.protocol.value / str(id(node)))
    pacs.store(n["dimse"], [pacs_studies["B"]["series"][0]["files"][0]])
    assert caplog.records  # something was logged
    for needle in ("PAT-0001", "DOE", "JANE", "PAT-0002", "ROE", "pw-secret-9"):
        assert needle not in caplog.text


def test_cache_keeps_complete_studies_within_its_size_limit(tmp_path):
    cache = StudyCache(tmp_path / "cache", max_bytes=3000)
    for k in range(3):
        d = cache.folder("node", f"1.2.3.{k}")
        (d / "a.dcm").write_bytes(b"x" * 1200)
        cache.mark_complete("node", f"1.2.3.{k}")
        os.utime(d / ".complete", (time.time() + k, time.time() + k))
    cache.enforce_limit()
    assert cache.lookup("node", "1.2.3.0") is None and cache.lookup("node", "1.2.3.2") is not None
    assert cache.size_bytes() <= 3000
    cache.folder("node", "9.9")  # an unfinished retrieve is never handed out
    assert cache.lookup("node", "9.9") is None


def test_cli_find_json_and_get(orthanc, pacs_studies, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    node = orthanc.dimse_node
    run = lambda *a: subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "pacs", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=60)
    r = run("echo", node)
    assert r.returncode == 0, r.stderr
    r = run("find", orthanc.dicomweb_url, "--patient-id", "PAT-0001", "--json")
    assert r.returncode == 0, r.stderr
    (st,) = json.loads(r.stdout)
    assert set(st) == {"study_uid", "patient_id", "patient_name", "study_date", "accession", "description",
                       "modalities", "series"}
    assert set(st["series"][0]) == {"series_uid", "description", "modality", "n_images", "slice_thickness_mm"}
    five = next(se for se in st["series"] if se["slice_thickness_mm"] == 5.0)  # the PACS picks the order
    assert five["n_images"] == 4
    r = run("get", node, "--study", st["study_uid"], "--series", five["series_uid"], "--out", str(tmp_path / "got"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "got").glob("*.dcm"))) == 4
    r = run("echo", f"NOPE@127.0.0.1:{orthanc.dicom_port}")
    assert r.returncode == 2 and "refused" in r.stderr and "NOPE@127.0.0.1" in r.stderr


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_round_trip_results_stored_and_shown_without_the_model(orthanc_server, tmp_path, proto, monkeypatch):
    """Retrieve a CT, write the AI objects, store them back, retrieve the study again: the stored
    result comes back (grades, probabilities, boxes, heatmaps, bone labels) without running the
    model, and stays hidden until the reader locks."""
    import numpy as np

    from sirad_viewer.ai import pipeline
    from sirad_viewer.io import load_series, scan
    from sirad_viewer.io.dicom_results import write_ai_objects
    from sirad_viewer.state.reading import Reading
    from sirad_viewer.state.stored_result import stored_grade_result
    from tests.io.test_dicom_results import _ct_volume, _result

    orthanc_server.clear()
    node = nodes(orthanc_server)[proto]
    src = _ct_volume(tmp_path, dicom=True)
    assert pacs.store(node, [tmp_path / "src"]) == src.shape[0]
    study = src.metadata.study_instance_uid
    case = pacs.retrieve(node, study, tmp_path / "case")
    vol = load_series(scan(case.folder).series[0])
    res = _result(vol)
    files = write_ai_objects(res, vol, tmp_path / "results")
    assert pacs.store(node, [tmp_path / "results"]) == 4  # SR, SEG, two parametric maps
    again = pacs.retrieve(node, study, tmp_path / "again")
    assert len(again.files) == src.shape[0] + 4

    monkeypatch.setattr(pipeline.Grader, "__call__", lambda *a, **k: pytest.fail("the model ran"))
    vol2 = load_series(scan(again.folder).series[scan(again.folder).chosen])
    stored = stored_grade_result(again.files, vol2)
    assert stored is not None and stored.model["name"] == "sij-test" and stored.model["version"] == "9.8.7"
    assert "stored" in stored.device and any("loaded from the stored DICOM report" in w for w in stored.warnings)
    for side in ("right", "left"):
        a, b = res.joints[side], stored.joints[side]
        assert b.grade == a.grade and np.allclose(b.probabilities, a.probabilities)
        assert np.allclose(b.box.center_lps_mm, a.box.center_lps_mm, atol=1e-3)
        assert np.allclose(b.box.size_mm, a.box.size_mm, atol=1e-3)
        assert np.allclose(b.heatmap.full(), a.heatmap.full(), atol=1e-6)
    assert np.array_equal(stored.segmentation.labels, res.segmentation.labels)
    assert stored.patient_positive == res.patient_positive
    # identity: the objects stored back belong to the same patient
    assert all(pydicom.dcmread(f, stop_before_pixels=True).PatientID == "PAT-0001" for f in files.values())
    # grade-first: a stored result is hidden until the lock, like a fresh one
    r = Reading(case="c1")
    r.receive_ai(stored)
    assert r.ai is None
    r.set_grade("right", 1)
    r.set_grade("left", 0)
    r.lock()
    assert r.ai is stored


@pytest.mark.parametrize("text", ["MUTE@127.0.0.1:{port}", "http://127.0.0.1:{port}/dicom-web"])
def test_silent_node_times_out_with_a_clear_error(text):
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # accepts connections (the kernel's backlog) but never answers
    try:
        node = parse_node(text.format(port=srv.getsockname()[1]), timeout_s=1)
        t = time.perf_counter()
        with pytest.raises(PacsError) as e:
            pacs.echo(node)
        assert time.perf_counter() - t < 5
        assert e.value.code == "timeout" and "127.0.0.1" in e.value.user_message()
    finally:
        srv.close()
