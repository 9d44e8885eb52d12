#!/bin/sh
# Post-hoc calibration, OOD statistics, evaluation and model card of the demo grading bundle.
# Re-run after every retrain: nothing here depends on how the bundle was trained.
# Synthetic phantoms only. CPU, 2 cores: about 30-60 minutes, mostly phantom generation and grading.
set -e
W=${1:-/tmp/sirad-calibration}
B=${2:-models/sij-densenet-demo}
S=${SIRAD:-.venv/bin/sirad}
PY=${PYTHON:-.venv/bin/python}
# calibration/validation and test joints: the training profile (phantom-A, new seeds) and a harder profile
# (phantom-B: thicker slices, more noise, softer kernel) that the model does not separate perfectly
$PY -c "from sirad_viewer.phantom.dataset import make_dataset as m; m('$W/A', 100, site='phantom-A', seed=11, matrix=160, val_fraction=0.6, test_fraction=0.4)"
$PY -c "from sirad_viewer.phantom.dataset import make_dataset as m; m('$W/B', 40, site='phantom-B', seed=12, matrix=160, val_fraction=0.5, test_fraction=0.5)"
# temperature on all validation joints (A and B); OOD statistics on the training site's (A) validation joints
$S calibrate $B $W/A/DATA.csv $W/B/DATA.csv --split val --cache $W/cache
# test splits: internal (phantom-A) and external-like (phantom-B); failures are counted, never dropped
$S evaluate --data $W/A/DATA.csv --bundle $B --split test --out $W/eval-A --cache $W/cache
$S evaluate --data $W/B/DATA.csv --bundle $B --split test --out $W/eval-B --cache $W/cache
$S grade resources/demo/example_ct.nii.gz --bundle $B --json $W/demo-ct.json
$PY tools/model_card.py $B --eval "internal=$W/eval-A" --eval "external-like=$W/eval-B" \
    --seg models/pelvis-unet-demo --demo-json $W/demo-ct.json --bench benchmarks/results.json
