"""Empty or degenerate inputs give NaN with a reason, never a crash; the report shows tables."""
from __future__ import annotations

import math
import re

import numpy as np

from sirad_viewer.study.agreement import cohen_kappa, fleiss_kappa, kappa_from_table
from sirad_viewer.study.metrics import JointRead, bootstrap_ci, paired_bootstrap_difference, patient_accuracy
from sirad_viewer.study.mrmc import or_analysis


def test_mrmc_when_no_reader_revised_is_nan_with_a_reason():
    rng = np.random.default_rng(0)
    truth = np.array([0, 1] * 10)
    one = rng.integers(0, 5, size=(1, 3, 20)).astype(float)
    ratings = np.concatenate([one, one])  # aided == unaided: nobody changed a grade
    res = or_analysis(ratings, truth, treatments=["unaided", "aided"], readers=["a", "b", "c"])
    assert math.isnan(res.rrrc["f"]) and math.isnan(res.rrfc["f"])
    assert "no reader changed" in res.rrrc["reason"] or "undefined" in res.rrrc["reason"]
    assert res.rrrc["diff"] == 0.0


def test_cluster_bootstrap_when_no_patient_has_both_joints():
    reads = [JointRead("r1", f"p{i}", "left", "unaided", i % 5, (i + 1) % 5) for i in range(8)]
    est, lo, hi = bootstrap_ci(reads, patient_accuracy, n_boot=50)
    assert math.isnan(est) and math.isnan(lo) and math.isnan(hi)
    d = paired_bootstrap_difference(reads, [], patient_accuracy, n_boot=20)
    assert math.isnan(d["difference"]) and d["reason"]


def test_kappa_on_empty_or_one_category_input():
    r = kappa_from_table(np.zeros((5, 5)))
    assert math.isnan(r.kappa) and "no subject" in r.reason
    r = cohen_kappa([2, 2, 2], [2, 2, 2], weights="quadratic", categories=range(5))
    assert math.isnan(r.kappa) and "one category" in r.reason
    assert math.isnan(fleiss_kappa([[1, 1, 1], [1, 1, 1]], categories=range(5)))


def test_analysis_of_a_study_where_nobody_revised_has_tables_and_notes(tmp_path):
    from sirad_viewer.study.analysis import analyse
    from sirad_viewer.study.protocol import Case, Protocol, Reader
    from sirad_viewer.study.session import ReaderSession
    from sirad_viewer.study.store import StudyStore

    p = Protocol(name="no revisions", seed=1, readers=[Reader("r1"), Reader("r2")],
                 cases=[Case(id=f"c{i}", path=f"p{i}", reference={"left": i % 5, "right": (3 * i) % 5}) for i in range(6)])
    store = StudyStore.create(tmp_path / "s.sqlite", p)
    for reader in ("r1", "r2"):
        s = ReaderSession(store, reader)
        while (item := s.current()) is not None:
            c = item["case"]
            s.open(c)
            ref = p.case(c).reference
            s.set_grade(c, "left", ref["left"])
            s.set_grade(c, "right", min(4, ref["right"] + (reader == "r2")))
            s.lock(c)
            s.reveal(c, {"joints": {"left": {"grade": 0}, "right": {"grade": 0}}})
            s.close(c)
    res = analyse(store, tmp_path / "out", n_boot=30)
    assert any("no grade was revised" in n for n in res["notes"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<th>pair</th>" in html and "r1 vs r2" in html
    assert not re.search(r"\{&quot;|\{\"", html)  # no raw dicts in the report
