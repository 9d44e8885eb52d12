"""The findings panel: per-joint lesion checklist, the grade it suggests, and the marking tools.

The checklist and the marks live in ``state.annotations`` (core); this panel shows and edits
them. The suggested modified New York grade is advice shown beside the checklist; it never
sets the reader's grade.
"""
from __future__ import annotations

from PyQt6 import QtWidgets

from sirad_viewer.state.annotations import SIDES, LesionKind
from sirad_viewer.state.viewer import ViewerState

# the dark theme's check boxes were dark grey on near-black: a light border, and a filled box when ticked
CHECKBOX_QSS = """
QCheckBox::indicator { width: 13px; height: 13px; border: 2px solid #c3c8cf; border-radius: 3px; background: #23272c; }
QCheckBox::indicator:hover { border-color: #ffffff; }
QCheckBox::indicator:checked { background: #4aa3ff; border-color: #e3f1ff; }
QCheckBox::indicator:disabled { border-color: #7b828a; }
QCheckBox::indicator:checked:disabled { background: #3d77ad; border-color: #9fb8cf; }
"""


class FindingsPanel(QtWidgets.QWidget):
    def __init__(self, state: ViewerState, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setStyleSheet(CHECKBOX_QSS)
        lay = QtWidgets.QVBoxLayout(self)
        tools = QtWidgets.QHBoxLayout()
        self.tool_buttons: dict[str, QtWidgets.QPushButton] = {}
        for tool, label in (("navigate", "Navigate"), ("ruler", "Ruler (M)"), ("angle", "Angle (A)"),
                            ("roi", "ROI (R)"), ("lesion", "Mark (E)")):
            b = QtWidgets.QPushButton(label)
            b.setCheckable(True)
            b.clicked.connect(lambda _=False, t=tool: self.state.set_tool(t))
            tools.addWidget(b)
            self.tool_buttons[tool] = b
        lay.addLayout(tools)
        mark = QtWidgets.QHBoxLayout()
        mark.addWidget(QtWidgets.QLabel("Mark:"))
        self.kind = QtWidgets.QComboBox()
        self.kind.addItems([k.value for k in LesionKind])
        self.kind.currentTextChanged.connect(lambda k: self.state.set_tool("lesion", lesion_kind=k))
        self.side = QtWidgets.QComboBox()
        self.side.addItems(list(SIDES))
        self.side.currentTextChanged.connect(lambda s: self.state.set_tool("lesion", side=s))
        mark.addWidget(self.kind)
        mark.addWidget(QtWidgets.QLabel("joint:"))
        mark.addWidget(self.side)
        lay.addLayout(mark)
        grid = QtWidgets.QGridLayout()
        grid.addWidget(QtWidgets.QLabel("<b>Finding</b>"), 0, 0)
        self.checks: dict[tuple[str, LesionKind], QtWidgets.QCheckBox] = {}
        for c, side in enumerate(SIDES, start=1):
            grid.addWidget(QtWidgets.QLabel(f"<b>{side} SIJ</b>"), 0, c)
        for r, kind in enumerate(LesionKind, start=1):
            grid.addWidget(QtWidgets.QLabel(kind.value), r, 0)
            for c, side in enumerate(SIDES, start=1):
                cb = QtWidgets.QCheckBox()
                cb.toggled.connect(lambda on, s=side, k=kind: self.state.annotations.set_finding(s, k, on))
                grid.addWidget(cb, r, c)
                self.checks[(side, kind)] = cb
        self.suggest = {s: QtWidgets.QLabel() for s in SIDES}
        r = len(LesionKind) + 1
        grid.addWidget(QtWidgets.QLabel("suggests (mNY)"), r, 0)
        for c, side in enumerate(SIDES, start=1):
            grid.addWidget(self.suggest[side], r, c)
        lay.addLayout(grid)
        note = QtWidgets.QLabel("The suggestion follows the ticked and marked findings; your grade is yours.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #9aa0a6;")
        lay.addWidget(note)
        self.measures = QtWidgets.QListWidget()
        self.measures.setMaximumHeight(120)
        lay.addWidget(self.measures)
        lay.addStretch(1)
        state.annotations.changed.connect(self.refresh)
        state.tool_changed.connect(lambda *_: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        ann = self.state.annotations
        for (side, kind), cb in self.checks.items():
            on = kind in ann.findings(side)
            if cb.isChecked() != on:
                cb.blockSignals(True)
                cb.setChecked(on)
                cb.blockSignals(False)
            # a finding marked on the images stays ticked while its mark exists
            cb.setEnabled(kind not in (ann.findings(side) - ann.checklist[side]))
        for side in SIDES:
            self.suggest[side].setText(f"grade {ann.suggested_grade(side)}")
        if self.side.currentText() != self.state.lesion_side:  # a mark on the other side moved it
            self.side.blockSignals(True)
            self.side.setCurrentText(self.state.lesion_side)
            self.side.blockSignals(False)
        for tool, b in self.tool_buttons.items():
            b.setChecked(tool == self.state.tool)
        self.measures.clear()
        for a in ann.items:
            self.measures.addItem(f"{a.kind}: {a.label()}")
