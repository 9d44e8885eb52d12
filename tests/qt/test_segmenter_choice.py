"""The segmenter setting: TotalSegmentator greyed out with the reason when unusable; chosen, it reaches the grader."""
from __future__ import annotations

import sys

import pytest

from tests.ai.test_totalseg import add_weights, stats_off

pytestmark = pytest.mark.qt


@pytest.fixture
def no_totalseg(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "tshome"))
    for m in [m for m in sys.modules if m.split(".")[0] == "totalsegmentator"]:
        monkeypatch.delitem(sys.modules, m)


@pytest.fixture
def usable_totalseg(tmp_path, monkeypatch):
    """FAKE_TS: an importable stand-in package plus weight folders and telemetry off, so OUR checks pass."""
    pkg = tmp_path / "fake_site" / "totalsegmentator"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""FAKE_TS: not TotalSegmentator (tests of SIRAD\'s setting only)."""\n')
    (pkg / "python_api.py").write_text("def totalsegmentator(*a, **k):\n    raise AssertionError('FAKE_TS: not run here')\n")
    home = tmp_path / "tshome"
    add_weights(home)
    stats_off(home)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for m in [m for m in sys.modules if m.split(".")[0] == "totalsegmentator"]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    yield
    for m in [m for m in sys.modules if m.split(".")[0] == "totalsegmentator"]:
        del sys.modules[m]


def test_unusable_totalsegmentator_is_greyed_out_with_the_reason(qtbot, no_totalseg):
    from sirad_viewer.qt.segmenter_choice import SegmenterChoice

    c = SegmenterChoice()
    qtbot.addWidget(c)
    i = c.findData("totalsegmentator")
    assert not c.model().item(i).isEnabled()
    assert "not installed" in c.model().item(i).toolTip() and "not installed" in c.toolTip()
    assert not c.select("totalsegmentator") and c.current_key() == "unet"


def test_usable_totalsegmentator_can_be_chosen_and_reaches_the_grader(qtbot, usable_totalseg):
    from sirad_viewer.ai.totalseg import TotalSegmentatorSegmenter
    from sirad_viewer.qt.app import MainWindow

    w = MainWindow(interactive=False, with_3d=False)
    qtbot.addWidget(w)
    c = w.ai_panel.segmenter_choice
    assert c.model().item(c.findData("totalsegmentator")).isEnabled()
    with qtbot.waitSignal(c.changed) as sig:
        assert c.select("totalsegmentator")
    assert sig.args == ["totalsegmentator"] and w.settings.get("ai_segmenter") == "totalsegmentator"
    g = w._get_grader()
    assert isinstance(g.external, TotalSegmentatorSegmenter) and g.segmenter is None
    w2 = MainWindow(interactive=False, with_3d=False)  # the choice is remembered
    qtbot.addWidget(w2)
    assert w2.ai_panel.segmenter_choice.current_key() == "totalsegmentator"
    c.select("unet")
    assert w._get_grader() is not g and w._get_grader().external is None
    w.close()
    w2.close()
