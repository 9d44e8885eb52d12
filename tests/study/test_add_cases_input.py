"""sirad study add-cases with a wrong cases file: one line naming the file, never a traceback."""
from __future__ import annotations

import pytest

from sirad_viewer.cli import main as sirad


@pytest.fixture
def study(tmp_path):
    proto = tmp_path / "protocol.yaml"
    proto.write_text("name: s\nreaders: [r1]\ncases:\n  - {id: c1, path: cases/c1}\n")
    db, key = tmp_path / "study.sqlite", tmp_path / "keys" / "c.key"
    assert sirad(["study", "create", str(db), "--protocol", str(proto), "--key", str(key)]) == 0
    return db, key


@pytest.mark.parametrize("name, content, says", [("missing.csv", None, "does not exist"),
                                                 ("cases.yaml", "cases: [c2, c3]\n", "is not a list of cases"),
                                                 ("cases.yaml", "- {path: cases/c2}\n", "is not a list of cases")])
def test_add_cases_bad_file_is_one_line(study, tmp_path, capsys, name, content, says):
    db, key = study
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    assert sirad(["study", "add-cases", str(db), str(f), "--key", str(key)]) == 2
    err = capsys.readouterr().err
    assert name in err and says in err and "Traceback" not in err


@pytest.mark.parametrize("content, says", [(None, "nope.csv: cannot be read: No such file or directory"),
                                           ("a,b\n1,2\n", "bad.csv: missing column(s)")])
def test_mrmc_bad_file_names_it_once(tmp_path, capsys, content, says):
    f = tmp_path / ("nope.csv" if content is None else "bad.csv")
    if content is not None:
        f.write_text(content)
    assert sirad(["study", "mrmc", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.count(str(f)) == 1 and "Errno" not in err  # the path once, no errno


def test_grade_json_to_stdout_on_error_writes_no_file_named_dash(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("not a CT")
    assert sirad(["grade", str(tmp_path / "in"), "--json", "-"]) == 2
    assert not (tmp_path / "-").exists()
    assert json.loads(capsys.readouterr().out)["error"]["code"] in ("no_image", "not_dicom")
