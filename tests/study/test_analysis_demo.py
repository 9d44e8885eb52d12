"""The demo study runs end to end; the analysis and export hold what a coordinator needs."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "study", "demo", str(out), "--cases", "6"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return out


def test_demo_writes_export_analysis_and_report(demo):
    rows = list(csv.DictReader(open(demo / "export.csv")))
    assert len(rows) == 2 * 6 * 2  # readers x cases x joints
    assert {"reader", "case", "joint", "arm", "pre_ai_grade", "post_ai_grade", "ai_grade", "reference",
            "active_s"} <= set(rows[0])
    res = json.loads((demo / "analysis" / "results.json").read_text())
    assert res["chain_ok"]
    arms = {(r["reader"], r["arm"]) for r in res["per_reader_arm"]}
    assert arms == {(r, a) for r in ("r1", "r2") for a in ("unaided (locked)", "aided (after reveal)")}
    for r in res["per_reader_arm"]:
        est, lo, hi = r["accuracy_5"]
        assert lo <= est <= hi
        assert 40 <= r["reading_time_s"]["median"] <= 180 and r["reading_time_s"]["n_cases"] == 6
    assert res["comparisons"] and "mcnemar" in res["comparisons"][0]
    assert "r1 vs r2" in res["agreement"]["unaided (locked)"]["pairs"]
    assert res["reveal"]["r1"]["n"] == 12
    html = (demo / "analysis" / "report.html").read_text()
    assert "Unaided vs aided" in html and (demo / "analysis" / "accuracy.png").exists()


def test_status_and_tamper_exit_code(demo):
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "study", "status", str(demo / "study.sqlite")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "chain intact" in p.stdout and "6/6" in p.stdout


def test_accuracy_uses_the_pre_ai_grade_for_the_unaided_arm(demo):
    rows = list(csv.DictReader(open(demo / "export.csv")))
    res = json.loads((demo / "analysis" / "results.json").read_text())
    r1 = [r for r in rows if r["reader"] == "r1"]
    acc_pre = sum(r["pre_ai_grade"] == r["reference"] for r in r1) / len(r1)
    acc_post = sum(r["post_ai_grade"] == r["reference"] for r in r1) / len(r1)
    got = {r["arm"]: r["accuracy_5"][0] for r in res["per_reader_arm"] if r["reader"] == "r1"}
    assert got["unaided (locked)"] == pytest.approx(acc_pre)
    assert got["aided (after reveal)"] == pytest.approx(acc_post)


def test_add_cases_refused_after_grading(demo, tmp_path):
    cases = tmp_path / "more.csv"
    cases.write_text("id,path,left,right,site\nnew1,cases/new1,0,1,A\n")
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "study", "add-cases", str(demo / "study.sqlite"),
                        str(cases)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "frozen" in p.stderr


def test_demo_writes_its_key_and_status_with_the_key_catches_tail_and_reader_deletion(demo, tmp_path):
    import shutil
    import sqlite3

    assert (demo / "coordinator.key").exists()
    cli = [sys.executable, "-m", "sirad_viewer.cli", "study", "status"]
    p = subprocess.run(cli + [str(demo / "study.sqlite"), "--key", str(demo / "coordinator.key")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "signed with the coordinator key" in p.stdout, p.stdout + p.stderr
    for attack, sql in (("tail", "DELETE FROM study_events WHERE seq > (SELECT max(seq) - 7 FROM study_events)"),
                        ("reader", "DELETE FROM study_events WHERE reader = 'r2'")):
        d = tmp_path / attack
        d.mkdir()
        for name in ("study.sqlite", "coordinator.key", "coordinator.key.anchor"):
            shutil.copy(demo / name, d / name)
        con = sqlite3.connect(d / "study.sqlite")
        con.execute(sql)
        con.commit()
        con.close()
        p = subprocess.run(cli + [str(d / "study.sqlite"), "--key", str(d / "coordinator.key")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "missing" in p.stderr + p.stdout, (attack, p.stdout, p.stderr)


def test_export_to_a_name_that_is_neither_csv_nor_json_is_refused(demo):
    # a coordinator typing --out results.txt got a CSV named .txt without a word; now: one line, exit 2, no file
    out = demo / "results.txt"
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "study", "export", str(demo / "study.sqlite"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "results.txt" in p.stderr and ".csv" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
