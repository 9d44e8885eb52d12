"""Case report (HTML, or PDF): key images, the reader's grades before and after the AI, the AI result.

Key images are oblique coronal slices (along the sacral axis the segmentation found) through each
joint's centre, without and with the Grad-CAM heatmap. Qt-free (matplotlib, Agg), so the viewer's
panel and ``sirad report`` produce the same document.
"""
from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sirad_viewer import __version__
from sirad_viewer.imaging import reslice as rs
from sirad_viewer.imaging.volume import Volume

GRADE_WORDS = {0: "normal", 1: "suspicious changes", 2: "minimal abnormality", 3: "unequivocal abnormality",
               4: "total ankylosis"}


def key_images(volume: Volume, result: Any, *, fov_mm: float = 110.0, pixel_mm: float = 0.6) -> dict[str, np.ndarray]:
    """RGB uint8 key images: ``{side}_plain`` and ``{side}_heatmap`` for each joint."""
    from sirad_viewer.imaging.display import apply_window
    from sirad_viewer.viz.overlay import HEAT_LUT, _resample_like

    axis = np.asarray(result.localisation.sacral_axis_dict()["direction_lps"], float)
    out = {}
    for side, jr in result.joints.items():
        plane = rs.oblique_coronal(jr.box.center_lps_mm, axis)
        img = rs.reslice(volume, plane, pixel_mm=pixel_mm, fov_mm=fov_mm)
        grey = apply_window(img.pixels, 2000.0, 500.0)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        out[f"{side}_plain"] = rgb
        if jr.heatmap is not None:
            hv = volume.with_array(jr.heatmap.full())
            hm = _resample_like(hv, img).astype(np.float32)
            m = hm >= 0.2
            blend = rgb.astype(np.float32)
            blend[m] = 0.55 * HEAT_LUT[(np.clip(hm[m], 0, 1) * 255).astype(int)] + 0.45 * blend[m]
            out[f"{side}_heatmap"] = blend.astype(np.uint8)
    return out


