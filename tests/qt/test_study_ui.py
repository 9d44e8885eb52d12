"""Reader-study mode in the window: sign-in, arms and blinding, write-through grades, time, resume,
pause, cannot-grade, the coordinator view; and the grading panel's defects from issue 12."""
from __future__ import annotations

import pytest
from PyQt6 import QtCore, QtGui, QtWidgets

pytestmark = pytest.mark.qt


class FakeClock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def study_files(tmp_path_factory, small_phantom):
    """A sequential and a crossover study over the same 3 phantom cases (references known), keys outside."""
    from sirad_viewer.phantom import write_phantom
    from sirad_viewer.study.integrity import CoordinatorKey, new_study_id
    from sirad_viewer.study.protocol import Protocol
    from sirad_viewer.study.store import StudyStore

    root = tmp_path_factory.mktemp("study")
    cases = []
    for i, (l, r) in enumerate([(0, 2), (3, 1), (4, 4)]):
        write_phantom(small_phantom(l, r, seed=10 + i, matrix=96), root / f"c{i}")
        cases.append({"id": f"c{i}", "path": f"c{i}/ct.nii.gz", "reference": {"left": l, "right": r}, "site": "A"})
    out = {}
    for design in ("sequential", "crossover", "spare"):
        p = Protocol.from_dict({"name": f"{design} test", "design": "crossover" if design == "crossover" else "sequential",
                                "seed": 7, "readers": [{"id": "r1"}, {"id": "r2"}], "cases": cases,
                                "crossover": {"sessions": 2, "washout_days": 0}})
        out[design] = root / f"{design}.sqlite"
        key = CoordinatorKey.new(new_study_id()).write(root.parent / f"{root.name}-{design}.key")
        out[design + "-key"] = key.path
        StudyStore.create(out[design], p, key=key).close()
    return out


@pytest.fixture()
def win(qtbot, tmp_path, monkeypatch):
    from sirad_viewer.qt.app import MainWindow, Settings

    monkeypatch.setenv("SIRAD_READS", str(tmp_path / "reads.jsonl"))
    w = MainWindow(settings=Settings(str(tmp_path / "settings.ini")), interactive=False, with_3d=False)
    w.settings.set("ai_autorun", True)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    if w._ai_worker is not None:  # no AI run may outlive its window into the next test
        w.cancel_ai()
        w._ai_worker.finished.wait(60)
    for _ in range(3):
        QtWidgets.QApplication.processEvents()
    w.close()


def wait_case(w):
    """Until the study's current case is open in the window (it may already be)."""
    from pytestqt.qtbot import QtBot

    QtBot(w).waitUntil(lambda: w.study.item is not None and w.reading is not None
                       and w.reading.case == w.study.item["case"] and w.state.volume is not None, timeout=120_000)


def texts(w) -> str:
    out = []
    for c in w.findChildren(QtWidgets.QWidget):
        if not c.isVisible():
            continue
        for attr in ("text", "toolTip", "toPlainText", "windowTitle"):
            fn = getattr(c, attr, None)
            if callable(fn):
                try:
                    v = fn()
                except TypeError:
                    continue
                if isinstance(v, str):
                    out.append(v)
    out.append(w.statusBar().currentMessage())
    return "\n".join(out)


def test_sequential_study_writes_through_and_resumes(win, study_files):
    from sirad_viewer.qt.app import MainWindow
    from sirad_viewer.study.session import ReaderSession
    from sirad_viewer.study.store import StudyStore

    clk = FakeClock()
    assert win.start_study(str(study_files["sequential"]), reader="r1", key=str(study_files["sequential-key"]), clock=clk)
    ctl = win.study
    wait_case(win)
    first = ctl.item["case"]
    assert "case 1 of 3" in ctl.case_label.text() and first in ctl.case_label.text()
    assert "reference" not in texts(win).lower()  # no reference grade anywhere
    assert win.wait_for_ai()
    assert win.reading.ai is None  # sequential: hidden before the lock
    clk.t += 5.0
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
    assert st.active_s == pytest.approx(5.0)
    # the program stops here (the case is not closed); a new window resumes at the same case, locked
    win.end_study()
    w2 = MainWindow(interactive=False, with_3d=False)
    try:
        w2.start_study(str(study_files["sequential"]), reader="r1", key=str(study_files["sequential-key"]))
        wait_case(w2)
        assert w2.study.item["case"] == first
        assert w2.reading.locked and w2.reading.pre.right == 2 and w2.reading.pre.left == 1
        w2.study.next_case()
        wait_case(w2)
        assert w2.study.item["case"] != first and "case 2 of 3" in w2.study.case_label.text()
        second = w2.study.item["case"]
        w2.study.cannot_grade("motion artefact")
        assert ReaderSession(StudyStore(study_files["sequential"]), "r1").states()[(second, 1)].cannot_grade == \
            "motion artefact"
    finally:
        w2.close()


