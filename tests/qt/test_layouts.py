"""Reading layouts as grid cells (qt/layouts.py), without building a window."""
from __future__ import annotations

import pytest

from sirad_viewer.qt.layouts import layout_cells

pytestmark = pytest.mark.qt

VIEWS = {"oblique", "axial", "coronal", "sagittal", "joint-right", "joint-left"}


def test_sij_puts_a_wide_oblique_panel_over_the_small_views():
    cells = layout_cells("sij", VIEWS | {"3d"}, "axial")
    assert cells[0] == ("oblique", 0, 0, 1, 4)
    assert [c[0] for c in cells[1:]] == ["axial", "coronal", "sagittal", "3d"] and all(c[1] == 1 for c in cells[1:])
    assert layout_cells("sij", VIEWS, "axial")[0] == ("oblique", 0, 0, 1, 3)  # no 3D view: three below


def test_1x1_shows_the_active_view_and_prior_needs_a_prior_view():
    assert layout_cells("1x1", VIEWS, "sagittal") == [("sagittal", 0, 0, 1, 1)]
    assert layout_cells("1x1", VIEWS, "3d") == [("oblique", 0, 0, 1, 1)]  # no such view here
    assert [c[0] for c in layout_cells("prior", VIEWS | {"prior"}, "axial")] == ["oblique", "prior"]
    assert [c[0] for c in layout_cells("prior", VIEWS, "axial")] == ["axial", "coronal", "sagittal", "oblique"]
