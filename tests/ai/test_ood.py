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
    model, _ = fit_ood({"penultimate": rng.normal(size=(40, 5)), "crop_texture": rng.normal(size=(40, 15))},
                       np.arange(40), fit_sites=["A"], texture_window_hu=(-200, 1500))
    back = OODModel.from_metadata(model.to_metadata())
    x = {"penultimate": rng.normal(size=(3, 5)), "crop_texture": rng.normal(size=(3, 15))}
    assert np.allclose(back.score(x), model.score(x)) and back.fit_sites == ("A",)
    d = model.to_metadata()
    pen, tex = d["components"]

    def with_pen(**kw):
        return {**d, "components": [{**pen, **kw}, tex]}

    for bad, msg in [(with_pen(precision=[[1.0]]), "shape"), ({**d, "threshold": float("nan")}, "non-finite"),
                     (with_pen(norm=0.0), "norm <= 0"), ({**d, "method": "energy"}, "ood.method"),
                     (with_pen(precision=np.triu(np.ones((5, 5))).tolist()), "symmetric"),
                     ({**d, "components": [pen, {**tex, "features": tex["features"][::-1]}]}, "other texture statistics"),
                     ({**d, "components": [pen, {**tex, "version": "1"}]}, "other texture statistics"),
                     ({**d, "components": [pen, {**tex, "window_hu": [1500, -200]}]}, "low < high"),
                     ({**d, "components": [pen, pen]}, "twice"), (with_pen(name="logits"), "name")]:
        with pytest.raises(BundleError, match=msg):
            OODModel.from_metadata(bad, path="metadata.json")
    from sirad_viewer.ai.ood import ood_from_bundle

    assert ood_from_bundle({"ood": d, "input": {"intensity_window_hu": [-200, 1500]}}).inputs == ("penultimate",
                                                                                                  "crop_texture")
    with pytest.raises(BundleError, match="input window"):  # statistics of another window than the grader's
        ood_from_bundle({"ood": d, "input": {"intensity_window_hu": [-100, 1000]}}, path="metadata.json")


def test_a_bundle_of_the_penultimate_only_method_still_loads_and_scores_the_same():
    """Bundles calibrated before the texture view (method 'mahalanobis-penultimate-ledoit-wolf') keep working."""
    rng = np.random.default_rng(4)
    model, _ = fit_ood(rng.normal(size=(60, 6)), np.arange(60))
    g = model.components[0]
    legacy = {"method": "mahalanobis-penultimate-ledoit-wolf", "threshold": 3.5, "mean": g.mean.tolist(),
              "precision": g.precision.tolist(), "n_fit": 60}
    old = OODModel.from_metadata(legacy)
    x = rng.normal(size=(5, 6))
    assert old.inputs == ("penultimate",) and np.allclose(old.score(x), g.distance(x))


def test_features_of_very_different_scales_are_standardised_before_shrinkage():
    """Ledoit-Wolf shrinks towards a scaled identity; unstandardised, a feature 1000x smaller than another gets
    almost no weight and a shift of it by many of its own SDs goes unseen (HU-scale and share-scale statistics)."""
    rng = np.random.default_rng(5)
    scale = np.array([1000.0, 0.01, 1.0, 1.0, 1.0])
    train = rng.normal(size=(120, 5)) * scale
    model, _ = fit_ood(train, np.repeat(np.arange(60), 2))
    fresh = rng.normal(size=(2000, 5)) * scale
    assert 0.92 <= np.mean(model.score(fresh) <= model.threshold) <= 0.99
    shifted = fresh + np.array([0.0, 6 * 0.01, 0.0, 0.0, 0.0])  # six SDs of the small feature
    assert np.mean(model.score(shifted) > model.threshold) > 0.9


