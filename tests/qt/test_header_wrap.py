"""A long header line (the oblique plane's refusal warning) wraps inside a narrow view instead of
being cut off at its edge (seen in the 2x2 layout on the demo CT)."""
from __future__ import annotations

import pytest
from PyQt6 import QtGui

from tests.qt.test_reading_tools import win  # noqa: F401 - the module's loaded window

pytestmark = pytest.mark.qt


def test_oblique_warning_wraps_inside_a_narrow_view(win):  # noqa: F811
    from sirad_viewer.qt.slice_view import SliceView

    st = win.state
    st.oblique_warning = ("segmentation plane refused: 62° from craniocaudal (expected 10-50°), lean 0°; "
                          "showing the default plane (38°)")
    v = SliceView(st, "oblique")
    v.resize(490, 400)
    try:
        rect, text, _ = v.text_boxes()["header"]
        fm = QtGui.QFontMetricsF(v._font())
        assert rect.right() <= v.width()
        assert all(fm.horizontalAdvance(line) <= rect.width() for line in text.split("\n")), text
        assert " ".join(text.split()).endswith("showing the default plane (38°)")
    finally:
        st.oblique_warning = ""
