"""A coordinator's protocol file with a wrong value: the message names the file and the field."""
from __future__ import annotations

import pytest

from sirad_viewer.study.protocol import Protocol, StudyError

BASE = "name: s\nreaders: [r1]\ncases:\n  - {id: c1, path: cases/c1}\n"


@pytest.mark.parametrize("line, field", [("seed: abc", "seed 'abc'"), ("seed: 1.5", "seed 1.5"),
                                         ("ai_assistance: 'false'", "ai_assistance 'false'"),
                                         ("crossover: {sessions: two}", "crossover")])
def test_bad_protocol_value_names_file_and_field(tmp_path, line, field):
    f = tmp_path / "protocol.yaml"
    f.write_text(BASE + line + "\n")
    with pytest.raises(StudyError) as ei:
        Protocol.load(f)
    msg = ei.value.user_message()
    assert "protocol.yaml" in msg and field in msg
    assert ei.value.code == "bad_protocol"


def test_good_protocol_values_load(tmp_path):
    f = tmp_path / "protocol.yaml"
    f.write_text(BASE + "seed: 7\nai_assistance: false\ncrossover: {sessions: 2, washout_days: 28}\n")
    p = Protocol.load(f)
    assert (p.seed, p.ai_assistance, p.crossover["washout_days"]) == (7, False, 28)
