"""Benchmark: ``sirad batch`` throughput with 1 and 2 Dask workers on the same phantom set, and the
scaling efficiency (cases/min with 2 workers / (2 x cases/min with 1 worker)).

Throughput counts from the first submitted case to the last written row: cluster start and model
loading (once per worker) are left out, as they are paid once per night, not per case. Each worker
has one torch thread. Run alone: ``python benchmarks/batch.py --cases 8``; ``make bench`` includes it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def phantom_set(n: int, matrix: int = 128) -> Path:
    """``n`` varied phantoms (NIfTI) and their DATA.csv, written once."""
    from sirad_viewer.phantom.dataset import make_dataset

    out = CACHE / f"batch_phantoms_{n}_{matrix}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        print(f"writing {n} phantoms ({matrix} matrix) to {out} (once) ...", flush=True)
        make_dataset(out, n, seed=11, matrix=matrix, workers=1)
        (out / ".complete").write_text("ok")
    return out / "DATA.csv"


def throughput(csv: Path, workers: int) -> tuple[float, float, int]:
    """(cases per minute while grading, median seconds per case, cases graded) on a fresh results store."""
    import statistics

    from sirad_viewer.batch.runner import run_batch
    from sirad_viewer.batch.store import ResultStore

    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "r.sqlite"
        s = run_batch(str(csv), str(res), workers=workers, memory_limit=None)
        secs = [r["seconds"] for r in ResultStore(res).rows(status="ok")]
    if s.failed:
        raise RuntimeError(f"{s.failed} case(s) failed: {s.failures_by_code}")
    return s.cases_per_minute, statistics.median(secs), s.ok


def scaling(n_cases: int = 8) -> list[dict]:
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    csv = phantom_set(n_cases)
    r1, s1, n1 = throughput(csv, 1)
    r2, s2, n2 = throughput(csv, 2)
    eff = r2 / (2 * r1)
    print(f"1 worker: {r1:.1f} cases/min ({n1} cases, median {s1:.2f} s/case); 2 workers: {r2:.1f} cases/min "
          f"(median {s2:.2f} s/case); scaling efficiency {100 * eff:.0f} % on {os.cpu_count()} cores", flush=True)
    return [
        {"name": f"batch grading, {n_cases} phantoms: 1 worker", "ours": round(r1, 1), "baseline": None,
         "baseline_name": "-", "ratio": None, "unit": "cases/min"},
        {"name": f"batch grading, {n_cases} phantoms: 2 workers", "ours": round(r2, 1), "baseline": round(r1, 1),
         "baseline_name": "the same batch on 1 worker", "ratio": round(r2 / r1, 2), "unit": "cases/min"},
        {"name": "batch scaling efficiency, 1 -> 2 workers", "ours": round(100 * eff, 1), "baseline": None,
         "baseline_name": "-", "ratio": None, "unit": "%"},
        {"name": "batch seconds per case (1 worker, median)", "ours": round(s1, 2), "baseline": None,
         "baseline_name": "-", "ratio": None, "unit": "s"},
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    args = ap.parse_args()
    t0 = time.time()
    rows = scaling(args.cases)
    print(json.dumps(rows, indent=2))
    print(f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
