"""Agreement statistics: Cohen's kappa (unweighted, linear, quadratic) and Fleiss' kappa.

Validated against published and reference-software values in ``shared/data/kappa`` (SAS PROC
FREQ, R package irr, Fleiss 1971): see ``tests/study/test_agreement.py``.

Categories
----------
Cohen's kappa needs the list of categories to build the weights. Two behaviours exist:

* ``categories=None`` (like R's ``irr::kappa2``): the levels actually observed in the two rating
  vectors, in sorted order. With levels 1, 2, 3, 4, 6 the linear distance between 4 and 6 is
  one step.
* ``categories=[0, 1, 2, 3, 4]`` (what a fixed grade scale needs): every category of the scale,
  observed or not, with distances measured on the scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np
from scipy import stats


class KappaWeights(str, Enum):
    UNWEIGHTED = "unweighted"
    LINEAR = "linear"
    QUADRATIC = "quadratic"


@dataclass(frozen=True)
class KappaResult:
    """Cohen's kappa with its uncertainty.

    Attributes
    ----------
    kappa : float
    ase : float
        Asymptotic standard error (Fleiss, Cohen & Everitt 1969), as SAS PROC FREQ reports;
        used for the confidence interval.
    ci : (float, float)
        ``kappa +- z * ase``.
    se0 : float
        Standard error under H0 (kappa = 0), used for the z test (as irr reports).
    z, p : float
        Test of H0: kappa = 0.
    n : int
    """

    kappa: float
    ase: float
    ci: tuple[float, float]
    se0: float
    z: float
    p: float
    n: int
    weights: str

    def to_dict(self) -> dict:
        return {"kappa": self.kappa, "ase": self.ase, "ci": list(self.ci), "se0": self.se0, "z": self.z,
                "p": self.p, "n": self.n, "weights": self.weights}


def weight_matrix(categories: Sequence[float], weights: KappaWeights | str) -> np.ndarray:
    """Agreement weights w_ij in [0, 1] (1 on the diagonal) from category *scores*."""
    w = KappaWeights(weights)
    c = np.asarray(categories, dtype=float)
    k = len(c)
    if w is KappaWeights.UNWEIGHTED or k < 2:
        return np.eye(k)
    span = c.max() - c.min()
    d = np.abs(c[:, None] - c[None, :]) / span
    return 1.0 - d if w is KappaWeights.LINEAR else 1.0 - d ** 2


def contingency(a: Sequence, b: Sequence, categories: Sequence | None = None) -> tuple[np.ndarray, list]:
    """k x k table of counts (rows: rater a) over ``categories`` (default: the observed levels)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"the two raters rated different numbers of subjects ({len(a)} and {len(b)})")
    cats = sorted(set(a) | set(b)) if categories is None else list(categories)
    index = {c: i for i, c in enumerate(cats)}
    missing = (set(a) | set(b)) - set(index)
    if missing:
        raise ValueError(f"ratings {sorted(missing)} are not among the categories {cats}")
    t = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b):
        t[index[x], index[y]] += 1
    return t, cats


