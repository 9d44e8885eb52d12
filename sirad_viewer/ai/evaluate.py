"""Evaluating a grading bundle on a labelled ``DATA.csv``: our version of internal/external validation.

Per joint: one-vs-rest AUC per grade and per 3-category group, accuracy (5 grades, 3 categories),
Cohen's kappa (unweighted / linear / quadratic), all with 95% percentile CIs from a **patient**
bootstrap (both joints of a patient are resampled together: they are correlated); calibration
(ECE, Brier score, log loss, reliability diagram); the share of joints the OOD check flags; 5-grade
and 3-category confusion matrices. Per patient: the modified New York result (positive iff
P >= 0.5), its accuracy, sensitivity, specificity and the AUC of P. ``by="site"`` repeats
everything per site. scikit-learn computes AUC, kappa, Brier score and the calibration curve.

**Failures are never dropped.** A case whose CT could not be graded (no pelvis found, a joint not
localised) stays in every summary: its joints count as wrong in the accuracies, as the grade
farthest from the reference in the kappas, and with a flat distribution (no information) in the
AUCs; the patient counts as misclassified. ``*_graded_only`` figures are given next to them.
Calibration metrics need a probability that was shown, so they are over graded joints, with the
failure count beside them.

Writes ``metrics.json``, ``summary.md``, ``predictions.csv``, ``roc_<group>.png`` and
``reliability_<group>.png``.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.train import DataError, read_data_csv

FLAT = [0.2] * 5


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (scikit-learn; ties count one half); NaN without both classes."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(positive, bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, float)))


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve as sk_roc

    fpr, tpr, _ = sk_roc(np.asarray(positive, bool), np.asarray(scores, float))
    return fpr, tpr


def patient_bootstrap(stat: Callable[[np.ndarray], float], cases: np.ndarray, *, n_boot: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of ``stat(idx)`` over resampled patients (all rows of a patient move together)."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(cases, return_inverse=True)
    members = [np.nonzero(inv == k)[0] for k in range(len(uniq))]
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(uniq), size=len(uniq))])
        v = stat(idx)
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < max(20, n_boot // 10):
        return float("nan"), float("nan")
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


_KAPPA_W = {None: 1.0 - np.eye(5), "linear": np.abs(np.subtract.outer(np.arange(5), np.arange(5))).astype(float),
            "quadratic": np.subtract.outer(np.arange(5), np.arange(5)).astype(float) ** 2}


def _kappa(y: np.ndarray, yhat: np.ndarray, weights: str | None) -> float:
    """Cohen's kappa over grades 0-4 (scikit-learn's ``cohen_kappa_score``)."""
    from sklearn.metrics import cohen_kappa_score

    if len(np.unique(np.r_[y, yhat])) < 2:
        return 1.0 if np.all(y == yhat) else float("nan")
    return float(cohen_kappa_score(y, yhat, labels=list(GR.GRADES), weights=weights))


def _kappa_fast(y: np.ndarray, yhat: np.ndarray, weights: str | None) -> float:
    """The same kappa from one bincount: scikit-learn's call costs ~1 ms, too slow for 1000 resamples x 3 weights
    (tests check that both agree)."""
    o = np.bincount(5 * y + yhat, minlength=25).reshape(5, 5).astype(float)
    n = o.sum()
    e = np.outer(o.sum(1), o.sum(0)) / n
    w = _KAPPA_W[weights]
    den = (w * e).sum()
    return float(1.0 - (w * o).sum() / den) if den > 0 else (1.0 if np.all(y == yhat) else float("nan"))


def _auc_fast(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC (ties one half), equal to ``roc_auc_score``; used inside the bootstrap for speed."""
    from scipy.stats import rankdata

    y = np.asarray(positive, bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def confusion(truth: Sequence[int], pred: Sequence[int], n: int) -> list[list[int]]:
    """Rows: reference; columns: model 0..n-1, then a last column for joints that could not be graded (-1)."""
    m = np.zeros((n, n + 1), int)
    for t, p in zip(truth, pred):
        m[int(t), int(p) if p >= 0 else n] += 1
    return m.tolist()


def metrics_for(preds: list[dict[str, Any]], groups: Sequence[Sequence[int]], *, n_boot: int = 1000) -> dict[str, Any]:
    """All figures for one set of joint predictions.

    ``preds``: dicts with ``image`` (the patient), ``side``, ``truth``, ``probabilities`` and optionally
    ``failed`` (True when the case could not be graded) and ``ood`` ({"flagged": bool, ...}).
    """
    y = np.array([int(p["truth"]) for p in preds])
    failed = np.array([bool(p.get("failed")) for p in preds])
    prob = np.array([FLAT if p.get("failed") else p["probabilities"] for p in preds], float)
    cases = np.array([p["image"] for p in preds])
    gi = {g: k for k, grp in enumerate(groups) for g in grp}
    cat = np.array([gi[int(t)] for t in y])
    cprob = np.array([GR.group_probabilities(pp, groups) for pp in prob])
    yhat = np.where(failed, -1, prob.argmax(1))
    chat = np.where(failed, -1, np.array([gi[int(g)] for g in prob.argmax(1)]))  # category of the grade shown
    worst = np.where(y >= 2, 0, 4)  # a failure counts as the grade farthest from the reference
    ykap = np.where(failed, worst, yhat)
    ok = ~failed
    out: dict[str, Any] = {
        "joints": int(len(y)), "patients": int(len(np.unique(cases))),
        "failed_joints": int(failed.sum()), "failed_patients": int(len(np.unique(cases[failed]))),
        "accuracy": float(np.mean(yhat == y)), "accuracy_3cat": float(np.mean(chat == cat)),
        "accuracy_graded_only": float(np.mean(yhat[ok] == y[ok])) if ok.any() else float("nan"),
    }
    out["accuracy_ci95"] = list(patient_bootstrap(lambda i: float(np.mean(yhat[i] == y[i])), cases, n_boot=n_boot, seed=1))
    for w, sk in (("unweighted", None), ("linear", "linear"), ("quadratic", "quadratic")):
        k = _kappa(y, ykap, sk)
        ci = patient_bootstrap(lambda i, sk=sk: _kappa_fast(y[i], ykap[i], sk), cases, n_boot=n_boot, seed=2)
        out[f"kappa_{w}"] = {"kappa": k, "ci95": list(ci)}
    out["auc_per_grade"] = {}
    for g in GR.GRADES:
        pos = y == g
        out["auc_per_grade"][str(g)] = {
            "auc": auc(prob[:, g], pos), "positives": int(pos.sum()),
            "ci95": list(patient_bootstrap(lambda i, g=g: _auc_fast(prob[i, g], y[i] == g), cases, n_boot=n_boot,
                                           seed=10 + g))}
    out["auc_per_category"] = {}
    for k, grp in enumerate(groups):
        label = f"{grp[0]}-{grp[-1]}" if len(grp) > 1 else str(grp[0])
        out["auc_per_category"][label] = {
            "auc": auc(cprob[:, k], cat == k), "positives": int((cat == k).sum()),
            "ci95": list(patient_bootstrap(lambda i, k=k: _auc_fast(cprob[i, k], cat[i] == k), cases, n_boot=n_boot,
                                           seed=20 + k))}
    out["confusion_5"] = confusion(y, yhat, 5)
    out["confusion_3"] = confusion(cat, chat, len(groups))
    if ok.any():
        from sirad_viewer.ai.calibration import calibration_metrics

        out["calibration"] = calibration_metrics(prob[ok], y[ok])
        out["calibration"]["note"] = f"over the {int(ok.sum())} graded joints; {int(failed.sum())} not graded"
    oods = [p.get("ood") for p in preds if not p.get("failed")]
    if oods and all(o is not None for o in oods):
        out["ood_flagged"] = {"joints": int(sum(o["flagged"] for o in oods)), "of": len(oods),
                              "rate": float(np.mean([o["flagged"] for o in oods]))}
    out["patient"] = _patient_metrics(preds, n_boot=n_boot)
    return out


def _patient_metrics(preds: list[dict[str, Any]], *, n_boot: int) -> dict[str, Any]:
    from sirad_viewer.ai.pipeline import patient_summary

    by_case: dict[str, dict[str, Any]] = {}
    for p in preds:
        by_case.setdefault(p["image"], {})[p["side"]] = p
    t, pp, d, fail = [], [], [], []
    for c in by_case.values():
        if "left" not in c or "right" not in c:
            continue
        truth = GR.patient_rule(c["left"]["truth"], c["right"]["truth"])
        if c["left"].get("failed") or c["right"].get("failed"):
            t.append(truth), pp.append(0.5), d.append(not truth), fail.append(True)  # a failure is a wrong result
            continue
        s = patient_summary(np.asarray(c["left"]["probabilities"]), np.asarray(c["right"]["probabilities"]))
        t.append(truth), pp.append(s["probability"]), d.append(s["as_positive"]), fail.append(False)
    if not t:
        return {}
    ta, pa, da = np.array(t), np.array(pp), np.array(d)
    ids = np.arange(len(ta))
    return {"n": len(ta), "positives": int(ta.sum()), "failed": int(sum(fail)), "accuracy": float(np.mean(da == ta)),
            "sensitivity": float(np.mean(da[ta])) if ta.any() else float("nan"),
            "specificity": float(np.mean(~da[~ta])) if (~ta).any() else float("nan"),
            "auc": auc(pa, ta), "auc_ci95": list(patient_bootstrap(lambda i: _auc_fast(pa[i], ta[i]), ids, n_boot=n_boot,
                                                                   seed=30))}


def _plot_roc(preds: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.array([p["truth"] for p in preds])
    prob = np.array([FLAT if p.get("failed") else p["probabilities"] for p in preds], float)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    for g in GR.GRADES:
        if (y == g).any() and (y != g).any():
            fpr, tpr = roc_curve(prob[:, g], y == g)
            ax.plot(fpr, tpr, label=f"grade {g} vs rest (AUC {auc(prob[:, g], y == g):.2f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title + (f"\n{sum(bool(p.get('failed')) for p in preds)} joint(s) not graded, counted with flat scores"),
                 fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _ci(d: dict[str, Any], key: str = "auc") -> str:
    return f"{_fmt(d[key])} ({_fmt(d['ci95'][0])}-{_fmt(d['ci95'][1])})"


def summary_markdown(results: dict[str, Any], model: dict[str, str], failures: list[dict[str, Any]] | None = None) -> str:
    lines = [f"# Evaluation of {model['name']} {model['version']}", "",
             "Synthetic phantoms unless the data say otherwise; not a clinical validation. Cases that could not be "
             "graded count as failures in every figure (wrong grade, worst grade for kappa, flat scores for AUC).", "",
             "| group | patients / joints | not graded (joints) | accuracy (5) | accuracy (3) | kappa unw. (95% CI) | "
             "kappa quad. (95% CI) | ECE | Brier | OOD flagged | patient acc. / sens. / spec. |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        cal = m.get("calibration", {})
        pt = m.get("patient", {})
        ood = m.get("ood_flagged")
        ood_s = f"{ood['joints']}/{ood['of']}" if ood else "n/a"
        lines.append(f"| {name} | {m['patients']} / {m['joints']} | {m['failed_joints']} | {_fmt(m['accuracy'])} | "
                     f"{_fmt(m['accuracy_3cat'])} | {_ci(m['kappa_unweighted'], 'kappa')} | "
                     f"{_ci(m['kappa_quadratic'], 'kappa')} | {_fmt(cal.get('ece'))} | {_fmt(cal.get('brier'))} | "
                     f"{ood_s} | "
                     f"{_fmt(pt.get('accuracy'))} / {_fmt(pt.get('sensitivity'))} / {_fmt(pt.get('specificity'))} |")
    lines += ["", "One-vs-rest AUC (95% CI, patient bootstrap):", "",
              "| group | " + " | ".join(f"grade {g}" for g in GR.GRADES) + " | categories | patient (P) |",
              "|---|" + "---|" * (len(GR.GRADES) + 2)]
    for name, m in results.items():
        cats = "; ".join(f"{k}: {_ci(v)}" for k, v in m["auc_per_category"].items())
        pt = m.get("patient", {})
        pauc = f"{_fmt(pt['auc'])} ({_fmt(pt['auc_ci95'][0])}-{_fmt(pt['auc_ci95'][1])})" if pt else "n/a"
        lines.append(f"| {name} | " + " | ".join(_ci(m["auc_per_grade"][str(g)]) for g in GR.GRADES)
                     + f" | {cats} | {pauc} |")
    for name, m in results.items():
        lines += ["", f"## {name}: confusion matrix (rows reference grade 0-4, columns model grade, then not graded)", ""]
        lines += ["| ref \\ model | 0 | 1 | 2 | 3 | 4 | not graded |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {g} | " + " | ".join(str(v) for v in row) + " |" for g, row in enumerate(m["confusion_5"])]
        lines += ["", "3 categories (rows reference, columns model category of the grade shown, then not graded): "
                  + json.dumps(m["confusion_3"])]
    if failures:
        lines += ["", "## Cases not graded (counted as failures above)", ""]
        lines += [f"- {f['message']}" for f in failures]
    return "\n".join(lines) + "\n"


def evaluate(data_csv: str | Path, bundle_path: str | Path | None, out_dir: str | Path, *, by: str | None = None,
             split: str = "auto", device: str = "auto", n_boot: int = 1000, progress: bool = True,
             segmenter_path: str | Path | None = None, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Predict every graded joint of the chosen rows and write the metrics; returns the metrics dict."""
    from sirad_viewer.ai.calibration import collect_joints, reliability_diagram
    from sirad_viewer.ai.pipeline import Grader, find_bundle

    rows = read_data_csv(data_csv)
    if split == "auto":
        split = "test" if any(r.split == "test" for r in rows) else "all"
    if split != "all":
        rows = [r for r in rows if r.split == split]
    if not rows:
        raise DataError(f"has no rows in split {split!r}", path=Path(data_csv))
    seg = find_bundle("segmentation", segmenter_path) if segmenter_path else None
    grader = Grader(find_bundle("grading", bundle_path), seg, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    joints, failures = collect_joints(grader, rows, progress=progress, cache_dir=cache_dir)
    preds: list[dict[str, Any]] = [
        {"image": j["image"], "side": j["side"], "site": j["site"], "truth": j["truth"],
         "probabilities": [float(p) for p in GR.softmax(j["logits"], grader.temperature)], "ood": j["ood"]}
        for j in joints]
    for f in failures:
        preds += [{"image": f["image"], "side": s, "site": f["site"], "truth": g, "probabilities": FLAT, "failed": True,
                   "ood": None} for s, g in f["truth"].items()]
    if not preds:
        raise DataError("has no graded joints in the chosen rows", path=Path(data_csv))
    groups = grader.groups
    sets = {"all": preds}
    if by == "site":
        for s in sorted({p["site"] for p in preds}):
            sets[f"site {s}"] = [p for p in preds if p["site"] == s]
    results = {name: metrics_for(ps, groups, n_boot=n_boot) for name, ps in sets.items()}
    title = f"{grader.bundle.name} {grader.bundle.version}"
    for name, ps in sets.items():
        tag = name.replace(" ", "_")
        _plot_roc(ps, f"{title}: {name}", out / f"roc_{tag}.png")
        ok = [p for p in ps if not p.get("failed")]
        if ok:
            reliability_diagram(np.array([p["probabilities"] for p in ok]), np.array([p["truth"] for p in ok]),
                                out / f"reliability_{tag}.png", title=f"{title}: {name} (T = {grader.temperature:.3g})")
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "side", "site", "reference_grade", "model_grade", *[f"p{g}" for g in GR.GRADES],
                    "ood_score", "ood_flagged", "failed"])
        for p in preds:
            o = p.get("ood") or {}
            w.writerow([p["image"], p["side"], p["site"], p["truth"],
                        "" if p.get("failed") else int(np.argmax(p["probabilities"])),
                        *[f"{v:.4f}" for v in p["probabilities"]], o.get("score", ""), o.get("flagged", ""),
                        bool(p.get("failed"))])
    model = {"name": grader.bundle.name, "version": grader.bundle.version, "temperature": grader.temperature,
             "ood": grader.ood is not None}
    doc = {"model": model, "data": str(data_csv), "split": split, "groups": groups, "results": results,
           "failures": failures, "problems": [f["message"] for f in failures]}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    (out / "summary.md").write_text(summary_markdown(results, model, failures))
    for f in failures:
        print(f"not graded (counted as a failure): {f['message']}", file=sys.stderr)
    return doc
