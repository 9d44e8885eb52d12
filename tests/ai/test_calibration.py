"""Calibration: the temperature fit, its refusals, ECE/Brier against hand computation and scikit-learn,
the reliability diagram, and the post-hoc ``calibrate_bundle`` step writing into a bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.calibration import (CalibrationError, calibration_metrics, expected_calibration_error,
                                         fit_temperature, reliability_diagram)


def _sampled(n: int, t_true: float, seed: int = 0):
    """Logits and labels drawn from softmax(logits / t_true): the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 5))
    p = GR.softmax(logits, t_true)
    labels = np.array([rng.choice(5, p=pp) for pp in p])
    return logits, labels


def test_temperature_is_recovered_from_labels_drawn_at_that_temperature():
    logits, labels = _sampled(3000, 2.0)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.12)
    logits, labels = _sampled(3000, 0.7, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(0.7, rel=0.12)


def test_a_perfectly_separated_or_small_split_is_refused_not_fitted_to_the_bound():
    """The defect: 14 perfectly separated validation cases drove the temperature to its bound (0.5)."""
    logits, _ = _sampled(200, 1.0)
    labels = logits.argmax(1)  # every joint graded correctly
    with pytest.raises(CalibrationError, match="correctly"):
        fit_temperature(logits, labels)
    logits, labels = _sampled(28, 1.0)
    with pytest.raises(CalibrationError, match="28 graded joints; at least 100"):
        fit_temperature(logits, labels)


def test_ece_and_brier_by_hand_and_against_scikit_learn():
    from sklearn.metrics import brier_score_loss

    p = np.array([[0.9, 0.1, 0, 0, 0], [0.9, 0.1, 0, 0, 0], [0.6, 0.4, 0, 0, 0], [0.2, 0.8, 0, 0, 0]])
    y = np.array([0, 1, 0, 1])
    # bins (15 equal-width): conf 0.9 (2 joints, 1 right), 0.6 (1, right), 0.8 (1, right)
    by_hand = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.6) + 0.25 * abs(1 - 0.8)
    assert expected_calibration_error(p, y) == pytest.approx(by_hand)
    m = calibration_metrics(p, y)
    assert m["brier"] == pytest.approx(np.mean(((p - np.eye(5)[y]) ** 2).sum(1)))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=list(range(5))))
    # perfectly calibrated probabilities have a small ECE; sharpened ones a large one
    logits, labels = _sampled(4000, 1.0, seed=3)
    assert expected_calibration_error(GR.softmax(logits, 1.0), labels) < 0.03
    assert expected_calibration_error(GR.softmax(logits, 0.3), labels) > 0.1


def test_reliability_diagram_is_written(tmp_path):
    logits, labels = _sampled(300, 1.0)
    out = reliability_diagram(GR.softmax(logits, 1.0), labels, tmp_path / "rel.png", title="t")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


@pytest.fixture
def tiny_bundle(tmp_path):
    from sirad_viewer.ai.bundle import build_network, save_bundle

    arch = {"type": "densenet", "config": {"init_features": 4, "growth_rate": 4, "block_config": [2]}}
    meta = {"name": "tiny", "version": "0", "task": "grading", "architecture": arch,
            "input": {"spacing_mm": [2.0] * 3, "size": [16] * 3, "intensity_window_hu": [-200.0, 1500.0],
                      "mirror_left": True},
            "classes": [0, 1, 2, 3, 4], "groups": [[0, 1], [2, 3], [4]], "training_data": {"sites": ["A"]},
            "metrics": {}, "intended_use": "test", "disclaimer": "test"}
    return save_bundle(build_network(arch, n_classes=5), meta, tmp_path / "tiny")


