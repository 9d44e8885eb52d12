"""Write MODEL_CARD.md for a grading bundle from its metadata, `sirad evaluate` outputs and benchmark rows.

usage: python tools/model_card.py BUNDLE --eval "LABEL=EVAL_DIR" [--eval ...] [--seg SEG_BUNDLE]
                                  [--bench benchmarks/results.json] [--demo-json GRADE.json]

Everything in the card is read from files that the commands wrote (``sirad calibrate`` into the
bundle's metadata.json, ``sirad evaluate`` into EVAL_DIR/metrics.json, ``make bench`` into
benchmarks/results.json, ``sirad grade --json`` on the real demo CT); network size is measured here.
Each evaluation's reliability diagram is copied next to the card. Re-run after every retrain
(``tools/calibrate_demo.sh`` does all of it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path



def _input_options(inp: dict) -> str:
    """The bundle's input options beyond the crop itself, as the grader applies them."""
    out = []
    if inp.get("refine_frame"):
        out.append(f"the joint box re-fitted on the CT first (in-plane axis: {inp.get('long_axis', 'outline')})")
    elif not inp.get("registration"):
        out.append("the crop along the segmentation's joint box as it is (not refined on the CT)")
    if inp.get("registration"):
        r = inp["registration"]
        built = r.get("built_from") or {}
        out.append("the segmentation's joint box registered rigidly to the bundle's joint template first (the mean of "
                   f"{built.get('joints', '?')} training joints' crops, split {built.get('split', '?')!r}; a move beyond "
                   f"{r.get('max_shift_mm', 20):g} mm or {r.get('max_turn_deg', 45):g}° keeps the segmentation's box)")
    if inp.get("hu_reference"):
        r = inp["hu_reference"]
        out.append(f"HU referenced to the crop's own muscle peak ({r['window_hu'][0]:g}..{r['window_hu'][1]:g} HU peak moved "
                   f"to {r['level_hu']:g} HU, at most {r['max_shift_hu']:g} HU)")
    if int(inp.get("test_time_turns", 1)) > 1:
        out.append(f"logits averaged over {inp['test_time_turns']} in-plane quarter turns")
    if inp.get("test_time_jitter"):
        j = inp["test_time_jitter"]
        out.append(f"logits and features averaged over the crop and 12 nearby frames (moved ±{j['shift_mm']:g} mm along "
                   f"and turned ±{j['turn_deg']:g}° about each crop axis)")
    if inp.get("pre_blur_fwhm_mm"):
        out.append(f"every crop blurred by {inp['pre_blur_fwhm_mm']:g} mm FWHM first")
    return "\n  " + "; ".join(out) + "." if out else ""


def _recipe(td: dict) -> str:
    r = td.get("recipe") or {}
    bits = []
    if td.get("initialised_from"):
        bits.append(f"fine-tuned from {td['initialised_from']}")
    if r:
        bits.append(f"augmentation '{r.get('augmentation')}', lr {r.get('lr')}, batch {r.get('batch_size')}")
        if r.get("consistency"):
            bits.append(f"each joint drawn twice with independent nuisances and their disagreement penalised "
                        f"(symmetric KL, weight {r['consistency']:g})")
    text = "; ".join(bits)
    return (" " + text[:1].upper() + text[1:] + ".") if bits else ""

