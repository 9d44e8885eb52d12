"""Labelled atlas-phantom datasets, split by subject.

Same ``DATA.csv`` as :mod:`.dataset` (``image``, ``left``, ``right``, ``site``, ``split``,
``labels``, ``truth``) plus ``subject`` (atlas id, or ``ssm:SEED`` for a shape-model pelvis) and
``true_left`` / ``true_right`` (the grade the lesions were planted for; ``left`` / ``right`` are
the reference labels, which differ for the stated share of borderline joints).

Subjects are split, not cases: the held-out subjects (``holdout``) appear only in ``test``; a
few more real subjects only in ``val``; ``train`` has the remaining real subjects and new
shapes from a shape model built from those training subjects alone.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.phantom.atlas import list_subjects
from sirad_viewer.phantom.atlas_phantom import DEFAULT_ATLAS, DEFAULT_HOLDOUT, AtlasSpec, make_atlas_phantom
from sirad_viewer.phantom.dataset import COLUMNS, write_cases
from sirad_viewer.phantom.generator import write_phantom
from sirad_viewer.phantom.nuisance import ATLAS_SITES

ATLAS_COLUMNS = COLUMNS + ["subject", "true_left", "true_right"]


def split_subjects(subjects: Sequence[str], holdout: Sequence[str], n_val: int = 4) -> dict[str, list[str]]:
    """Real subjects per split: ``test`` = holdout, ``val`` = ``n_val`` others (fixed by hash), ``train`` = rest."""
    subjects = [str(s) for s in subjects]
    missing = [h for h in holdout if h not in subjects]
    if missing:
        raise ValueError(f"held-out subject(s) {missing} are not in the atlas ({', '.join(subjects)})")
    rest = [s for s in subjects if s not in set(holdout)]
    rest_sorted = sorted(rest, key=lambda s: hashlib.sha256(f"val-{s}".encode()).hexdigest())
    n_val = min(n_val, max(0, len(rest) - 3))
    val = sorted(rest_sorted[:n_val], key=rest.index)
    return {"train": [s for s in rest if s not in val], "val": val, "test": [str(h) for h in holdout]}


def _one(args: tuple) -> dict[str, str]:
    out, case_id, spec, split, fmt = args
    ph = make_atlas_phantom(spec)
    files = write_phantom(ph, Path(out) / "cases" / case_id, fmt=fmt)
    rel = lambda p: str(Path(p).relative_to(out))  # noqa: E731
    g = ph.truth["grades"]
    return {"image": rel(files["ct"]), "left": str(g["left"]), "right": str(g["right"]), "site": spec.site,
            "split": split, "labels": rel(files["labels"]), "truth": rel(files["truth"]), "subject": spec.subject,
            "true_left": str(spec.left_grade), "true_right": str(spec.right_grade)}


def make_atlas_dataset(out: str | Path, n: int, *, site: str = "atlas-mixed", seed: int = 0, fmt: str = "nifti",
                       val_fraction: float = 0.15, test_fraction: float = 0.15, workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None, atlas_dir: str | Path | None = None,
                       holdout_subjects: Sequence[str] | None = None, ssm_share: float = 0.5,
                       crop: str = "pelvis", max_voxels: int | None = 4_000_000, borderline_share: float = 0.1,
                       nuisance: dict[str, Any] | None = None) -> Path:
    """Write ``n`` atlas phantoms and ``DATA.csv`` (split by subject); returns the CSV path."""
    if site not in ATLAS_SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(ATLAS_SITES)}")
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0.0 <= ssm_share <= 1.0:
        raise ValueError(f"ssm share must be 0-1, got {ssm_share}")
    atlas_dir = str(atlas_dir or DEFAULT_ATLAS)
    subjects = list_subjects(atlas_dir)
    holdout = [str(h) for h in (DEFAULT_HOLDOUT if holdout_subjects is None else holdout_subjects)]
    parts = split_subjects(subjects, holdout)
    if not parts["train"]:
        raise ValueError("no training subject left after the held-out and validation subjects")
    not_train = tuple(parts["test"] + parts["val"])  # the shape model sees training subjects only
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cycle = lambda: rng.permutation(np.tile(np.arange(5), (n + 4) // 5))[:n]  # noqa: E731
    lefts, rights = cycle(), cycle()
    jobs = []
    counters = {"train": 0, "val": 0, "test": 0}
    for i in range(n):
        case_id = f"{site}-{seed}-{i:04d}"
        h = int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        split = "test" if h < test_fraction else "val" if h < test_fraction + val_fraction else "train"
        if split == "test" and not parts["test"]:
            split = "train"
        if split == "val" and not parts["val"]:
            split = "train"
        k = counters[split]
        counters[split] += 1
        case_seed = seed * 100_003 + i
        if split == "train" and rng.random() < ssm_share:
            subject = f"ssm:{case_seed}"
        else:
            pool = parts[split]
            subject = pool[k % len(pool)]
        spec = AtlasSpec(left_grade=int(lefts[i]), right_grade=int(rights[i]), seed=case_seed, subject=subject,
                         atlas_dir=atlas_dir, site=site, crop=crop, max_voxels=max_voxels,
                         borderline_share=borderline_share, holdout=not_train, nuisance=dict(nuisance or {}))
        jobs.append((str(out), case_id, spec, split, fmt))
    return write_cases(out, jobs, _one, ATLAS_COLUMNS, workers=workers, progress=progress)
