#!/bin/sh
# Rebuild both demo bundles from nothing: phantoms -> segmentation UNet -> grading DenseNet -> evaluation.
# Synthetic phantoms only: the weights know nothing about real patients.
#
#   tools/train_demo_models.sh [WORKDIR]            (default /tmp/sirad-demo-training)
#
# Options (environment variables):
#   ANATOMY=atlas|analytic   phantom anatomy (default atlas: real bone surfaces, split by subject)
#   ATLAS_DIR=DIR            atlas folder (default ../shared/data/pelvis-atlas)
#   N=120                    phantoms in the training set (train/val/test split; atlas: held-out subjects only in test)
#   SITE=...                 site profile (default atlas-mixed, or phantom-A for analytic)
#   DATA_OPTS="..."          more phantom-dataset options (e.g. "--max-voxels 8000000" or, analytic, "--matrix 256")
#   SEG_STEPS=600 EPOCHS=30 PATIENCE=8 CROP_SIZE=64 CROP_SPACING=1.25
#   SIRAD=.venv/bin/sirad    the command to run
# Each stage's wall time goes to WORKDIR/timings.txt; the measured total is stated in README and the model card.
set -e
W=${1:-/tmp/sirad-demo-training}
S=${SIRAD:-.venv/bin/sirad}
ANATOMY=${ANATOMY:-atlas}
N=${N:-120}
SEG_STEPS=${SEG_STEPS:-600}
EPOCHS=${EPOCHS:-30}
PATIENCE=${PATIENCE:-8}
CROP_SIZE=${CROP_SIZE:-64}
CROP_SPACING=${CROP_SPACING:-1.25}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "$ANATOMY" = atlas ]; then
  OPTS="--anatomy atlas --atlas-dir ${ATLAS_DIR:-../shared/data/pelvis-atlas} --site ${SITE:-atlas-mixed}"
else
  OPTS="--anatomy analytic --site ${SITE:-phantom-A}"
fi
mkdir -p "$W"
T="$W/timings.txt"
stage() { echo "$1 $(date +%s)" >> "$T"; }
: > "$T"
stage start
# one dataset, split by subject: train (real subjects + shape-model pelves), val, test (held-out subjects)
$S phantom-dataset --n "$N" --out "$W/data" --seed 1 $OPTS $DATA_OPTS
stage phantoms
# pelvic-bone segmentation UNet on the train split's label maps
$S train-segmenter --data "$W/data/DATA.csv" --out "$W/pelvis-unet-demo" --steps "$SEG_STEPS"
stage segmenter
# grading DenseNet on crops in the joint's own frame, from that segmentation; val split for early stopping and temperature
$S train --data "$W/data/DATA.csv" --out "$W/sij-densenet-demo" --segmenter "$W/pelvis-unet-demo" \
   --name sij-densenet-demo --epochs "$EPOCHS" --patience "$PATIENCE" --size "$CROP_SIZE" --spacing "$CROP_SPACING" --frame joint
stage grader
# held-out subjects: segmentation Dice (seen subjects apart), grading metrics, stress sweep
$S evaluate-segmenter --data "$W/data/DATA.csv" --segmenter "$W/pelvis-unet-demo" --split test,train --limit 12 \
   --out "$W/eval-segmenter.json"
$S evaluate --data "$W/data/DATA.csv" --bundle "$W/sij-densenet-demo" --segmenter "$W/pelvis-unet-demo" --out "$W/eval-internal"
$S evaluate --stress --data "$W/data/DATA.csv" --bundle "$W/sij-densenet-demo" --segmenter "$W/pelvis-unet-demo" \
   --split test,train --limit 8 --out "$W/eval-stress"
stage evaluation
awk 'NR==1{t0=$2; p=$2; next} {printf "%-12s %6.1f min\n", $1, ($2-p)/60; p=$2} END{printf "%-12s %6.1f min\n", "total", (p-t0)/60}' "$T"
