"""Reader-study mode in the viewer: sign-in, case k of n, pause, cannot-grade, coordinator view.

The rules live in the core: the reader's case is a :class:`~sirad_viewer.state.reading.Reading`
made by :func:`~sirad_viewer.state.study_reading.study_reading`, which writes every step through
to the :class:`~sirad_viewer.study.session.ReaderSession` (arm policy, lock, reveal, revisions,
pause, active time). This controller only shows the reader's progress and forwards input:

* sign-in takes the reader's lease (a second live session of the same reader is refused, or takes
  over explicitly);
* each case opens in the viewer; the window shows the case id only (no series description, file
  name, patient or study text) and offers neither the coordinator view nor any export;
* Pause covers the images (the layout does not change) and the Reading refuses input meanwhile.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from PyQt6 import QtCore, QtWidgets

from sirad_viewer.state.reading import ActiveClock, Reading
from sirad_viewer.state.study_reading import CONFIDENCE_SCORE, ai_summary, study_reading  # noqa: F401 (re-export)
from sirad_viewer.study.session import ReaderSession
from sirad_viewer.study.store import StudyStore

HEARTBEAT_TICKS = 30


class SignInDialog(QtWidgets.QDialog):
    def __init__(self, store: StudyStore, parent: QtWidgets.QWidget | None = None, *, message: str = "") -> None:
        super().__init__(parent)
        p = store.protocol
        self.setWindowTitle(f"Sign in: {p.name}")
        lay = QtWidgets.QVBoxLayout(self)
        if message:
            warn = QtWidgets.QLabel(message)
            warn.setWordWrap(True)
            warn.setStyleSheet("color:#ffb86b;")
            lay.addWidget(warn)
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


class CannotGradeDialog(QtWidgets.QDialog):
    """Asks why a case cannot be graded; OK stays disabled until a reason is typed."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Cannot grade")
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(QtWidgets.QLabel("Why can this case not be graded? (required)"))
        self.edit = QtWidgets.QLineEdit()
        self.edit.setPlaceholderText("e.g. motion artefact, joints not in the field of view")
        lay.addWidget(self.edit)
        self.bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                             | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        self.ok = self.bb.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        self.ok.setEnabled(False)
        self.edit.textChanged.connect(lambda t: self.ok.setEnabled(bool(t.strip())))
        self.bb.accepted.connect(self.accept)
        self.bb.rejected.connect(self.reject)
        lay.addWidget(self.bb)

    def accept(self) -> None:
        if not self.reason():
            self.edit.setFocus()
            return  # an empty reason never closes the dialog
        super().accept()

    def reason(self) -> str:
        return self.edit.text().strip()


class PauseCover(QtWidgets.QLabel):
    """An opaque cover over the image area while paused: nothing is resized, hidden or saved."""

    def __init__(self, host: QtWidgets.QWidget) -> None:
        super().__init__("Paused: press Resume to continue reading", host)
        self.host = host
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setAutoFillBackground(True)
        self.setStyleSheet("background:#101214; color:#8a9099; font-size:18px;")
        host.installEventFilter(self)
        self.hide()

    def eventFilter(self, obj: QtCore.QObject, e: QtCore.QEvent) -> bool:  # noqa: N802
        if obj is self.host and e.type() == QtCore.QEvent.Type.Resize:
            self.setGeometry(self.host.rect())
        return False

    def cover(self, on: bool) -> None:
        self.setGeometry(self.host.rect())
        self.setVisible(on)
        if on:
            self.raise_()


