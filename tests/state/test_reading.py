"""Grade first, then compare (Qt-free): the lock, the hidden AI result, post-AI grades, the reads log."""
from __future__ import annotations

import json

import pytest

from sirad_viewer.state.reading import Reading, ReadingError, latest_reading


def test_ai_hidden_until_the_lock_and_pre_ai_grades_frozen(tmp_path):
    log = tmp_path / "reads.jsonl"
    r = Reading("case-1", reader="dr a", log_path=log)
    r.receive_ai({"grades": (4, 4)})
    assert r.ai is None and r.ai_error is None and not r.ai_pending
    r.set_grade("right", 2)
    with pytest.raises(ReadingError, match="missing: left"):
        r.lock()
    r.set_grade("left", 0)
    r.set_confidence("high")
    assert r.ai is None
    r.lock()
    assert r.ai == {"grades": (4, 4)} and r.locked_at
    r.set_grade("left", 3)  # after the reveal: a post-AI grade
    assert r.pre.left == 0 and r.post.left == 3 and r.post.right == 2
    with pytest.raises(ReadingError, match="already locked"):
        r.lock()
    r.save_post()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[0] == "open" and "lock" in events and events[-1] == "revise"
    got = latest_reading(log, "case-1")
    assert got["pre_ai"]["left"] == 0 and got["pre_ai"]["confidence"] == "high" and got["post_ai"]["left"] == 3


def test_clinical_setting_shows_the_ai_at_once():
    r = Reading("c", ai_visible_at_once=True)
    r.receive_ai("result")
    assert r.ai == "result" and not r.locked


def test_bad_grades_and_a_torn_log_line(tmp_path):
    r = Reading("c")
    with pytest.raises(ReadingError, match="outside 0-4"):
        r.set_grade("left", 5)
    with pytest.raises(ReadingError, match="unknown side"):
        r.set_grade("middle", 1)
    log = tmp_path / "reads.jsonl"
    r2 = Reading("c2", log_path=log)
    r2.set_grade("left", 1)
    r2.set_grade("right", 1)
    r2.lock()
    with open(log, "a") as fh:
        fh.write('{"event": "post", "case": "c2", "po')  # the program stopped mid-write
    assert latest_reading(log, "c2")["pre_ai"]["right"] == 1
    assert latest_reading(log, "other") is None


def test_unwritable_log_is_a_clear_error(tmp_path):
    (tmp_path / "ro").write_text("a file, not a folder")
    r = Reading("c", log_path=tmp_path / "ro" / "reads.jsonl")  # opening still works ...
    assert r.last_error and "reading log cannot be written" in r.last_error
    r.set_grade  # ... but nothing can be recorded
    with pytest.raises(ReadingError, match="reading log cannot be written"):
        r.set_grade("left", 1)


# --- the one grade-first state machine: every rule -----------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def graded(tmp_path=None, **kw) -> Reading:
    r = Reading("case", log_path=None if tmp_path is None else tmp_path / "reads.jsonl", **kw)
    r.set_grade("right", 2)
    r.set_grade("left", 1)
    return r


@pytest.mark.parametrize("blocker", ["folder", "file-parent"])
def test_lock_not_durably_written_refuses_the_reveal(tmp_path, blocker):
    log = tmp_path / "reads.jsonl"
    r = graded(tmp_path)
    r.receive_ai({"secret": "AI grade 4"})
    # the reads log becomes unwritable before the lock (disk full, a folder in its place)
    log.unlink()
    if blocker == "folder":
        log.mkdir()
    else:
        log.write_text("")
        r.log_path = r.sink.path = log / "reads.jsonl"  # a file where the folder should be
    with pytest.raises(ReadingError) as ei:
        r.lock()
    assert ei.value.code == "not_durable" and "reads.jsonl" in ei.value.user_message()
    assert not r.locked and r.ai is None and not r.ai_revealed  # the AI stays hidden
    assert r.pre.right == 2  # the grades are still editable: nothing was locked
    # once the log is writable again the lock is written and only then the AI shown
    if blocker == "folder":
        log.rmdir()
    else:
        r.log_path = r.sink.path = tmp_path / "reads2.jsonl"
    r.lock()
    assert r.locked and r.ai == {"secret": "AI grade 4"}
    assert latest_reading(r.log_path, "case")["pre_ai"]["right"] == 2


def test_reveal_record_not_written_keeps_the_ai_hidden():
    class FailingReveal:
        def write(self, event, reading, data):
            if event == "reveal":
                raise ReadingError("disk full", code="not_durable")

    r = Reading("c", sink=FailingReveal())
    r.set_grade("right", 0)
    r.set_grade("left", 0)
    r.receive_ai("result")
    r.lock()
    assert r.locked and r.ai is None and "disk full" in r.last_error


