"""sirad batch end to end on a local Dask cluster: one row per series, a killed worker loses nothing,
a second run adds nothing."""
from __future__ import annotations

import os
import signal
import threading
import time

import psutil

from sirad_viewer.batch.runner import run_batch
from sirad_viewer.batch.store import ResultStore


def _worker_processes() -> list[psutil.Process]:
    """The Dask worker processes of an in-process LocalCluster (spawned children of this process)."""
    return [p for p in psutil.Process().children(recursive=True)
            if any("spawn_main" in part or "multiprocessing" in part for part in p.cmdline())]


def test_batch_with_a_killed_worker_then_rerun(archive, tmp_path):
    root = archive["nifti_a"].parents[1]
    results = tmp_path / "results.sqlite"
    killed: list[int] = []

    def killer() -> None:
        """Once the first case is graded, kill one worker process while the others are in flight."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if results.exists():
                try:
                    if ResultStore(results).rows(status="ok"):
                        break
                except Exception:  # noqa: BLE001 - the table may not exist yet
                    pass
            time.sleep(0.2)
        procs = _worker_processes()
        if procs:
            os.kill(procs[0].pid, signal.SIGKILL)
            killed.append(procs[0].pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    s = run_batch(str(root), str(results), workers=2, memory_limit=None)
    t.join(timeout=5)
    assert killed, "no worker process was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE

    rows = ResultStore(results).rows()
    by_source = {r["source"]: r for r in rows}
    assert len(rows) == len(by_source) == 6  # 3 phantoms, a truncated NIfTI, a truncated DICOM series, a text file
    assert len({r["key"] for r in rows}) == 6
    for k in ("nifti_a", "nifti_b"):
        r = by_source[str(archive[k])]
        assert r["status"] == "ok" and 0 <= r["left_grade"] <= 4 and len(r["right_probabilities"]) == 5
        assert r["model"] and r["model_version"] and r["seconds"] > 0
    d = by_source[str(archive["dicom"].parent)]
    assert d["status"] == "ok" and d["series_uid"] and d["study_uid"]
    assert by_source[str(archive["broken"] / "notes.txt")]["error_code"] == "not_dicom"
    assert by_source[str(archive["broken"] / "truncated.nii.gz")]["error_code"] == "truncated_pixel_data"
    assert by_source[str(archive["broken"])]["error_code"] == "truncated_pixel_data"
    assert s.ok == 3 and s.failed == 3 and not s.cancelled

    again = run_batch(str(root), str(results), workers=2)  # nothing to do: no cluster is even started
    assert again.submitted == 0 and again.already_done == 6
    assert ResultStore(results).count() == 6
    runs = ResultStore(results).run_rows()
    assert [r["state"] for r in runs] == ["finished", "finished"]

    # the report and the export read what the run wrote
    from sirad_viewer.batch.report import write_report
    from sirad_viewer.cli import main

    html = write_report(ResultStore(results), tmp_path / "report.html").read_text()
    positives = [r for r in rows if r["status"] == "ok" and (r["patient_positive"] or r["patient_probability"] >= 0.5)]
    assert html.count("<img ") == 2 * len(positives)  # one oblique coronal thumbnail per joint
    assert "not_dicom" in html and "truncated_pixel_data" in html and "phantom" in html.lower()
    assert main(["batch", "export", str(results), "--out", str(tmp_path / "r.csv")]) == 0
    assert len((tmp_path / "r.csv").read_text().strip().splitlines()) == 1 + 6



def test_rerun_skips_and_retry_failed_retries(tmp_path):
    """Files rejected at discovery need no cluster: a rerun skips them, --retry-failed tries them again."""
    from sirad_viewer.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "readme.txt").write_text("not an image")
    results = tmp_path / "r.sqlite"
    assert main(["batch", str(src), "--out", str(results)]) == 0
    assert [(r["error_code"], r["attempts"]) for r in ResultStore(results).rows()] == [("not_dicom", 1)]
    s = run_batch(str(src), str(results))
    assert s.already_done == 1 and s.failed == 0
    assert ResultStore(results).rows()[0]["attempts"] == 1
    s = run_batch(str(src), str(results), retry_failed=True)
    assert s.failed == 1
    assert [(r["error_code"], r["attempts"]) for r in ResultStore(results).rows()] == [("not_dicom", 2)]
