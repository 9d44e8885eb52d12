"""The first-cut window: loads in the background, shows warnings, writes screenshots."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.qt


def test_screenshot_of_the_demo_case(tmp_path, real_nifti, qapp):
    from PyQt6 import QtGui

    from sirad_viewer.qt.app import MainWindow

    win = MainWindow()
    win.show()
    win.open_path(str(real_nifti))
    win.loaded.exec()
    assert win.view.volume is not None and win.view.volume.shape == (112, 101, 122)
    img = win.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_Grayscale8)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    arr = np.frombuffer(ptr, dtype=np.uint8).reshape(img.height(), img.bytesPerLine())
    assert arr.std() > 20  # a CT slice, not a blank window
    win.close()


def test_broken_file_gives_a_message_not_a_crash(tmp_path, qapp, monkeypatch):
    from sirad_viewer.qt import app as appmod

    shown = []
    monkeypatch.setattr(appmod, "show_error", lambda parent, exc: shown.append(exc))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 200)
    win = appmod.MainWindow()
    win.open_path(str(bad))
    win.loaded.exec()
    assert shown and "bad.dcm" in shown[0].user_message()
    assert "bad.dcm" in win.info.toPlainText()
    win.close()
