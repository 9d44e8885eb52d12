"""OR MRMC analysis reproduces the Iowa OR-DBM MRMC 2.51 output on the Van Dyke data."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from sirad_viewer.study.mrmc import from_records, jackknife_aucs, or_analysis, read_ratings_csv, trapezoidal_auc

NUM = r"(-?\d+\.\d+)"


@pytest.fixture(scope="module")
def reference(shared_data):
    text = (shared_data / "mrmc" / "VanDyke_ORDBM_MRMC_2.51_output.txt").read_text()
    ref = {"auc": {}}
    for m in re.finditer(r"^\s+(\d)\s+" + NUM + r"\s+" + NUM + r"\s*$", text.split("TREATMENT AUC MEANS")[0], re.M):
        ref["auc"][int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    for key in ("Var\\(Error\\)", "COV1", "COV2", "COV3"):
        ref[key.replace("\\", "")] = float(re.search(key + r"\s+" + NUM, text).group(1))
    a1 = text.split("Analysis 1 (OR Analysis)")[1].split("Analysis 2")[0]
    m = re.search(r"Treatment\s+1\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM, a1)
    ref["rrrc_ms_t"], ref["rrrc_f"], ref["rrrc_p"] = map(float, m.groups())
    ref["rrrc_ddf"] = float(re.search(r"Error term\s+" + NUM, a1).group(1))
    m = re.search(r"1 - 2\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\s+\(" + NUM + r"\s*,\s*" + NUM, a1)
    ref["rrrc_diff"], ref["rrrc_se"], _, _, _, lo, hi = map(float, m.groups())
    ref["rrrc_ci"] = (lo, hi)
    a2 = text.split("Analysis 2 (OR Analysis)")[1].split("Analysis 3")[0]
    m = re.search(NUM + r"\s+1\s+" + NUM, a2)
    ref["frrc_chi2"], ref["frrc_p"] = map(float, m.groups())
    m = re.search(r"1 - 2\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\s+\(" + NUM + r"\s*,\s*" + NUM, a2)
    ref["frrc_ci"] = (float(m.group(5)), float(m.group(6)))
    a3 = text.split("Analysis 3 (OR Analysis)")[1]
    m = re.search(r"Treatment\s+1\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM, a3)
    ref["rrfc_f"], ref["rrfc_p"] = float(m.group(2)), float(m.group(3))
    m = re.search(r"1 - 2\s+" + NUM + r"\s+" + NUM + r"\s+(\d+)\s+" + NUM + r"\s+" + NUM + r"\s+\(" + NUM + r"\s*,\s*" + NUM, a3)
    ref["rrfc_ci"] = (float(m.group(6)), float(m.group(7)))
    single = a1.split("Single-treatment 95% confidence intervals")[1]
    ref["single"] = {int(m.group(1)): tuple(float(m.group(k)) for k in (2, 3, 4, 5, 6))
                     for m in re.finditer(r"^\s+(\d)\s+" + NUM + r"\s+" + NUM + r"\s+" + NUM + r"\s+\(" + NUM + r"\s*,\s*" + NUM, single, re.M)}
    assert len(ref["auc"]) == 5 and len(ref["single"]) == 2
    return ref


@pytest.fixture(scope="module")
def result(shared_data):
    recs = read_ratings_csv(shared_data / "mrmc" / "VanDyke_RocData.csv")
    ratings, truth, treatments, readers, _ = from_records(recs)
    assert ratings.shape == (2, 5, 114) and truth.sum() == 45
    return or_analysis(ratings, truth, treatments=treatments, readers=readers)


def test_reader_aucs(result, reference):
    for reader, (a1, a2) in reference["auc"].items():
        assert result.auc[0, reader - 1] == pytest.approx(a1, abs=5e-8)
        assert result.auc[1, reader - 1] == pytest.approx(a2, abs=5e-8)


def test_variance_components(result, reference):
    assert result.var_error == pytest.approx(reference["Var(Error)"], abs=5e-9)
    for k in ("COV1", "COV2", "COV3"):
        assert getattr(result, k.lower()) == pytest.approx(reference[k], abs=5e-9)


def test_random_readers_random_cases(result, reference):
    r = result.rrrc
    assert round(r["f"], 2) == reference["rrrc_f"]
    assert round(r["ddf"], 2) == reference["rrrc_ddf"]
    assert round(r["p"], 4) == reference["rrrc_p"]
    assert round(r["diff"], 5) == reference["rrrc_diff"] and round(r["se"], 5) == reference["rrrc_se"]
    assert [round(v, 5) for v in r["ci"]] == list(reference["rrrc_ci"])


def test_fixed_readers_random_cases(result, reference):
    assert result.frrc["chi2"] == pytest.approx(reference["frrc_chi2"], abs=5e-6)
    assert round(result.frrc["p"], 4) == reference["frrc_p"]
    assert [round(v, 5) for v in result.frrc["ci"]] == list(reference["frrc_ci"])


def test_random_readers_fixed_cases(result, reference):
    assert round(result.rrfc["f"], 2) == reference["rrfc_f"]
    assert round(result.rrfc["p"], 4) == reference["rrfc_p"]
    assert [round(v, 5) for v in result.rrfc["ci"]] == list(reference["rrfc_ci"])


def test_single_treatment_intervals(result, reference):
    for t, (auc, se, df, lo, hi) in reference["single"].items():
        s = result.single_treatment[str(result.treatments[t - 1])]
        assert s["auc"] == pytest.approx(auc, abs=5e-8) and s["se"] == pytest.approx(se, abs=5e-8)
        assert round(s["df"], 2) == df
        assert s["ci"] == pytest.approx([lo, hi], abs=5e-8)


def test_fast_jackknife_equals_brute_force():
    rng = np.random.default_rng(0)
    truth = (rng.random(25) < 0.4).astype(int)
    ratings = rng.integers(1, 6, size=(2, 3, 25)).astype(float)
    jk = jackknife_aucs(ratings, truth)
    for k in (0, 7, 24):
        keep = np.arange(25) != k
        for t in range(2):
            for r in range(3):
                x, y = ratings[t, r, keep], truth[keep]
                assert jk[k, t, r] == pytest.approx(trapezoidal_auc(x[y == 0], x[y == 1]))


def test_cli_json_keys(shared_data):
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "study", "mrmc",
                        str(shared_data / "mrmc" / "VanDyke_RocData.csv"), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert set(d["rrrc"]) >= {"f", "ddf", "p", "diff", "ci"} and set(d["frrc"]) >= {"chi2", "p", "ci"}
    assert set(d["rrfc"]) >= {"f", "ddf", "p"}
    assert d["auc"]["0"]["0"] == pytest.approx(0.91964573, abs=1e-8)


def test_incomplete_design_is_refused():
    recs = [{"reader": r, "treatment": t, "case": c, "truth": c % 2, "rating": 1} for r in (0, 1) for t in (0, 1)
            for c in range(6)]
    recs.pop()
    with pytest.raises(ValueError, match="missing"):
        from_records(recs)
