from __future__ import annotations

import contextlib
import os

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


@contextlib.contextmanager
def module_window(qapp, tmp, path=None):
    """A scripted main window (no 3D) with its own settings and reads log under ``tmp`` for a module-scoped
    fixture (the autouse settings above are per test); opens ``path`` when given, restores the environment."""
    from sirad_viewer.qt.app import MainWindow

    old = {k: os.environ.get(k) for k in ("SIRAD_SETTINGS", "SIRAD_READS")}
    (tmp / "settings.ini").write_text("[General]\nai_autorun=false\n")
    os.environ["SIRAD_SETTINGS"] = str(tmp / "settings.ini")
    os.environ["SIRAD_READS"] = str(tmp / "reads.jsonl")
    w = MainWindow(interactive=False, with_3d=False)
    try:
        w.resize(1400, 900)
        w.show()
        if path is not None:
            w.open_path(str(path))
            assert w.wait_until_ready(mesh=False), w.info.toPlainText()
            for _ in range(5):
                qapp.processEvents()
        yield w
    finally:
        w.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
