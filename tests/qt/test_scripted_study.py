"""`sirad-viewer --study S --reader R --screenshot X` on a case that cannot be loaded: exit 2 at once
with the reason, not a blank screenshot after two minutes and exit 0."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.qt


def test_scripted_study_case_that_fails_to_load_exits_2(qapp, tmp_path, capsys):
    from sirad_viewer.qt.scripted import run
    from sirad_viewer.study.protocol import Case, Protocol, Reader
    from sirad_viewer.study.store import StudyStore

    (tmp_path / "cases" / "c1").mkdir(parents=True)
    (tmp_path / "cases" / "c1" / "notes.txt").write_text("not a CT")
    p = Protocol(name="s", seed=1, readers=[Reader("r1")], cases=[Case(id="c1", path="cases/c1")])
    db = tmp_path / "study.sqlite"
    StudyStore.create(str(db), p)
    shot = tmp_path / "shot.png"
    t0 = time.monotonic()
    assert run(study=str(db), reader="r1", screenshot=str(shot)) == 2
    assert time.monotonic() - t0 < 60 and not shot.exists()
    assert "holds no CT image" in capsys.readouterr().err


def test_scripted_coordinator_is_refused_instead_of_waiting_for_a_key_dialog(qapp, tmp_path, capsys):
    from sirad_viewer.qt.scripted import run

    assert run(coordinator=str(tmp_path / "study.sqlite"), screenshot=str(tmp_path / "x.png")) == 2
    assert "--coordinator" in capsys.readouterr().err
