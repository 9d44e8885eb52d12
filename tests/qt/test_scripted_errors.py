"""A scripted (non-interactive) window never opens a modal box: under Xvfb nobody clicks it.

`sirad-viewer /no/such.nii.gz --screenshot x.png` hung for good behind a hidden message box
instead of exiting with the error.
"""
from __future__ import annotations

import time

import pytest
from PyQt6 import QtCore, QtWidgets

pytestmark = pytest.mark.qt


def test_load_error_in_a_scripted_window_returns_without_a_modal_box(qapp, tmp_path):
    from sirad_viewer.qt.app import MainWindow

    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 40)
    w = MainWindow(interactive=False, with_3d=False)
    w.show()
    seen = []

    def close_modal() -> None:  # what a user would have to do; recorded so the test fails instead of hanging
        m = QtWidgets.QApplication.activeModalWidget()
        if m is not None:
            seen.append(type(m).__name__)
            m.close()

    timer = QtCore.QTimer()
    timer.timeout.connect(close_modal)
    timer.start(500)
    try:
        t0 = time.monotonic()
        w.open_path(str(bad))
        assert not w.wait_until_ready(timeout_ms=30_000, mesh=False)
        assert seen == [] and time.monotonic() - t0 < 20
        assert "cut.nii.gz" in w.info.toPlainText()
    finally:
        timer.stop()
        w.close()


def test_a_scripted_run_on_a_missing_file_says_it_once(tmp_path):
    # the error was printed twice (the log line and the run's own line), the second with the path twice
    import os
    import subprocess
    import sys

    missing = tmp_path / "no_such_ct.nii.gz"
    p = subprocess.run([sys.executable, "-m", "sirad_viewer", str(missing), "--screenshot", str(tmp_path / "x.png")],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert p.returncode == 2
    err = p.stderr.strip()
    assert err.count("no_such_ct.nii.gz") == 1 and "does not exist" in err, err
    assert len(err.splitlines()) == 1, err
