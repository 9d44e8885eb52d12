"""Multi-reader multi-case ROC analysis: Obuchowski-Rockette with jackknife covariances and
Hillis degrees of freedom (the OR-DBM MRMC method, Hillis 2007/2008).

Reproduces the University of Iowa OR-DBM MRMC 2.51 output on the Van Dyke data set in
``shared/data/mrmc`` (trapezoidal AUC, jackknife covariance) to 4 decimals; see
``tests/study/test_mrmc.py``.

Input: a long table with columns ``reader, treatment, case, truth, rating`` (truth 1 = diseased);
every reader rates every case under every treatment (factorial design).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats


def trapezoidal_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Empirical (Wilcoxon-Mann-Whitney) AUC: P(pos > neg) + 0.5 P(pos == neg)."""
    neg = np.asarray(neg, float)
    pos = np.asarray(pos, float)
    if neg.size == 0 or pos.size == 0:
        raise ValueError("AUC needs at least one diseased and one non-diseased case")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def _auc_matrix(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """AUC for every (treatment, reader): ratings of shape (T, R, C)."""
    pos, neg = truth == 1, truth == 0
    t, r, _ = ratings.shape
    return np.array([[trapezoidal_auc(ratings[i, j, neg], ratings[i, j, pos]) for j in range(r)] for i in range(t)])


def jackknife_aucs(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """AUCs with each case left out in turn: shape (C, T, R).

    Done with the placement-value identity: removing a case changes the Mann-Whitney sum by
    that case's own comparisons, so all C leave-one-out AUCs cost O(T R C^2) once.
    """
    pos, neg = truth == 1, truth == 0
    n1, n0 = int(pos.sum()), int(neg.sum())
    t, r, c = ratings.shape
    out = np.empty((c, t, r))
    for i in range(t):
        for j in range(r):
            x = ratings[i, j]
            xp, xn = x[pos], x[neg]
            cmp = (xp[:, None] > xn[None, :]).astype(float) + 0.5 * (xp[:, None] == xn[None, :])
            total = cmp.sum()
            row = cmp.sum(axis=1)  # each diseased case's comparisons
            col = cmp.sum(axis=0)  # each non-diseased case's comparisons
            loo = np.empty(c)
            loo[np.nonzero(pos)[0]] = (total - row) / ((n1 - 1) * n0)
            loo[np.nonzero(neg)[0]] = (total - col) / (n1 * (n0 - 1))
            out[:, i, j] = loo
    return out


@dataclass
class MRMCResult:
    """Obuchowski-Rockette analysis. Treatment and reader labels as in the input."""

    treatments: list[Any]
    readers: list[Any]
    n_cases: int
    n_diseased: int
    auc: np.ndarray  # (T, R)
    var_error: float
    cov1: float
    cov2: float
    cov3: float
    ms_t: float
    ms_r: float
    ms_tr: float
    rrrc: dict[str, Any] = field(default_factory=dict)
    frrc: dict[str, Any] = field(default_factory=dict)
    rrfc: dict[str, Any] = field(default_factory=dict)
    single_treatment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form of ``sirad study mrmc --json``."""
        return {
            "auc": {str(t): {str(r): float(self.auc[i, j]) for j, r in enumerate(self.readers)}
                    for i, t in enumerate(self.treatments)},
            "auc_mean": {str(t): float(self.auc[i].mean()) for i, t in enumerate(self.treatments)},
            "n_cases": self.n_cases, "n_diseased": self.n_diseased,
            "variance_components": {"var_error": self.var_error, "cov1": self.cov1, "cov2": self.cov2,
                                    "cov3": self.cov3, "ms_t": self.ms_t, "ms_r": self.ms_r, "ms_tr": self.ms_tr},
            "rrrc": self.rrrc, "frrc": self.frrc, "rrfc": self.rrfc, "single_treatment": self.single_treatment,
        }


def _cov_components(jk: np.ndarray) -> tuple[float, float, float, float, np.ndarray]:
    """Var(error), Cov1, Cov2, Cov3 from jackknife AUCs (C, T, R), OR-DBM's jackknife scaling."""
    c, t, r = jk.shape
    x = jk.reshape(c, t * r)
    centred = x - x.mean(axis=0)
    cov = (c - 1) / c * (centred.T @ centred)  # jackknife covariance of the (t, r) AUCs
    ti = np.repeat(np.arange(t), r)
    ri = np.tile(np.arange(r), t)
    same_t = ti[:, None] == ti[None, :]
    same_r = ri[:, None] == ri[None, :]
    var_e = float(np.mean(np.diag(cov)))
    cov1 = float(cov[~same_t & same_r].mean()) if t > 1 else 0.0
    cov2 = float(cov[same_t & ~same_r].mean()) if r > 1 else 0.0
    cov3 = float(cov[~same_t & ~same_r].mean()) if t > 1 and r > 1 else 0.0
    return var_e, cov1, cov2, cov3, cov


def or_analysis(ratings: np.ndarray, truth: np.ndarray, *, treatments: Sequence[Any] | None = None,
                readers: Sequence[Any] | None = None, alpha: float = 0.05) -> MRMCResult:
    """Obuchowski-Rockette analysis of ratings of shape (T, R, C) against truth of shape (C,)."""
    ratings = np.asarray(ratings, float)
    truth = np.asarray(truth).astype(int)
    t, r, c = ratings.shape
    if t < 2:
        raise ValueError("MRMC analysis compares at least two treatments (modalities)")
    if r < 2:
        raise ValueError("MRMC analysis needs at least two readers")
    auc = _auc_matrix(ratings, truth)
    jk = jackknife_aucs(ratings, truth)
    var_e, cov1, cov2, cov3, _ = _cov_components(jk)
    grand = auc.mean()
    mt, mr = auc.mean(axis=1), auc.mean(axis=0)
    ms_t = r * float(np.sum((mt - grand) ** 2)) / (t - 1)
    ms_r = t * float(np.sum((mr - grand) ** 2)) / (r - 1)
    ms_tr = float(np.sum((auc - mt[:, None] - mr[None, :] + grand) ** 2)) / ((t - 1) * (r - 1))
    z = float(stats.norm.ppf(1 - alpha / 2))
    pairs = [(i, j) for i in range(t) for j in range(i + 1, t)]
    tl = list(treatments) if treatments is not None else list(range(t))

    def div(a: float, b: float) -> float:
        # a zero denominator (e.g. no reader revised after the reveal: both treatments rate identically)
        # makes the statistic undefined: NaN, with the reason recorded below, never ZeroDivisionError
        return a / b if b != 0 else float("nan")

    # Random readers, random cases (Hillis ddf)
    den = ms_tr + r * max(cov2 - cov3, 0.0)
    f = div(ms_t, den)
    ddf = div(den ** 2, ms_tr ** 2 / ((t - 1) * (r - 1)))
    p = float(stats.f.sf(f, t - 1, ddf)) if np.isfinite(f) and np.isfinite(ddf) else float("nan")
    se = float(np.sqrt(2.0 / r * den))
    tq = float(stats.t.ppf(1 - alpha / 2, ddf))
    rrrc = {"f": f, "ndf": t - 1, "ddf": ddf, "p": p, "diff": {}, "ci": {}, "se": {}, "p_diff": {}}
    # Fixed readers, random cases
    den_fr = var_e - cov1 + (r - 1) * max(cov2 - cov3, 0.0)
    chi2 = div((t - 1) * ms_t, den_fr)
    frrc = {"chi2": chi2, "df": t - 1, "p": float(stats.chi2.sf(chi2, t - 1)), "diff": {}, "ci": {}, "se": {}, "p_diff": {}}
    se_fr = float(np.sqrt(2.0 / r * den_fr))
    # Random readers, fixed cases
    f_fc = div(ms_t, ms_tr)
    rrfc = {"f": f_fc, "ndf": t - 1, "ddf": (t - 1) * (r - 1), "p": float(stats.f.sf(f_fc, t - 1, (t - 1) * (r - 1))),
            "diff": {}, "ci": {}, "se": {}, "p_diff": {}}
    se_fc = float(np.sqrt(2.0 / r * ms_tr))
    tq_fc = float(stats.t.ppf(1 - alpha / 2, (t - 1) * (r - 1)))
    for i, j in pairs:
        key = f"{tl[i]} - {tl[j]}"
        d = float(mt[i] - mt[j])
        for res, s, q, dist in ((rrrc, se, tq, ("t", ddf)), (frrc, se_fr, z, ("z", None)), (rrfc, se_fc, tq_fc, ("t", (t - 1) * (r - 1)))):
            res["diff"][key] = d
            res["se"][key] = s
            res["ci"][key] = [d - q * s, d + q * s]
            stat = d / s if s > 0 else float("nan")
            res["p_diff"][key] = float(2 * (stats.t.sf(abs(stat), dist[1]) if dist[0] == "t" else stats.norm.sf(abs(stat))))
    if len(pairs) == 1:  # two treatments: the headline difference and CI directly
        key = f"{tl[0]} - {tl[1]}"
        for res in (rrrc, frrc, rrfc):
            res["diff"], res["ci"], res["se"], res["p_diff"] = res["diff"][key], res["ci"][key], res["se"][key], res["p_diff"][key]
            res["comparison"] = key

    # Single-treatment CIs (random readers and random cases), per treatment
    single: dict[str, Any] = {}
    for i in range(t):
        sub_jk = jk[:, i:i + 1, :]
        _, _, cov2_i, _, _ = _cov_components(sub_jk)
        ms_r_i = float(np.sum((auc[i] - mt[i]) ** 2)) / (r - 1)
        den_i = ms_r_i + r * max(cov2_i, 0.0)
        se_i = float(np.sqrt(den_i / r))
        df_i = den_i ** 2 / (ms_r_i ** 2 / (r - 1)) if ms_r_i > 0 else float("inf")
        q = float(stats.t.ppf(1 - alpha / 2, df_i))
        single[str(tl[i])] = {"auc": float(mt[i]), "se": se_i, "df": df_i, "ci": [float(mt[i] - q * se_i), float(mt[i] + q * se_i)],
                              "cov2": cov2_i, "ms_r": ms_r_i}
    reasons = []
    if ms_tr == 0 and ms_t == 0:
        reasons.append("every reader's AUC is the same in all treatments (e.g. no reader changed a rating): "
                       "the F tests are undefined")
    elif den == 0 or ms_tr == 0:
        reasons.append("a variance component is zero: some test statistics are undefined")
    for res in (rrrc, frrc, rrfc):
        if reasons:
            res["reason"] = reasons[0]
    return MRMCResult(treatments=tl, readers=list(readers) if readers is not None else list(range(r)), n_cases=c,
                      n_diseased=int((truth == 1).sum()), auc=auc, var_error=var_e, cov1=cov1, cov2=cov2, cov3=cov3,
                      ms_t=ms_t, ms_r=ms_r, ms_tr=ms_tr, rrrc=rrrc, frrc=frrc, rrfc=rrfc, single_treatment=single)


def from_records(records: Iterable[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list, list, list]:
    """(T, R, C) ratings, truth, treatments, readers, cases from long records.

    Raises
    ------
    ValueError
        When the design is not fully crossed or a case's truth is inconsistent.
    """
    recs = list(records)
    if not recs:
        raise ValueError("no ratings")
    treatments = sorted({r["treatment"] for r in recs}, key=_natural)
    readers = sorted({r["reader"] for r in recs}, key=_natural)
    cases = sorted({r["case"] for r in recs}, key=_natural)
    ti = {v: i for i, v in enumerate(treatments)}
    ri = {v: i for i, v in enumerate(readers)}
    ci = {v: i for i, v in enumerate(cases)}
    ratings = np.full((len(treatments), len(readers), len(cases)), np.nan)
    truth = np.full(len(cases), -1)
    for rec in recs:
        k = ci[rec["case"]]
        tr = int(float(rec["truth"]))
        if truth[k] not in (-1, tr):
            raise ValueError(f"case {rec['case']} has conflicting truth values")
        truth[k] = tr
        ratings[ti[rec["treatment"]], ri[rec["reader"]], k] = float(rec["rating"])
    missing = np.argwhere(np.isnan(ratings))
    if missing.size:
        t0, r0, c0 = missing[0]
        raise ValueError(f"{len(missing)} rating(s) missing, e.g. reader {readers[r0]}, treatment "
                         f"{treatments[t0]}, case {cases[c0]}: MRMC needs every reader to rate every case in every treatment")
    if not set(np.unique(truth)) <= {0, 1}:
        raise ValueError("truth must be 0 (non-diseased) or 1 (diseased)")
    return ratings, truth, treatments, readers, cases


def read_ratings_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read ``reader,treatment,case,truth,rating`` (the Van Dyke format)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"reader", "treatment", "case", "truth", "rating"}
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = need - set(rows[0])
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected {sorted(need)}")
    return rows


def _natural(v: Any) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))
