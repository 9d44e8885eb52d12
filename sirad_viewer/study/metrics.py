"""Reader-study endpoints: accuracy (5-grade, 3-category, patient diagnosis) with patient-level
bootstrap intervals, sensitivity/specificity, McNemar and paired bootstrap for unaided vs aided,
and what readers did after the AI was revealed.

Two joints of one patient are correlated, so every bootstrap resamples **patients**.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from sirad_viewer.study.grading import GROUPINGS, GradeScheme, Grouping, as_positive


@dataclass(frozen=True)
class JointRead:
    """One reader's grade of one joint (the unit of analysis)."""

    reader: str
    patient: str
    joint: str  # "left" | "right"
    arm: str  # e.g. "unaided" | "aided"
    grade: int
    reference: int
    ai_grade: int | None = None
    pre_grade: int | None = None  # sequential design: the locked grade before the reveal


def _by_patient(reads: Sequence[JointRead]) -> dict[str, list[JointRead]]:
    out: dict[str, list[JointRead]] = {}
    for r in reads:
        out.setdefault(r.patient, []).append(r)
    return out


def accuracy(reads: Sequence[JointRead], grouping: Grouping | None = None) -> float:
    if not reads:
        return float("nan")
    g = grouping or GROUPINGS[GradeScheme.MNY5]
    return float(np.mean([g.category(r.grade) == g.category(r.reference) for r in reads]))


def patient_diagnoses(reads: Sequence[JointRead]) -> list[tuple[bool, bool]]:
    """(reader's AS diagnosis, reference AS diagnosis) per patient with both joints read."""
    out = []
    for pid, rs in _by_patient(reads).items():
        j = {r.joint: r for r in rs}
        if "left" in j and "right" in j:
            out.append((as_positive(j["left"].grade, j["right"].grade),
                        as_positive(j["left"].reference, j["right"].reference)))
    return out


def patient_accuracy(reads: Sequence[JointRead]) -> float:
    d = patient_diagnoses(reads)
    return float(np.mean([a == b for a, b in d])) if d else float("nan")


def sens_spec(pred: Sequence[bool], truth: Sequence[bool]) -> tuple[float, float]:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    sens = float((p & t).sum() / t.sum()) if t.sum() else float("nan")
    spec = float((~p & ~t).sum() / (~t).sum()) if (~t).sum() else float("nan")
    return sens, spec


def joint_sens_spec(reads: Sequence[JointRead], threshold: int) -> tuple[float, float]:
    """Per-joint sensitivity/specificity of "grade >= threshold" (2: definite sacroiliitis, 4: ankylosis)."""
    return sens_spec([r.grade >= threshold for r in reads], [r.reference >= threshold for r in reads])


def bootstrap_ci(reads: Sequence[JointRead], stat: Callable[[Sequence[JointRead]], float], *,
                 n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """Statistic and its percentile CI, resampling patients (both joints travel together)."""
    groups = list(_by_patient(reads).values())
    est = stat(reads)
    if len(groups) < 2:
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        sample = [r for i in pick for r in groups[i]]
        v = stat(sample)
        if np.isfinite(v):
            vals.append(v)
    if not vals:  # e.g. patient accuracy when no patient has both joints graded: NaN, not IndexError
        return est, float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return est, float(lo), float(hi)


def paired_bootstrap_difference(a: Sequence[JointRead], b: Sequence[JointRead],
                                stat: Callable[[Sequence[JointRead]], float], *, n_boot: int = 2000, seed: int = 0,
                                alpha: float = 0.05) -> dict[str, float]:
    """stat(b) - stat(a) with a patient-level paired bootstrap CI and two-sided p."""
    ga, gb = _by_patient(a), _by_patient(b)
    pats = sorted(set(ga) & set(gb))
    nan = float("nan")
    if not pats:
        return {"difference": nan, "ci": [nan, nan], "p": nan, "n_patients": 0,
                "reason": "no patient was read in both arms"}
    diff = stat([r for p in pats for r in gb[p]]) - stat([r for p in pats for r in ga[p]])
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        pick = [pats[i] for i in rng.integers(0, len(pats), len(pats))]
        va = stat([r for p in pick for r in ga[p]])
        vb = stat([r for p in pick for r in gb[p]])
        if np.isfinite(va) and np.isfinite(vb):
            vals.append(vb - va)
    vals_arr = np.asarray(vals)
    if not vals_arr.size:
        return {"difference": float(diff), "ci": [nan, nan], "p": nan, "n_patients": len(pats),
                "reason": "the statistic is undefined in every bootstrap sample"}
    lo, hi = np.percentile(vals_arr, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p = float(min(1.0, 2 * min((vals_arr <= 0).mean(), (vals_arr >= 0).mean()))) if vals_arr.size else float("nan")
    return {"difference": float(diff), "ci": [float(lo), float(hi)], "p": p, "n_patients": len(pats)}


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
    """McNemar's test on paired correct/incorrect outcomes (exact binomial when discordant < 25)."""
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    discordant = table[0][1] + table[1][0]
    res = _mcnemar(table, exact=discordant < 25, correction=True)
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "a_only_correct": table[0][1],
            "b_only_correct": table[1][0], "exact": discordant < 25}


def reveal_changes(reads: Sequence[JointRead]) -> dict[str, Any]:
    """Sequential design: how often readers changed after the reveal, toward the AI, and toward a wrong AI."""
    rs = [r for r in reads if r.pre_grade is not None and r.ai_grade is not None]
    if not rs:
        return {"n": 0}
    changed = [r for r in rs if r.grade != r.pre_grade]
    toward = [r for r in changed if abs(r.grade - r.ai_grade) < abs(r.pre_grade - r.ai_grade)]
    wrong_ai = [r for r in rs if r.ai_grade != r.reference and r.pre_grade != r.ai_grade]
    followed_wrong = [r for r in wrong_ai if r.grade == r.ai_grade]
    right_ai = [r for r in rs if r.ai_grade == r.reference and r.pre_grade != r.ai_grade]
    followed_right = [r for r in right_ai if r.grade == r.ai_grade]
    return {
        "n": len(rs),
        "changed": len(changed), "changed_rate": len(changed) / len(rs),
        "toward_ai": len(toward),
        "wrong_ai_shown": len(wrong_ai), "followed_wrong_ai": len(followed_wrong),
        "automation_bias_rate": (len(followed_wrong) / len(wrong_ai)) if wrong_ai else float("nan"),
        "right_ai_shown": len(right_ai), "followed_right_ai": len(followed_right),
        "improved": sum(1 for r in changed if r.grade == r.reference and r.pre_grade != r.reference),
        "worsened": sum(1 for r in changed if r.pre_grade == r.reference and r.grade != r.reference),
    }


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(1 - alpha / 2)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return float(c - h), float(c + h)