def test_calibrate_bundle_writes_temperature_and_ood_and_keeps_the_weights(tiny_bundle, tmp_path, monkeypatch):
    """Post-hoc on any bundle: grading is replaced by known joints; what is written must load and be used."""
    from sirad_viewer.ai import calibration as C
    from sirad_viewer.ai.bundle import load_bundle
    from sirad_viewer.ai.ood import ood_from_bundle

    logits, labels = _sampled(160, 1.8, seed=5)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(160, 8))
    texture = rng.normal(size=(160, 15))
    joints = [{"image": f"c{i // 2}", "side": ("left", "right")[i % 2], "site": "A" if i < 120 else "B",
               "split": "val", "truth": int(labels[i]), "logits": logits[i], "features": feats[i],
               "texture": texture[i], "ood": None} for i in range(160)]
    failures = [{"image": "bad", "site": "A", "split": "val", "truth": {"left": 1}, "code": "not_a_pelvis",
                 "message": "bad: not a pelvis"}]
    monkeypatch.setattr(C, "collect_joints", lambda grader, rows, progress=True, cache_dir=None: (joints, failures))
    csv = tmp_path / "DATA.csv"
    csv.write_text("image,left,right,site,split\nx.nii.gz,1,2,A,val\n")
    sha = tiny_bundle.metadata["weights"]["sha256"]
    # OOD statistics of an older definition must not stop the recalibration that replaces them
    stale = json.loads((tiny_bundle.path / "metadata.json").read_text())
    stale["ood"] = {"method": "max-normalised-mahalanobis", "threshold": 2.0, "components": [
        {"name": "crop_texture", "features": ["old"], "mean": [0.0], "precision": [[1.0]]}]}
    (tiny_bundle.path / "metadata.json").write_text(json.dumps(stale))
    res = C.calibrate_bundle(tiny_bundle.path, csv, device="cpu", progress=False, say=lambda m: None)
    b = load_bundle(tiny_bundle.path)  # still validates, same weights
    assert b.metadata["weights"]["sha256"] == sha
    cal = b.metadata["calibration"]
    assert cal["temperature"] == pytest.approx(1.8, rel=0.3) and cal["joints"] == 160 and cal["failed_cases"] == 1
    assert cal["val_after"]["log_loss"] <= cal["val_before"]["log_loss"]
    ood = ood_from_bundle(b.metadata)
    assert ood.n_fit == 120 and ood.fit_sites == ("A",)  # in distribution = the bundle's training site only
    assert res["ood"]["threshold"] == pytest.approx(ood.threshold)
    assert 0.9 <= res["ood"]["cross_fitted_pass_rate"] <= 0.96
    comps = json.loads((tiny_bundle.path / "metadata.json").read_text())["ood"]["components"]
    assert [(c["name"], c["dim"]) for c in comps] == [("penultimate", 8), ("crop_texture", 15)]
    assert comps[1]["window_hu"] == [-200.0, 1500.0]  # the bundle's input window


def test_calibrate_refuses_a_split_the_network_separates_perfectly(tiny_bundle, tmp_path, monkeypatch):
    from sirad_viewer.ai import calibration as C

    logits, _ = _sampled(120, 1.0)
    joints = [{"image": f"c{i // 2}", "side": "left", "site": "A", "split": "val", "truth": int(logits[i].argmax()),
               "logits": logits[i], "features": np.random.default_rng(i).normal(size=4),
               "texture": np.random.default_rng(i).normal(size=15), "ood": None} for i in range(120)]
    monkeypatch.setattr(C, "collect_joints", lambda grader, rows, progress=True, cache_dir=None: (joints, []))
    csv = tmp_path / "DATA.csv"
    csv.write_text("image,left,right,site,split\nx.nii.gz,1,2,A,val\n")
    before = (tiny_bundle.path / "metadata.json").read_text()
    with pytest.raises(CalibrationError, match="harder joints"):
        C.calibrate_bundle(tiny_bundle.path, csv, device="cpu", progress=False, say=lambda m: None)
    assert (tiny_bundle.path / "metadata.json").read_text() == before  # nothing half-written
    res = C.calibrate_bundle(tiny_bundle.path, csv, device="cpu", progress=False, say=lambda m: None,
                             allow_uncalibrated=True)  # what 'sirad train' does
    assert res["calibration"]["temperature"] == 1.0 and not res["calibration"]["fitted"]


def test_cached_logits_are_not_reused_when_the_bundle_crops_differently(tmp_path):
    # the cache of `sirad calibrate` / `sirad evaluate --cache`: a bundle whose weights are unchanged but whose
    # crops differ (joint boxes registered to a template, test-time frames added) must not read the old logits
    from types import SimpleNamespace

    from sirad_viewer.ai import calibration as C
    from sirad_viewer.ai import grading as GR

    inp = {"spacing_mm": [1.5] * 3, "size": [48] * 3, "intensity_window_hu": [-200, 1300], "mirror_left": True,
           "frame": "joint"}

    def grader(extra):
        meta = {"weights": {"sha256": "a" * 64}, "input": {**inp, **extra}}
        return SimpleNamespace(bundle=SimpleNamespace(metadata=meta), segmenter=None,
                               spec=GR.CropSpec.from_metadata(meta))

    img = tmp_path / "ct.nii.gz"
    img.write_bytes(b"x")
    plain = C._cache_file(tmp_path, grader({}), img)
    assert C._cache_file(tmp_path, grader({}), img) == plain
    assert C._cache_file(tmp_path, grader({"test_time_jitter": {"shift_mm": 2.0, "turn_deg": 5.0}}), img) != plain
    reg = {"registration": {"file": "template.safetensors", "sha256": "b" * 64}}
    assert C._cache_file(tmp_path, grader(reg), img) != plain
