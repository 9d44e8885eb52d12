"""Tamper evidence without trusting the database, one live session per reader, the study reading."""
from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from sirad_viewer.cli import main
from sirad_viewer.study.integrity import CoordinatorKey, new_study_id
from sirad_viewer.study.protocol import Case, Protocol, Reader, StudyError
from sirad_viewer.study.session import JOINTS, ReaderSession
from sirad_viewer.study.store import StudyStore, event_hash


def protocol(n: int = 4, name: str = "integrity study") -> Protocol:
    return Protocol(name=name, design="sequential", seed=5, readers=[Reader("r1"), Reader("r2")],
                    cases=[Case(id=f"c{i}", path=f"cases/c{i}", reference={"left": i % 5, "right": (i + 1) % 5})
                           for i in range(n)])


def run_reader(store: StudyStore, reader: str, n_cases: int | None = None) -> None:
    s = ReaderSession(store, reader)
    s.sign_in()
    k = 0
    while (item := s.current()) is not None and (n_cases is None or k < n_cases):
        c = item["case"]
        s.open(c)
        for j in JOINTS:
            s.set_grade(c, j, 2)
        s.lock(c, comment="ok")
        s.reveal(c, {"joints": {"left": {"grade": 3}, "right": {"grade": 2}}})
        s.revise(c, "left", 3)
        s.close(c)
        k += 1
    s.release()


@pytest.fixture()
def study(tmp_path):
    """A study with two readers done, its key outside the study folder."""
    (tmp_path / "study").mkdir()
    db = tmp_path / "study" / "s.sqlite"
    key = CoordinatorKey.new(new_study_id()).write(tmp_path / "keys" / "coordinator.key")
    store = StudyStore.create(db, protocol(), key=key)
    run_reader(store, "r1")
    run_reader(store, "r2")
    store.close()
    return db, key.path


def status(db, key=None, capsys=None) -> tuple[int, str]:
    rc = main(["study", "status", str(db)] + (["--key", str(key)] if key else []))
    out = capsys.readouterr() if capsys else None
    return rc, (out.out + out.err) if out else ""