def _png(rgb: np.ndarray, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3.5), dpi=100)
    ax.imshow(rgb)
    ax.set_title(title, fontsize=8)
    ax.text(2, rgb.shape[0] - 4, "R", color="w", fontsize=8)
    ax.text(rgb.shape[1] - 10, rgb.shape[0] - 4, "L", color="w", fontsize=8)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def metric_text(v: Any) -> str:
    """A model card's metrics entry in words: ``joints 58, accuracy 0.466`` (was a Python dict with
    16-digit floats in the reader's report)."""
    if isinstance(v, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {metric_text(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3f}" if np.isfinite(v) else "—"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(metric_text(x) for x in v) + "]"
    return str(v)


def _grade(v: Any) -> str:
    return "-" if v is None else f"{v} ({GRADE_WORDS.get(int(v), '?')})"


def _findings_html(reading: dict[str, Any] | None) -> list[str]:
    """The reader's findings checklist, suggested grades and measurements (``reading['annotations']``)."""
    ann = (reading or {}).get("annotations")
    e = html.escape
    keys = [f"<figure><img alt='{e(k['title'])}' src='data:image/png;base64,{k['png_b64']}'>"
            f"<figcaption>{e(k['title'])}</figcaption></figure>" for k in (reading or {}).get("key_images", [])]
    keys = (["<h2>Reader's key images</h2>"] + keys) if keys else []
    if not ann or not (ann.get("items") or any(ann.get("findings", {}).values())):
        return keys
    out = ["<h2>Reader's findings and measurements</h2><table><tr><th></th><th>Right SIJ</th><th>Left SIJ</th></tr>"]
    f, sg = ann.get("findings", {}), ann.get("suggested_grade", {})
    out.append("<tr><td>findings</td>" + "".join(f"<td>{e(', '.join(f.get(s, [])) or 'none')}</td>" for s in ("right", "left"))
               + "</tr>")
    out.append("<tr><td>grade the findings suggest (the reader's grade is above)</td>"
               + "".join(f"<td>{_grade(sg.get(s))}</td>" for s in ("right", "left")) + "</tr></table><ul>")
    out += [f"<li>{e(line)}</li>" for line in map(_item_line, ann.get("items", [])) if line]
    out.append("</ul>")
    return out + keys


def _item_line(it: dict[str, Any]) -> str:
    """One reader's mark or measurement in words (the HTML and PDF reports); empty for an ROI without statistics."""
    k = it.get("kind")
    if k == "ruler":
        return f"distance {it['length_mm']:.1f} mm"
    if k == "angle":
        return f"angle {it['degrees']:.1f}°"
    if k == "roi" and it.get("stats"):
        st = it["stats"]
        return (f"ROI r {it['radius_mm']:.1f} mm: mean {st['mean']:.0f} HU, SD {st['sd']:.0f}, "
                f"min {st['min']:.0f}, max {st['max']:.0f}, n {int(st['n'])}")
    if k == "lesion":
        where = ", ".join(f"{v:.1f}" for v in it["points"][0])
        return (f"{it['side']} SIJ: {it['lesion']} ({'point' if len(it['points']) == 1 else 'region'} "
                f"at {where} mm LPS)")
    return ""


def findings_text(reading: dict[str, Any] | None) -> list[str]:
    """The reader's findings, suggested grades and measurements as plain lines (the PDF report).

    The PDF left them out: a reader who exported a PDF lost every mark and measurement the HTML
    report lists.
    """
    ann = (reading or {}).get("annotations")
    if not ann or not (ann.get("items") or any(ann.get("findings", {}).values())):
        return []
    f, sg = ann.get("findings", {}), ann.get("suggested_grade", {})
    out = ["Reader's findings: " + "; ".join(f"{s} {', '.join(f.get(s, [])) or 'none'}" for s in ("right", "left")),
           f"Grade the findings suggest (the reader's grade is above): right {_grade(sg.get('right'))}, "
           f"left {_grade(sg.get('left'))}"]
    out += [f"  {line}" for line in map(_item_line, ann.get("items", [])) if line]
    return out


def build_html(volume: Volume, result: Any, reading: dict[str, Any] | None, model_card: dict[str, Any],
               *, include_source_path: bool = False) -> str:
    from sirad_viewer.io.deid import source_reference

    d = result.to_dict(include_source_path=include_source_path)
    case = source_reference(reading.get("case"), include_path=include_source_path) if reading else d.get("source", "")
    if include_source_path and str(case).startswith("sha256:"):  # the reads log keeps only the reference
        case = d.get("source", case)
    imgs = key_images(volume, result)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>SIRAD case report</title><style>"
             "body{font-family:sans-serif;max-width:980px;margin:auto;color:#222}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
             ".warn{background:#fff3cd;border:1px solid #e0c060;padding:8px;margin:8px 0}"
             "img{margin:4px}</style></head><body>",
             "<h1>SIRAD Viewer case report</h1>",
             f"<div class='warn'><b>Not for clinical use.</b> {e(d['disclaimer'])}</div>",
             f"<p>Case: {e(str(case))}<br>"
             f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} by SIRAD Viewer {__version__}</p>"]
    if d.get("ood_flagged"):  # before any grade
        parts.append(f"<div class='warn' style='font-size:1.2em'><b>{e(d['reliability'])}</b>. The AI grades below are "
                     "shown for completeness only.</div>")
    parts.append("<h2>Grades (modified New York)</h2><table><tr><th></th><th>Right SIJ</th><th>Left SIJ</th>"
                 "<th>confidence</th><th>comment</th><th>time</th></tr>")
    if reading:
        for label, key in (("Reader, before AI (locked)", "pre_ai"), ("Reader, after AI", "post_ai")):
            g = reading.get(key)
            if g:
                parts.append(f"<tr><td>{label}</td><td>{_grade(g.get('right'))}</td><td>{_grade(g.get('left'))}</td>"
                             f"<td>{e(str(g.get('confidence') or '-'))}</td><td>{e(g.get('comment') or '')}</td>"
                             f"<td>{e(str(g.get('at') or '-'))}</td></tr>")
            else:
                parts.append(f"<tr><td>{label}</td><td colspan=5>none</td></tr>")
    j = d["joints"]
    def _ai_cell(side: str) -> str:
        flag = "<b>not reliable</b>: " if (j[side].get("ood") or {}).get("flagged") else ""
        return f"<td>{flag}{_grade(j[side]['grade'])} (category {e(j[side]['category3_label'])})</td>"

    parts.append(f"<tr><td>AI ({e(d['model']['name'])} {e(d['model']['version'])})</td>{_ai_cell('right')}"
                 f"{_ai_cell('left')}<td colspan=3>phantom-trained demo model</td></tr></table>")
    parts.extend(_findings_html(reading))
    parts.append("<h2>AI probabilities</h2><table><tr><th>joint</th>" + "".join(f"<th>grade {g}</th>" for g in range(5))
                 + "<th>3 categories (0-1 / 2-3 / 4)</th></tr>")
    for side in ("right", "left"):
        pj = j[side]
        parts.append(f"<tr><td>{side}</td>" + "".join(f"<td>{p:.2f}</td>" for p in pj["probabilities"])
                     + f"<td>{' / '.join(f'{p:.2f}' for p in pj['category3_probabilities'])}</td></tr>")
    pt = d["patient"]
    parts.append("</table>" + f"<p>Patient level (modified New York rule): AI {'(not reliable) ' if d.get('ood_flagged') else ''}"
                 f"<b>{'positive' if pt['as_positive'] else 'negative'}</b>, "
                 f"P(positive) = {pt['probability']:.2f} under the joint model (positive when P &ge; 0.5)."
                 + (f" {e(pt['explanation'])}" if pt.get("explanation") else ""))
    if reading and reading.get("pre_ai") and reading["pre_ai"].get("left") is not None:
        from sirad_viewer.ai.grading import patient_rule

        g = reading["pre_ai"]
        parts.append(f" Reader before AI: <b>{'positive' if patient_rule(g['left'], g['right']) else 'negative'}</b>.")
    parts.append("</p><h2>Key images: oblique coronal through each joint</h2><div>")
    for side in ("right", "left"):
        for kind in ("plain", "heatmap"):
            k = f"{side}_{kind}"
            if k in imgs:
                title = f"{side} SIJ" + (" with Grad-CAM (grade " + str(j[side].get('heatmap_grade')) + ")" if kind == "heatmap" else "")
                b64 = base64.b64encode(_png(imgs[k], title)).decode()
                parts.append(f"<img alt='{e(title)}' src='data:image/png;base64,{b64}'>")
    parts.append("</div><h2>Model card summary</h2><table>")
    for k in ("name", "version", "intended_use", "disclaimer"):
        parts.append(f"<tr><th>{k}</th><td>{e(str(model_card.get(k, '')))}</td></tr>")
    td = model_card.get("training_data", {})
    parts.append(f"<tr><th>training data</th><td>{e(str(td.get('train_joints', '?')))} joints from synthetic phantoms "
                 f"(sites {e(', '.join(td.get('sites', [])))})</td></tr>")
    for k, v in model_card.get("metrics", {}).items():
        parts.append(f"<tr><th>metrics: {e(k)}</th><td>{e(metric_text(v))}</td></tr>")
    parts.append("</table>")
    parts.append("<p>Timings: " + ", ".join(f"{e(k)} {v:.2f} s" for k, v in d["timings_s"].items()) + f"; device {e(d['device'])}</p>")
    if d["warnings"]:
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li>{e(w)}</li>" for w in d["warnings"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, volume: Volume, result: Any, reading: dict[str, Any] | None,
                 model_card: dict[str, Any], *, include_source_path: bool = False) -> Path:
    """Write the report as HTML (``.html``) or PDF (``.pdf``); the case is named by a
    non-identifying reference unless ``include_source_path``."""
    from sirad_viewer.errors import ExportError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".pdf":
            _write_pdf(path, volume, result, reading, model_card)
        else:
            path.write_text(build_html(volume, result, reading, model_card, include_source_path=include_source_path),
                            encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"the report cannot be written: {exc}", path=path) from exc
    return path


