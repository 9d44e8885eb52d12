"""Write MODEL_CARD.md for a grading bundle from its metadata and the evaluation outputs.

usage: python tools/model_card.py BUNDLE EVAL_INTERNAL_DIR EVAL_EXTERNAL_DIR [SEG_BUNDLE] [STRESS_DIR] [SEG_EVAL_JSON]

EVAL_EXTERNAL_DIR may be ``-`` (none); STRESS_DIR is a ``sirad evaluate --stress`` output and
SEG_EVAL_JSON a ``sirad evaluate-segmenter --out`` file (both optional, ``-`` to skip).
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
    arg = lambda k: Path(sys.argv[k]) if len(sys.argv) > k and sys.argv[k] != "-" else None  # noqa: E731
    bundle, ev_int, ev_ext = arg(1), arg(2), arg(3)
    seg, stress, seg_eval = arg(4), arg(5), arg(6)
    meta = json.loads((bundle / "metadata.json").read_text())
    mi = json.loads((ev_int / "metrics.json").read_text())["results"]["all"]
    me = json.loads((ev_ext / "metrics.json").read_text())["results"]["all"] if ev_ext else None
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
  weights {bundle.joinpath(meta['weights']['file']).stat().st_size / 1e6:.2f} MB (safetensors, sha256 in metadata.json).
- Input: a {meta['input']['size'][0]}³ crop at {meta['input']['spacing_mm'][0]} mm centred on the joint found by the segmentation
  bundle, {"along the joint box's own axes (long axis, anteroposterior, normal), so a patient lying rotated gives the same crop" if meta['input'].get('frame') == 'joint' else 'world-aligned (LPS)'};
  the left joint is mirrored so one network reads both. HU window {meta['input']['intensity_window_hu']}.
- Calibration: {meta['calibration']['method']}; temperature {meta['calibration']['temperature']}
  (validation NLL {meta['calibration']['val_nll_before']} -> {meta['calibration']['val_nll_after']}).
- Segmentation (joint localisation): {td.get('segmentation_bundle', '?')}"""
    if seg_meta:
        text += f""" — MONAI `UNet` `{json.dumps(seg_meta['architecture']['config'])}`
  on a {seg_meta['input']['spacing_mm'][0]} mm whole-body grid, trained {seg_meta['training_data']['steps']} steps on the label maps of
  {seg_meta['training_data']['cases']} training phantoms ({seg_meta['training_data']['seconds'] / 60:.0f} min on two CPU cores)."""
    text += f"""

## Training data

{td['train_joints']} joints (grade counts {td['grade_counts_train']}) from the `train` split and {td['val_joints']}
from the `val` split (sites {', '.join(td['sites'])}); {td['epochs_run']} epochs, class-weighted cross-entropy,
augmentation (shifts, extra blur, HU gain/offset, noise), early stopping on the validation loss.
{meta.get('training_data_note', '')} Made with `tools/train_demo_models.sh`.

## Evaluation

{meta.get('evaluation_note', 'Internal: the held-out `test` split.')}

| set | patients / joints | accuracy (5 grades) | accuracy (3 categories) | kappa unweighted | kappa linear | kappa quadratic | patient accuracy / sens. / spec. |
|---|---|---|---|---|---|---|---|
{rows('internal (test split)', mi)}"""
    if me:
        text += "\n" + rows("external-like", me)
    text += f"""

Internal confusion matrix (rows: reference grade, columns: model grade):

{confusion(mi)}
"""
    if me:
        text += f"""
External-like confusion matrix:

{confusion(me)}
"""
    if seg_eval:
        se = json.loads(seg_eval.read_text())
        text += """
## Segmentation Dice (refined labels on the CT grid)

| subjects | cases | sacrum | left hip bone | right hip bone | other bone |
|---|---|---|---|---|---|
"""
        for g, m in se["groups"].items():
            text += (f"| {g} | {m['cases']} | " + " | ".join(f"{m[k]['mean']:.3f} (min {m[k]['min']:.3f})"
                                                          for k in ("sacrum", "left_hip", "right_hip", "other_bone")) + " |\n")
    if stress:
        body = (stress / "stress.md").read_text().split("\n", 2)[2]
        text += "\n## Stress sweep (`sirad evaluate --stress`)\n" + body
    text += f"""
## Intended use and limits

{meta['intended_use']}

- The phantoms are simplified; lesions are planted by rule. Scores here mean the network learned
  the phantoms' rules, not radiology.
- On the real demo CT the model's grades are meaningless (it has never seen a real joint).
- Retrain on a site's own labelled CTs with `sirad train --data DATA.csv` (same columns) and
  evaluate with `sirad evaluate` (and `--stress`); the tools do not depend on phantoms.
"""
    (bundle / "MODEL_CARD.md").write_text(text)
    short = lambda m: {k: (round(m[k], 4) if isinstance(m[k], float) else m[k]["kappa"] if isinstance(m[k], dict)  # noqa: E731
                           else m[k]) for k in ("joints", "accuracy", "accuracy_3cat", "kappa_quadratic")}
    meta["metrics"]["internal_test"] = short(mi)
    if me:
        meta["metrics"]["external_like"] = short(me)
    (bundle / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {bundle / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
