"""Reader-study mode in the viewer: sign-in, case k of n, arms, timing, pause, cannot-grade, coordinator.

The rules live in :class:`~sirad_viewer.study.session.ReaderSession` (Qt-free, tested on its own);
this controller connects it to the reading window:

* the reader signs in (a reader id of the protocol) and resumes at the first unfinished case;
* each case opens in the viewer with the arm's AI policy: *unaided* shows no AI at all (it is not
  even run), *sequential* reveals it after the lock, *aided* (crossover) shows it at once;
* what the reader does in the grading panel is mirrored into the study's event log (grades, lock
  with confidence, comment and active time, reveal with the AI output shown, revisions);
* active reading time counts only while the reader is active: no input for ``idle_s`` seconds is
  idle (logged), Pause stops the clock and hides the images;
* no reference grade and no other reader's grade is ever given to the window.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PyQt6 import QtCore, QtWidgets

from sirad_viewer.study.session import ReaderSession
from sirad_viewer.study.store import StudyStore

CONFIDENCE_SCORE = {"low": 1, "medium": 2, "high": 3}


def ai_summary(result: Any) -> dict[str, Any]:
    """What the reader was shown, for the study's log and export."""
    d = result.to_dict()
    return {"model": d["model"], "ood_flagged": d.get("ood_flagged", False), "reliability": d.get("reliability"),
            "joints": {s: {"grade": j["grade"], "probabilities": j["probabilities"], "ood": j.get("ood")}
                       for s, j in d["joints"].items()},
            "patient": d["patient"]}


class SignInDialog(QtWidgets.QDialog):
    def __init__(self, store: StudyStore, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        p = store.protocol
        self.setWindowTitle(f"Sign in: {p.name}")
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(QtWidgets.QLabel(f"Study <b>{p.name}</b> ({p.design} design). Who is reading?"))
        self.combo = QtWidgets.QComboBox()
        for r in p.readers:
            self.combo.addItem(f"{r.id}" + (f" ({r.name})" if getattr(r, "name", "") else ""), r.id)
        lay.addWidget(self.combo)
        bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                        | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)

    def reader(self) -> str:
        return str(self.combo.currentData())


