"""File > Open from PACS against a real Orthanc, and opening a study with a stored AI report."""
from __future__ import annotations

import json
import threading

import pytest
from PyQt6 import QtCore, QtWidgets

from sirad_viewer.errors import CancelledError
from sirad_viewer.io.pacs.cache import StudyCache
from tests.io.pacs_fixtures import orthanc, orthanc_server, pacs_studies  # noqa: F401

pytestmark = pytest.mark.qt


@pytest.fixture()
def dialog(qtbot, orthanc, tmp_path):
    from sirad_viewer.qt.app import Settings
    from sirad_viewer.qt.pacs_dialog import PacsDialog

    s = Settings()
    s.set("pacs_nodes", json.dumps([{"name": "local Orthanc", "node": orthanc.dimse_node, "calling_aet": "SIRAD"},
                                    {"name": "local DICOMweb", "node": orthanc.dicomweb_url}]))
    d = PacsDialog(s, cache=StudyCache(tmp_path / "cache", max_bytes=10**8))
    qtbot.addWidget(d)
    d.show()
    return d


def _search(qtbot, d, **fields):
    for k, v in fields.items():
        getattr(d, k).setText(v)
    d.search()
    qtbot.waitUntil(lambda: d.search_btn.isEnabled(), timeout=20000)


@pytest.mark.parametrize("which", [0, 1])
def test_search_lists_studies_with_series_and_retrieves_into_the_cache(dialog, qtbot, pacs_studies, which):
    d = dialog
    d.node_box.setCurrentIndex(which)
    _search(qtbot, d, patient_id="PAT-0001")
    assert d.tree.topLevelItemCount() == 1
    top = d.tree.topLevelItem(0)
    assert top.text(1) == "PAT-0001" and top.childCount() == 2 and top.text(6) == "16"
    assert {top.child(i).text(7) for i in range(2)} == {"2 mm", "5 mm"}
    five = next(top.child(i) for i in range(2) if top.child(i).text(7) == "5 mm")
    d.tree.setCurrentItem(five)  # the 4-image series only
    with qtbot.waitSignal(d.accepted, timeout=20000):
        d.retrieve()
    files = list(d.cache.root.rglob("*.dcm"))
    series_uid = five.data(0, QtCore.Qt.ItemDataRole.UserRole)[1]
    assert len(files) == 4 and d.folder
    assert d.cache.lookup(f"{d.node()}|{series_uid}", pacs_studies["A"]["study_uid"]) is not None


def test_cancel_keeps_nothing(dialog, qtbot, monkeypatch):
    from sirad_viewer.qt import pacs_dialog

    started = threading.Event()

    def slow_retrieve(node, study_uid, out, *, cancel, progress, **kw):  # stands for a long transfer
        started.set()
        while not cancel():
            QtCore.QThread.msleep(20)
        raise CancelledError("retrieve cancelled after 3 of 16 files")

    d = dialog
    _search(qtbot, d, patient_id="PAT-0001")
    d.tree.setCurrentItem(d.tree.topLevelItem(0))
    monkeypatch.setattr(pacs_dialog.pacs, "retrieve", slow_retrieve)
    d.retrieve()
    qtbot.waitUntil(started.is_set, timeout=5000)
    d.cancel_btn.click()
    qtbot.waitUntil(lambda: "cancelled" in d.status.text(), timeout=5000)
    assert d.folder is None and d.isVisible()
    assert not list(d.cache.root.rglob("*.dcm")) and not list(d.cache.root.rglob(".complete"))


def test_dead_node_error_names_it(dialog, qtbot):
    from sirad_viewer.io.pacs.local_orthanc import free_port

    d = dialog
    port = free_port()
    d.node_box.setEditText(f"GONE@127.0.0.1:{port}")
    _search(qtbot, d)
    assert f"GONE@127.0.0.1:{port}" in d.status.text() and "cannot connect" in d.status.text()


def test_viewer_shows_the_stored_result_without_the_model_after_the_lock(qtbot, tmp_path, monkeypatch):
    from sirad_viewer.ai import pipeline
    from sirad_viewer.io.dicom_results import write_ai_objects
    from sirad_viewer.qt.app import MainWindow
    from tests.io.test_dicom_results import _ct_volume, _result

    vol = _ct_volume(tmp_path, dicom=True)  # CT files in tmp_path/src
    write_ai_objects(_result(vol), vol, tmp_path / "src")  # results next to them, as a retrieve leaves them
    monkeypatch.setattr(pipeline.Grader, "__call__", lambda *a, **k: pytest.fail("the model ran"))
    w = MainWindow(interactive=False, with_3d=False)
    w.settings.set("ai_autorun", True)
    qtbot.addWidget(w)
    w.show()
    w.open_path(str(tmp_path / "src"))
    assert w.wait_until_ready(mesh=False), w.info.toPlainText()
    assert "loaded from the stored report" in w.ai_panel.model_label.text()
    assert "9.8.7" in w.ai_panel.model_label.text()
    assert w.reading.ai is None and not w.reading.ai_pending  # there, but hidden until the lock
    assert w.state.overlays.labels is None
    w.reading.set_grade("right", 2)
    w.reading.set_grade("left", 1)
    w.reading.lock()
    qtbot.waitUntil(lambda: w.state.overlays.labels is not None, timeout=5000)
    assert w.reading.ai.model["name"] == "sij-test"
    w.close()


def test_menu_has_open_from_pacs(qtbot):
    from sirad_viewer.qt.app import MainWindow

    w = MainWindow(interactive=False, with_3d=False)
    qtbot.addWidget(w)
    names = [a.text() for m in w.menuBar().findChildren(QtWidgets.QMenu) for a in m.actions()]
    assert "Open from PACS..." in names
