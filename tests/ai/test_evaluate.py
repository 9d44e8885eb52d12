"""`sirad evaluate`: failures are counted, CIs resample patients, AUC per grade and per category, calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sirad_viewer.ai.evaluate import metrics_for, patient_bootstrap

GROUPS = [[0, 1], [2, 3], [4]]


def _preds(n_patients: int, seed: int = 0, *, noise: float = 1.0):
    """Noisy but informative predictions for n patients (two joints each)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_patients):
        for side in ("left", "right"):
            g = int(rng.integers(0, 5))
            z = -np.abs(np.arange(5) - g) * 1.5 + rng.normal(0, noise, 5)
            out.append({"image": f"p{i}", "side": side, "site": "A", "truth": g,
                        "probabilities": list(np.exp(z) / np.exp(z).sum())})
    return out


def test_auc_per_grade_and_per_category_agree_with_scikit_learn():
    from sklearn.metrics import roc_auc_score

    preds = _preds(60)
    m = metrics_for(preds, GROUPS, n_boot=100)
    y = np.array([p["truth"] for p in preds])
    prob = np.array([p["probabilities"] for p in preds])
    for g in range(5):
        assert m["auc_per_grade"][str(g)]["auc"] == pytest.approx(roc_auc_score(y == g, prob[:, g]))
    cat = np.array([0 if t < 2 else (1 if t < 4 else 2) for t in y])
    assert m["auc_per_category"]["2-3"]["auc"] == pytest.approx(roc_auc_score(cat == 1, prob[:, 2] + prob[:, 3]))
    lo, hi = m["auc_per_category"]["2-3"]["ci95"]
    assert lo <= m["auc_per_category"]["2-3"]["auc"] <= hi
    assert set(m["calibration"]) >= {"ece", "brier", "log_loss"}


def test_kappa_interval_resamples_patients_not_joints():
    """The defect: the kappa CI treated both joints of a patient as independent.

    Doubling every patient's joint (left = right) adds no information; a patient bootstrap gives the
    same interval width, a joint-level interval shrinks by about 1/sqrt(2).
    """
    single = [p for p in _preds(80, 3, noise=2.0) if p["side"] == "left"]
    doubled = [{**p, "side": s} for p in single for s in ("left", "right")]
    w1 = np.diff(metrics_for(single, GROUPS, n_boot=300)["kappa_quadratic"]["ci95"])[0]
    w2 = np.diff(metrics_for(doubled, GROUPS, n_boot=300)["kappa_quadratic"]["ci95"])[0]
    assert w2 / w1 == pytest.approx(1.0, abs=0.18), (w1, w2)  # joint-level: about 0.71


def test_failed_cases_stay_in_every_summary():
    preds = _preds(20)
    ok = metrics_for(preds, GROUPS, n_boot=100)
    failed = preds + [{"image": "bad", "side": s, "site": "A", "truth": 3, "probabilities": [0.2] * 5, "failed": True}
                      for s in ("left", "right")]
    m = metrics_for(failed, GROUPS, n_boot=100)
    assert m["joints"] == 42 and m["failed_joints"] == 2 and m["failed_patients"] == 1 and m["patients"] == 21
    assert m["accuracy"] == pytest.approx(ok["accuracy"] * 40 / 42)
    assert m["accuracy_graded_only"] == pytest.approx(ok["accuracy"])
    assert m["confusion_5"][3][5] == 2  # the 'not graded' column
    assert m["kappa_quadratic"]["kappa"] < ok["kappa_quadratic"]["kappa"]
    assert m["patient"]["failed"] == 1 and m["patient"]["n"] == 21
    assert m["calibration"]["joints"] == 40 and "2 not graded" in m["calibration"]["note"]


def test_patient_bootstrap_keeps_a_patients_rows_together():
    cases = np.array(["a", "a", "b", "b", "c", "c"])
    seen = []
    patient_bootstrap(lambda i: seen.append(sorted(cases[i])) or 0.0, cases, n_boot=50)
    for s in seen:
        assert all(s.count(c) % 2 == 0 for c in set(s))


def test_evaluate_counts_a_case_that_cannot_be_graded(tmp_path):
    """The defect: `sirad evaluate` dropped cases whose CT could not be graded from its summaries."""
    from sirad_viewer.ai.evaluate import evaluate
    from sirad_viewer.phantom import make_phantom, random_spec, write_phantom

    write_phantom(make_phantom(random_spec(990_001, left_grade=1, right_grade=3, matrix=96)), tmp_path / "c0")
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "ct.nii.gz").write_bytes(b"not a nifti file")
    data = tmp_path / "DATA.csv"
    data.write_text("image,left,right,site,split\nc0/ct.nii.gz,1,3,A,test\nc1/ct.nii.gz,2,2,A,test\n")
    doc = evaluate(data, None, tmp_path / "ev", device="cpu", n_boot=20, progress=False)
    m = doc["results"]["all"]
    assert m["joints"] == 4 and m["patients"] == 2 and m["failed_joints"] == 2
    assert m["accuracy"] <= 0.5 and m["patient"]["n"] == 2 and m["patient"]["failed"] == 1
    summary = (tmp_path / "ev" / "summary.md").read_text()
    assert "Cases not graded" in summary and "c1" in summary
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["failures"][0]["image"].endswith("c1/ct.nii.gz")
    for f in ("roc_all.png", "reliability_all.png", "predictions.csv"):
        assert (tmp_path / "ev" / f).exists()


def test_fast_bootstrap_metrics_equal_scikit_learn():
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    from sirad_viewer.ai.evaluate import _auc_fast, _kappa_fast

    rng = np.random.default_rng(4)
    y, yhat = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    yhat[:120] = y[:120]
    for w in (None, "linear", "quadratic"):
        assert _kappa_fast(y, yhat, w) == pytest.approx(cohen_kappa_score(y, yhat, labels=list(range(5)), weights=w))
    s = np.round(rng.random(200), 1)  # with ties
    assert _auc_fast(s, y >= 2) == pytest.approx(roc_auc_score(y >= 2, s))
