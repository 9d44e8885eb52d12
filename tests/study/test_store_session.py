"""Study storage and sessions: frozen protocol, hash chain, crash safety, grade-lock-reveal rules, blinding."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from sirad_viewer.study.protocol import Case, Protocol, Reader, StudyError
from sirad_viewer.study.session import ReaderSession
from sirad_viewer.study.store import StudyStore


def protocol(design: str = "sequential", n: int = 6) -> Protocol:
    return Protocol(name="test study", design=design, seed=42,
                    readers=[Reader("r1"), Reader("r2")],
                    cases=[Case(id=f"c{i}", path=f"cases/c{i}", reference={"left": i % 5, "right": (i + 2) % 5})
                           for i in range(n)])


def test_protocol_validation_names_the_problem(tmp_path):
    with pytest.raises(StudyError, match="design"):
        Protocol.from_dict({"name": "x", "design": "parallel"})
    with pytest.raises(StudyError, match="0-4"):
        Protocol.from_dict({"name": "x", "cases": [{"id": "a", "path": "p", "reference": {"left": 5, "right": 0}}]})
    with pytest.raises(StudyError, match="unique"):
        Protocol.from_dict({"name": "x", "cases": [{"id": "a", "path": "p"}, {"id": "a", "path": "q"}]})
    bad = tmp_path / "p.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(StudyError) as ei:
        Protocol.load(bad)
    assert ei.value.path == str(bad) and "YAML" in ei.value.message


def test_protocol_hash_is_stable_and_sensitive():
    a, b = protocol(), protocol()
    assert a.hash == b.hash
    b.cases[0].reference = {"left": 4, "right": 4}
    assert a.hash != b.hash


def test_protocol_cannot_change_after_the_first_grade(tmp_path):
    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    p = store.protocol
    p.cases.append(Case(id="extra", path="x"))
    store.update_protocol(p)  # allowed: nothing graded yet
    s = ReaderSession(store, "r1")
    case = s.current()["case"]
    s.open(case)
    s.set_grade(case, "left", 2)
    p.cases.append(Case(id="late", path="y"))
    with pytest.raises(StudyError) as ei:
        store.update_protocol(p)
    assert ei.value.code == "protocol_frozen"
    assert "late" not in [c.id for c in store.protocol.cases]


def test_hash_chain_detects_an_edited_row(tmp_path):
    path = tmp_path / "s.sqlite"
    store = StudyStore.create(path, protocol())
    s = ReaderSession(store, "r1")
    case = s.current()["case"]
    s.open(case)
    s.set_grade(case, "left", 1)
    s.set_grade(case, "right", 3)
    s.lock(case)
    assert store.verify()[0]
    store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE study_events SET payload = replace(payload, '\"grade\":3', '\"grade\":4') WHERE kind = 'grade_set'")
    con.commit()
    con.close()
    ok, msg = StudyStore(path).verify()
    assert not ok and "edited" in msg and "grade_set" in msg
    con = sqlite3.connect(path)
    con.execute("DELETE FROM study_events WHERE seq = 2")
    con.commit()
    con.close()
    ok, msg = StudyStore(path).verify()
    assert not ok


def test_sequential_rules_lock_reveal_revise_and_blinding(tmp_path):
    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    s = ReaderSession(store, "r1")
    case = s.current()["case"]
    s.open(case)
    view = s.view(case)
    assert "reference" not in json.dumps(view) and "ai" not in view
    s.set_grade(case, "left", 2)
    with pytest.raises(StudyError, match="before locking"):
        s.lock(case)
    s.set_grade(case, "right", 1)
    with pytest.raises(StudyError) as ei:
        s.reveal(case, {"joints": {"left": {"grade": 3}}})
    assert ei.value.code == "not_locked"
    with pytest.raises(StudyError):
        s.revise(case, "left", 3)
    s.lock(case, confidence=4, active_s=61.0)
    assert "ai" not in s.view(case)  # locked, not yet revealed
    with pytest.raises(StudyError) as ei:
        s.set_grade(case, "left", 4)  # the pre-AI grade can never change after the lock
    assert ei.value.code == "locked"
    s.reveal(case, {"joints": {"left": {"grade": 3}, "right": {"grade": 1}}})
    s.revise(case, "left", 3)
    with pytest.raises(StudyError):
        s.set_grade(case, "left", 0)
    st = s.states()[(case, 1)]
    assert st.pre == {"left": 2, "right": 1} and st.post == {"left": 3}
    v = s.view(case)
    assert v["ai"]["joints"]["left"]["grade"] == 3 and v["pre_ai_grades"] == {"left": 2, "right": 1}
    # other readers never see r1's grades
    s2 = ReaderSession(store, "r2")
    s2.open(case)
    assert s2.view(case)["pre_ai_grades"] == {}


def test_case_order_is_randomised_per_reader_and_recorded(tmp_path):
    store = StudyStore.create(tmp_path / "s.sqlite", protocol(n=12))
    o1 = [i["case"] for i in ReaderSession(store, "r1").order]
    o2 = [i["case"] for i in ReaderSession(store, "r2").order]
    assert sorted(o1) == sorted(o2) and o1 != o2
    assert [i["case"] for i in ReaderSession(store, "r1").order] == o1  # reopened: same order


def test_crossover_arms_and_washout(tmp_path):
    store = StudyStore.create(tmp_path / "s.sqlite", protocol("crossover", n=6))
    s = ReaderSession(store, "r1")
    first = [i for i in s.order if i["session"] == 1]
    second = [i for i in s.order if i["session"] == 2]
    assert sorted(i["arm"] for i in first) == ["aided"] * 3 + ["unaided"] * 3
    arm1 = {i["case"]: i["arm"] for i in first}
    assert all(arm1[i["case"]] != i["arm"] for i in second)  # swapped in session 2
    unaided = next(i["case"] for i in first if i["arm"] == "unaided")
    with pytest.raises(StudyError) as ei:
        s.reveal(unaided, {"joints": {}})
    assert ei.value.code == "blinded"
    for item in first:
        c = item["case"]
        s.open(c)
        if item["arm"] == "aided":
            s.reveal(c, {"joints": {"left": {"grade": 1}, "right": {"grade": 1}}})
        s.set_grade(c, "left", 1)
        s.set_grade(c, "right", 1)
        s.lock(c)
        s.close(c)
    nxt = s.current()
    assert nxt["session"] == 2
    with pytest.raises(StudyError) as ei:
        s.open(nxt["case"])
    assert ei.value.code == "washout" and "28 days" in ei.value.message
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29)
    s.open(nxt["case"], now=later)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from sirad_viewer.study.store import StudyStore
    from sirad_viewer.study.session import ReaderSession
    store = StudyStore(sys.argv[1])
    s = ReaderSession(store, "r1")
    n = 0
    while (item := s.current()) is not None:
        c = item["case"]
        s.open(c)
        s.set_grade(c, "left", 2)
        s.set_grade(c, "right", 3)
        s.lock(c)
        s.close(c)
        n += 1
        print("committed", c, flush=True)
""")


def test_sigkill_mid_session_keeps_every_committed_grade(tmp_path):
    path = tmp_path / "s.sqlite"
    StudyStore.create(path, protocol(n=400)).close()
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.time() + 120
    while len(committed) < 15 and time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("committed"):
            committed.append(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(committed) >= 15
    store = StudyStore(path)
    ok, msg = store.verify()
    assert ok, msg
    s = ReaderSession(store, "r1")
    states = s.states()
    for c in committed:
        st = states[(c, 1)]
        assert st.pre == {"left": 2, "right": 3} and st.locked_at is not None and st.closed_at is not None
    # resume exactly where the reader stopped: the first case not closed
    order = [i["case"] for i in s.order]
    done = [c for c in order if states[(c, 1)].done]
    assert s.current()["case"] == order[len(done)]
    assert set(committed) <= set(done)
