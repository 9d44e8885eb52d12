"""Write MODEL_CARD.md for a grading bundle from its metadata and two `sirad evaluate` outputs.

usage: python tools/model_card.py BUNDLE EVAL_INTERNAL_DIR EVAL_EXTERNAL_DIR [SEG_BUNDLE]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def f(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def rows(name: str, m: dict) -> str:
    aucs = ", ".join(f"{g}: {f(a['auc'])} ({f(a['ci95'][0])}–{f(a['ci95'][1])})" for g, a in m["auc_per_grade"].items())
    pt = m.get("patient", {})
    return (f"| {name} | {m['patients']} / {m['joints']} | {f(m['accuracy'])} | {f(m['accuracy_3cat'])} | "
            f"{f(m['kappa_unweighted']['kappa'])} | {f(m['kappa_linear']['kappa'])} | {f(m['kappa_quadratic']['kappa'])} | "
            f"{f(pt.get('accuracy'))} / {f(pt.get('sensitivity'))} / {f(pt.get('specificity'))} |\n"
            f"| | one-vs-rest AUC per grade (95% CI): {aucs} | | | | | | |")


def confusion(m: dict) -> str:
    out = ["| reference \\ model | 0 | 1 | 2 | 3 | 4 |", "|---|---|---|---|---|---|"]
    out += [f"| {g} | " + " | ".join(str(v) for v in row) + " |" for g, row in enumerate(m["confusion_5"])]
    return "\n".join(out)


def main() -> int:
    bundle, ev_int, ev_ext = (Path(a) for a in sys.argv[1:4])
    seg = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    meta = json.loads((bundle / "metadata.json").read_text())
    mi = json.loads((ev_int / "metrics.json").read_text())["results"]["all"]
    me = json.loads((ev_ext / "metrics.json").read_text())["results"]["all"]
    td = meta["training_data"]
    seg_meta = json.loads((seg / "metadata.json").read_text()) if seg else None
    text = f"""# Model card: {meta['name']} {meta['version']}

> **Trained on synthetic phantoms only. Not validated on patients. Not for clinical use.**
> The grades it gives on a real CT say nothing about that patient; they exist to exercise the
> workflow (grade first, then compare; reader studies) end to end.

## What it does

Grades one sacroiliac joint on the modified New York scale (0 normal, 1 suspicious, 2 minimal,
3 unequivocal, 4 ankylosis) from a CT crop, with calibrated probabilities; the 3-category result
sums them over the groups {meta['groups']}; the patient-level result applies the modified New York
rule (grade >= 2 on both sides or >= 3 on one) to the two joints' distributions.

- Architecture: MONAI `DenseNet` (3D), config `{json.dumps(meta['architecture']['config'])}`;
  weights {bundle.joinpath(meta['weights']['file']).stat().st_size / 1e6:.1f} MB (safetensors, sha256 in metadata.json).
- Input: a {meta['input']['size'][0]}³ crop at {meta['input']['spacing_mm'][0]} mm, world-aligned (LPS), centred on the joint found
  by the segmentation bundle; the left joint is mirrored so one network reads both. HU window
  {meta['input']['intensity_window_hu']}.
- Calibration: {meta['calibration']['method']}; temperature {meta['calibration']['temperature']}
  (validation NLL {meta['calibration']['val_nll_before']} -> {meta['calibration']['val_nll_after']}){
  '; at its lower bound 0.5: the small validation split is separated perfectly, so it cannot say how much'
  ' sharper the probabilities should be' if abs(meta['calibration']['temperature'] - 0.5) < 1e-3 else ''}.
- Segmentation (joint localisation): {td.get('segmentation_bundle', '?')}"""
    if seg_meta:
        text += f""" — MONAI `UNet` `{json.dumps(seg_meta['architecture']['config'])}`
  on a {seg_meta['input']['spacing_mm'][0]} mm whole-body grid, trained {seg_meta['training_data']['steps']} steps on the label maps of
  {seg_meta['training_data']['cases']} training phantoms."""
    text += f"""

## Training data

{td['train_joints']} joints (grade counts {td['grade_counts_train']}) from the `train` split and {td['val_joints']}
from the `val` split of 120 synthetic phantoms (site profile {', '.join(td['sites'])}: 1–2 mm slices, 0.7–1 mm
pixels before the 160 matrix, bone kernel); {td['epochs_run']} epochs, class-weighted cross-entropy, early
stopping on the validation loss. Made with `tools/train_demo_models.sh`.

## Evaluation

Internal: the held-out `test` split of the same phantom-A set (joints never seen in training or
validation). External-like: 40 phantoms of site profile phantom-B (2–3 mm slices, more noise,
softer kernel), none seen in training.

| set | patients / joints | accuracy (5 grades) | accuracy (3 categories) | kappa unweighted | kappa linear | kappa quadratic | patient accuracy / sens. / spec. |
|---|---|---|---|---|---|---|---|
{rows('internal (phantom-A test)', mi)}
{rows('external-like (phantom-B)', me)}

Internal confusion matrix (rows: planted grade, columns: model grade):

{confusion(mi)}

External-like confusion matrix:

{confusion(me)}

ROC curves: `sirad evaluate` writes them (`roc_all.png`) next to these numbers.

## Intended use and limits

{meta['intended_use']}

- The phantoms are analytic and simplified; lesions are planted by rule. High scores here mean the
  network learned the phantom's rules, not radiology.
- On the real demo CT the model's grades are meaningless (it has never seen a real joint).
- Retrain on a site's own labelled CTs with `sirad train --data DATA.csv` (same columns) and
  evaluate with `sirad evaluate`; the tools do not depend on phantoms.
"""
    (bundle / "MODEL_CARD.md").write_text(text)
    short = lambda m: {k: (round(m[k], 4) if isinstance(m[k], float) else m[k]["kappa"] if isinstance(m[k], dict)  # noqa: E731
                           else m[k]) for k in ("joints", "accuracy", "accuracy_3cat", "kappa_quadratic")}
    meta["metrics"]["internal_test_phantom_A"] = short(mi)
    meta["metrics"]["external_like_phantom_B"] = short(me)
    (bundle / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {bundle / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
