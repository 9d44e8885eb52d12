"""File > Open worklist: reading order, one key press per case, read marks, grade-first, not in studies."""
from __future__ import annotations

import pytest
from PyQt6 import QtCore, QtWidgets

from sirad_viewer.batch.store import ResultStore

pytestmark = pytest.mark.qt


@pytest.fixture()
def window(qtbot):
    from sirad_viewer.qt.app import MainWindow

    win = MainWindow(interactive=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()


@pytest.fixture()
def results(tmp_path, small_phantom):
    from sirad_viewer.phantom import write_phantom

    ct_a = write_phantom(small_phantom(0, 1, seed=3, matrix=64), tmp_path / "a", fmt="nifti")["ct"]
    ct_b = write_phantom(small_phantom(2, 2, seed=4, matrix=64), tmp_path / "b", fmt="nifti")["ct"]
    store = ResultStore(tmp_path / "results.sqlite")
    for key, src, p, date in (("file:a", ct_a, 0.35, "20240101"), ("file:b", ct_b, 0.92, "20230101")):
        store.put({"key": key, "source": str(src), "status": "ok", "patient_probability": p, "study_date": date,
                   "series_description": key, "left_grade": 2, "right_grade": 2, "patient_positive": p > 0.5})
    store.put({"key": "file:c", "source": str(tmp_path / "broken"), "status": "failed", "error_code": "not_dicom"})
    return tmp_path / "results.sqlite", str(ct_a), str(ct_b)


def test_worklist_orders_opens_and_marks_read(window, results, qtbot):
    from sirad_viewer.qt.worklist import open_worklist

    path, ct_a, ct_b = results
    panel = open_worklist(window, str(path))
    qtbot.waitUntil(window.worklist_dock.isVisible)
    assert [e.source for e in panel.worklist.entries] == [ct_b, ct_a]  # likely positive first; failures left out
    headers = [panel.table.horizontalHeaderItem(i).text() for i in range(panel.table.columnCount())]
    assert not any("prob" in h.lower() or "grade" in h.lower() for h in headers)  # the order, not the AI's numbers

    panel.table.setFocus()
    qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_Return)  # one key press opens the case
    assert window.wait_until_ready(timeout_ms=60_000)
    assert window.volume is not None and window.volume.sources[0] == ct_b
    assert window.reading is not None and not window.reading.locked  # grade-first, as for any opened case
    assert window._shown_result is None  # noqa: SLF001 - the AI result is not shown before the reader's grade

    qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_M)
    assert ResultStore(path).rows(status="ok")[1]["read_at"]  # 'file:b' is the second row written
    qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_N)  # the next unread case
    assert window.wait_until_ready(timeout_ms=60_000)
    assert window.volume.sources[0] == ct_a

    panel.sort.setCurrentIndex(1)  # by study date, newest first
    assert [e.source for e in panel.worklist.entries] == [ct_a, ct_b]


def test_worklist_is_not_offered_in_a_reader_study(window, results, monkeypatch):
    from sirad_viewer.qt.worklist import open_worklist

    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "information", lambda *a, **k: shown.append(a[2]))
    from types import SimpleNamespace

    window.study = SimpleNamespace(close=lambda: None)  # any study controller: reader-study mode
    try:
        assert open_worklist(window, str(results[0])) is None
    finally:
        window.study = None
    assert getattr(window, "worklist_dock", None) is None
    assert "reader study" in shown[0]
