"""The keyboard shortcut sheet (Help > Keyboard shortcuts, F1): one table, the one source of truth.

``SHORTCUTS`` lists (keys, what they do, group); :func:`sirad_viewer.qt.reading_tools.install`
binds the ones it owns from here, so the sheet cannot drift from the bindings.
"""
from __future__ import annotations

from PyQt6 import QtCore, QtWidgets

SHORTCUTS: list[tuple[str, str, str]] = [
    ("0 … 4", "grade the active joint (modified New York)", "Grading"),
    ("S", "switch the joint being graded (right / left)", "Grading"),
    ("Ctrl+Return", "lock the grades and reveal the AI", "Grading"),
    ("H", "AI heatmap on / off", "AI"),
    ("J / K", "jump to the right / left joint (after the reveal)", "AI"),
    ("Wheel, ↑ ↓", "scroll one slice", "Views"),
    ("Page Up / Down", "scroll ten slices", "Views"),
    ("Ctrl+Wheel", "zoom about the cursor", "Views"),
    ("Left drag / right drag / middle drag", "crosshair / window-level / pan", "Views"),
    ("Shift+drag on sagittal, Ctrl+L", "draw the sacral axis (the oblique plane)", "Views"),
    ("Drag a yellow handle on sagittal", "rotate the oblique plane about the crosshair", "Views"),
    ("C", "crosshair on / off", "Views"),
    ("F", "reset / fit the active view", "Views"),
    ("Ctrl+1 … Ctrl+4", "layout: SIJ, 1x1, 1x2, 2x2", "Views"),
    ("B / N / T", "window: bone 2000/500, bone 1500/300, soft tissue", "Views"),
    ("Space", "cine (play/stop); [ and ] change its speed", "Views"),
    ("M", "ruler", "Tools"),
    ("A", "angle", "Tools"),
    ("R", "circular ROI with HU statistics", "Tools"),
    ("E", "lesion mark (kind and side from the Findings panel)", "Tools"),
    ("Esc", "back to navigation", "Tools"),
    ("Delete", "remove the last annotation", "Tools"),
    ("Ctrl+I", "key image of the active view, into the case report", "Tools"),
    ("Ctrl+Z / Ctrl+Shift+Z", "undo / redo marks, findings and view changes (zoom, pan, window, slice, layout, plane)", "Tools"),
    ("Ctrl+T", "patient and series text on / off", "Display"),
    ("F1", "this sheet", "Help"),
]


class ShortcutSheet(QtWidgets.QDialog):
    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard and mouse shortcuts")
        self.resize(620, 640)
        lay = QtWidgets.QVBoxLayout(self)
        self.table = QtWidgets.QTableWidget(len(SHORTCUTS), 3)
        self.table.setHorizontalHeaderLabels(["Keys", "Action", "Group"])
        for r, row in enumerate(SHORTCUTS):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QtWidgets.QTableWidgetItem(text))
        # every column in view without scrolling sideways (the Group column sat off-screen)
        hh = self.table.horizontalHeader()
        mode = QtWidgets.QHeaderView.ResizeMode
        for c, m in enumerate((mode.ResizeToContents, mode.Stretch, mode.ResizeToContents)):
            hh.setSectionResizeMode(c, m)
        self.table.verticalHeader().setVisible(False)
        self.table.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setWordWrap(True)
        self.table.resizeRowsToContents()
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        lay.addWidget(self.table)
        bb = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)
        self.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose, False)

    def text(self) -> str:
        return "\n".join(f"{k}\t{a}" for k, a, _ in SHORTCUTS)
