"""Reading layouts: which view goes in which grid cell, and putting them there.

``sij``: a wide main oblique panel over a row of axial, coronal, sagittal (and 3D) views (#13);
``1x1``: the active view; ``1x2``: oblique and axial; ``joints``: the two joints side by side;
``prior``: the current and the prior CT side by side (qt/prior.py); anything else: 2x2.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping

from PyQt6 import QtWidgets

Cell = tuple[str, int, int, int, int]  # view name, row, column, row span, column span


def layout_cells(name: str, views: Collection[str], active: str) -> list[Cell]:
    """The grid cells of layout ``name`` given the views the window has and the active one."""
    has3d = "3d" in views
    if name == "sij":  # a wide main oblique panel over a row of small views (#13)
        cells = [("oblique", 0, 0, 1, 4 if has3d else 3), ("axial", 1, 0, 1, 1), ("coronal", 1, 1, 1, 1),
                 ("sagittal", 1, 2, 1, 1)]
        if has3d:
            cells.append(("3d", 1, 3, 1, 1))
        return cells
    if name == "1x1":
        return [(active if active in views else "oblique", 0, 0, 1, 1)]
    if name == "1x2":
        return [("oblique", 0, 0, 1, 1), ("axial", 0, 1, 1, 1)]
    if name == "joints":
        return [("joint-right", 0, 0, 1, 1), ("joint-left", 0, 1, 1, 1)]
    if name == "prior" and "prior" in views:  # current and prior side by side (qt/prior.py)
        return [("oblique", 0, 0, 1, 1), ("prior", 0, 1, 1, 1)]
    return [("axial", 0, 0, 1, 1), ("coronal", 0, 1, 1, 1), ("sagittal", 1, 0, 1, 1),
            ("3d" if has3d else "oblique", 1, 1, 1, 1)]


def place(grid: QtWidgets.QGridLayout, views: Mapping[str, QtWidgets.QWidget], cells: list[Cell], *,
          wide_top: bool = False) -> None:
    """Show the views of ``cells`` in ``grid`` (all others hidden), equal stretch; ``wide_top``: first row twice as tall."""
    for v in views.values():
        grid.removeWidget(v)
        v.hide()
    for i in range(4):
        grid.setColumnStretch(i, 0)
        grid.setRowStretch(i, 0)
    for name, r, c, rs_, cs in cells:
        w = views[name]
        grid.addWidget(w, r, c, rs_, cs)
        w.show()
    cols = max(c + cs for _, _, c, _, cs in cells)
    rows = max(r + rs_ for _, r, _, rs_, _ in cells)
    for i in range(cols):
        grid.setColumnStretch(i, 1)
    for i in range(rows):
        grid.setRowStretch(i, 1)
    if wide_top:
        grid.setRowStretch(0, 2)
