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

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np
from scipy import stats

log = logging.getLogger(__name__)


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
    reason: str = ""  # why kappa is NaN (empty or degenerate table), else ""

    def to_dict(self) -> dict:
        return {"kappa": self.kappa, "ase": self.ase, "ci": list(self.ci), "se0": self.se0, "z": self.z,
                "p": self.p, "n": self.n, "weights": self.weights, "reason": self.reason}


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


def _nan_kappa(n: int, weights: KappaWeights | str, reason: str) -> KappaResult:
    nan = float("nan")
    return KappaResult(nan, nan, (nan, nan), nan, nan, nan, int(n), KappaWeights(weights).value, reason)


def kappa_from_table(table: np.ndarray, *, weights: KappaWeights | str = "unweighted",
                     scores: Sequence[float] | None = None, alpha: float = 0.05) -> KappaResult:
    """Cohen's kappa from a k x k contingency table (computed by statsmodels).

    statsmodels' ``cohens_kappa`` gives the same kappa, the same large-sample ASE (Fleiss, Cohen &
    Everitt 1969, as SAS PROC FREQ) and the same standard error under H0 as the reference values in
    ``shared/data/kappa``; this function only adds the category *scores* of a fixed scale and NaN
    with a reason for empty or degenerate tables.

    Parameters
    ----------
    table : ndarray of shape (k, k)
        Counts; rows rater A, columns rater B.
    weights : "unweighted", "linear" or "quadratic"
    scores : sequence of k float, optional
        Category scores for the weights (default 0, 1, ..., k-1).
    """
    from statsmodels.stats.inter_rater import cohens_kappa

    t = np.asarray(table, dtype=float)
    n = t.sum()
    w = KappaWeights(weights)
    if n == 0:
        return _nan_kappa(0, w, "no subject was rated by both raters")
    k = t.shape[0]
    wm = weight_matrix(np.arange(k) if scores is None else scores, w)
    p = t / n
    pe = float((wm * np.outer(p.sum(axis=1), p.sum(axis=0))).sum())
    if k < 2 or pe >= 1.0 - 1e-12:
        return _nan_kappa(n, w, "every rating is in one category: agreement is perfect but kappa is undefined")
    # a full weight matrix (wt=None) so that fixed-scale scores are honoured exactly
    # statsmodels takes disagreement weights (0 on the diagonal)
    with np.errstate(invalid="ignore"):  # a variance of -1e-17 (perfect agreement) is 0, not NaN
        res = cohens_kappa(t, weights=None if w is KappaWeights.UNWEIGHTED else 1.0 - wm, wt=None)
    kap = float(res.kappa)
    ase, se0 = (float(v) if np.isfinite(v) else 0.0 for v in (res.std_kappa, res.std_kappa0))
    z = kap / se0 if se0 > 0 else float("nan")
    pval = float(2 * stats.norm.sf(abs(z))) if se0 > 0 else float("nan")
    q = float(stats.norm.ppf(1 - alpha / 2))
    return KappaResult(kap, ase, (kap - q * ase, kap + q * ase), se0, float(z), pval, int(n), w.value)


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
    """Fleiss' kappa (statsmodels) from an (n_subjects, n_categories) table of how many raters chose each
    category; NaN (with a logged reason) when there is no subject or every rating is in one category."""
    from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss

    c = np.asarray(counts, dtype=float)
    if c.ndim != 2 or c.shape[0] == 0:
        log.info("Fleiss' kappa is NaN: no subject")
        return float("nan")
    m = c.sum(axis=1)
    if not np.allclose(m, m[0]):
        raise ValueError("every subject must be rated by the same number of raters")
    pj = c.sum(axis=0) / c.sum()
    if np.sum(pj ** 2) >= 1.0 - 1e-12:
        log.info("Fleiss' kappa is NaN: every rating is in one category")
        return float("nan")
    return float(_fleiss(c, method="fleiss"))