def _write_pdf(path: Path, volume: Volume, result: Any, reading: dict[str, Any] | None, model_card: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    d = result.to_dict()
    imgs = key_images(volume, result)
    lines = ["SIRAD Viewer case report", "", "NOT FOR CLINICAL USE. " + d["disclaimer"], ""]
    if d.get("ood_flagged"):  # before any grade
        lines += [f"!! {d['reliability']}", ""]
    if reading:
        for label, key in (("Reader before AI (locked)", "pre_ai"), ("Reader after AI", "post_ai")):
            g = reading.get(key)
            lines.append(f"{label}: " + (f"right {_grade(g.get('right'))}, left {_grade(g.get('left'))}" if g else "none"))
    lines += findings_text(reading)
    for side in ("right", "left"):
        pj = d["joints"][side]
        lines.append(f"AI {side}: {'NOT RELIABLE, ' if (pj.get('ood') or {}).get('flagged') else ''}grade {pj['grade']}  p = " + " ".join(f"{p:.2f}" for p in pj["probabilities"])
                     + "  3-cat " + "/".join(f"{p:.2f}" for p in pj["category3_probabilities"]))
    pt = d["patient"]
    lines += [f"AI patient level: {'(not reliable) ' if d.get('ood_flagged') else ''}"
              f"{'positive' if pt['as_positive'] else 'negative'} (P = {pt['probability']:.2f}; positive when P >= 0.5)"
              + (f" {pt['explanation']}" if pt.get("explanation") else ""),
              f"Model: {d['model']['name']} {d['model']['version']}; {model_card.get('intended_use', '')}"]
    with PdfPages(path) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))
        import textwrap

        txt = "\n".join(textwrap.fill(s, 95) if s else "" for s in lines)
        fig.text(0.06, 0.95, txt, va="top", family="monospace", fontsize=8)
        keys = [k for k in ("right_plain", "right_heatmap", "left_plain", "left_heatmap") if k in imgs]
        for i, k in enumerate(keys):
            ax = fig.add_axes([0.06 + (i % 2) * 0.46, 0.05 + (1 - i // 2) * 0.3, 0.42, 0.28])
            ax.imshow(imgs[k])
            ax.set_title(k.replace("_", " "), fontsize=8)
            ax.axis("off")
        pdf.savefig(fig)
        plt.close(fig)
        shots = (reading or {}).get("key_images", [])
        for start in range(0, len(shots), 2):  # the reader's key images (Ctrl+I), two per page
            fig = plt.figure(figsize=(8.27, 11.69))
            fig.text(0.06, 0.97, "Reader's key images", va="top", fontsize=10)
            for i, k in enumerate(shots[start:start + 2]):
                ax = fig.add_axes([0.06, 0.5 - i * 0.46, 0.88, 0.42])
                ax.imshow(plt.imread(io.BytesIO(base64.b64decode(k["png_b64"])), format="png"))
                ax.set_title(k.get("title", ""), fontsize=8)
                ax.axis("off")
            pdf.savefig(fig)
            plt.close(fig)