def test_unaided_arm_never_runs_or_shows_the_ai_and_idle_time_does_not_count(win, study_files):
    clk = FakeClock()
    assert win.start_study(str(study_files["crossover"]), reader="r2", key=str(study_files["crossover-key"]), clock=clk)
    ctl = win.study
    for _ in range(3):
        wait_case(win)
        if ctl.item["arm"] == "unaided":
            break
        ctl.cannot_grade("skipped by the test")
    assert ctl.item["arm"] == "unaided"
    if win._ai_worker is not None:  # a run for an earlier (aided) case may still be finishing
        win._ai_worker.finished.wait(60)
        QtWidgets.QApplication.processEvents()
    assert not win.reading.ai_allowed and win.reading._ai is None
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
    before = ctl.active_s
    clk.t += 200.0
    ctl.tick()
    assert ctl.idle and ctl.active_s == pytest.approx(before + 60.0)
    ctl.activity()
    clk.t += 2.0
    assert not ctl.idle and ctl.active_s == pytest.approx(before + 62.0)
    ctl.toggle_pause()
    clk.t += 3.0
    assert ctl.paused and ctl.active_s == pytest.approx(before + 62.0) and ctl.cover.isVisible()
    ctl.toggle_pause()
    assert not ctl.cover.isVisible()


def test_coordinator_view_needs_the_key_and_exports(qtbot, study_files, tmp_path):
    import csv

    from sirad_viewer.qt.study import CoordinatorDialog
    from sirad_viewer.study.integrity import CoordinatorKey
    from sirad_viewer.study.protocol import StudyError
    from sirad_viewer.study.store import StudyStore

    with pytest.raises(StudyError, match="coordinator key"):
        CoordinatorDialog(StudyStore(study_files["sequential"]), None)
    with pytest.raises(StudyError, match="coordinator key"):  # another study's key
        CoordinatorDialog(StudyStore(study_files["sequential"]), CoordinatorKey.load(study_files["crossover-key"]))
    dlg = CoordinatorDialog(StudyStore(study_files["sequential"]), CoordinatorKey.load(study_files["sequential-key"]))
    qtbot.addWidget(dlg)
    assert "intact" in dlg.integrity.text().lower(), dlg.integrity.text()
    rows = {dlg.table.item(i, 0).text(): dlg.table.item(i, 1).text() for i in range(dlg.table.rowCount())}
    assert rows["r2"] == "0 / 3" and rows["r1"].startswith(("1 /", "2 /"))
    out = dlg.export(str(tmp_path / "reads.csv"))
    with open(out) as fh:
        got = list(csv.DictReader(fh))
    assert any(r["reader"] == "r1" and r["pre_ai_grade"] not in ("", None) and r["ai_grade"] not in ("", None)
               for r in got)


# --- blinding by role -----------------------------------------------------------------------------

def test_reader_session_is_blinded_and_offers_no_coordinator_view_or_export(win, study_files, monkeypatch):
    win.settings.set("ai_autorun", False)
    assert win.start_study(str(study_files["spare"]), reader="r2", key=str(study_files["spare-key"]))
    wait_case(win)
    case = win.study.item["case"]
    all_text = texts(win)
    assert "ct.nii.gz" not in all_text and str(study_files["spare"].parent) not in all_text
    assert f"case {case}" in win.info.toPlainText() and not win.series_dock.isVisible()
    assert not win.state.show_patient_text and not win.patient_text_action.isEnabled()
    assert not win.coordinator_action.isEnabled()
    assert not any(a.isEnabled() for a in win.export_actions)
    assert win.write_report(str(study_files["spare"].parent / "r.html")) is None
    opened = []
    monkeypatch.setattr("sirad_viewer.qt.study.CoordinatorDialog.exec", lambda self: opened.append(self))
    win.coordinator_dialog(str(study_files["spare"]), str(study_files["spare-key"]))
    assert not opened  # not even with the key, from a reader's session
    win.end_study()
    assert win.coordinator_action.isEnabled() and win.series_dock.isVisible()


