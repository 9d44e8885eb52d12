from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Every Qt test gets its own settings file."""
    ini = tmp_path / "settings.ini"
    ini.write_text("[General]\nai_autorun=false\n")  # the AI tests switch it on
    monkeypatch.setenv("SIRAD_SETTINGS", str(ini))
    monkeypatch.setenv("SIRAD_READS", str(tmp_path / "reads.jsonl"))


@pytest.fixture(scope="session")
def phantom_nifti(tmp_path_factory, small_phantom):
    from sirad_viewer.phantom import write_phantom

    ph = small_phantom(0, 3, seed=1)
    out = tmp_path_factory.mktemp("phantom")
    files = write_phantom(ph, out, fmt="nifti")
    return ph, files["ct"]
