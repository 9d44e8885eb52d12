from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Every Qt test gets its own settings file."""
    monkeypatch.setenv("SIRAD_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(scope="session")
def phantom_nifti(tmp_path_factory, small_phantom):
    from sirad_viewer.phantom import write_phantom

    ph = small_phantom(0, 3, seed=1)
    out = tmp_path_factory.mktemp("phantom")
    files = write_phantom(ph, out, fmt="nifti")
    return ph, files["ct"]
