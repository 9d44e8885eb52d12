"""sirad batch with a PACS as SOURCE, against a real Orthanc (started by tests/io/pacs_fixtures.py):
one row per series found, each series retrieved by its worker and removed after grading, a rerun
retrieves nothing, a dead or refusing node never stops the batch nor invents rows."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from sirad_viewer.batch.plan import WorkUnit, discover_pacs
from sirad_viewer.batch.runner import run_batch
from sirad_viewer.batch.store import ResultStore
from sirad_viewer.batch.worker import grade_unit
from sirad_viewer.io.pacs import PacsError, Query, parse_node
from sirad_viewer.io.pacs.local_orthanc import free_port
from tests.batch.conftest import write_phantom_ct
from tests.io.pacs_fixtures import orthanc_server  # noqa: F401 - the session's Orthanc


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory) -> dict[str, list[Path]]:
    """Two phantom CT series (64 x 64, 3 mm), as DICOM files, by SeriesInstanceUID."""
    root = tmp_path_factory.mktemp("pacs-phantoms")
    out = {}
    for i, (left, right) in enumerate([(3, 2), (0, 0)]):
        folder = write_phantom_ct(root / f"p{i}" / "series", left=left, right=right, seed=10 + i, fmt="dicom")
        files = sorted(folder.iterdir())
        out[str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)] = files
    return out


@pytest.fixture
def phantom_pacs(orthanc_server, phantom_series):  # noqa: F811
    orthanc_server.clear()
    orthanc_server.upload([f for files in phantom_series.values() for f in files])
    return orthanc_server


def test_pacs_batch_grades_each_series_once_and_cleans_up(phantom_pacs, phantom_series, tmp_path, monkeypatch):
    work_tmp = tmp_path / "worker-tmp"
    work_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(work_tmp))  # the spawned workers' tempfile folder: retrieves land here
    node = parse_node(phantom_pacs.dicomweb_url, timeout_s=10, username="someone", password="pw-secret-42")
    results = tmp_path / "results.sqlite"

    s = run_batch(node, str(results), query=Query(modality="CT"), workers=1, memory_limit=None)
    rows = ResultStore(results).rows()
    assert s.ok == 2 and s.failed == 0 and not s.cancelled
    assert sorted(r["series_uid"] for r in rows) == sorted(phantom_series)
    assert sorted(r["key"] for r in rows) == sorted(f"series:{u}" for u in phantom_series)
    for r in rows:
        assert r["status"] == "ok" and r["study_uid"] and 0 <= r["left_grade"] <= 4 and r["source"] == str(node)
    assert list(work_tmp.iterdir()) == []  # every retrieved series was removed after grading
    assert b"pw-secret-42" not in results.read_bytes()  # credentials never reach the results

    again = run_batch(node, str(results), query=Query(modality="CT"), workers=1, memory_limit=None)
    assert again.submitted == 0 and again.already_done == 2  # nothing submitted, so nothing retrieved
    assert ResultStore(results).count() == 2

    # filters reach the PACS: a date range without these studies finds nothing to grade
    assert discover_pacs(node, Query(study_date="19000101-19000102")).units == []


def test_retrieve_failure_is_a_failed_row_with_the_pacs_code(phantom_pacs, phantom_series):
    plan = discover_pacs(parse_node(phantom_pacs.dimse_node, timeout_s=5))
    assert len(plan.units) == 2
    u = plan.units[0]
    refused = WorkUnit(**{**u.__dict__, "node": parse_node(f"WRONGAET@127.0.0.1:{phantom_pacs.dicom_port}",
                                                           timeout_s=5)})
    dead = WorkUnit(**{**u.__dict__, "node": parse_node(f"DEAD@127.0.0.1:{free_port()}", timeout_s=5)})
    for unit, code in ((refused, "refused"), (dead, "unreachable")):
        row = grade_unit(unit)
        assert row["status"] == "failed" and row["error_code"] == code, row
        assert row["key"] == u.key and row["series_uid"] == u.series_uid


@pytest.mark.parametrize("text", ["DEAD@127.0.0.1:{port}", "http://127.0.0.1:{port}/dicom-web"])
def test_dead_node_is_a_clear_error_and_no_rows(text, tmp_path, capsys):
    from sirad_viewer.cli import main

    source = text.format(port=free_port())  # nothing listens there
    results = tmp_path / "results.sqlite"
    assert main(["batch", source, "--out", str(results), "--modality", "CT", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and source.split("@")[-1].replace("http://", "").split("/")[0] in err
    assert not results.exists()  # no store, no rows invented


def test_filters_without_a_pacs_source_are_refused(tmp_path, capsys):
    from sirad_viewer.cli import main

    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "r.sqlite"), "--modality", "CT"]) == 2
    assert "--modality" in capsys.readouterr().err
    with pytest.raises(PacsError):
        discover_pacs(parse_node(f"DEAD@127.0.0.1:{free_port()}", timeout_s=2))