def rechain(db) -> None:
    """What an attacker with sqlite3 and sha256 does: renumber and rehash the whole chain."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT seq, ts, reader, case_id, kind, payload FROM study_events ORDER BY seq").fetchall()
    con.execute("DELETE FROM study_events")
    prev = "0" * 64
    for i, (_, ts, reader, case, kind, payload) in enumerate(rows, start=1):
        h = event_hash(prev, i, ts, reader, case, kind, payload)
        con.execute("INSERT INTO study_events (seq, ts, reader, case_id, kind, payload, prev_hash, hash, mac) "
                    "VALUES (?,?,?,?,?,?,?,?,'')", (i, ts, reader, case, kind, payload, prev, h))
        prev = h
    con.commit()
    con.close()


def sql(db, *statements) -> None:
    con = sqlite3.connect(db)
    for st in statements:
        con.execute(st)
    con.commit()
    con.close()


def test_intact_study_passes_with_and_without_the_key(study, capsys):
    db, key = study
    rc, out = status(db, key, capsys)
    assert rc == 0 and "signed with the coordinator key" in out
    rc, out = status(db, None, capsys)
    assert rc == 0 and "only the hash chain was checked" in out


def test_rewritten_chain_after_a_grade_edit_passes_the_chain_but_not_the_key(study, capsys):
    db, key = study
    sql(db, "UPDATE study_events SET payload = replace(payload, '\"grade\":2', '\"grade\":4') WHERE kind = 'grade_set'")
    rechain(db)
    rc, out = status(db, None, capsys)
    assert rc == 0 and "only the hash chain was checked" in out  # what the old check said: intact
    rc, out = status(db, key, capsys)
    assert rc == 2 and ("not signed with the coordinator key" in out or "carry no signature" in out)


@pytest.mark.parametrize("n", [1, 7, 40])
def test_tail_deletion_is_caught_with_the_key(study, capsys, n):
    db, key = study
    sql(db, f"DELETE FROM study_events WHERE seq > (SELECT max(seq) FROM study_events) - {n}")
    assert status(db, None, capsys)[0] == 0  # the chain alone cannot see it
    rc, out = status(db, key, capsys)
    assert rc == 2 and "are missing" in out and "records" in out


def test_deleting_the_reader_who_read_last_is_caught_and_named(study, capsys):
    db, key = study
    sql(db, "DELETE FROM study_events WHERE reader = 'r2'")
    rechain(db)
    rc, out = status(db, key, capsys)
    assert rc == 2 and "reader r2" in out and "all of this reader's events were deleted" in out


def test_reorder_is_caught(study, capsys):
    db, key = study
    con = sqlite3.connect(db)
    a = con.execute("SELECT ts, reader, case_id, kind, payload FROM study_events WHERE seq = 10").fetchone()
    b = con.execute("SELECT ts, reader, case_id, kind, payload FROM study_events WHERE seq = 11").fetchone()
    con.execute("UPDATE study_events SET ts=?, reader=?, case_id=?, kind=?, payload=? WHERE seq = 10", b)
    con.execute("UPDATE study_events SET ts=?, reader=?, case_id=?, kind=?, payload=? WHERE seq = 11", a)
    con.commit()
    con.close()
    assert status(db, None, capsys)[0] == 2
    rechain(db)
    rc, out = status(db, key, capsys)
    assert rc == 2 and ("not signed" in out or "no signature" in out)


def test_protocol_and_its_stored_hash_edited_together_are_caught_and_named(study, capsys):
    import json

    db, key = study
    con = sqlite3.connect(db)
    p = json.loads(con.execute("SELECT value FROM study_meta WHERE key = 'protocol'").fetchone()[0])
    p["cases"][0]["reference"] = {"left": 4, "right": 4}
    new = Protocol.from_dict(p)
    con.execute("UPDATE study_meta SET value = ? WHERE key = 'protocol'", (new.canonical_json(),))
    con.execute("UPDATE study_meta SET value = ? WHERE key = 'protocol_hash'", (new.hash,))
    con.commit()
    con.close()
    for k in (None, key):
        rc, out = status(db, k, capsys)
        assert rc == 2 and "protocol was changed" in out and "case c0 reference" in out


def test_replacement_by_another_consistent_study_is_caught(study, tmp_path, capsys):
    db, key = study
    other_key = CoordinatorKey.new(new_study_id()).write(tmp_path / "attacker.key")
    other = StudyStore.create(tmp_path / "other.sqlite", protocol(), key=other_key)
    run_reader(other, "r1")
    run_reader(other, "r2")
    other.close()
    for suffix in ("", "-wal", "-shm"):
        (db.parent / (db.name + suffix)).unlink(missing_ok=True)
    shutil.copy(tmp_path / "other.sqlite", db)
    assert status(db, None, capsys)[0] == 0  # a consistent chain ...
    rc, out = status(db, key, capsys)  # ... but not this study
    assert rc == 2 and "not the study the key was made for" in out


def test_an_older_copy_put_back_is_caught_by_the_anchor_beside_the_key(tmp_path, capsys):
    (tmp_path / "study").mkdir()
    db = tmp_path / "study" / "s.sqlite"
    key = CoordinatorKey.new(new_study_id()).write(tmp_path / "keys" / "k.key")
    store = StudyStore.create(db, protocol(), key=key)
    run_reader(store, "r1", n_cases=2)
    store.close()
    shutil.copy(db, tmp_path / "old.sqlite")  # a consistent, signed copy ...
    store = StudyStore(db, key=key)
    run_reader(store, "r1")
    store.close()
    for suffix in ("-wal", "-shm"):
        (db.parent / (db.name + suffix)).unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.sqlite", db)  # ... put back over the newer study
    rc, out = status(db, key.path, capsys)
    assert rc == 2 and "anchor beside the key" in out and "are missing" in out


def test_export_and_analyse_refuse_a_tampered_study(study, tmp_path, capsys):
    db, key = study
    assert main(["study", "export", str(db), "--key", str(key), "--out", str(tmp_path / "ok.csv")]) == 0
    sql(db, "DELETE FROM study_events WHERE seq = (SELECT max(seq) FROM study_events)")
    assert main(["study", "export", str(db), "--key", str(key), "--out", str(tmp_path / "bad.csv")]) == 2
    assert not (tmp_path / "bad.csv").exists()
    assert main(["study", "analyse", str(db), "--key", str(key), "--out", str(tmp_path / "an"), "--bootstrap", "10"]) == 2
    assert "TAMPERED" in capsys.readouterr().err


def test_create_writes_a_key_outside_the_study_folder(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("SIRAD_KEYS", str(tmp_path / "keys"))
    (tmp_path / "p.json").write_text(json.dumps(protocol().to_dict()))
    assert main(["study", "create", str(tmp_path / "s.sqlite"), "--protocol", str(tmp_path / "p.json")]) == 0
    keys = list((tmp_path / "keys").glob("*.key"))
    assert len(keys) == 1 and (keys[0].stat().st_mode & 0o777) == 0o600
    assert "coordinator key:" in capsys.readouterr().out
    assert status(tmp_path / "s.sqlite", keys[0], capsys)[0] == 0
    assert main(["study", "create", str(tmp_path / "s.sqlite"), "--protocol", str(tmp_path / "p.json")]) == 2
    assert len(list((tmp_path / "keys").glob("*.key"))) == 1  # no orphan key for a refused create
    assert CoordinatorKey.load(keys[0]).secret.hex() not in repr(CoordinatorKey.load(keys[0]))


# --- one live session per reader ---------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from sirad_viewer.study.store import StudyStore
    from sirad_viewer.study.session import ReaderSession
    s = ReaderSession(StudyStore(sys.argv[1]), "r1")
    s.sign_in()
    case = s.current()["case"]
    s.open(case)
    print("signed-in", flush=True)
    sys.stdin.readline()
    try:
        s.set_grade(case, "left", 1)
        print("wrote", flush=True)
    except Exception as exc:
        print("refused", getattr(exc, "code", type(exc).__name__), flush=True)
""")


