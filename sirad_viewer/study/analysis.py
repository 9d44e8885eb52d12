"""Export and analysis of a reader study: the long table, endpoints, figures and an HTML report."""
from __future__ import annotations

import csv
import html
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sirad_viewer.study.agreement import cohen_kappa, fleiss_kappa
from sirad_viewer.study.grading import GROUPINGS, GradeScheme
from sirad_viewer.study.metrics import (JointRead, accuracy, bootstrap_ci, joint_sens_spec, mcnemar,
                                        paired_bootstrap_difference, patient_accuracy, patient_diagnoses,
                                        reveal_changes, sens_spec)
from sirad_viewer.study.session import JOINTS, ReaderSession
from sirad_viewer.study.store import StudyStore

log = logging.getLogger(__name__)

EXPORT_COLUMNS = ["study", "protocol_hash", "reader", "case", "site", "joint", "session", "arm", "pre_ai_grade",
                  "post_ai_grade", "ai_grade", "reference", "cannot_grade", "confidence", "active_s", "locked_at",
                  "revealed_at", "closed_at"]


def export_rows(store: StudyStore) -> list[dict[str, Any]]:
    """One row per reader x case x joint x session (the long format)."""
    p = store.protocol
    rows = []
    for r in p.readers:
        sess = ReaderSession(store, r.id)
        for (case, session), st in sorted(sess.states().items()):
            c = p.case(case)
            for joint in JOINTS:
                ai = (st.ai or {}).get("joints", {}).get(joint, {}) if st.ai else {}
                post = st.post.get(joint, st.pre.get(joint)) if st.revealed_at else None
                rows.append({
                    "study": p.name, "protocol_hash": p.hash, "reader": r.id, "case": case, "site": c.site,
                    "joint": joint, "session": session, "arm": st.arm, "pre_ai_grade": st.pre.get(joint),
                    "post_ai_grade": post, "ai_grade": ai.get("grade"),
                    "reference": (c.reference or {}).get(joint), "cannot_grade": st.cannot_grade or "",
                    "confidence": st.confidence, "active_s": round(st.active_s, 3), "locked_at": st.locked_at,
                    "revealed_at": st.revealed_at, "closed_at": st.closed_at})
    return rows


