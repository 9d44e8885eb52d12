"""File > Open from PACS: configured nodes, search, a study list with its series, retrieve with
progress and Cancel into a local cache with a size limit, then the loader's usual series choice.

All the work is in :mod:`sirad_viewer.io.pacs` (find, retrieve, cache); this widget gathers input,
runs it in a worker and shows the result. Nodes come from the settings key ``pacs_nodes`` (JSON
list of ``{"name", "node", "calling_aet", "move_port"}``); passwords and tokens come from
``$SIRAD_PACS_PASSWORD``/``$SIRAD_PACS_TOKEN`` and are never shown or logged.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from PyQt6 import QtCore, QtWidgets

from sirad_viewer.errors import SiradError
from sirad_viewer.io import pacs
from sirad_viewer.io.pacs.cache import StudyCache
from sirad_viewer.qt import workers

log = logging.getLogger(__name__)


def configured_nodes(settings: Any) -> list[dict[str, Any]]:
    try:
        items = json.loads(settings.get("pacs_nodes", "[]"))
        return [dict(i) for i in items if isinstance(i, dict) and i.get("node")]
    except (TypeError, ValueError):
        return []


def default_cache(settings: Any) -> StudyCache:
    root = settings.get("pacs_cache_dir", "") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sirad-viewer" / "pacs")
    gb = float(settings.get("pacs_cache_gb", 20))
    return StudyCache(root, max_bytes=int(gb * 1024**3))


class PacsDialog(QtWidgets.QDialog):
    """Search a PACS and retrieve a study; ``folder`` holds the retrieved study when accepted."""

    def __init__(self, settings: Any, parent: QtWidgets.QWidget | None = None, *,
                 cache: StudyCache | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open from PACS")
        self.resize(900, 560)
        self.settings = settings
        self.cache = cache or default_cache(settings)
        self.folder: str | None = None
        self.studies: list[pacs.StudyInfo] = []
        self._worker: workers.Worker | None = None

        lay = QtWidgets.QVBoxLayout(self)
        form = QtWidgets.QFormLayout()
        self.node_box = QtWidgets.QComboBox()
        self.node_box.setEditable(True)
        for n in configured_nodes(settings):
            self.node_box.addItem(f"{n.get('name') or n['node']}", n)
        self.node_box.setToolTip("a configured node, or type http[s]://host:port/dicom-web or AET@host:port")
        form.addRow("PACS", self.node_box)
        row = QtWidgets.QHBoxLayout()
        self.patient_id = QtWidgets.QLineEdit(placeholderText="patient ID")
        self.name = QtWidgets.QLineEdit(placeholderText="name (* wildcard)")
        self.date = QtWidgets.QLineEdit(placeholderText="YYYYMMDD-YYYYMMDD")
        self.modality = QtWidgets.QLineEdit(placeholderText="modality", maxLength=16)
        self.accession = QtWidgets.QLineEdit(placeholderText="accession")
        for w in (self.patient_id, self.name, self.date, self.modality, self.accession):
            row.addWidget(w)
            w.returnPressed.connect(self.search)
        self.search_btn = QtWidgets.QPushButton("Search")
        self.search_btn.clicked.connect(self.search)
        row.addWidget(self.search_btn)
        form.addRow("Find", row)
        lay.addLayout(form)

        self.tree = QtWidgets.QTreeWidget()
        self.tree.setHeaderLabels(["patient / series", "patient ID", "date", "accession", "description",
                                   "modality", "images", "thickness"])
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.tree.itemDoubleClicked.connect(lambda *_: self.retrieve())
        lay.addWidget(self.tree, 1)

        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        bottom = QtWidgets.QHBoxLayout()
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        bottom.addWidget(self.progress, 1)
        self.retrieve_btn = QtWidgets.QPushButton("Retrieve and open")
        self.retrieve_btn.setEnabled(False)
        self.retrieve_btn.clicked.connect(self.retrieve)
        self.cancel_btn = QtWidgets.QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        bottom.addWidget(self.retrieve_btn)
        bottom.addWidget(self.cancel_btn)
        lay.addLayout(bottom)

    # --- logic calls -------------------------------------------------------------------------
    def node(self) -> pacs.Node:
        data = self.node_box.currentData()
        text = self.node_box.currentText().strip()
        if isinstance(data, dict) and text == (data.get("name") or data["node"]):
            return pacs.parse_node(data["node"], calling_aet=data.get("calling_aet", "SIRAD"),
                                   move_port=int(data.get("move_port", 0) or 0), name=data.get("name", ""),
                                   username=os.environ.get("SIRAD_PACS_USER", ""),
                                   password=os.environ.get("SIRAD_PACS_PASSWORD", ""),
                                   token=os.environ.get("SIRAD_PACS_TOKEN", ""))
        return pacs.parse_node(text)

    def _run(self, fn, on_done, message: str) -> None:
        self.status.setText(message)
        self.progress.setValue(0)
        self.search_btn.setEnabled(False)
        self.retrieve_btn.setEnabled(False)
        self._worker = workers.start(fn, on_done=on_done, on_error=self._failed,
                                     on_progress=lambda f, m: (self.progress.setValue(int(100 * f)),
                                                               self.status.setText(m)))

    def search(self) -> None:
        try:
            node = self.node()
            q = pacs.Query(patient_id=self.patient_id.text().strip(), name=self.name.text().strip(),
                           study_date=self.date.text().strip(), modality=self.modality.text().strip(),
                           accession=self.accession.text().strip())
        except SiradError as exc:
            self._failed(exc)
            return
        self._run(lambda progress, cancel: pacs.find(node, q), self._found, f"searching {node} ...")

    def _found(self, studies: list) -> None:
        self.studies = studies
        self.tree.clear()
        for s in studies:
            top = QtWidgets.QTreeWidgetItem([s.patient_name, s.patient_id, s.study_date, s.accession, s.description,
                                             "/".join(s.modalities), str(sum(x.n_images or 0 for x in s.series)), ""])
            top.setData(0, QtCore.Qt.ItemDataRole.UserRole, (s.study_uid, None))
            for se in s.series:
                th = f"{se.slice_thickness_mm:g} mm" if se.slice_thickness_mm else "?"
                child = QtWidgets.QTreeWidgetItem([se.description or "(no description)", "", "", "", "",
                                                   se.modality, str(se.n_images or "?"), th])
                child.setData(0, QtCore.Qt.ItemDataRole.UserRole, (s.study_uid, se.series_uid))
                top.addChild(child)
            self.tree.addTopLevelItem(top)
            top.setExpanded(True)
        self.tree.resizeColumnToContents(0)
        self.search_btn.setEnabled(True)
        self.progress.setValue(100)
        self.status.setText(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} found")

    def _selection_changed(self) -> None:
        self.retrieve_btn.setEnabled(bool(self.tree.selectedItems()) and self._idle())

    def _idle(self) -> bool:
        return self._worker is None or self._worker.finished.is_set()

    def retrieve(self) -> None:
        items = self.tree.selectedItems()
        if not items or not self._idle():
            return
        study_uid, series_uid = items[0].data(0, QtCore.Qt.ItemDataRole.UserRole)
        try:
            node = self.node()
        except SiradError as exc:
            self._failed(exc)
            return
        key = f"{node}|{series_uid or ''}"
        hit = self.cache.lookup(key, study_uid)
        if hit is not None:
            self.status.setText("opened from the local cache")
            self._retrieved(str(hit))
            return
        folder = self.cache.folder(key, study_uid)

        def job(progress, cancel):
            pacs.retrieve(node, study_uid, folder, series_uids=[series_uid] if series_uid else None,
                          method="move" if node.move_port else "get", progress=progress, cancel=cancel)
            self.cache.mark_complete(key, study_uid)
            self.cache.enforce_limit(keep=folder)
            return str(folder)

        self._run(job, self._retrieved, f"retrieving from {node} ...")

    def _retrieved(self, folder: str) -> None:
        self.folder = folder
        self.accept()

    def cancel(self) -> None:
        if not self._idle():
            self._worker.cancel()  # the retrieve removes what arrived and raises CancelledError
            self.status.setText("cancelling ...")
        else:
            self.reject()

    def _failed(self, exc: BaseException) -> None:
        # The message (naming the node) stays in the dialog's status line, next to the search the
        # user can correct; no modal box on top of the dialog.
        self.search_btn.setEnabled(True)
        self._selection_changed()
        self.progress.setValue(0)
        cancelled = isinstance(exc, SiradError) and exc.code == "cancelled"
        self.status.setText("cancelled; nothing was kept" if cancelled else
                            (exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}"))
        if not cancelled:
            log.warning("PACS: %s", exc.user_message() if isinstance(exc, SiradError) else type(exc).__name__)


def open_from_pacs(window: Any) -> None:
    """The menu action: run the dialog, then open the retrieved study like any folder."""
    dlg = PacsDialog(window.settings, window)
    if dlg.exec() == QtWidgets.QDialog.DialogCode.Accepted and dlg.folder:
        window.open_path(dlg.folder)


def use_stored_result(window: Any, volume: Any) -> bool:
    """When the opened folder holds a stored AI report for this series (e.g. retrieved from the
    PACS), hand it to the reading instead of running the model; True when one was used. The
    reading keeps it hidden until the reader locks (grade-first)."""
    from sirad_viewer.state.stored_result import stored_grade_result

    srcs = list(getattr(volume, "sources", []) or [])
    if not srcs or window.reading is None or not window.reading.ai_allowed:
        return False
    folder = Path(srcs[0]).parent
    try:
        res = stored_grade_result([str(p) for p in folder.iterdir() if p.is_file()], volume)
    except SiradError as exc:
        log.warning("a stored AI report could not be used: %s", exc.message)
        return False
    if res is None:
        return False
    window.reading.receive_ai(res)
    window.ai_panel.set_model(res.model["name"], f"{res.model['version']} (loaded from the stored report)",
                              "none: the model was not run")
    return True