def test_a_joint_unusual_in_one_view_only_is_flagged():
    """The larger of the normalised distances counts: a familiar view cannot hide an unusual one."""
    rng = np.random.default_rng(6)
    n = 150
    train = {"penultimate": rng.normal(size=(n, 20)), "crop_texture": rng.normal(size=(n, 15))}
    model, oof = fit_ood(train, np.repeat(np.arange(n // 2), 2), texture_window_hu=(-200, 1500))
    assert 0.95 <= np.mean(oof <= model.threshold) <= 0.97
    fresh = {"penultimate": rng.normal(size=(2000, 20)), "crop_texture": rng.normal(size=(2000, 15))}
    assert 0.92 <= np.mean(model.score(fresh) <= model.threshold) <= 0.99
    odd_texture = {**fresh, "crop_texture": fresh["crop_texture"] + 1.5}
    assert np.mean(model.score(odd_texture) > model.threshold) > 0.95
    parts = model.component_scores(odd_texture)
    assert np.median(parts["penultimate"]) < model.threshold < np.median(parts["crop_texture"])


def test_crop_texture_tells_noisy_sharp_tissue_from_smoothly_varying_tissue_and_ignores_an_hu_offset_and_metal():
    from scipy import ndimage

    from sirad_viewer.ai.ood import TEXTURE_NAMES, crop_texture

    rng = np.random.default_rng(7)
    s, r, c = np.mgrid[0:48, 0:48, 0:48]
    # phantom-like: two constant tissues with a sharp border plus white noise
    phantom = np.where(c < 24, 40.0, 400.0) + rng.normal(0, 20, (48, 48, 48))
    # real-like: tissue varying smoothly at every scale, little noise
    real = 150 + 120 * ndimage.gaussian_filter(rng.normal(size=(48, 48, 48)), 3) * 20 + rng.normal(0, 3, (48, 48, 48))
    w = (-200.0, 1500.0)
    t = crop_texture(np.stack([phantom, real, phantom + 40.0]), w)
    assert t.shape == (3, len(TEXTURE_NAMES)) == (3, 15) and np.all(np.isfinite(t))
    col = {n: i for i, n in enumerate(TEXTURE_NAMES)}
    # white noise averages away in larger blocks; smooth anatomy keeps (and gains) its steps
    assert t[0, col["log_mean_abs_step_x4"]] < t[0, col["log_mean_abs_step_x1"]]
    assert t[1, col["log_mean_abs_step_x4"]] > t[1, col["log_mean_abs_step_x1"]]
    assert np.allclose(t[0], t[2], atol=1e-6)  # differences only: a constant HU offset changes nothing
    assert np.allclose(crop_texture(phantom, w), t[:1])
    # metal beyond the grader's window counts as the window's top, as the grader sees it
    metal = phantom.copy()
    metal[20:28, 20:28, 30:40] = 3000.0
    clipped = phantom.copy()
    clipped[20:28, 20:28, 30:40] = 1500.0
    assert np.allclose(crop_texture(metal, w), crop_texture(clipped, w))
    with pytest.raises(ValueError, match="at least 8 voxels"):
        crop_texture(np.zeros((4, 4, 4)), w)


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
    if kind == "fov16":  # 16 cm field of view centred on the joints (an SIJ protocol), all slices
        from sirad_viewer.imaging.sacral_plane import sij_centre

        sp = np.asarray(vol.spacing)
        n = int(round(160 / sp[1]))
        mid = np.rint(vol.world_to_index(np.asarray(sij_centre(vol), float)[None])[0]).astype(int)
        r0 = int(np.clip(mid[1] - n // 2, 0, vol.shape[1] - n))
        c0 = int(np.clip(mid[2] - n // 2, 0, vol.shape[2] - n))
        arr = vol.array[:, r0:r0 + n, c0:c0 + n]
        aff = vol.affine.copy()
        aff[:3, 3] = vol.index_to_world(np.array([[0, r0, c0]], float))[0]
        return vol.with_array(np.ascontiguousarray(arr), aff)
    if kind == "resampled":  # 1.5 mm isotropic re-scan
        ext = (np.asarray(vol.shape) - 1) * np.asarray(vol.spacing)
        shape = tuple(int(e // 1.5) + 1 for e in ext)
        axes = (vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)).T  # make_affine takes one axis per row
        aff = make_affine(vol.affine[:3, 3], axes, [1.5] * 3)
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
# issue #11 item 2: the noisy +40 HU copy was not flagged by the penultimate-feature score alone (5.54 / 6.06 against
# 6.26); with the crop-texture view it scores about 2.3x the threshold
@pytest.mark.parametrize("kind", ["rotated", "fov16", "resampled", "noise+40HU"])
def test_reposed_and_rescanned_copies_of_the_real_ct_are_flagged(grader, real_ct, kind):
    # every copy is a whole pelvis with both joints: it must be graded AND flagged, not refused (the 1.5 mm copy
    # used to be resampled outside the body, an empty CT whose refusal let this test pass without grading anything)
    v = _reposed(real_ct, kind)
    d = grader(v, heatmaps=False).to_dict()
    assert d["ood_flagged"] is True, (kind, {s: j["ood"] for s, j in d["joints"].items()})


@pytest.mark.slow
# 1/60 held-out-subject joints (1.7%) flagged by 'sirad evaluate' after tools/calibrate_demo.sh (was 3/60 with the
# penultimate-feature score alone)
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
