#!/bin/sh
# Post-hoc calibration, OOD statistics, evaluation and model card of the demo grading bundle.
# Re-run after every retrain: nothing here depends on how the bundle was trained.
#
#   tools/calibrate_demo.sh DATA_DIR [WORKDIR] [BUNDLE]
#
# DATA_DIR is the training run's atlas dataset (tools/train_demo_models.sh writes WORKDIR/data): its
# `val` split (validation subjects) and fresh phantoms of the same validation subjects (CAL_N, default
# 30 cases) give >= 100 joints for the temperature and the OOD statistics; its `test` split (held-out
# subjects, never trained or calibrated on) gives the test-set ECE, Brier, AUCs and reliability diagram.
# Synthetic phantoms only.
set -e
D=${1:?usage: tools/calibrate_demo.sh DATA_DIR [WORKDIR] [BUNDLE]}
W=${2:-/tmp/sirad-calibration}
B=${3:-models/sij-densenet-demo}
S=${SIRAD:-.venv/bin/sirad}
PY=${PYTHON:-.venv/bin/python}
CAL_N=${CAL_N:-30}
SEG=${SEG:-models/pelvis-unet-demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$W"
# fresh phantoms of the validation subjects only (val_fraction 1): new poses, scanners and lesions
# (kept when WORKDIR/cal/DATA.csv exists: a rerun after a retrain reuses them)
[ -f "$W/cal/DATA.csv" ] || \
$PY -c "from sirad_viewer.phantom.atlas_dataset import make_atlas_dataset as m; m('$W/cal', $CAL_N, seed=99, val_fraction=1.0, test_fraction=0.0, max_voxels=8_000_000)"
# temperature (NLL) and the OOD threshold (conformal rank of cross-fitted Mahalanobis scores) on >= 100 validation joints
$S calibrate "$B" "$D/DATA.csv" "$W/cal/DATA.csv" --split val --segmenter "$SEG" --cache "$W/cache"
$S evaluate --data "$D/DATA.csv" --bundle "$B" --segmenter "$SEG" --split test --out "$W/eval-test" --cache "$W/cache"
$S grade resources/demo/example_ct.nii.gz --bundle "$B" --segmenter "$SEG" --json "$W/demo-ct.json" || true
$PY tools/model_card.py "$B" --eval "held-out subjects=$W/eval-test" --seg "$SEG" \
    --demo-json "$W/demo-ct.json" ${BENCH:+--bench "$BENCH"} ${SEG_EVAL:+--seg-eval "$SEG_EVAL"} ${STRESS:+--stress "$STRESS"}
