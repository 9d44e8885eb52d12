"""File > Open worklist: the graded series of a batch, in reading order, one key press per case.

Return (or a double click) opens the selected series through the viewer's normal path, so the
reading is grade-first as always; ``N`` opens the next unread one; ``M`` marks the selected series
read (or unread). The list shows the order, not the AI's numbers. Not offered in a reader study.
"""
from __future__ import annotations

from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer.batch.worklist import Entry, SortBy, Worklist, allowed


class _Table(QtWidgets.QTableWidget):
    """The list's keys: Return/Enter open, N next unread, M read mark (handled here, before the view's own)."""

    key_action = QtCore.pyqtSignal(str)
    KEYS = {QtCore.Qt.Key.Key_Return: "open", QtCore.Qt.Key.Key_Enter: "open", QtCore.Qt.Key.Key_N: "next",
            QtCore.Qt.Key.Key_M: "mark"}

    def _action(self, e: QtGui.QKeyEvent) -> str | None:
        return self.KEYS.get(QtCore.Qt.Key(e.key())) if not e.modifiers() & ~QtCore.Qt.KeyboardModifier.KeypadModifier else None

    def event(self, e: QtCore.QEvent) -> bool:
        # The window's one-key tool shortcuts (M ruler, N narrow bone window) would otherwise take
        # these keys before the list sees them: claim them while the list has the focus.
        if e.type() == QtCore.QEvent.Type.ShortcutOverride and self._action(e):
            e.accept()
            return True
        return super().event(e)

    def keyPressEvent(self, e: QtGui.QKeyEvent) -> None:  # noqa: N802
        action = self._action(e)
        if action:
            self.key_action.emit(action)
            e.accept()
            return
        super().keyPressEvent(e)


class WorklistPanel(QtWidgets.QWidget):
    """A table of the worklist's entries. ``open_requested(source)`` asks the window to open a series."""

    open_requested = QtCore.pyqtSignal(str)

    def __init__(self, worklist: Worklist, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.worklist = worklist
        self.sort = QtWidgets.QComboBox()
        for s, label in ((SortBy.PROBABILITY, "likely positives first (AI)"), (SortBy.DATE, "study date, newest first"),
                         (SortBy.ID, "series id")):
            self.sort.addItem(label, s.value)
        self.sort.setCurrentIndex([s for s in SortBy].index(worklist.sort_by))
        self.sort.currentIndexChanged.connect(lambda _: self._resort())
        self.table = _Table(0, 4)
        self.table.setHorizontalHeaderLabels(["#", "read", "series", "study date"])
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.horizontalHeader().setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.doubleClicked.connect(lambda _: self.open_selected())
        self.status = QtWidgets.QLabel()
        mark = QtWidgets.QPushButton("Mark read (M)")
        mark.clicked.connect(self.toggle_read)
        nxt = QtWidgets.QPushButton("Next unread (N)")
        nxt.clicked.connect(self.open_next_unread)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.sort)
        lay.addWidget(self.table)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(mark)
        row.addWidget(nxt)
        lay.addLayout(row)
        lay.addWidget(self.status)
        actions = {"open": self.open_selected, "next": self.open_next_unread, "mark": self.toggle_read}
        self.table.key_action.connect(lambda a: actions[a]())
        self.current: int | None = None
        self.fill()

    def _resort(self) -> None:
        self.worklist.set_sort(SortBy(self.sort.currentData()))
        self.fill()

    def fill(self) -> None:
        es = self.worklist.entries
        self.table.setRowCount(len(es))
        for i, e in enumerate(es):
            self._set_row(i, e)
        self.table.resizeColumnsToContents()
        if es and self.table.currentRow() < 0:
            self.table.setCurrentCell(0, 0)
        self._update_status()

    def _set_row(self, i: int, e: Entry) -> None:
        name = e.description or e.source
        for col, text in enumerate((str(i + 1), "✓" if e.read else "", name, e.study_date)):
            item = QtWidgets.QTableWidgetItem(text)
            item.setToolTip(e.source)
            self.table.setItem(i, col, item)

    def _update_status(self) -> None:
        n = len(self.worklist.entries)
        done = sum(e.read for e in self.worklist.entries)
        self.status.setText(f"{done} of {n} read" if n else "no graded series in this results store")

    def open_index(self, i: int) -> None:
        e = self.worklist.entries[i]
        self.current = i
        self.table.setCurrentCell(i, 0)
        self.open_requested.emit(e.source)

    def open_selected(self) -> None:
        i = self.table.currentRow()
        if 0 <= i < len(self.worklist.entries):
            self.open_index(i)

    def open_next_unread(self) -> None:
        i = self.worklist.next_unread(self.table.currentRow() if self.current is None else self.current)
        if i is None:
            self.status.setText("every series in this worklist is read")
            return
        self.open_index(i)

    def toggle_read(self) -> None:
        i = self.table.currentRow()
        if not 0 <= i < len(self.worklist.entries):
            return
        e = self.worklist.entries[i]
        self.worklist.mark_read(e.key, not e.read)
        self._set_row(i, self.worklist.entries[i])
        self._update_status()


def open_worklist(window: QtWidgets.QMainWindow, path: str | None = None) -> WorklistPanel | None:
    """Ask for a results store (unless ``path``), then dock its worklist on ``window``.

    Refused (with a message) in a reader study: the order would reveal the AI.
    """
    from sirad_viewer.batch.store import ResultStore
    from sirad_viewer.errors import SiradError

    ok, why = allowed(getattr(window, "study", None) is not None)
    if not ok:
        QtWidgets.QMessageBox.information(window, "Worklist", why)
        return None
    if path is None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(window, "Open worklist (batch results)", "",
                                                        "Batch results (*.sqlite *.db);;All files (*)")
        if not path:
            return None
    try:
        wl = Worklist(ResultStore(path, create=False))
    except SiradError as exc:
        QtWidgets.QMessageBox.warning(window, "Worklist", exc.user_message())
        return None
    panel = WorklistPanel(wl)

    def open_source(source: str) -> None:
        if getattr(window, "study", None) is not None:  # a study was started meanwhile
            QtWidgets.QMessageBox.information(window, "Worklist", allowed(True)[1])
            return
        window.open_path(source)

    panel.open_requested.connect(open_source)
    old = getattr(window, "worklist_dock", None)
    if old is not None:
        window.removeDockWidget(old)
        old.deleteLater()
    dock = QtWidgets.QDockWidget("Worklist", window)
    dock.setObjectName("worklist-dock")
    dock.setWidget(panel)
    window.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, dock)
    window.worklist_dock = dock
    panel.table.setFocus()
    return panel
