"""The case report's model card metrics read as words and rounded numbers, not a Python dict."""
from __future__ import annotations

from sirad_viewer.viz.report import metric_text


def test_model_card_metrics_in_words():
    v = {"joints": 60, "accuracy": 0.5, "kappa_quadratic": 0.5332618025751071, "ci": [0.41234, 0.6]}
    assert metric_text(v) == "joints 60, accuracy 0.500, kappa quadratic 0.533, ci [0.412, 0.600]"
    assert metric_text(float("nan")) == "—"
