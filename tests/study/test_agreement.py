"""Kappa statistics against shared/data/kappa/REFERENCE.md (SAS PROC FREQ, irr, Fleiss 1971)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from sirad_viewer.study.agreement import cohen_kappa, fleiss_kappa, kappa_from_table


def test_fleiss_1971_published_value(shared_data):
    with open(shared_data / "kappa" / "fleiss1971_diagnoses.csv") as fh:
        rows = list(csv.DictReader(fh))
    ratings = [[int(r[f"r{i}"]) for i in range(1, 7)] for r in rows]
    assert len(ratings) == 30
    assert fleiss_kappa(ratings) == pytest.approx(0.4302445, abs=5e-8)
    assert round(fleiss_kappa(ratings), 3) == 0.430


def test_cohen_kappa_sas_proc_freq_3x3():
    table = np.array([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    u = kappa_from_table(table)
    assert (round(u.kappa, 4), round(u.ase, 4)) == (0.4842, 0.1380)
    assert [round(v, 4) for v in u.ci] == [0.2137, 0.7547]
    lin = kappa_from_table(table, weights="linear", scores=[0, 1, 2])
    assert (round(lin.kappa, 4), round(lin.ase, 4)) == (0.4701, 0.1457)
    assert [round(v, 4) for v in lin.ci] == [0.1845, 0.7558]


@pytest.mark.parametrize("weights,kappa,z,p", [
    ("unweighted", -0.006289308, -0.0604067, 0.9518317),
    ("linear", 0.1459075, 1.282472, 0.1996772),
    ("quadratic", 0.2520325, 1.437451, 0.1505898),
])
def test_cohen_kappa_irr_anxiety_observed_levels(shared_data, weights, kappa, z, p):
    with open(shared_data / "kappa" / "irr_anxiety.csv") as fh:
        rows = list(csv.DictReader(fh))
    a = [int(r["rater2"]) for r in rows]
    b = [int(r["rater3"]) for r in rows]
    res = cohen_kappa(a, b, weights=weights)  # irr: weights over the observed levels 1,2,3,4,6
    assert res.kappa == pytest.approx(kappa, abs=1e-6)
    assert res.z == pytest.approx(z, abs=1e-5)
    assert res.p == pytest.approx(p, abs=1e-6)


def test_fixed_category_scale_differs_from_observed_levels(shared_data):
    """With the full scale 1-6, 4 and 6 are two steps apart: a different (documented) answer."""
    with open(shared_data / "kappa" / "irr_anxiety.csv") as fh:
        rows = list(csv.DictReader(fh))
    a = [int(r["rater2"]) for r in rows]
    b = [int(r["rater3"]) for r in rows]
    observed = cohen_kappa(a, b, weights="linear").kappa
    full = cohen_kappa(a, b, weights="linear", categories=[1, 2, 3, 4, 5, 6]).kappa
    assert full != pytest.approx(observed, abs=1e-3)
    assert cohen_kappa(a, b, categories=[1, 2, 3, 4, 5, 6]).kappa == pytest.approx(-0.006289308, abs=1e-6)


def test_perfect_agreement_and_bad_input():
    assert cohen_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], weights="quadratic", categories=range(5)).kappa == 1.0
    with pytest.raises(ValueError):
        cohen_kappa([0, 1], [0])
    with pytest.raises(ValueError):
        cohen_kappa([0, 7], [0, 1], categories=range(5))