class StudyController(QtCore.QObject):
    """Drives a :class:`MainWindow` through one reader's study list."""

    finished = QtCore.pyqtSignal()

    def __init__(self, window: Any, store: StudyStore, reader: str, *, idle_s: float = 60.0) -> None:
        super().__init__(window)
        self.win = window
        self.store = store
        self.session = ReaderSession(store, reader)
        self.reader = reader
        self.idle_s = float(idle_s)
        self.item: dict[str, Any] | None = None
        self.active_s = 0.0
        self.paused = False
        self.idle = False
        self._last_input = time.monotonic()
        self._sent: dict[str, Any] = {}
        self._build_bar()
        window.study = self
        app = QtWidgets.QApplication.instance()
        app.installEventFilter(self)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    # --- UI -----------------------------------------------------------------------------------
    def _build_bar(self) -> None:
        bar = QtWidgets.QToolBar("Study", self.win)
        bar.setObjectName("study-bar")
        self.case_label = QtWidgets.QLabel("")
        self.time_label = QtWidgets.QLabel("")
        bar.addWidget(self.case_label)
        bar.addSeparator()
        bar.addWidget(self.time_label)
        bar.addSeparator()
        self.pause_action = bar.addAction("Pause", self.toggle_pause)
        self.cannot_action = bar.addAction("Cannot grade...", self.cannot_grade_dialog)
        self.next_action = bar.addAction("Next case", self.next_case)
        self.win.addToolBar(QtCore.Qt.ToolBarArea.TopToolBarArea, bar)
        self.bar = bar

    def _update_bar(self) -> None:
        done, total = self.session.progress()
        p = self.session.protocol
        if self.item is None:
            self.case_label.setText(f"{p.name}: reader {self.reader}: finished ({done} of {total})")
            self.time_label.setText("")
            for a in (self.pause_action, self.cannot_action, self.next_action):
                a.setEnabled(False)
            return
        k = next((i for i, it in enumerate(self.session.order) if it == self.item), 0) + 1
        arm = {"unaided": "without AI", "aided": "with AI", "sequential": "AI after your lock"}.get(self.item["arm"],
                                                                                                   self.item["arm"])
        self.case_label.setText(f"{p.name}: reader {self.reader}: case {k} of {total} ({arm}; session "
                                f"{self.item['session']})")
        state = " (paused)" if self.paused else (" (idle)" if self.idle else "")
        self.time_label.setText(f"reading time {int(self.active_s) // 60}:{int(self.active_s) % 60:02d}{state}")
        self.pause_action.setText("Resume" if self.paused else "Pause")

    # --- cases ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.open_current()

    def open_current(self) -> None:
        from sirad_viewer.errors import SiradError

        self.item = self.session.current()
        self._sent = {}
        self.active_s = 0.0
        if self.item is None:
            self._update_bar()
            self.win.statusBar().showMessage("all cases read: thank you")
            self.finished.emit()
            return
        case = self.item["case"]
        try:
            self.session.open(case)
        except SiradError as exc:
            self.win.statusBar().showMessage(exc.message)
            QtWidgets.QMessageBox.information(self.win, "Study", exc.message)
            self.item = None
            self._update_bar()
            return
        c = self.session.protocol.case(case)
        path = Path(c.path)
        if not path.is_absolute() and self.store.path:
            path = Path(self.store.path).parent / path  # case paths are relative to the study file
        self._update_bar()
        self.win.open_path(str(path))

    def configure_reading(self, reading: Any) -> None:
        """Called by the window for each new reading: the arm's AI policy and any resumed state."""
        if self.item is None:
            return
        arm = self.item["arm"]
        reading.case = self.item["case"]
        reading.reader = self.reader
        reading.log_path = None  # the study's event log is the record
        reading.ai_allowed = arm != "unaided"
        reading.ai_visible_at_once = arm == "aided"
        st = self.session.states()[(self.item["case"], self.item["session"])]
        if st.pre or st.locked_at:
            reading.restore(st.pre, st.locked_at, st.post)
        self._sent = {"pre": dict(st.pre), "locked": st.locked_at is not None, "revealed": st.revealed_at is not None,
                      "post": dict(st.post)}
        self.active_s = st.active_s
        reading.changed.connect(self.sync)

    def sync(self) -> None:
        """Mirror the grading panel into the study log (the session enforces the rules)."""
        from sirad_viewer.errors import SiradError

        r = self.win.reading
        if r is None or self.item is None:
            return
        case = self.item["case"]
        try:
            if not self._sent.get("locked"):
                for side in ("left", "right"):
                    g = getattr(r.pre, side)
                    if g is not None and self._sent.setdefault("pre", {}).get(side) != g:
                        self.session.set_grade(case, side, g)
                        self._sent["pre"][side] = g
                if r.locked:
                    self.session.lock(case, confidence=CONFIDENCE_SCORE.get(r.pre.confidence or ""), comment=r.pre.comment,
                                      active_s=self.active_s)
                    self._sent["locked"] = True
                    self.active_s = 0.0
            res = r.ai
            if res is not None and not self._sent.get("revealed"):
                self.session.reveal(case, ai_summary(res))
                self._sent["revealed"] = True
            if r.post is not None and self._sent.get("revealed"):
                for side in ("left", "right"):
                    g = getattr(r.post, side)
                    if g is not None and g != self._sent.setdefault("post", {}).get(side, getattr(r.pre, side)):
                        self.session.revise(case, side, g)
                        self._sent["post"][side] = g
        except SiradError as exc:
            self.win.statusBar().showMessage(exc.message)

    def next_case(self) -> None:
        from sirad_viewer.errors import SiradError

        if self.item is None:
            return
        try:
            self.session.close(self.item["case"], active_s=self.active_s)
        except SiradError as exc:
            self.win.statusBar().showMessage(exc.message)
            return
        self.open_current()

    def cannot_grade_dialog(self) -> None:
        reason, ok = QtWidgets.QInputDialog.getText(self.win, "Cannot grade", "Why can this case not be graded?")
        if ok:
            self.cannot_grade(reason)

    def cannot_grade(self, reason: str) -> None:
        from sirad_viewer.errors import SiradError

        if self.item is None:
            return
        try:
            self.session.cannot_grade(self.item["case"], reason)
            self.session.close(self.item["case"], active_s=self.active_s)
        except SiradError as exc:
            self.win.statusBar().showMessage(exc.message)
            return
        self.open_current()

    # --- time -----------------------------------------------------------------------------------
    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.item is not None:
            self.session.mark(self.item["case"], "paused" if self.paused else "resumed", active_s=round(self.active_s, 1))
        self.win.grid_host.setVisible(not self.paused)  # a paused reading shows no images
        self._update_bar()

    def eventFilter(self, obj: QtCore.QObject, e: QtCore.QEvent) -> bool:  # noqa: N802
        if e.type() in (QtCore.QEvent.Type.MouseButtonPress, QtCore.QEvent.Type.KeyPress, QtCore.QEvent.Type.Wheel,
                        QtCore.QEvent.Type.MouseMove):
            self.activity()
        return False

    def activity(self) -> None:
        self._last_input = time.monotonic()
        if self.idle and self.item is not None:
            self.idle = False
            self.session.mark(self.item["case"], "resumed", active_s=round(self.active_s, 1))

    def _tick(self) -> None:
        self.advance(1.0)

    def advance(self, seconds: float) -> None:
        """One clock step (the timer calls it every second; tests call it directly)."""
        if self.item is None or self.paused:
            self._update_bar()
            return
        if time.monotonic() - self._last_input > self.idle_s:
            if not self.idle:
                self.idle = True
                self.session.mark(self.item["case"], "idle", active_s=round(self.active_s, 1), after_s=self.idle_s)
        else:
            self.active_s += seconds
        self._update_bar()

    def close(self) -> None:
        self.timer.stop()
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)