class StudyController(QtCore.QObject):
    """Drives a :class:`MainWindow` through one reader's study list."""

    finished = QtCore.pyqtSignal()

    def __init__(self, window: Any, store: StudyStore, reader: str, *, idle_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, takeover: bool = False) -> None:
        super().__init__(window)
        self.win = window
        self.store = store
        self.session = ReaderSession(store, reader)
        self.session.sign_in(takeover=takeover)  # refused while this reader is signed in elsewhere
        self.reader = reader
        self.idle_s = float(idle_s)
        self.clock = clock
        self.item: dict[str, Any] | None = None
        self.reading: Reading | None = None
        self._ticks = 0
        self._build_bar()
        self.cover = PauseCover(window.grid_host)
        window.study = self
        app = QtWidgets.QApplication.instance()
        app.installEventFilter(self)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    # --- what the window asks -------------------------------------------------------------------
    @property
    def case_id(self) -> str | None:
        return None if self.item is None else self.item["case"]

    @property
    def paused(self) -> bool:
        return self.reading is not None and self.reading.paused

    @property
    def idle(self) -> bool:
        return self.reading is not None and self.reading.clock.idle

    @property
    def active_s(self) -> float:
        return 0.0 if self.reading is None else self.reading.clock.active_s

    def new_reading(self) -> Reading | None:
        """The Reading for the case the window just loaded (made by the core, not configured here)."""
        if self.item is None:
            return None
        self.reading = study_reading(self.session, self.item, clock=ActiveClock(now=self.clock, idle_s=self.idle_s))
        self.reading.changed.connect(self._update_bar)
        self.cover.cover(self.reading.paused)
        self._update_bar()
        return self.reading

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
        self.case_label.setText(f"{p.name}: reader {self.reader}: case {k} of {total}, {self.item['case']} ({arm}; "
                                f"session {self.item['session']})")
        state = " (paused)" if self.paused else (" (idle)" if self.idle else "")
        a = self.active_s
        self.time_label.setText(f"reading time {int(a) // 60}:{int(a) % 60:02d}{state}")
        self.pause_action.setText("Resume" if self.paused else "Pause")
        for act in (self.cannot_action, self.next_action):
            act.setEnabled(not self.paused)

    # --- cases ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.open_current()

    def open_current(self) -> None:
        from sirad_viewer.errors import SiradError

        self.item = self.session.current()
        self.reading = None
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
            if QtWidgets.QApplication.platformName() not in ("offscreen", "minimal"):
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

    def next_case(self) -> None:
        from sirad_viewer.errors import SiradError

        if self.item is None or self.paused:
            return
        try:
            self.session.close(self.item["case"], active_s=self.reading.clock.lap() if self.reading else 0.0)
        except SiradError as exc:
            self.win.statusBar().showMessage(exc.message)
            return
        self.open_current()

    def cannot_grade_dialog(self) -> None:
        dlg = CannotGradeDialog(self.win)
        if dlg.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.cannot_grade(dlg.reason())

    def cannot_grade(self, reason: str) -> None:
        from sirad_viewer.errors import SiradError

        if self.item is None:
            return
        try:
            self.session.cannot_grade(self.item["case"], reason)
            self.session.close(self.item["case"], active_s=self.reading.clock.lap() if self.reading else 0.0)
        except SiradError as exc:
            self.win.statusBar().showMessage(exc.message)
            return
        self.open_current()

    # --- time -----------------------------------------------------------------------------------
    def toggle_pause(self) -> None:
        r = self.reading
        if r is None:
            return
        r.resume() if r.paused else r.pause()
        self.cover.cover(r.paused)  # a paused reading shows no images; the layout is untouched
        self._update_bar()

    def eventFilter(self, obj: QtCore.QObject, e: QtCore.QEvent) -> bool:  # noqa: N802
        if e.type() in (QtCore.QEvent.Type.MouseButtonPress, QtCore.QEvent.Type.KeyPress, QtCore.QEvent.Type.Wheel,
                        QtCore.QEvent.Type.MouseMove):
            self.activity()
        return False

    def activity(self) -> None:
        if self.reading is not None:
            self.reading.activity()

    def tick(self) -> None:
        """Every second: idle detection (logged once per idle stretch), lease heartbeat, the bar."""
        if self.reading is not None:
            self.reading.poll_idle()
        self._ticks += 1
        if self._ticks % HEARTBEAT_TICKS == 0 and not self.session.heartbeat():
            self.win.statusBar().showMessage(f"reader {self.reader} signed in elsewhere: this session is closed")
        self._update_bar()

    def close(self) -> None:
        self.timer.stop()
        self.cover.cover(False)
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)
        self.session.release()


class CoordinatorDialog(QtWidgets.QDialog):
    """Progress per reader, the event log's integrity, and export. Needs the coordinator key."""

    def __init__(self, store: StudyStore, key: Any, parent: QtWidgets.QWidget | None = None) -> None:
        from sirad_viewer.study.protocol import StudyError

        if key is None or key.study_id != store.study_id:
            raise StudyError("the coordinator view needs this study's coordinator key", path=store.path or store.url,
                             code="no_key")
        super().__init__(parent)
        self.store = store
        self.key = key
        p = store.protocol
        self.setWindowTitle(f"Coordinator: {p.name}")
        self.resize(640, 360)
        lay = QtWidgets.QVBoxLayout(self)
        v = store.verify(key)
        self.verified = v.ok
        self.integrity = QtWidgets.QLabel(f"{p.name} ({p.design}), protocol {p.hash[:16]}"
                                          f"{' (frozen)' if store.frozen else ''}; event log: {v.message}"
                                          + ("" if v.ok else "  — TAMPERED"))
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
        self.export_button = QtWidgets.QPushButton("Export (CSV/JSON)...")
        self.export_button.clicked.connect(self.export_dialog)
        self.export_button.setEnabled(v.ok)
        row.addWidget(self.export_button)
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
        from sirad_viewer.study.protocol import StudyError

        if not self.verified:
            raise StudyError("not exported: the event log does not verify against the coordinator key", code="tampered")
        return write_export(self.store, path)