def f(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def ci(d: dict, key: str = "auc") -> str:
    return f"{f(d[key])} ({f(d['ci95'][0])}–{f(d['ci95'][1])})"


def network_size(meta: dict) -> tuple[int, float]:
    """(parameters, GFLOPs of one forward pass at the bundle's input size), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sirad_viewer.ai.bundle import build_network

    net = build_network(meta["architecture"], n_classes=len(meta["classes"])).eval()
    x = torch.zeros(1, 1, *meta["input"]["size"])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    return sum(p.numel() for p in net.parameters()), fc.get_total_flops() / 1e9


def eval_section(label: str, doc: dict, png: str | None) -> str:
    m = doc["results"]["all"]
    pt = m.get("patient", {})
    cal = m.get("calibration", {})
    ood = m.get("ood_flagged")
    lines = [f"### {label}", "",
             f"Data: `{Path(doc['data']).name}` split `{doc['split']}` — {m['patients']} patients / {m['joints']} joints; "
             f"**{m['failed_patients']} case(s) / {m['failed_joints']} joint(s) could not be graded and count as failures** "
             "in every figure below (wrong grade; the grade farthest from the reference for kappa; flat scores for AUC; "
             "a wrong patient result).", "",
             "| accuracy 5 grades (95% CI) | accuracy 3 categories | kappa unweighted | kappa linear | kappa quadratic |",
             "|---|---|---|---|---|",
             f"| {f(m['accuracy'])} ({f(m['accuracy_ci95'][0])}–{f(m['accuracy_ci95'][1])}) | {f(m['accuracy_3cat'])} | "
             f"{ci(m['kappa_unweighted'], 'kappa')} | {ci(m['kappa_linear'], 'kappa')} | {ci(m['kappa_quadratic'], 'kappa')} |",
             "", "One-vs-rest AUC with patient-bootstrap 95% CI:", "",
             "| " + " | ".join(f"grade {g}" for g in m["auc_per_grade"]) + " | " + " | ".join(
                 f"category {c}" for c in m["auc_per_category"]) + " |",
             "|" + "---|" * (len(m["auc_per_grade"]) + len(m["auc_per_category"])),
             "| " + " | ".join(ci(v) for v in m["auc_per_grade"].values()) + " | "
             + " | ".join(ci(v) for v in m["auc_per_category"].values()) + " |", "",
             f"Patient level (modified New York, positive iff P ≥ 0.5): n = {pt.get('n')}, accuracy {f(pt.get('accuracy'))}, "
             f"sensitivity {f(pt.get('sensitivity'))}, specificity {f(pt.get('specificity'))}, AUC of P "
             f"{f(pt.get('auc'))} ({f((pt.get('auc_ci95') or [None])[0])}–{f((pt.get('auc_ci95') or [None, None])[1])}).",
             "",
             f"Calibration (temperature {doc['model'].get('temperature', '?')}; {cal.get('note', '')}): "
             f"ECE {f(cal.get('ece'))}, Brier {f(cal.get('brier'))}, log loss {f(cal.get('log_loss'))}, mean confidence "
             f"{f(cal.get('mean_confidence'))} vs accuracy {f(cal.get('accuracy'))}."]
    if ood:
        lines.append(f"OOD check: {ood['joints']} of {ood['of']} graded joints flagged ({100 * ood['rate']:.1f}%).")
    if png:
        lines += ["", f"![reliability diagram, {label}]({png})"]
    lines += ["", "Confusion (rows reference grade, columns model grade, last column not graded):", "",
              "| ref \\ model | 0 | 1 | 2 | 3 | 4 | not graded |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {g} | " + " | ".join(str(v) for v in row) + " |" for g, row in enumerate(m["confusion_5"])]
    if doc.get("failures"):
        lines += ["", "Not graded: " + "; ".join(x["message"] for x in doc["failures"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--eval", action="append", default=[], metavar="LABEL=DIR")
    ap.add_argument("--seg", help="segmentation bundle")
    ap.add_argument("--bench", help="benchmarks/results.json (or results_grade.json)")
    ap.add_argument("--bench-note", default="", help="one line under the Speed heading: when, how and under what load")
    ap.add_argument("--demo-json", help="`sirad grade --json` output on the real demo CT")
    ap.add_argument("--seg-eval", help="`sirad evaluate-segmenter --out` JSON (Dice, seen and held-out subjects apart)")
    ap.add_argument("--stress", help="`sirad evaluate --stress` output folder")
    a = ap.parse_args(argv)
    bundle = Path(a.bundle)
    meta = json.loads((bundle / "metadata.json").read_text())
    td = meta["training_data"]
    cal = meta.get("calibration", {})
    ood = meta.get("ood")
    params, gflops = network_size(meta)
    seg_meta = json.loads((Path(a.seg) / "metadata.json").read_text()) if a.seg else None
    text = f"""# Model card: {meta['name']} {meta['version']}

> **Trained on synthetic phantoms only. Not validated on patients. Not for clinical use.**
> The grades it gives on a real CT say nothing about that patient; they exist to exercise the
> workflow (grade first, then compare; reader studies) end to end.

## What it does

Grades one sacroiliac joint on the modified New York scale (0 normal, 1 suspicious, 2 minimal,
3 unequivocal, 4 ankylosis) from a CT crop, with temperature-calibrated probabilities. The grade shown is the most
probable one; the category shown is that grade's group in {meta['groups']}, with the group probabilities beside it.
The patient result is positive iff P(modified New York positive) ≥ 0.5, P summed over both joints' distributions;
when the most probable grades would say otherwise, the result says why.

- Architecture: MONAI `DenseNet` (3D), config `{json.dumps(meta['architecture']['config'])}`:
  **{params:,} parameters, {gflops:.2f} GFLOPs per joint** (one forward pass at {meta['input']['size'][0]}³,
  counted with `torch.utils.flop_counter`); weights {(bundle / meta['weights']['file']).stat().st_size / 1e6:.1f} MB
  (safetensors, sha256 in metadata.json).
- Input: a {meta['input']['size'][0]}³ crop at {meta['input']['spacing_mm'][0]} mm centred on the joint found by the
  segmentation bundle; the left joint is mirrored so one network reads both. HU window {meta['input']['intensity_window_hu']}.{_input_options(meta['input'])}
- Segmentation (joint localisation): {td.get('segmentation_bundle', '?')}"""
    if seg_meta:
        now = f"{seg_meta.get('name')} {seg_meta.get('version')}"
        if now != td.get("segmentation_bundle"):  # the grader runs with a newer segmenter than it was trained with
            text += f" when trained; runs with {now}"
        text += f""" — MONAI `UNet` `{json.dumps(seg_meta['architecture']['config'])}` on a
  {seg_meta['input']['spacing_mm'][0]} mm grid."""
    text += f"""

## Training data

{td.get('train_joints')} joints (grade counts {td.get('grade_counts_train')}) from the `train` split of synthetic
phantoms (site profile {', '.join(td.get('sites', []))}); {td.get('epochs_run')} epochs, class-weighted
cross-entropy, early stopping on the validation loss.{_recipe(td)}

## Calibration (post hoc: `sirad calibrate`)

{cal.get('method', 'not calibrated')}: temperature **{cal.get('temperature')}**"""
    if cal.get("joints"):
        vb, va = cal["val_before"], cal["val_after"]
        text += f""", fitted on {cal['joints']} joints of the `{cal['split']}` split of sites {', '.join(cal['sites'])}
({cal['failed_cases']} case(s) not graded). On that split: ECE {vb['ece']:.3f} → {va['ece']:.3f}, Brier
{vb['brier']:.3f} → {va['brier']:.3f}, log loss {vb['log_loss']:.3f} → {va['log_loss']:.3f}. Temperature
scaling: one parameter cannot overfit ~100 joints and never changes a grade (the argmax). Test-set calibration
and reliability diagrams are in the evaluation below."""
    text += "\n\n## Out-of-distribution check\n\n"
    if ood:
        comps = ood.get("components") or [{"name": "penultimate", "dim": len(ood.get("mean", []))}]
        views = {"crop_texture": ("texture statistics of the HU crop", ": steps and curvature at 1.5, 3 and 6 mm, "
                                  "independent of the weights"), "penultimate": ("the grader's penultimate features", "")}
        named = [f"{views.get(c['name'], (c['name'], ''))[0]} ({c['dim']} values{views.get(c['name'], ('', ''))[1]})"
                 for c in comps]
        text += (f"Per joint the Mahalanobis distance of {' and of '.join(named)} "
                 f"to one Gaussian each (standardised, Ledoit-Wolf covariance), fitted on {ood['n_fit']} validation "
                 f"joints of {', '.join(ood['fit_sites'])}; each distance is divided by its median cross-fitted "
                 f"validation distance and the larger ratio is the score. Threshold **{ood['threshold']:.2f}**: the "
                 f"split-conformal 95% rank of patient-cross-fitted scores (cross-fitted pass rate "
                 f"{ood.get('cross_fitted_pass_rate')}). Validation joints of other sites "
                 f"flagged: {ood.get('other_sites_flag_rate')}. A flagged joint is shown as *unlike the training data — "
                 "not reliable* before its grade (panel, CLI, case report, study log). CTs that are not a pelvis at "
                 "all (no sacrum of at least 100 ml, no joint found) end with an error and no grade.")
    else:
        text += "None: this bundle has no OOD statistics (run `sirad calibrate`)."
    if a.demo_json and Path(a.demo_json).exists():
        d = json.loads(Path(a.demo_json).read_text())
        js = d["joints"]
        text += (f"\n\nOn the real demo CT (`resources/demo/example_ct.nii.gz`): flagged **{d['ood_flagged']}** "
                 f"(right {js['right']['ood']['score']:.1f}, left {js['left']['ood']['score']:.1f} vs threshold "
                 f"{js['right']['ood']['threshold']:.1f}); P(positive) = {d['patient']['probability']:.2f} is shown as "
                 "not reliable.")
    text += "\n\n## Evaluation (`sirad evaluate`)\n"
    for spec in a.eval:
        label, _, d = spec.partition("=")
        doc = json.loads((Path(d) / "metrics.json").read_text())
        png = None
        src = Path(d) / "reliability_all.png"
        if src.exists():
            png = f"reliability_{label.split()[0].lower()}.png"
            shutil.copyfile(src, bundle / png)
        text += "\n" + eval_section(label, doc, png) + "\n"
        meta["metrics"][f"test_{label.split()[0].lower()}"] = {
            k: doc["results"]["all"][k] for k in ("joints", "failed_joints", "accuracy", "accuracy_3cat")}
    if a.seg_eval and Path(a.seg_eval).exists():
        se = json.loads(Path(a.seg_eval).read_text())
        text += ("\n## Segmentation Dice (`sirad evaluate-segmenter`, refined labels on the CT grid)\n\n"
                 "| subjects | cases | sacrum | left hip bone | right hip bone | other bone |\n|---|---|---|---|---|---|\n")
        for g, m in se["groups"].items():
            text += (f"| {g} | {m['cases']} | " + " | ".join(f"{m[k]['mean']:.3f} (min {m[k]['min']:.3f})"
                                                          for k in ("sacrum", "left_hip", "right_hip", "other_bone")) + " |\n")
    if a.stress and (Path(a.stress) / "stress.md").exists():
        body = (Path(a.stress) / "stress.md").read_text().split("\n", 2)[2]
        text += "\n## Stress sweep (`sirad evaluate --stress`)\n" + body
    if a.bench and Path(a.bench).exists():
        rows = [r for r in json.loads(Path(a.bench).read_text()) if r["name"].startswith(("grade", "cold"))]
        if rows:
            text += "\n## Speed (`make bench`, this machine)\n\n" + (a.bench_note + "\n\n" if a.bench_note else "") + "| benchmark | ours | baseline | unit | x better | baseline |\n|---|---|---|---|---|---|\n"
            text += "".join(f"| {r['name']} | {r['ours']} | {r['baseline'] if r['baseline'] is not None else '-'} | "
                            f"{r['unit']} | {r['ratio'] if r['ratio'] is not None else '-'} | {r['baseline_name']} |\n"
                            for r in rows)
    text += f"""
## Intended use and limits

{meta['intended_use']}

- The phantoms are synthetic: analytic anatomy, or real bone surfaces from a 32-pelvis atlas with
  simulated soft tissue, scanners, lesions and mimics; lesions are planted by rule. Scores here
  mean the network learned the phantoms' rules, not radiology.
- On a real CT the model's grades are meaningless (it has never seen a real joint); the OOD check says so.
- Retrain on a site's own labelled CTs with `sirad train --data DATA.csv`, calibrate with
  `sirad calibrate BUNDLE DATA.csv --split val` and evaluate with `sirad evaluate`.
"""
    (bundle / "MODEL_CARD.md").write_text(text)
    (bundle / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {bundle / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