class CoordinatorDialog(QtWidgets.QDialog):
    """Progress per reader, the event log's integrity, and export."""

    def __init__(self, store: StudyStore, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        p = store.protocol
        self.setWindowTitle(f"Coordinator: {p.name}")
        self.resize(640, 360)
        lay = QtWidgets.QVBoxLayout(self)
        ok, msg = store.verify()
        self.integrity = QtWidgets.QLabel(f"{p.name} ({p.design}), protocol {p.hash[:16]}"
                                          f"{' (frozen)' if store.frozen else ''}; event log: {msg}"
                                          + ("" if ok else "  — TAMPERED"))
        self.integrity.setWordWrap(True)
        lay.addWidget(self.integrity)
        self.table = QtWidgets.QTableWidget(len(p.readers), 4)
        self.table.setHorizontalHeaderLabels(["reader", "read", "next case", "active reading time"])
        for i, r in enumerate(p.readers):
            s = ReaderSession(store, r.id)
            done, total = s.progress()
            cur = s.current()
            minutes = sum(v.active_s for v in s.states().values()) / 60.0
            for j, text in enumerate((r.id, f"{done} / {total}", f"{cur['case']} ({cur['arm']})" if cur else "finished",
                                      f"{minutes:.1f} min")):
                self.table.setItem(i, j, QtWidgets.QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        lay.addWidget(self.table)
        row = QtWidgets.QHBoxLayout()
        exp = QtWidgets.QPushButton("Export (CSV/JSON)...")
        exp.clicked.connect(self.export_dialog)
        row.addWidget(exp)
        row.addStretch(1)
        close = QtWidgets.QPushButton("Close")
        close.clicked.connect(self.accept)
        row.addWidget(close)
        lay.addLayout(row)

    def export_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export reads", "reads.csv", "CSV (*.csv);;JSON (*.json)")
        if path:
            self.export(path)

    def export(self, path: str):
        from sirad_viewer.study.analysis import write_export

        return write_export(self.store, path)
