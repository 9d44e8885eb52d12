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
    assert events[0] == "open" and "lock" in events and events[-1] == "post"
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
    with pytest.raises(ReadingError, match="reading log cannot be written"):
        Reading("c", log_path=tmp_path / "ro" / "reads.jsonl")