def test_second_sign_in_of_a_reader_from_another_process_is_refused_or_takes_over(tmp_path):
    db = tmp_path / "s.sqlite"
    StudyStore.create(db, protocol()).close()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "signed-in"
        second = ReaderSession(StudyStore(db), "r1")
        with pytest.raises(StudyError) as ei:
            second.sign_in()
        assert ei.value.code == "reader_busy" and "already signed in" in ei.value.message
        with pytest.raises(StudyError):  # a write without signing in is refused the same way
            second.open(second.current()["case"])
        ReaderSession(StudyStore(db), "r2").sign_in()  # another reader is not affected
        second.sign_in(takeover=True)  # explicit takeover ...
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["refused", "session_taken_over"]  # ... ends the first session
    finally:
        proc.kill()
        proc.wait()
    case = second.current()["case"]
    second.open(case)
    second.set_grade(case, "left", 2)
    second.set_grade(case, "right", 2)
    second.lock(case)
    locks = [e for e in StudyStore(db).events(reader="r1") if e.kind == "locked"]
    assert len(locks) == 1


def test_two_sessions_in_one_process_cannot_both_lock(tmp_path):
    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    a, b = ReaderSession(store, "r1"), ReaderSession(store, "r1")
    case = a.current()["case"]
    a.open(case)
    with pytest.raises(StudyError) as ei:
        b.open(case)
    assert ei.value.code == "reader_busy"
    a.release()
    b.open(case)  # released: the next sign-in works
    with pytest.raises(StudyError) as ei:
        a.set_grade(case, "left", 1)
    assert ei.value.code in ("reader_busy", "session_taken_over")


