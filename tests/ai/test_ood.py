"""Out-of-distribution check: the Mahalanobis model, its validation, its use by the pipeline, and the
demo model on the real CT, re-posed/re-scanned copies of it, held-out phantoms and non-pelvis CTs."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.ai.bundle import BundleError
from sirad_viewer.ai.ood import OODModel, fit_ood


def test_threshold_passes_about_95_percent_of_new_in_distribution_samples_and_flags_shifted_ones():
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.2, 3.0, 40))
    train = rng.multivariate_normal(np.zeros(40), cov, size=150)
    model, oof = fit_ood(train, np.repeat(np.arange(75), 2))
    assert 0.95 <= np.mean(oof <= model.threshold) <= 0.965  # the conformal rank: ceil(151 * 0.95) = 144 of 150
    fresh = rng.multivariate_normal(np.zeros(40), cov, size=4000)
    assert 0.92 <= np.mean(model.score(fresh) <= model.threshold) <= 0.995
    shifted = fresh + 1.5
    assert np.mean(model.score(shifted) > model.threshold) > 0.95


def test_conformal_threshold_passes_at_least_95_percent_where_the_plain_percentile_falls_short():
    # issue #11 item 2: the 0.2.0 threshold (plain 95th percentile of 118 cross-fitted scores) flagged 6.7%
    # of held-out joints; the (n+1)-corrected rank guarantees >= 95% on average over validation sets
    from sirad_viewer.ai.ood import conformal_threshold

    assert conformal_threshold(np.arange(1.0, 101.0), 0.95) == 96.0  # ceil(101 * 0.95) = 96th of 100
    assert conformal_threshold(np.arange(1.0, 11.0), 0.95) == 10.0  # too few for the rank: the largest
    rng = np.random.default_rng(3)
    conf, plain = [], []
    for _ in range(4000):
        cal, new = rng.normal(size=30), rng.normal(size=200)
        conf.append(np.mean(new <= conformal_threshold(cal, 0.95)))
        plain.append(np.mean(new <= np.quantile(cal, 0.95)))
    assert np.mean(conf) >= 0.95 > np.mean(plain)


def test_in_sample_percentile_would_flag_too_many():
    """Why the threshold is cross-fitted: the in-sample 95th percentile is too low for new joints."""
    rng = np.random.default_rng(1)
    train = rng.normal(size=(120, 60))
    model, _ = fit_ood(train, np.arange(120))
    naive = float(np.quantile(model.score(train), 0.95))
    fresh = rng.normal(size=(4000, 60))
    naive_rate, cross_rate = np.mean(model.score(fresh) > naive), np.mean(model.score(fresh) > model.threshold)
    assert naive_rate > cross_rate and naive_rate > 0.06 and cross_rate <= 0.06


def test_metadata_round_trip_and_validation_at_the_border():
    rng = np.random.default_rng(2)
    model, _ = fit_ood(rng.normal(size=(40, 5)), np.arange(40), fit_sites=["A"])
    back = OODModel.from_metadata(model.to_metadata())
    x = rng.normal(size=(3, 5))
    assert np.allclose(back.score(x), model.score(x)) and back.fit_sites == ("A",)
    d = model.to_metadata()
    for bad, msg in [({**d, "precision": [[1.0]]}, "shape"), ({**d, "threshold": float("nan")}, "non-finite"),
                     ({**d, "method": "energy"}, "ood.method"),
                     ({**d, "precision": (np.triu(np.ones((5, 5)))).tolist()}, "symmetric")]:
        with pytest.raises(BundleError, match=msg):
            OODModel.from_metadata(bad, path="metadata.json")


def test_forward_with_features_matches_the_network_output():
    import torch

    from sirad_viewer.ai.bundle import build_network
    from sirad_viewer.ai.ood import forward_with_features

    net = build_network({"type": "densenet", "config": {"init_features": 4, "growth_rate": 4, "block_config": [2]}},
                        n_classes=5).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        lg, f = forward_with_features(net, x)
        assert torch.allclose(lg, net(x), atol=1e-5)
    assert f.shape == (2, net.class_layers.out.in_features)


def test_flagged_result_says_not_reliable_before_the_grade():
    from sirad_viewer.ai.localise import JointBox
    from sirad_viewer.ai.pipeline import GradeResult, JointResult

    box = JointBox("left", np.zeros(3), np.eye(3), np.ones(3) * 30, 100)
    p = np.array([0.02, 0.03, 0.05, 0.1, 0.8])
    joints = {s: JointResult(s, box, p, np.log(p), [[0, 1], [2, 3], [4]],
                             ood={"score": 30.0 if s == "right" else 5.0, "threshold": 10.0, "flagged": s == "right"})
              for s in ("left", "right")}

    class Loc:
        def sacral_axis_dict(self):
            return {}

    d = GradeResult({"name": "m", "version": "0"}, joints, Loc(), {}, "cpu").to_dict()
    assert d["ood_flagged"] is True and "unlike the training data" in d["reliability"]
    assert d["joints"]["right"]["ood"] == {"score": 30.0, "threshold": 10.0, "flagged": True}
    assert d["joints"]["left"]["reliability"] is None and "not reliable" in d["joints"]["right"]["reliability"]
    from sirad_viewer.cli import _grade_text

    text = _grade_text(d)
    assert text.index("unlike the training data") < text.index("grade 4")
    right = next(line for line in text.splitlines() if line.startswith("right"))
    assert right.index("NOT RELIABLE") < right.index("grade 4")


# --- the demo model on real and synthetic inputs (grades CTs: slow) ----------------------------------------------


@pytest.fixture(scope="module")
def grader():
    from sirad_viewer.ai.pipeline import Grader

    g = Grader(device="cpu")
    if g.ood is None:
        pytest.fail("the installed demo bundle has no OOD statistics; run 'sirad calibrate' (see tools/calibrate_demo.sh)")
    return g


@pytest.fixture(scope="module")
def real_ct():
    from pathlib import Path

    from sirad_viewer.io import open_volume

    return open_volume(Path(__file__).resolve().parents[2] / "resources" / "demo" / "example_ct.nii.gz")


def _reposed(vol, kind: str):
    """Re-posed or re-scanned copies of the real CT."""
    from scipy import ndimage

    from sirad_viewer.imaging.geometry import make_affine
    from sirad_viewer.imaging.volume import resample_to

    if kind == "rotated":  # patient rolled 10 degrees about the long axis, and tilted 8 degrees
        a, b = np.radians(10), np.radians(8)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        aff = vol.affine.copy()
        c = vol.center_world()
        aff[:3, :3] = rz @ rx @ aff[:3, :3]
        aff[:3, 3] = c + rz @ rx @ (aff[:3, 3] - c)
        return resample_to(vol, aff, vol.shape, order=1)
    if kind == "fov16":  # 16 cm field of view around the joints
        sp = np.asarray(vol.spacing)
        n = int(round(160 / sp[1]))
        r0 = max(0, vol.shape[1] // 2 - n // 2)
        c0 = max(0, vol.shape[2] // 2 - n // 2)
        arr = vol.array[:, r0:r0 + n, c0:c0 + n]
        aff = vol.affine.copy()
        aff[:3, 3] = vol.index_to_world(np.array([[0, r0, c0]], float))[0]
        return vol.with_array(np.ascontiguousarray(arr), aff)
    if kind == "resampled":  # 1.5 mm isotropic re-scan
        ext = (np.asarray(vol.shape) - 1) * np.asarray(vol.spacing)
        shape = tuple(int(e // 1.5) + 1 for e in ext)
        aff = make_affine(vol.affine[:3, 3], vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0), [1.5] * 3)
        return resample_to(vol, aff, shape, order=1)
    if kind == "noise+40HU":
        rng = np.random.default_rng(0)
        arr = vol.array.astype(np.float32) + 40 + rng.normal(0, 25, vol.shape).astype(np.float32)
        return vol.with_array(ndimage.uniform_filter(arr, 1))
    raise ValueError(kind)


@pytest.mark.slow
def test_real_demo_ct_is_flagged_as_unlike_the_training_data(grader, real_ct):
    d = grader(real_ct, heatmaps=False).to_dict()
    assert d["ood_flagged"] is True, {s: j["ood"] for s, j in d["joints"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rotated", "fov16", "resampled", pytest.param("noise+40HU", marks=pytest.mark.xfail(
    strict=False, reason="goal missed since the recalibration for segmenter 0.3.0 (threshold 6.26 on 102 validation "
    "joints): the noisy +40 HU copy scores 5.54 / 6.06, the original real CT 6.8 / 6.5; the Mahalanobis score alone "
    "separates this copy too weakly"))])
def test_reposed_and_rescanned_copies_of_the_real_ct_are_flagged(grader, real_ct, kind):
    from sirad_viewer.ai.pipeline import NotAPelvisError

    v = _reposed(real_ct, kind)
    try:
        d = grader(v, heatmaps=False).to_dict()
    except NotAPelvisError:  # refusing without a grade is also never a silent grade
        return
    assert d["ood_flagged"] is True, (kind, {s: j["ood"] for s, j in d["joints"].items()})


@pytest.mark.slow
# 3/60 held-out-subject joints (5.0%) flagged by 'sirad evaluate' after tools/calibrate_demo.sh (conformal threshold)
def test_held_out_phantoms_of_the_training_profile_are_rarely_flagged(grader):
    from sirad_viewer.phantom.atlas_phantom import DEFAULT_HOLDOUT, AtlasSpec, make_atlas_phantom

    flags = []
    for i in range(12):  # the demo bundle's training profile: atlas-mixed phantoms, held-out subjects
        spec = AtlasSpec(left_grade=i % 5, right_grade=(i + 2) % 5, seed=950_000 + i,
                         subject=DEFAULT_HOLDOUT[i % len(DEFAULT_HOLDOUT)], crop="pelvis", max_voxels=8_000_000)
        flags += [j.ood_flagged for j in grader(make_atlas_phantom(spec).volume, heatmaps=False).joints.values()]
    assert np.mean(flags) <= 0.05 + 1e-9 or sum(flags) <= 1, flags  # 24 joints: at most one


def head_ct():
    """A head-CT-like volume: skull shell of cortical bone around brain, air outside (1 x 0.9 x 0.9 mm)."""
    from sirad_viewer.imaging.geometry import make_affine
    from sirad_viewer.imaging.volume import Volume

    s, r, c = np.mgrid[0:160, 0:220, 0:220].astype(np.float32)
    z, y, x = (s - 80) * 1.0, (r - 110) * 0.9, (c - 110) * 0.9
    rr = np.sqrt((x / 75) ** 2 + (y / 92) ** 2 + (z / 70) ** 2)
    a = np.full(rr.shape, -1000, np.float32)
    a[rr < 1.08] = 1200
    a[rr < 1.0] = 35
    a += np.random.default_rng(0).normal(0, 10, a.shape).astype(np.float32)
    return Volume(a.astype(np.int16), make_affine([-99, -99, -80], np.eye(3)[::-1], [1.0, 0.9, 0.9]))


def abdomen_ct():
    """An upper abdomen: body with a fat layer, a lumbar vertebra with its spinous process, ribs; no sacrum."""
    from sirad_viewer.imaging.geometry import make_affine
    from sirad_viewer.imaging.volume import Volume

    s, r, c = np.mgrid[0:80, 0:200, 0:200].astype(np.float32)
    z, y, x = (s - 40) * 2.5, (r - 100) * 1.8, (c - 100) * 1.8
    a = np.full(s.shape, -1000, np.float32)
    body = (x / 160) ** 2 + (y / 115) ** 2 < 1
    a[body] = 40
    a[body & ((x / 150) ** 2 + (y / 105) ** 2 > 1)] = -100
    vert = x ** 2 + (y - 40) ** 2 < 20 ** 2
    a[vert] = 250
    a[vert & (x ** 2 + (y - 40) ** 2 > 16 ** 2)] = 900
    a[(np.abs(x) < 6) & (y > 60) & (y < 95)] = 700
    ring = np.abs(np.sqrt((x / 140) ** 2 + ((y - 5) / 95) ** 2) - 0.92) < 0.035
    for k in range(-3, 4):
        a[ring & (np.abs(z - 25 * k) < 5)] = 800
    a += np.random.default_rng(1).normal(0, 12, a.shape).astype(np.float32)
    return Volume(a.astype(np.int16), make_affine([-180, -180, -100], np.eye(3)[::-1], [2.5, 1.8, 1.8]))


@pytest.mark.parametrize("make", [head_ct, abdomen_ct], ids=["head", "abdomen"])
def test_a_ct_that_is_not_a_pelvis_ends_with_a_clear_error_and_no_grade(make):
    from sirad_viewer.ai.pipeline import Grader, NotAPelvisError

    with pytest.raises(NotAPelvisError, match="no grade is given") as ei:
        Grader(device="cpu")(make(), heatmaps=False)
    assert ei.value.code == "not_a_pelvis"


@pytest.mark.slow
def test_cli_grade_of_a_head_ct_prints_the_error_and_writes_no_grade(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from sirad_viewer.io.export import write_nifti

    p = tmp_path / "head.nii.gz"
    write_nifti(head_ct(), p, sidecar=False)
    out = tmp_path / "g.json"
    r = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "grade", str(p), "--json", str(out)],
                       capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert r.returncode == 2 and "does not look like a pelvis" in r.stderr and "grade 0" not in r.stdout
    d = json.loads(out.read_text())
    assert d["error"]["code"] == "not_a_pelvis" and "joints" not in d
