"""Labelled phantom datasets in the format the training and evaluation tools read.

``DATA.csv`` columns (the same a site fills in for its real labelled CTs):
``image`` (path, relative to the CSV), ``left`` and ``right`` (grades 0-4), ``site``, ``split``
(train / val / test), plus ``labels`` and ``truth`` for phantoms (bone label map and ground truth).

Grades are balanced: each case draws its left and right grade from a shuffled cycle over 0-4,
so every grade appears about equally often on each side. ``site`` picks a scanner-like profile
(slice thickness, pixel size, noise, reconstruction kernel) to mimic another centre.
"""
from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.phantom.generator import SITE_PROFILES, make_phantom, random_spec, write_phantom

COLUMNS = ["image", "left", "right", "site", "split", "labels", "truth"]


def _split_of(case_id: str, val_fraction: float, test_fraction: float) -> str:
    h = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def _one(args: tuple) -> dict[str, str]:
    out, case_id, seed, left, right, site, matrix, fmt, split = args
    spec = random_spec(seed, left_grade=left, right_grade=right, site=site, matrix=matrix)
    files = write_phantom(make_phantom(spec), Path(out) / "cases" / case_id, fmt=fmt)
    rel = lambda p: str(Path(p).relative_to(out))  # noqa: E731
    return {"image": rel(files["ct"]), "left": str(left), "right": str(right), "site": site, "split": split,
            "labels": rel(files["labels"]), "truth": rel(files["truth"])}


def make_dataset(out: str | Path, n: int, *, site: str = "phantom-A", seed: int = 0, matrix: int | None = 128,
                 fmt: str = "nifti", val_fraction: float = 0.15, test_fraction: float = 0.15,
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                 anatomy: str = "analytic", **atlas_options: Any) -> Path:
    """Write ``n`` phantoms and ``DATA.csv``; returns the CSV path.

    ``anatomy="atlas"`` builds the cases on atlas bones instead (see
    :func:`sirad_viewer.phantom.atlas_dataset.make_atlas_dataset` for ``atlas_options``).
    """
    if anatomy == "atlas":
        from sirad_viewer.phantom.atlas_dataset import make_atlas_dataset

        return make_atlas_dataset(out, n, site=site, seed=seed, fmt=fmt, val_fraction=val_fraction,
                                  test_fraction=test_fraction, workers=workers, progress=progress, **atlas_options)
    if anatomy != "analytic":
        raise ValueError(f"anatomy must be 'analytic' or 'atlas', got {anatomy!r}")
    if site not in SITE_PROFILES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(SITE_PROFILES)}")
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cycle = lambda: rng.permutation(np.tile(np.arange(5), (n + 4) // 5))[:n]  # noqa: E731
    lefts, rights = cycle(), cycle()
    jobs = []
    for i in range(n):
        case_id = f"{site}-{seed}-{i:04d}"
        jobs.append((str(out), case_id, seed * 100_003 + i, int(lefts[i]), int(rights[i]), site, matrix, fmt,
                     _split_of(case_id, val_fraction, test_fraction)))
    return write_cases(out, jobs, _one, COLUMNS, workers=workers, progress=progress)


def write_cases(out: Path, jobs: list, make_one: Callable[[Any], dict[str, str]], columns: Sequence[str], *,
                workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Run ``make_one`` over ``jobs`` (in worker processes when there are several) and write
    ``out/DATA.csv`` with ``columns``; shared by the analytic and the atlas datasets."""
    n = len(jobs)
    rows: list[dict[str, str]] = []
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    if workers == 1 or n == 1:
        for k, job in enumerate(jobs):
            rows.append(make_one(job))
            if progress:
                progress(k + 1, n)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for k, row in enumerate(pool.map(make_one, jobs)):
                rows.append(row)
                if progress:
                    progress(k + 1, n)
    csv_path = Path(out) / "DATA.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    return csv_path
