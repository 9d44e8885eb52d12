"""--scheduler: a real `dask scheduler` and two `dask worker` processes on 127.0.0.1 take a small batch."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sirad_viewer.batch.store import ResultStore

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).parent / "dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dask_cluster(tmp_path):
    if not os.path.exists(DASK):
        pytest.skip("the dask command is not installed")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "scheduler.log", "w"),
                              start_new_session=True)]
    for i in range(2):
        procs.append(subprocess.Popen([DASK, "worker", addr, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                                       "--no-dashboard", "--memory-limit", "0", "--name", f"w{i}"],
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"worker{i}.log", "w"),
                                      start_new_session=True))
    try:
        from distributed import Client

        with Client(addr, timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)
        yield addr
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_batch_through_an_existing_scheduler(dask_cluster, archive, tmp_path):
    from sirad_viewer.batch.runner import run_batch

    csv = tmp_path / "cases.csv"
    csv.write_text(f"image\n{archive['nifti_b']}\n{archive['dicom']}\n{archive['broken'] / 'truncated.nii.gz'}\n")
    t = time.monotonic()
    s = run_batch(str(csv), str(tmp_path / "r.sqlite"), scheduler=dask_cluster)
    rows = ResultStore(tmp_path / "r.sqlite").rows()
    assert [r["status"] for r in rows].count("ok") == 2 and s.ok == 2
    assert {r["error_code"] for r in rows if r["status"] == "failed"} == {"truncated_pixel_data"}
    assert all(r["worker"].startswith("tcp://127.0.0.1:") for r in rows)
    assert time.monotonic() - t < 300