def test_ai_visible_at_once_set_during_a_study_does_not_reach_clinical_reading(win, study_files, real_nifti):
    win.settings.set("ai_autorun", False)
    assert win.start_study(str(study_files["spare"]), reader="r1", key=str(study_files["spare-key"]))
    wait_case(win)
    vis = next(a for a in win.findChildren(QtGui.QAction) if a.text().startswith("AI visible at once"))
    vis.setChecked(True)  # tried during the study
    win.end_study()
    win.settings.set("ai_autorun", False)
    win.open_path(str(real_nifti))
    assert win.wait_until_ready(mesh=False)
    assert not win.reading.ai_visible_at_once
    win.reading.receive_ai("an AI result")
    assert win.reading.ai is None  # grade first, as before the study


def test_pause_resume_keeps_the_layout_and_saves_no_squeezed_layout(win, study_files, qtbot):
    from sirad_viewer.qt.app import MainWindow

    win.settings.set("ai_autorun", False)
    assert win.start_study(str(study_files["spare"]), reader="r1", key=str(study_files["spare-key"]))
    wait_case(win)
    QtWidgets.QApplication.processEvents()
    grid, dock = win.grid_host.size(), win.ai_dock.width()
    ctl = win.study
    for _ in range(3):  # pause, resume, pause: the images are covered, the docks do not move
        ctl.toggle_pause()
        for _ in range(5):
            QtWidgets.QApplication.processEvents()
        assert abs(win.ai_dock.width() - dock) <= 2 and win.grid_host.isVisible()
    assert ctl.paused
    win.close()  # the program is closed while paused: the saved layout is the reading layout
    w2 = MainWindow(settings=win.settings, interactive=False, with_3d=False)
    qtbot.addWidget(w2)
    w2.show()
    qtbot.waitExposed(w2)
    for _ in range(5):
        QtWidgets.QApplication.processEvents()
    assert abs(w2.grid_host.width() - grid.width()) <= 4 and abs(w2.ai_dock.width() - dock) <= 4
    w2.close()


def test_pause_blocks_the_panel(win, study_files):
    win.settings.set("ai_autorun", False)
    assert win.start_study(str(study_files["spare"]), reader="r2", key=str(study_files["spare-key"]))
    wait_case(win)
    win.study.toggle_pause()
    g = win.ai_panel.grading
    assert not any(b.isEnabled() for b in g.groups["right"].buttons())
    win.reading.set_grade  # the core refuses too (tests/state); the panel's keys do nothing
    g.grade_key(3)
    assert win.reading.pre.right is None
    win.study.toggle_pause()
    g.grade_key(3)
    assert win.reading.pre.right == 3


def test_unknown_reader_id_does_not_quit_the_program(study_files, monkeypatch, qtbot):
    from sirad_viewer.qt import app as app_mod
    from sirad_viewer.qt.study import SignInDialog

    shown = []
    monkeypatch.setattr(SignInDialog, "exec", lambda self: shown.append(self) or 0)  # the reader cancels
    ran = []
    monkeypatch.setattr(QtWidgets.QApplication, "exec", lambda *a: ran.append(True) or 0)
    monkeypatch.setattr(app_mod.MainWindow, "show", lambda self: None)
    windows = []
    orig = app_mod.MainWindow.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        windows.append(self)

    monkeypatch.setattr(app_mod.MainWindow, "__init__", init)
    rc = app_mod.run(study=str(study_files["spare"]), reader="nobody")
    try:
        assert rc == 0 and ran  # the event loop ran: the window stayed open
        assert shown and "nobody" in "\n".join(l.text() for l in shown[0].findChildren(QtWidgets.QLabel))
    finally:
        for w in windows:
            w.close()


