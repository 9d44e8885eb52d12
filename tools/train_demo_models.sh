#!/bin/sh
# How the demo bundles in models/ were made (CPU, 2 cores: about 35 minutes in all).
# Synthetic phantoms only: the weights know nothing about real patients.
set -e
W=${1:-/tmp/sirad-demo-training}
S=.venv/bin/sirad
# internal set (site profile phantom-A) and an external-like set (phantom-B: thicker slices, more noise, softer kernel)
$S phantom-dataset --n 120 --out $W/intA --site phantom-A --seed 1 --matrix 160
$S phantom-dataset --n 40 --out $W/extB --site phantom-B --seed 2 --matrix 160
# pelvic-bone segmentation UNet on the train split's label maps
$S train-segmenter --data $W/intA/DATA.csv --out $W/pelvis-unet-demo --steps 1000
# grading DenseNet: crops from that segmentation, validation split for early stopping and temperature
$S train --data $W/intA/DATA.csv --out $W/sij-densenet-demo --segmenter $W/pelvis-unet-demo \
   --name sij-densenet-demo --epochs 40 --patience 10
# internal (held-out test split) and external-like evaluation, as reported in the model card
$S evaluate --data $W/intA/DATA.csv --bundle $W/sij-densenet-demo --out $W/eval-internal --segmenter $W/pelvis-unet-demo
$S evaluate --data $W/extB/DATA.csv --bundle $W/sij-densenet-demo --split all --by site --out $W/eval-external \
   --segmenter $W/pelvis-unet-demo
