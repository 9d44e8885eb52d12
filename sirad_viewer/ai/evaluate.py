"""Evaluating a grading bundle on a labelled ``DATA.csv``: our version of internal/external validation.

Per joint: one-vs-rest AUC per grade with a case-level bootstrap 95% CI, accuracy (5 grades and 3
categories), Cohen's kappa unweighted / linear / quadratic against the reference grades, 5-grade
and 3-category confusion matrices; per patient: the modified New York diagnosis (accuracy,
sensitivity, specificity, AUC of its probability). ``by="site"`` repeats everything per site.
Writes ``metrics.json``, ``summary.md``, ``predictions.csv`` and ``roc_<group>.png``.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.train import DataError, Progress, read_data_csv


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN without both classes."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    thr = np.r_[np.inf, np.unique(s)[::-1]]
    tpr = np.array([(s[y] >= t).mean() if y.any() else np.nan for t in thr])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else np.nan for t in thr])
    return fpr, tpr


def _bootstrap_auc(scores, positive, cases, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of the AUC, resampling cases (both joints of a patient stay together)."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(cases)
    members = {c: np.nonzero(cases == c)[0] for c in uniq}
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([members[c] for c in rng.choice(uniq, size=len(uniq), replace=True)])
        a = auc(scores[idx], positive[idx])
        if np.isfinite(a):
            vals.append(a)
    if len(vals) < 20:
        return float("nan"), float("nan")
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def confusion(truth: Sequence[int], pred: Sequence[int], n: int) -> list[list[int]]:
    m = np.zeros((n, n), int)
    for t, p in zip(truth, pred):
        m[int(t), int(p)] += 1
    return m.tolist()


def metrics_for(preds: list[dict[str, Any]], groups: Sequence[Sequence[int]], *, n_boot: int = 1000) -> dict[str, Any]:
    from sirad_viewer.study.agreement import cohen_kappa

    y = np.array([p["truth"] for p in preds])
    prob = np.array([p["probabilities"] for p in preds])
    cases = np.array([p["image"] for p in preds])
    yhat = prob.argmax(1)
    cat = np.array([next(k for k, g in enumerate(groups) if t in g) for t in y])
    cprob = np.array([GR.group_probabilities(pp, groups) for pp in prob])
    chat = cprob.argmax(1)
    out: dict[str, Any] = {"joints": int(len(y)), "patients": int(len(np.unique(cases))),
                           "accuracy": float(np.mean(yhat == y)), "accuracy_3cat": float(np.mean(chat == cat))}
    for w in ("unweighted", "linear", "quadratic"):
        k = cohen_kappa(y, yhat, weights=w, categories=list(GR.GRADES))
        out[f"kappa_{w}"] = {"kappa": k.kappa, "ci95": list(k.ci)}
    out["auc_per_grade"] = {}
    for g in GR.GRADES:
        a = auc(prob[:, g], y == g)
        out["auc_per_grade"][str(g)] = {"auc": a, "ci95": list(_bootstrap_auc(prob[:, g], y == g, cases, n_boot=n_boot,
                                                                              seed=g)),
                                        "positives": int((y == g).sum())}
    out["confusion_5"] = confusion(y, yhat, 5)
    out["confusion_3"] = confusion(cat, chat, len(groups))
    # patient level (cases with both sides graded)
    by_case: dict[str, dict[str, Any]] = {}
    for p in preds:
        by_case.setdefault(p["image"], {})[p["side"]] = p
    pt = [(GR.patient_rule(c["left"]["truth"], c["right"]["truth"]),
           GR.patient_probability(np.asarray(c["left"]["probabilities"]), np.asarray(c["right"]["probabilities"])),
           GR.patient_rule(int(np.argmax(c["left"]["probabilities"])), int(np.argmax(c["right"]["probabilities"]))))
          for c in by_case.values() if "left" in c and "right" in c]
    if pt:
        t = np.array([a for a, _, _ in pt])
        pp = np.array([b for _, b, _ in pt])
        d = np.array([c for _, _, c in pt])
        out["patient"] = {"n": len(pt), "positives": int(t.sum()), "accuracy": float(np.mean(d == t)),
                          "sensitivity": float(np.mean(d[t])) if t.any() else float("nan"),
                          "specificity": float(np.mean(~d[~t])) if (~t).any() else float("nan"),
                          "auc": auc(pp, t)}
    return out


def _plot_roc(preds: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.array([p["truth"] for p in preds])
    prob = np.array([p["probabilities"] for p in preds])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    for g in GR.GRADES:
        if (y == g).any() and (y != g).any():
            fpr, tpr = roc_curve(prob[:, g], y == g)
            ax.plot(fpr, tpr, label=f"grade {g} vs rest (AUC {auc(prob[:, g], y == g):.2f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def summary_markdown(results: dict[str, Any], model: dict[str, str]) -> str:
    lines = [f"# Evaluation of {model['name']} {model['version']}", "",
             "Synthetic phantoms unless the data say otherwise; not a clinical validation.", "",
             "| group | joints | accuracy (5) | accuracy (3) | kappa unw. | kappa lin. | kappa quad. | "
             "AUC g0 | AUC g1 | AUC g2 | AUC g3 | AUC g4 | patient acc. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        aucs = " | ".join(f"{_fmt(m['auc_per_grade'][str(g)]['auc'])} ({_fmt(m['auc_per_grade'][str(g)]['ci95'][0])}-"
                          f"{_fmt(m['auc_per_grade'][str(g)]['ci95'][1])})" for g in GR.GRADES)
        lines.append(f"| {name} | {m['joints']} | {_fmt(m['accuracy'])} | {_fmt(m['accuracy_3cat'])} | "
                     f"{_fmt(m['kappa_unweighted']['kappa'])} | {_fmt(m['kappa_linear']['kappa'])} | "
                     f"{_fmt(m['kappa_quadratic']['kappa'])} | {aucs} | {_fmt(m.get('patient', {}).get('accuracy', np.nan))} |")
    for name, m in results.items():
        lines += ["", f"## {name}: confusion matrix (rows reference grade 0-4, columns model grade)", ""]
        lines += ["| ref \\ model | 0 | 1 | 2 | 3 | 4 |", "|---|---|---|---|---|---|"]
        lines += [f"| {g} | " + " | ".join(str(v) for v in row) + " |" for g, row in enumerate(m["confusion_5"])]
        lines += ["", "3 categories (rows reference, columns model): " + json.dumps(m["confusion_3"])]
    return "\n".join(lines) + "\n"


def evaluate(data_csv: str | Path, bundle_path: str | Path | None, out_dir: str | Path, *, by: str | None = None,
             split: str = "auto", device: str = "auto", n_boot: int = 1000, progress: bool = True,
             segmenter_path: str | Path | None = None) -> dict[str, Any]:
    """Predict every graded joint of the chosen rows and write the metrics; returns the metrics dict."""
    from sirad_viewer.ai.pipeline import Grader, find_bundle
    from sirad_viewer.errors import SiradError
    from sirad_viewer.io import open_volume

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
    preds: list[dict[str, Any]] = []
    problems: list[str] = []
    bar = Progress(len(rows), "evaluate") if progress else None
    for row in rows:
        try:
            res = grader(open_volume(row.image), heatmaps=False)
        except SiradError as exc:
            problems.append(f"{row.image}: {exc.user_message()}")
            res = None
        if res is not None:
            for side, g in (("left", row.left), ("right", row.right)):
                if g is not None:
                    preds.append({"image": str(row.image), "side": side, "site": row.site, "truth": g,
                                  "probabilities": [float(p) for p in res.joints[side].probabilities]})
        if bar:
            bar.update()
    if not preds:
        raise DataError("no joint could be graded; problems: " + "; ".join(problems), path=Path(data_csv))
    groups = grader.groups
    sets = {"all": preds}
    if by == "site":
        for s in sorted({p["site"] for p in preds}):
            sets[f"site {s}"] = [p for p in preds if p["site"] == s]
    results = {name: metrics_for(ps, groups, n_boot=n_boot) for name, ps in sets.items()}
    for name, ps in sets.items():
        _plot_roc(ps, f"{grader.bundle.name} {grader.bundle.version}: {name}", out / f"roc_{name.replace(' ', '_')}.png")
    with open(out / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "side", "site", "reference_grade", "model_grade", *[f"p{g}" for g in GR.GRADES]])
        for p in preds:
            w.writerow([p["image"], p["side"], p["site"], p["truth"], int(np.argmax(p["probabilities"])),
                        *[f"{v:.4f}" for v in p["probabilities"]]])
    model = {"name": grader.bundle.name, "version": grader.bundle.version}
    doc = {"model": model, "data": str(data_csv), "split": split, "groups": groups, "results": results,
           "problems": problems}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    (out / "summary.md").write_text(summary_markdown(results, model))
    if problems:
        for p in problems:
            print(f"skipped: {p}", file=sys.stderr)
    return doc
