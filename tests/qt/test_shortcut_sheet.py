"""F1's sheet shows every column without scrolling sideways, and no row numbers."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.qt


def test_shortcut_sheet_fits_its_width(qtbot):
    from sirad_viewer.qt.shortcuts import ShortcutSheet

    sheet = ShortcutSheet()
    qtbot.addWidget(sheet)
    sheet.show()
    qtbot.waitExposed(sheet)
    t = sheet.table
    hh = t.horizontalHeader()
    assert not t.verticalHeader().isVisible()
    right = max(hh.sectionViewportPosition(c) + hh.sectionSize(c) for c in range(t.columnCount()))
    assert right <= t.viewport().width() + 1
    assert t.horizontalScrollBar().maximum() == 0
