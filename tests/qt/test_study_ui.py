"""Reader-study mode in the window: sign-in, arms and blinding, mirrored grades, time, resume, coordinator."""
from __future__ import annotations

import pytest
from PyQt6 import QtWidgets

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def study_files(tmp_path_factory, small_phantom):
    """A sequential study and a crossover study over the same 3 phantom cases (references known)."""
    from sirad_viewer.phantom import write_phantom
    from sirad_viewer.study.protocol import Protocol
    from sirad_viewer.study.store import StudyStore

    root = tmp_path_factory.mktemp("study")
    cases = []
    for i, (l, r) in enumerate([(0, 2), (3, 1), (4, 4)]):
        files = write_phantom(small_phantom(l, r, seed=10 + i, matrix=96), root / f"c{i}")
        cases.append({"id": f"c{i}", "path": f"c{i}/ct.nii.gz", "reference": {"left": l, "right": r}, "site": "A"})
    out = {}
    for design in ("sequential", "crossover"):
        p = Protocol.from_dict({"name": f"{design} test", "design": design, "seed": 7,
                                "readers": [{"id": "r1"}, {"id": "r2"}], "cases": cases,
                                "crossover": {"sessions": 2, "washout_days": 0}})
        out[design] = root / f"{design}.sqlite"
        StudyStore.create(out[design], p)
    return out


@pytest.fixture()
def win(qtbot):
    from sirad_viewer.qt.app import MainWindow

    w = MainWindow(interactive=False, with_3d=False)
    w.settings.set("ai_autorun", True)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


def wait_case(w):
    """Until the study's current case is open in the window (it may already be)."""
    from pytestqt.qtbot import QtBot

    QtBot(w).waitUntil(lambda: w.study.item is not None and w.reading is not None
                       and w.reading.case == w.study.item["case"] and w.state.volume is not None, timeout=120_000)


def texts(w) -> str:
    out = []
    for c in w.findChildren(QtWidgets.QWidget):
        for attr in ("text", "toolTip", "toPlainText", "windowTitle"):
            fn = getattr(c, attr, None)
            if callable(fn):
                try:
                    v = fn()
                except TypeError:
                    continue
                if isinstance(v, str):
                    out.append(v)
    return "\n".join(out)


def test_sequential_study_mirrors_the_panel_into_the_log_and_resumes(win, study_files):
    from sirad_viewer.qt.study import StudyController
    from sirad_viewer.study.session import ReaderSession
    from sirad_viewer.study.store import StudyStore

    assert win.start_study(str(study_files["sequential"]), reader="r1")
    ctl = win.study
    wait_case(win)
    first = ctl.item["case"]
    assert "case 1 of 3" in ctl.case_label.text()
    assert "reference" not in texts(win).lower()  # no reference grade anywhere
    assert win.wait_for_ai()
    assert win.reading.ai is None  # sequential: hidden before the lock
    ctl.advance(5.0)
    win.reading.set_grade("right", 2)
    win.reading.set_grade("left", 1)
    win.reading.set_confidence("high")
    win.lock_and_reveal()
    assert win.reading.ai is not None
    win.reading.set_grade("left", 4)  # a post-AI revision
    s = ReaderSession(StudyStore(study_files["sequential"]), "r1")
    st = s.states()[(first, 1)]
    assert st.pre == {"right": 2, "left": 1} and st.locked_at and st.confidence == 3
    assert st.revealed_at and st.ai["joints"]["left"]["grade"] in range(5) and st.post == {"left": 4}
    assert st.active_s >= 5.0
    # the program stops here (the case is not closed); a new window resumes at the same case, locked
    win.study.close()
    win.study = None
    from sirad_viewer.qt.app import MainWindow

    w2 = MainWindow(interactive=False, with_3d=False)
    try:
        w2.start_study(str(study_files["sequential"]), reader="r1")
        wait_case(w2)
        assert w2.study.item["case"] == first
        assert w2.reading.locked and w2.reading.pre.right == 2 and w2.reading.pre.left == 1
        w2.study.next_case()
        wait_case(w2)
        assert w2.study.item["case"] != first and "case 2 of 3" in w2.study.case_label.text()
        # cannot grade, with a reason, moves on and is logged
        second = w2.study.item["case"]
        w2.study.cannot_grade("motion artefact")
        assert ReaderSession(StudyStore(study_files["sequential"]), "r1").states()[(second, 1)].cannot_grade == \
            "motion artefact"
    finally:
        w2.close()
    assert isinstance(ctl, StudyController)


def test_unaided_arm_never_runs_or_shows_the_ai_and_idle_time_does_not_count(win, study_files):
    assert win.start_study(str(study_files["crossover"]), reader="r2")
    ctl = win.study
    # walk to the first unaided case (cases of the other arm are closed via cannot-grade)
    for _ in range(3):
        wait_case(win)
        if ctl.item["arm"] == "unaided":
            break
        ctl.cannot_grade("skipped by the test")
    assert ctl.item["arm"] == "unaided"
    if win._ai_worker is not None:  # a run for an earlier (aided) case may still be finishing
        win._ai_worker.finished.wait(60)
        QtWidgets.QApplication.processEvents()
    assert not win.reading.ai_allowed and win.reading._ai is None  # that result never reaches this case
    old = win._ai_worker
    win.start_ai()
    assert win._ai_worker is old  # the AI is not even run on an unaided case
    win.reading.set_grade("right", 1)
    win.reading.set_grade("left", 1)
    win.lock_and_reveal()
    assert win.reading.locked and win.reading.ai is None
    assert "without AI" in win.ai_panel.hidden_label.text()
    assert win.state.overlays.heatmap is None
    # idle: no input for longer than idle_s stops the clock; input resumes it
    ctl.idle_s = 0.0
    before = ctl.active_s
    ctl.advance(10.0)
    assert ctl.idle and ctl.active_s == before
    ctl.activity()
    ctl.idle_s = 60.0
    ctl.advance(2.0)
    assert not ctl.idle and ctl.active_s == before + 2.0
    ctl.toggle_pause()
    ctl.advance(3.0)
    assert ctl.paused and ctl.active_s == before + 2.0 and not win.grid_host.isVisible()
    ctl.toggle_pause()
    assert win.grid_host.isVisible()


def test_coordinator_view_progress_and_export(qtbot, study_files, tmp_path):
    import csv

    from sirad_viewer.qt.study import CoordinatorDialog
    from sirad_viewer.study.store import StudyStore

    dlg = CoordinatorDialog(StudyStore(study_files["sequential"]))
    qtbot.addWidget(dlg)
    assert "intact" in dlg.integrity.text().lower() or "ok" in dlg.integrity.text().lower()
    rows = {dlg.table.item(i, 0).text(): dlg.table.item(i, 1).text() for i in range(dlg.table.rowCount())}
    assert rows["r2"] == "0 / 3" and rows["r1"].startswith(("1 /", "2 /"))
    out = dlg.export(str(tmp_path / "reads.csv"))
    with open(out) as fh:
        got = list(csv.DictReader(fh))
    assert any(r["reader"] == "r1" and r["pre_ai_grade"] not in ("", None) and r["ai_grade"] not in ("", None)
               for r in got)
