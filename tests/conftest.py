"""Shared fixtures: the real reference files in ../shared/data, and cached small phantoms."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIRAD_SHARED", ROOT.parent / "shared")) / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"reference data missing in CI: {path}")
        pytest.skip(f"reference data not found: {path} (put ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def real_dicom_dir(shared_data: Path) -> Path:
    return _need(shared_data / "ct" / "totalseg_example_ct_dicom")


@pytest.fixture(scope="session")
def real_nifti(shared_data: Path) -> Path:
    return _need(shared_data / "ct" / "example_ct.nii.gz")


@pytest.fixture(scope="session")
def malformed_dir(shared_data: Path) -> Path:
    return _need(shared_data / "malformed")


_PHANTOMS: dict = {}


@pytest.fixture(scope="session")
def small_phantom():
    """A small phantom factory, cached per (left, right, seed)."""
    from sirad_viewer.phantom import PhantomSpec, make_phantom

    def make(left: int = 0, right: int = 0, seed: int = 0, **kw):
        key = (left, right, seed, tuple(sorted(kw.items())))
        if key not in _PHANTOMS:
            spec = PhantomSpec(left_grade=left, right_grade=right, seed=seed, matrix=kw.pop("matrix", 160),
                               fov_mm=kw.pop("fov_mm", 360.0), slice_thickness_mm=kw.pop("slice_thickness_mm", 2.0),
                               slice_spacing_mm=kw.pop("slice_spacing_mm", 2.0),
                               z_range_mm=kw.pop("z_range_mm", (-80.0, 70.0)), **kw)
            _PHANTOMS[key] = make_phantom(spec)
        return _PHANTOMS[key]

    return make