def kappa_from_table(table: np.ndarray, *, weights: KappaWeights | str = "unweighted",
                     scores: Sequence[float] | None = None, alpha: float = 0.05) -> KappaResult:
    """Cohen's kappa from a k x k contingency table.

    Parameters
    ----------
    table : ndarray of shape (k, k)
        Counts; rows rater A, columns rater B.
    weights : "unweighted", "linear" or "quadratic"
    scores : sequence of k float, optional
        Category scores for the weights (default 0, 1, ..., k-1).
    """
    t = np.asarray(table, dtype=float)
    n = t.sum()
    if n == 0:
        raise ValueError("empty table: no subject was rated by both raters")
    k = t.shape[0]
    w = weight_matrix(np.arange(k) if scores is None else scores, weights)
    p = t / n
    pr, pc = p.sum(axis=1), p.sum(axis=0)
    po = float((w * p).sum())
    pe = float((w * np.outer(pr, pc)).sum())
    if pe >= 1.0:
        # every rating in one category: agreement is perfect but kappa is undefined
        return KappaResult(float("nan"), float("nan"), (float("nan"), float("nan")), float("nan"),
                           float("nan"), float("nan"), int(n), KappaWeights(weights).value)
    kap = (po - pe) / (1 - pe)
    wi = w @ pc  # w-bar_i. = sum_j p_.j w_ij
    wj = pr @ w  # w-bar_.j = sum_i p_i. w_ij
    # Fleiss, Cohen & Everitt (1969): large-sample variance (as SAS's ASE)
    term = (w - (wi[:, None] + wj[None, :]) * (1 - kap)) ** 2
    var = ((p * term).sum() - (kap - pe * (1 - kap)) ** 2) / (n * (1 - pe) ** 2)
    ase = float(np.sqrt(max(var, 0.0)))
    # variance under H0 (kappa = 0), for the z test
    var0 = ((np.outer(pr, pc) * (w - (wi[:, None] + wj[None, :])) ** 2).sum() - pe ** 2) / (n * (1 - pe) ** 2)
    se0 = float(np.sqrt(max(var0, 0.0)))
    z = kap / se0 if se0 > 0 else float("nan")
    pval = float(2 * stats.norm.sf(abs(z))) if se0 > 0 else float("nan")
    q = float(stats.norm.ppf(1 - alpha / 2))
    return KappaResult(float(kap), ase, (float(kap - q * ase), float(kap + q * ase)), se0, float(z), pval, int(n),
                       KappaWeights(weights).value)


def cohen_kappa(a: Sequence, b: Sequence, *, weights: KappaWeights | str = "unweighted",
                categories: Sequence | None = None, alpha: float = 0.05) -> KappaResult:
    """Cohen's kappa between two raters' ratings of the same subjects.

    Parameters
    ----------
    a, b : sequences of ratings (numbers for weighted kappa)
    weights : "unweighted", "linear" or "quadratic"
    categories : sequence, optional
        The full category list (e.g. grades 0-4). Default: the levels observed (irr's behaviour);
        see the module docstring.
    """
    t, cats = contingency(a, b, categories)
    w = KappaWeights(weights)
    if w is KappaWeights.UNWEIGHTED:
        scores = None
    elif categories is None:
        # irr: weights from the *rank* of the observed levels (4 and 6 are one step apart)
        scores = list(range(len(cats)))
    else:
        scores = [float(c) for c in cats]
    return kappa_from_table(t, weights=w, scores=scores, alpha=alpha)


def fleiss_kappa(ratings: np.ndarray | Sequence[Sequence], categories: Sequence | None = None) -> float:
    """Fleiss' kappa for several raters.

    Parameters
    ----------
    ratings : (n_subjects, n_raters) ratings, every subject rated by the same number of raters.
    categories : the category list (default: the observed levels).
    """
    r = np.asarray(ratings, dtype=object)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError("Fleiss' kappa needs an (n_subjects, n_raters) table with at least 2 raters")
    cats = sorted(set(r.ravel().tolist())) if categories is None else list(categories)
    index = {c: i for i, c in enumerate(cats)}
    counts = np.zeros((r.shape[0], len(cats)))
    for i, row in enumerate(r):
        for v in row:
            counts[i, index[v]] += 1
    return fleiss_kappa_from_counts(counts)


def fleiss_kappa_from_counts(counts: np.ndarray) -> float:
    """Fleiss' kappa from an (n_subjects, n_categories) table of how many raters chose each category."""
    c = np.asarray(counts, dtype=float)
    m = c.sum(axis=1)
    if not np.allclose(m, m[0]):
        raise ValueError("every subject must be rated by the same number of raters")
    m0 = m[0]
    n = c.shape[0]
    pj = c.sum(axis=0) / (n * m0)
    pi = (np.sum(c * c, axis=1) - m0) / (m0 * (m0 - 1))
    pbar = pi.mean()
    pe = float(np.sum(pj ** 2))
    return float((pbar - pe) / (1 - pe))