def test_empty_cannot_grade_reason_keeps_the_dialog_open(win, study_files, qtbot):
    win.settings.set("ai_autorun", False)
    assert win.start_study(str(study_files["spare"]), reader="r2", key=str(study_files["spare-key"]))
    wait_case(win)
    case = win.study.item["case"]
    seen = {}

    def interact():
        dlg = QtWidgets.QApplication.activeModalWidget()
        bb = dlg.findChild(QtWidgets.QDialogButtonBox)
        ok = bb.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        ok.click()  # empty reason
        QtWidgets.QApplication.processEvents()
        seen["open_after_empty"] = dlg.isVisible()
        dlg.findChild(QtWidgets.QLineEdit).setText("joints outside the field of view")
        ok.click()

    QtCore.QTimer.singleShot(300, interact)
    win.study.cannot_grade_dialog()
    assert seen["open_after_empty"]
    from sirad_viewer.study.session import ReaderSession
    from sirad_viewer.study.store import StudyStore

    assert ReaderSession(StudyStore(study_files["spare"]), "r2").states()[(case, 1)].cannot_grade == \
        "joints outside the field of view"


# --- the grading panel --------------------------------------------------------------------------

def test_grade_buttons_show_the_new_cases_state_not_the_previous_selection(qtbot):
    from sirad_viewer.qt.ai_panel import GradingPanel
    from sirad_viewer.state.reading import Reading

    p = GradingPanel()
    qtbot.addWidget(p)
    a = Reading("case-a")
    p.bind(a)
    p.groups["right"].button(3).click()
    p.groups["left"].button(2).click()
    assert p.groups["right"].checkedId() == 3
    p.bind(Reading("case-b"))  # the next case: nothing graded yet
    assert p.groups["right"].checkedId() == -1 and p.groups["left"].checkedId() == -1
    assert not any(b.isChecked() for g in p.groups.values() for b in g.buttons())


def manual_reading(win, log_path, qtbot):
    from sirad_viewer.state.reading import Reading

    win.activateWindow()
    qtbot.waitActive(win)  # shortcuts need the active window
    win.reading = Reading("manual-case", log_path=log_path)
    win.reading.changed.connect(win._on_reading_changed)
    win.ai_panel.bind(win.reading)
    return win.reading


def test_ctrl_return_in_the_comment_field_puts_the_comment_into_the_lock_record(win, qtbot, tmp_path):
    from sirad_viewer.state.reading import latest_reading

    r = manual_reading(win, tmp_path / "reads.jsonl", qtbot)
    g = win.ai_panel.grading
    g.groups["right"].button(2).click()
    g.groups["left"].button(1).click()
    g.comment.setFocus()
    qtbot.keyClicks(g.comment, "sclerosis left iliac")
    qtbot.keyClick(g.comment, QtCore.Qt.Key.Key_Return, QtCore.Qt.KeyboardModifier.ControlModifier)
    QtWidgets.QApplication.processEvents()
    assert r.locked, (r.pre, QtWidgets.QApplication.focusWidget(), QtWidgets.QApplication.activeWindow())
    win.ai_panel.setFocus()  # the field loses focus (editingFinished)
    QtWidgets.QApplication.processEvents()
    rec = latest_reading(tmp_path / "reads.jsonl", "manual-case")
    assert rec["pre_ai"]["comment"] == "sclerosis left iliac"
    assert r.post is None or r.post.comment in ("", "sclerosis left iliac") and r.pre.comment == "sclerosis left iliac"


def test_unwritable_reads_log_lock_fails_cleanly_and_the_ai_stays_hidden(win, qtbot, tmp_path):
    log = tmp_path / "reads.jsonl"
    r = manual_reading(win, log, qtbot)
    g = win.ai_panel.grading
    g.groups["right"].button(2).click()
    g.groups["left"].button(1).click()
    r.receive_ai("THE AI RESULT")
    log.unlink(missing_ok=True)
    log.mkdir()  # a folder where the reads log should be
    g.lock_button.click()  # no exception escapes the slot (pytest-qt fails the test otherwise) ...
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Return, QtCore.Qt.KeyboardModifier.ControlModifier)
    QtWidgets.QApplication.processEvents()
    assert not r.locked and r.ai is None  # ... nothing is locked and nothing revealed
    assert "cannot be written" in g.status.text() or "cannot be written" in win.statusBar().currentMessage()
