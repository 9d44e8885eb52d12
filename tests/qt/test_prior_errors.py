"""A prior that cannot be opened leaves the current case alone and does not hang ``wait``."""
from __future__ import annotations

import time

import pytest

from tests.qt.test_reading_tools import win  # noqa: F401 - the module's loaded window

pytestmark = pytest.mark.qt


def test_bad_prior_is_reported_without_touching_the_current_case(win, tmp_path):  # noqa: F811
    bad = tmp_path / "prior.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 40)
    info = win.info.toPlainText()
    vol = win.state.volume
    failed = []
    win.load_failed.connect(failed.append)
    try:
        t0 = time.monotonic()
        win.reading_tools.prior.open(str(bad))
        assert not win.reading_tools.prior.wait(timeout_s=20)
        assert time.monotonic() - t0 < 10  # returned on the error, not at the timeout
        assert failed == [] and win.state.volume is vol and win.info.toPlainText() == info
        assert "prior not opened" in win.statusBar().currentMessage()
        assert "prior.nii.gz" in win.statusBar().currentMessage()
    finally:
        win.load_failed.disconnect(failed.append)
