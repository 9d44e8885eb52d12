"""The screening report of a batch: one self-contained HTML file.

Counts, the grade distribution, the likely positives sorted by patient probability (OOD-flagged
ones in a list of their own) with an oblique coronal thumbnail through each joint, failures by
error code, throughput, and the model card summary with its disclaimer.

Thumbnails are rendered here, not during the batch: the results store keeps each joint's centre
and the sacral axis (``geometry``), and the source image is read again for the few cases shown.
The slices are cut by :func:`sirad_viewer.viz.report.key_images`, the same code as the case report.
"""
from __future__ import annotations

import base64
import html
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from sirad_viewer.batch.store import ResultStore
from sirad_viewer.errors import ExportError, SiradError

log = logging.getLogger(__name__)

POSITIVE_THRESHOLD = 0.5


def _load_volume(row: dict[str, Any]):
    """The volume a row was graded on (the series with the row's key when a folder holds several)."""
    from sirad_viewer.batch.plan import series_key
    from sirad_viewer.io import load_series, scan

    result = scan(row["source"])
    infos = [s for s in result.series if series_key(s, row["source"]) == row["key"]] if row["key"].startswith(
        ("series:", "dicom:")) else []
    return load_series(infos[0] if infos else result.series[result.chosen])


def thumbnails(row: dict[str, Any], *, fov_mm: float = 110.0, pixel_mm: float = 0.8) -> dict[str, np.ndarray]:
    """RGB uint8 oblique coronal slice through each joint: ``{"right": ..., "left": ...}``.

    Raises
    ------
    SiradError
        When the source can no longer be read (moved, deleted).
    """
    from sirad_viewer.viz.report import key_images

    geo = row.get("geometry") or {}
    if not geo.get("joints") or not (geo.get("sacral_axis") or {}).get("direction_lps"):
        return {}
    axis = geo["sacral_axis"]
    joints = {s: SimpleNamespace(box=SimpleNamespace(center_lps_mm=np.asarray(j["center_lps_mm"], float)), heatmap=None)
              for s, j in geo["joints"].items()}
    result = SimpleNamespace(localisation=SimpleNamespace(sacral_axis_dict=lambda: axis), joints=joints)
    imgs = key_images(_load_volume(row), result, fov_mm=fov_mm, pixel_mm=pixel_mm)
    return {s: imgs[f"{s}_plain"] for s in ("right", "left") if f"{s}_plain" in imgs}