def write_export(store: StudyStore, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json"):  # before: any other name silently got CSV
        from sirad_viewer.errors import ExportError

        raise ExportError(f"the export is written as CSV (.csv) or JSON (.json), not '{out.suffix or 'no extension'}'",
                          code="export_format", path=out)
    rows = export_rows(store)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1))
    else:
        with open(out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return out


def _reads(rows: list[dict[str, Any]], *, which: str) -> dict[tuple[str, str], list[JointRead]]:
    """JointReads per (reader, arm). ``which``: 'pre' (unaided/locked grade) or 'post' (after the reveal)."""
    out: dict[tuple[str, str], list[JointRead]] = {}
    for r in rows:
        if r["reference"] is None or r["cannot_grade"]:
            continue
        g = r["pre_ai_grade"] if which == "pre" else (r["post_ai_grade"] if r["post_ai_grade"] is not None else r["pre_ai_grade"])
        if g is None:
            continue
        if r["arm"] == "sequential":
            arm = "unaided (locked)" if which == "pre" else "aided (after reveal)"
        else:
            arm = r["arm"]
        out.setdefault((r["reader"], arm), []).append(JointRead(
            reader=r["reader"], patient=r["case"], joint=r["joint"], arm=arm, grade=int(g), reference=int(r["reference"]),
            ai_grade=None if r["ai_grade"] is None else int(r["ai_grade"]),
            pre_grade=None if r["pre_ai_grade"] is None else int(r["pre_ai_grade"])))
    return out


def analyse(store: StudyStore, out_dir: str | Path, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """All endpoints, figures and ``report.html`` into ``out_dir``; returns the results dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = store.protocol
    ok, chain = store.verify()
    rows = export_rows(store)
    reads = _reads(rows, which="pre")
    reads.update({k: v for k, v in _reads(rows, which="post").items() if k[1] == "aided (after reveal)"})
    cat3 = GROUPINGS[GradeScheme(p.grade_scheme)] if p.grade_scheme != "mny5" else GROUPINGS[GradeScheme.CAT3]
    results: dict[str, Any] = {"study": p.name, "protocol_hash": p.hash, "design": p.design, "chain": chain,
                               "chain_ok": ok, "grouping": cat3.name, "per_reader_arm": [], "comparisons": [],
                               "agreement": {}, "reveal": {}, "mrmc": None}
    times: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        arms_of_row = ("unaided (locked)", "aided (after reveal)") if r["arm"] == "sequential" else (r["arm"],)
        for a in arms_of_row:
            times.setdefault((r["reader"], a), {})[f"{r['case']}/{r['session']}"] = float(r["active_s"] or 0.0)
    notes: list[str] = []
    results["notes"] = notes
    for (reader, arm), rs in sorted(reads.items()):
        t = list(times.get((reader, arm), {}).values())
        if not patient_diagnoses(rs):
            notes.append(f"{reader}, {arm}: no patient has both joints graded, so patient-level accuracy, "
                         "sensitivity and specificity are NaN")
        acc5 = bootstrap_ci(rs, accuracy, n_boot=n_boot, seed=seed)
        acc3 = bootstrap_ci(rs, lambda x: accuracy(x, cat3), n_boot=n_boot, seed=seed)
        accp = bootstrap_ci(rs, patient_accuracy, n_boot=n_boot, seed=seed)
        se2, sp2 = joint_sens_spec(rs, 2)
        se4, sp4 = joint_sens_spec(rs, 4)
        diag = patient_diagnoses(rs)
        pse, psp = sens_spec([a for a, _ in diag], [b for _, b in diag]) if diag else (float("nan"), float("nan"))
        ref = [r.reference for r in rs]
        grd = [r.grade for r in rs]
        kap = {w: cohen_kappa(ref, grd, weights=w, categories=range(5)).kappa for w in ("unweighted", "linear", "quadratic")}
        results["per_reader_arm"].append({
            "reader": reader, "arm": arm, "n_joints": len(rs), "n_patients": len({r.patient for r in rs}),
            "accuracy_5": acc5, "accuracy_3": acc3, "accuracy_patient": accp,
            "sens_ge2": se2, "spec_ge2": sp2, "sens_4": se4, "spec_4": sp4, "patient_sens": pse, "patient_spec": psp,
            "kappa_vs_reference": kap,
            "reading_time_s": {"median": float(np.median(t)) if t else float("nan"),
                               "mean": float(np.mean(t)) if t else float("nan"), "n_cases": len(t)}})
    # unaided vs aided, per reader
    arms = sorted({a for _, a in reads})
    pairs = [("unaided (locked)", "aided (after reveal)"), ("unaided", "aided")]
    for a0, a1 in pairs:
        if a0 in arms and a1 in arms:
            for reader in sorted({r for r, _ in reads}):
                ra, rb = reads.get((reader, a0), []), reads.get((reader, a1), [])
                if not ra or not rb:
                    continue
                ka = {(r.patient, r.joint): r for r in ra}
                kb = {(r.patient, r.joint): r for r in rb}
                common = sorted(set(ka) & set(kb))
                mc = mcnemar([ka[k].grade == ka[k].reference for k in common], [kb[k].grade == kb[k].reference for k in common])
                boot = paired_bootstrap_difference(ra, rb, accuracy, n_boot=n_boot, seed=seed)
                results["comparisons"].append({"reader": reader, "from": a0, "to": a1, "mcnemar": mc,
                                               "accuracy_difference": boot})
    # agreement between readers, per arm
    for arm in arms:
        per_reader = {r: {(x.patient, x.joint): x.grade for x in rs} for (r, a), rs in reads.items() if a == arm}
        readers = sorted(per_reader)
        common = sorted(set.intersection(*(set(v) for v in per_reader.values()))) if per_reader else []
        pairs_k = {}
        for r1, r2 in itertools.combinations(readers, 2):
            a = [per_reader[r1][k] for k in common]
            b = [per_reader[r2][k] for k in common]
            if a:
                pairs_k[f"{r1} vs {r2}"] = {w: cohen_kappa(a, b, weights=w, categories=range(5)).kappa
                                           for w in ("unweighted", "linear", "quadratic")}
        fk = fleiss_kappa([[per_reader[r][k] for r in readers] for k in common], categories=range(5)) if len(readers) > 2 and common else None
        results["agreement"][arm] = {"pairs": pairs_k, "fleiss_kappa": fk, "n_joints": len(common)}
    # what readers did after the reveal
    for (reader, arm), rs in reads.items():
        if arm == "aided (after reveal)":
            results["reveal"][reader] = reveal_changes(rs)
    # MRMC on detecting definite sacroiliitis (grade >= 2), grades as ordinal ratings
    results["mrmc"] = _mrmc(reads, arms)
    if results["mrmc"] and results["mrmc"].get("rrrc", {}).get("reason"):
        notes.append(f"MRMC: {results['mrmc']['rrrc']['reason']}")
    for (reader, arm), rs in reads.items():
        if arm == "aided (after reveal)" and not any(r.grade != r.pre_grade for r in rs if r.pre_grade is not None):
            notes.append(f"{reader}: no grade was revised after the reveal")
    _figures(results, reads, out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "report.html").write_text(_report_html(results, p))
    return results


def _mrmc(reads: dict[tuple[str, str], list[JointRead]], arms: list[str]) -> dict[str, Any] | None:
    from sirad_viewer.study.mrmc import from_records, or_analysis

    pair = next(((a0, a1) for a0, a1 in (("unaided (locked)", "aided (after reveal)"), ("unaided", "aided"))
                 if a0 in arms and a1 in arms), None)
    if pair is None:
        return None
    recs = [{"reader": r.reader, "treatment": arm, "case": f"{r.patient}/{r.joint}", "truth": int(r.reference >= 2),
             "rating": r.grade} for (reader, arm), rs in reads.items() if arm in pair for r in rs]
    try:
        ratings, truth, treatments, readers, _ = from_records(recs)
        if len(readers) < 2 or truth.min() == truth.max():
            return None
        res = or_analysis(ratings, truth, treatments=treatments, readers=readers)
    except ValueError as exc:
        return {"skipped": str(exc)}
    return res.to_dict()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _figures(results: dict[str, Any], reads: dict[tuple[str, str], list[JointRead]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["per_reader_arm"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r['reader']}\n{r['arm']}" for r in rows]
    vals = [r["accuracy_5"][0] for r in rows]
    err = np.array([[r["accuracy_5"][0] - r["accuracy_5"][1], r["accuracy_5"][2] - r["accuracy_5"][0]] for r in rows]).T
    ax.bar(range(len(rows)), vals, yerr=err, color=["#7a9cc6" if "unaided" in r["arm"] else "#e0a458" for r in rows], capsize=3)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("5-grade accuracy per joint")
    ax.set_title("Accuracy with patient-level bootstrap 95% CI")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    fig = confusion_figure(reads)
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)


def confusion_figure(reads: dict[tuple[str, str], list[JointRead]]) -> Any:
    """One 5x5 confusion matrix (reference rows, reader grade columns) per reader and arm.

    Every grade 0-4 is labelled on both axes (matplotlib's default ticks skipped 1 and 3), and
    counts on dark cells are written in white so they stay readable.
    """
    import matplotlib.pyplot as plt

    n = len(reads)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
    for ax, ((reader, arm), rs) in zip(axes[0], sorted(reads.items())):
        m = np.zeros((5, 5), int)
        for r in rs:
            m[r.reference, r.grade] += 1
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, int(m.max())))
        for i in range(5):
            for j in range(5):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.6 * m.max() else "black")
        ax.set_xticks(range(5))
        ax.set_yticks(range(5))
        ax.set_title(f"{reader}\n{arm}", fontsize=7)
        ax.set_xlabel("reader grade", fontsize=7)
        ax.set_ylabel("reference", fontsize=7)
    fig.tight_layout()
    return fig


def _fmt(v: Any) -> str:
    if isinstance(v, (tuple, list)) and len(v) == 3:
        return f"{_fmt(float(v[0]))} ({_fmt(float(v[1]))}-{_fmt(float(v[2]))})"
    if isinstance(v, float):
        return "—" if not np.isfinite(v) else f"{v:.3f}"
    return html.escape(str(v))


def _report_html(res: dict[str, Any], protocol: Any) -> str:
    head = ["reader", "arm", "n_joints", "accuracy_5", "accuracy_3", "accuracy_patient", "sens_ge2", "spec_ge2", "sens_4", "spec_4"]
    trs = "".join("<tr>" + "".join(f"<td>{_fmt(r[h])}</td>" for h in head) +
                  f"<td>{_fmt(r['kappa_vs_reference']['quadratic'])}</td><td>{_fmt(r['reading_time_s']['median'])}</td></tr>"
                  for r in res["per_reader_arm"])
    comp = "".join(f"<tr><td>{html.escape(c['reader'])}</td><td>{html.escape(c['from'])} → {html.escape(c['to'])}</td>"
                   f"<td>{_fmt(c['accuracy_difference']['difference'])}</td><td>{_fmt(c['accuracy_difference']['ci'][0])} to "
                   f"{_fmt(c['accuracy_difference']['ci'][1])}</td><td>{_fmt(c['accuracy_difference']['p'])}</td>"
                   f"<td>{_fmt(c['mcnemar']['p'])}</td></tr>" for c in res["comparisons"])
    agree = "".join(f"<tr><td>{html.escape(arm)}</td><td>{html.escape(pair)}</td><td>{_fmt(k['unweighted'])}</td>"
                    f"<td>{_fmt(k['linear'])}</td><td>{_fmt(k['quadratic'])}</td><td>{a['n_joints']}</td>"
                    f"<td>{_fmt(a['fleiss_kappa']) if a['fleiss_kappa'] is not None else '—'}</td></tr>"
                    for arm, a in res["agreement"].items() for pair, k in (a["pairs"].items() or [("—", {
                        "unweighted": float("nan"), "linear": float("nan"), "quadratic": float("nan")})]))
    rev = "".join(f"<tr><td>{html.escape(r)}</td><td>{v.get('changed', 0)}/{v.get('n', 0)}</td><td>{v.get('toward_ai', 0)}</td>"
                  f"<td>{v.get('followed_wrong_ai', 0)}/{v.get('wrong_ai_shown', 0)}</td></tr>" for r, v in res["reveal"].items())
    mr = res.get("mrmc") or {}
    if mr.get("rrrc"):
        rr = mr["rrrc"]
        auc_rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{_fmt(v)}</td>"
                           + "".join(f"<td>{_fmt(a)}</td>" for a in mr["auc"][t].values()) + "</tr>"
                           for t, v in mr["auc_mean"].items())
        readers = next(iter(mr["auc"].values())).keys() if mr["auc"] else []
        mrmc = (f"<table><tr><th>arm</th><th>mean AUC</th>{''.join(f'<th>{html.escape(r)}</th>' for r in readers)}</tr>"
                f"{auc_rows}</table><table><tr><th>test (random readers, random cases)</th><th>F</th><th>ddf</th>"
                f"<th>p</th></tr><tr><td>OR MRMC, grade as rating for grade ≥ 2</td><td>{_fmt(rr['f'])}</td>"
                f"<td>{_fmt(rr['ddf'])}</td><td>{_fmt(rr['p'])}</td></tr></table>"
                + (f"<p>{html.escape(rr['reason'])}</p>" if rr.get("reason") else ""))
    elif mr.get("skipped"):
        mrmc = f"<p>MRMC: not computed ({html.escape(mr['skipped'])}).</p>"
    else:
        mrmc = "<p>MRMC: not applicable (needs two arms and at least two readers).</p>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in res.get("notes", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(res['study'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}
table{{border-collapse:collapse;margin:1em 0}}</style></head><body>
<h1>{html.escape(res['study'])}</h1>
<p>Design: {html.escape(res['design'])}. Protocol hash <code>{res['protocol_hash'][:16]}</code>. Event log: {html.escape(res['chain'])}.
3-category grouping: {html.escape(res['grouping'])}. Confidence intervals: patient-level bootstrap (both joints resampled together).</p>
<h2>Per reader and arm</h2><table><tr>{''.join(f'<th>{h}</th>' for h in head)}<th>quadratic κ vs reference</th><th>median active reading time (s per case)</th></tr>{trs}</table>
<img src="accuracy.png"><img src="confusion.png" style="max-width:100%">
<h2>Unaided vs aided</h2><table><tr><th>reader</th><th>arms</th><th>accuracy difference</th><th>95% CI (paired patient bootstrap)</th><th>p</th><th>McNemar p</th></tr>{comp}</table>
<h2>Agreement between readers</h2><table><tr><th>arm</th><th>pair</th><th>Cohen κ</th><th>linear κ</th><th>quadratic κ</th><th>joints</th><th>Fleiss κ</th></tr>{agree}</table>
<h2>After the reveal</h2><table><tr><th>reader</th><th>changed</th><th>toward AI</th><th>followed a wrong AI</th></tr>{rev}</table>
<h2>MRMC</h2>{mrmc}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>"""
