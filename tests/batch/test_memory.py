"""A case above the per-worker memory limit fails alone (its worker is terminated by the nanny);
the other cases of the batch are graded."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.batch.store import ResultStore

pytestmark = pytest.mark.slow


def test_case_over_the_memory_limit_fails_alone(archive, tmp_path):
    from sirad_viewer.batch.runner import run_batch
    from sirad_viewer.imaging.geometry import make_affine
    from sirad_viewer.imaging.volume import Volume
    from sirad_viewer.io.export import write_nifti

    # 900 x 512 x 512 int16 = 470 MB in memory (a few MB on disk): the loader alone needs more than the limit
    arr = np.full((900, 512, 512), -1000, dtype=np.int16)
    arr[:, 200:300, 200:300] = 400
    huge = write_nifti(Volume(arr, make_affine([0.0, 0.0, 0.0], np.eye(3), [0.5, 0.5, 0.5])), tmp_path / "huge.nii.gz",
                       sidecar=False)
    del arr
    csv = tmp_path / "cases.csv"
    csv.write_text(f"image\n{huge}\n{archive['nifti_b']}\n")
    s = run_batch(str(csv), str(tmp_path / "r.sqlite"), workers=1, memory_limit="1.2GiB", max_retries=0)
    rows = {r["source"]: r for r in ResultStore(tmp_path / "r.sqlite").rows()}
    assert rows[str(huge)]["status"] == "failed" and rows[str(huge)]["error_code"] == "worker_killed"
    assert "memory" in rows[str(huge)]["message"]
    small = rows[str(archive["nifti_b"])]
    assert small["status"] == "ok", (small["error_code"], small["message"], small["worker"])
    assert s.ok == 1 and s.failed == 1