def _png_b64(rgb: np.ndarray) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, rgb, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def _model_card(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from sirad_viewer.ai.pipeline import DISCLAIMER, find_bundle

    card: dict[str, Any] = {"disclaimer": DISCLAIMER}
    try:
        b = find_bundle("grading")
        card.update(b.metadata)
        card.setdefault("disclaimer", DISCLAIMER)
    except SiradError as exc:
        card["note"] = f"the model card could not be read: {exc.message}"
    used = sorted({f"{r['model']} {r['model_version']}" for r in rows if r.get("model")})
    card["used"] = used
    return card


def build_html(store: ResultStore, *, top: int = 50, with_thumbnails: bool = True) -> str:
    rows = store.rows()
    runs = store.run_rows()
    e = html.escape
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    card = _model_card(rows)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>SIRAD screening report</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:90%}"
             ".warn{background:#fff3cd;border:1px solid #e0c36a;padding:.6em}.case img{width:190px;margin:2px}"
             ".case{display:inline-block;vertical-align:top;border:1px solid #ddd;margin:4px;padding:4px;width:400px}"
             ".small{font-size:80%;color:#555;word-break:break-all}</style></head><body>",
             "<h1>SIRAD archive screening report</h1>",
             f"<p class='warn'><b>Not for clinical use.</b> {e(str(card.get('disclaimer', '')))} A screening list "
             "orders cases for reading; every case is read by a radiologist, grade first.</p>",
             f"<p>Results store: <code>{e(store.target)}</code></p>",
             "<h2>Counts</h2><table>",
             f"<tr><th>series</th><td>{len(rows)}</td></tr><tr><th>graded</th><td>{len(ok)}</td></tr>"
             f"<tr><th>failed</th><td>{len(failed)}</td></tr><tr><th>skipped</th><td>{len(skipped)}</td></tr>"
             f"<tr><th>patient-level positive (modified New York)</th><td>{sum(1 for r in ok if r['patient_positive'])}</td></tr>"
             f"<tr><th>OOD-flagged</th><td>{sum(1 for r in ok if r.get('ood_flagged'))}"
             f"{'' if any(r.get('ood_flagged') is not None for r in ok) else ' (no OOD check in these results)'}</td></tr>"
             "</table>"]
    # grade distribution
    parts.append("<h2>Grade distribution (AI, per joint)</h2><table><tr><th>joint</th>"
                 + "".join(f"<th>grade {g}</th>" for g in range(5)) + "</tr>")
    for side in ("right", "left"):
        c = Counter(r[f"{side}_grade"] for r in ok)
        parts.append(f"<tr><td>{side}</td>" + "".join(f"<td>{c.get(g, 0)}</td>" for g in range(5)) + "</tr>")
    parts.append("</table>")
    # likely positives
    likely = sorted((r for r in ok if r["patient_positive"] or (r["patient_probability"] or 0) >= POSITIVE_THRESHOLD),
                    key=lambda r: -(r["patient_probability"] or 0))
    normal = [r for r in likely if not r.get("ood_flagged")]
    ood = [r for r in likely if r.get("ood_flagged")]
    for title, group, note in (
            ("Likely positives", normal, f"P(patient positive) &ge; {POSITIVE_THRESHOLD} or the modified New York rule "
                                         "met by the AI grades, highest probability first"),
            ("Likely positives flagged out-of-distribution", ood,
             "the input looked unlike the training data: the AI result is less trustworthy; read these with care")):
        parts.append(f"<h2>{title} ({len(group)})</h2><p>{note}.</p>")
        for i, r in enumerate(group):
            parts.append("<div class='case'>")
            parts.append(f"<b>P = {r['patient_probability']:.2f}</b> &nbsp; right grade {r['right_grade']}, "
                         f"left grade {r['left_grade']}<br><span class='small'>{e(r['source'])}"
                         f"{'<br>' + e(r['series_description']) if r.get('series_description') else ''}</span><br>")
            if with_thumbnails and i < top:
                try:
                    imgs = thumbnails(r)
                    if imgs:
                        parts.append(f"<span class='small'>oblique coronal through the {' and '.join(imgs)} joint"
                                     "</span><br>")
                    for side, img in imgs.items():
                        parts.append(f"<img alt='{side} SIJ oblique coronal' title='{side} SIJ, oblique coronal' "
                                     f"src='data:image/png;base64,{_png_b64(img)}'>")
                except SiradError as exc:
                    parts.append(f"<span class='small'>no thumbnail: {e(exc.user_message())}</span>")
            parts.append("</div>")
    # failures
    parts.append("<h2>Failures by error code</h2>")
    if failed:
        parts.append("<table><tr><th>code</th><th>series</th><th>example</th></tr>")
        by_code: dict[str, list[dict[str, Any]]] = {}
        for r in failed:
            by_code.setdefault(r["error_code"] or "?", []).append(r)
        for code, rs_ in sorted(by_code.items(), key=lambda kv: -len(kv[1])):
            parts.append(f"<tr><td>{e(code)}</td><td>{len(rs_)}</td><td class='small'>{e(rs_[0]['source'])}: "
                         f"{e((rs_[0]['message'] or '')[:300])}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>none</p>")
    # throughput
    parts.append("<h2>Throughput</h2><table><tr><th>run</th><th>started</th><th>workers</th><th>cases</th>"
                 "<th>failed</th><th>wall time</th><th>cases/min</th><th>state</th></tr>")
    for run in runs:
        n = (run["done"] or 0) + (run["failed"] or 0)
        wall = run["wall_seconds"] or 0.0
        parts.append(f"<tr><td>{run['id']}</td><td>{e(run['started_at'] or '')}</td>"
                     f"<td>{e(str(run['workers'] or run['scheduler'] or '?'))}</td><td>{n}</td><td>{run['failed'] or 0}</td>"
                     f"<td>{wall:.1f} s</td><td>{(60 * n / wall) if wall > 0 and n else 0:.1f}</td>"
                     f"<td>{e(run['state'] or '')}</td></tr>")
    secs = [r["seconds"] for r in ok if r.get("seconds")]
    parts.append("</table>")
    if secs:
        parts.append(f"<p>Per graded case (load + AI, one worker thread): median {np.median(secs):.2f} s, "
                     f"90th percentile {np.percentile(secs, 90):.2f} s.</p>")
    # model card
    parts.append("<h2>Model card summary</h2><table>")
    parts.append(f"<tr><th>used in these results</th><td>{e(', '.join(card['used']) or '-')}</td></tr>")
    for k in ("name", "version", "intended_use", "disclaimer", "note"):
        if card.get(k):
            parts.append(f"<tr><th>{k}</th><td>{e(str(card[k]))}</td></tr>")
    td = card.get("training_data") or {}
    if td:
        parts.append(f"<tr><th>training data</th><td>{e(str(td.get('train_joints', '?')))} joints from synthetic "
                     f"phantoms (sites {e(', '.join(td.get('sites', [])))})</td></tr>")
    for k, v in (card.get("metrics") or {}).items():
        parts.append(f"<tr><th>metrics: {e(k)}</th><td class='small'>{e(str(v))[:600]}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(store: ResultStore, out: str | Path, *, top: int = 50) -> Path:
    """Write the screening report (HTML) to ``out``."""
    out = Path(out)
    text = build_html(store, top=top)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"the report cannot be written: {exc}", path=out) from exc
    return out