def test_pre_ai_grade_comes_from_the_lock_record_not_a_later_grade_set(tmp_path):
    from sirad_viewer.study.analysis import export_rows

    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    s = ReaderSession(store, "r1")
    case = s.current()["case"]
    s.open(case)
    s.set_grade(case, "left", 1)
    s.set_grade(case, "right", 1)
    s.lock(case)
    # a grade_set appended after the lock (a second process, a bug, a hand edit through the API)
    store.append("r1", case, "grade_set", {"session": 1, "joint": "left", "grade": 4})
    assert s.states()[(case, 1)].pre == {"left": 1, "right": 1}
    rows = [r for r in export_rows(store) if r["reader"] == "r1" and r["case"] == case]
    assert {r["joint"]: r["pre_ai_grade"] for r in rows} == {"left": 1, "right": 1}


# --- a study case read with the one state machine ----------------------------------------------------

def test_study_reading_writes_through_and_enforces_the_rules(tmp_path):
    from sirad_viewer.state.reading import ReadingError
    from sirad_viewer.state.study_reading import study_reading

    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    s = ReaderSession(store, "r1")
    s.sign_in()
    item = s.current()
    s.open(item["case"])
    r = study_reading(s, item)
    r.receive_ai({"joints": {"left": {"grade": 4}, "right": {"grade": 4}}})
    r.set_grade("right", 2)
    r.set_grade("left", 3)
    r.set_comment("typed before the lock")
    r.pause()
    with pytest.raises(ReadingError):
        r.lock()
    assert s.states()[(item["case"], 1)].paused
    r.resume()
    r.lock(confidence="high")
    st = s.states()[(item["case"], 1)]
    assert st.locked_at and st.comment == "typed before the lock" and st.confidence == 3
    assert st.pre == {"right": 2, "left": 3} and st.revealed_at and r.ai is not None
    r.set_grade("left", 4)
    assert s.states()[(item["case"], 1)].post == {"left": 4}
    # resumed in a new reading (a restart): locked, revealed, nothing written twice
    n = sum(1 for _ in store.events())
    r2 = study_reading(s, item)
    assert r2.locked and r2.pre.left == 3 and r2.post.left == 4
    r2.receive_ai({"joints": {}})
    assert r2.ai is not None and sum(1 for _ in store.events()) == n


def test_study_lock_not_written_keeps_the_ai_hidden(tmp_path):
    from sirad_viewer.state.reading import ReadingError
    from sirad_viewer.state.study_reading import study_reading

    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    s = ReaderSession(store, "r1")
    s.sign_in()
    item = s.current()
    s.open(item["case"])
    r = study_reading(s, item)
    r.receive_ai({"joints": {}})
    r.set_grade("right", 2)
    r.set_grade("left", 3)
    ReaderSession(store, "r1").sign_in(takeover=True)  # this session can no longer write
    with pytest.raises(ReadingError) as ei:
        r.lock()
    assert ei.value.code == "session_taken_over"
    assert not r.locked and r.ai is None


def test_session_refuses_grading_locking_and_reveal_while_paused(tmp_path):
    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    s = ReaderSession(store, "r1")
    case = s.current()["case"]
    s.open(case)
    s.set_grade(case, "left", 1)
    s.set_grade(case, "right", 1)
    s.mark(case, "paused", active_s=3.0)
    for action in (lambda: s.set_grade(case, "left", 2), lambda: s.lock(case), lambda: s.reveal(case, {})):
        with pytest.raises(StudyError) as ei:
            action()
        assert ei.value.code == "paused"
    s.mark(case, "idle", active_s=3.0)
    s.mark(case, "resumed", active_s=3.0, after="idle")  # back from idle is not the end of a pause
    with pytest.raises(StudyError):
        s.lock(case)
    s.mark(case, "resumed", active_s=3.0)
    s.lock(case)
    s.reveal(case, {})