def test_comment_typed_before_the_lock_belongs_to_the_lock_record(tmp_path):
    r = graded(tmp_path)
    r.receive_ai("ai")
    r.lock(comment="erosions on the iliac side", confidence="medium")  # what the panel held at the lock
    rec = latest_reading(tmp_path / "reads.jsonl", "case")
    assert rec["pre_ai"]["comment"] == "erosions on the iliac side" and rec["pre_ai"]["confidence"] == "medium"
    assert r.pre.comment == "erosions on the iliac side" and r.post is None
    r.set_comment("erosions on the iliac side")  # the field's editingFinished after the lock: no post comment
    assert r.post is None
    r.set_comment("AI agrees")
    assert r.post.comment == "AI agrees" and r.pre.comment == "erosions on the iliac side"


def test_pause_blocks_grading_locking_and_the_reveal_and_stops_the_clock():
    clk = FakeClock()
    from sirad_viewer.state.reading import ActiveClock

    r = Reading("c", clock=ActiveClock(now=clk, idle_s=60))
    r.set_grade("right", 1)
    clk.t += 10
    r.pause()
    clk.t += 500
    for action in (lambda: r.set_grade("left", 1), r.lock, lambda: r.set_comment("x"), lambda: r.set_confidence("low")):
        with pytest.raises(ReadingError) as ei:
            action()
        assert ei.value.code == "paused"
    assert r.clock.active_s == pytest.approx(10)
    r.resume()
    r.set_grade("left", 1)
    r.lock()
    r.pause()
    r.receive_ai("ai result")  # arrives while paused: not revealed
    assert r.ai is None and not r.ai_revealed
    r.resume()
    assert r.ai == "ai result"


def test_active_clock_counts_input_not_idle_time():
    from sirad_viewer.state.reading import ActiveClock

    clk = FakeClock()
    c = ActiveClock(now=clk, idle_s=30)
    clk.t += 20
    assert c.active_s == pytest.approx(20) and not c.idle
    clk.t += 100  # no input: only up to 30 s after the last input counts
    assert c.idle and c.active_s == pytest.approx(30)
    c.activity()
    clk.t += 5
    assert not c.idle and c.active_s == pytest.approx(35)
    assert c.lap() == pytest.approx(35) and c.lap() == 0.0


def test_repr_never_shows_the_hidden_ai_result():
    r = graded()
    r.receive_ai({"grades": "SECRET-AI-GRADE-4"})
    assert "SECRET" not in repr(r) and "hidden" in repr(r)
    assert "SECRET" not in str(vars(r).get("changed", ""))
    r.lock()
    assert "SECRET" not in repr(r) and "revealed" in repr(r)


def test_no_revision_before_the_reveal_and_policy_is_fixed():
    r = graded()
    r.lock()  # the AI has not arrived yet
    with pytest.raises(ReadingError) as ei:
        r.set_grade("left", 4)
    assert ei.value.code == "not_revealed" and r.pre.left == 1
    unaided = Reading("c", ai_allowed=False)
    unaided.receive_ai("x")
    assert unaided.ai is None
    with pytest.raises(AttributeError):
        unaided.ai_visible_at_once = True  # the policy is decided when the reading is made, not mirrored later


def test_annotations_are_kept_with_the_reads_and_refused_while_paused(tmp_path):
    log = tmp_path / "reads.jsonl"
    r = Reading("case-a", reader="dr a", log_path=log)
    marks = {"items": [{"kind": "ruler", "points_lps": [[0, 0, 0], [3, 0, 0]], "length_mm": 3.0}]}
    r.record_annotations(marks)
    rec = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["event"] == "annotations"]
    assert rec and rec[-1]["annotations"] == marks and rec[-1]["case"] == "case-a"
    r.pause()
    with pytest.raises(ReadingError, match="paused"):
        r.record_annotations(marks)


def test_annotations_go_into_the_study_log(tmp_path):
    from sirad_viewer.state.study_reading import study_reading
    from sirad_viewer.study.session import ReaderSession
    from sirad_viewer.study.store import StudyStore
    from tests.study.test_store_session import protocol

    store = StudyStore.create(tmp_path / "s.sqlite", protocol())
    session = ReaderSession(store, "r1")
    item = session.current()
    session.open(item["case"])
    r = study_reading(session, item)
    marks = {"items": [{"kind": "lesion", "side": "left", "finding": "erosion", "points_lps": [[1, 2, 3]]}]}
    r.record_annotations(marks)
    events = [e for e in store.events() if e.kind == "annotations"]
    assert len(events) == 1 and events[0].payload["annotations"] == marks and events[0].case == item["case"]


def test_latest_reading_carries_the_readers_last_annotations(tmp_path):
    """#13: the findings go into the reader's SR, which is written from the reads log's record."""
    log = tmp_path / "reads.jsonl"
    r = Reading("case-a", log_path=log)
    r.record_annotations({"items": [], "findings": {"right": ["erosion"], "left": []}})
    r.set_grade("right", 2)
    r.set_grade("left", 0)
    r.lock()
    r.record_annotations({"items": [], "findings": {"right": ["erosion", "sclerosis"], "left": []}})
    got = latest_reading(log, "case-a")
    assert got["annotations"]["findings"]["right"] == ["erosion", "sclerosis"]  # the last state
    r2 = Reading("case-b", log_path=log)
    r2.set_grade("right", 1)
    r2.set_grade("left", 1)
    r2.lock()
    assert "annotations" not in latest_reading(log, "case-b")
