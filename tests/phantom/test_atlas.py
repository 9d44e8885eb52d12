"""Atlas phantoms: real joints where the atlas has them, labels, truth, lesions, mimics, nuisances, split."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from sirad_viewer.phantom import atlas as A
from sirad_viewer.phantom.anatomy import LEFT_ILIUM, OTHER_BONE, RIGHT_ILIUM, SACRUM
from sirad_viewer.phantom.atlas_phantom import AtlasSpec, make_atlas_phantom, plan_joint, plan_mimics
from sirad_viewer.phantom.nuisance import draw_nuisance

# Small and fast: both joints only, 1 mm pixels, 2 mm slices, nothing random in the geometry.
FAST = {"pixel_mm": 1.0, "slice_thickness_mm": 2.0, "slice_spacing_mm": 2.0, "metal": "none",
        "rotation_deg": (0.0, 0.0, 0.0), "coverage": "sij", "fov_mm": 200.0}


@pytest.fixture(scope="module")
def atlas_dir(shared_data):
    d = shared_data / "pelvis-atlas"
    if not d.exists():
        pytest.skip(f"atlas not found: {d}")
    return str(d)


_CACHE: dict = {}


@pytest.fixture(scope="module")
def atlas_phantom(atlas_dir):
    def make(left=0, right=0, seed=0, subject="10", **nuisance):
        key = (left, right, seed, subject, tuple(sorted(nuisance.items())))
        if key not in _CACHE:
            nu = {**FAST, **nuisance}
            _CACHE[key] = make_atlas_phantom(AtlasSpec(left_grade=left, right_grade=right, seed=seed, subject=subject,
                                                       atlas_dir=atlas_dir, site="atlas-mixed", crop="sij",
                                                       nuisance=nu))
        return _CACHE[key]
    return make


def _sample(ph, pts):
    idx = ph.volume.world_to_index(np.asarray(pts)).T
    hu = ndimage.map_coordinates(ph.volume.array.astype(np.float32), idx, order=1)
    lab = ndimage.map_coordinates(ph.labels, idx, order=0)
    return hu, lab


def test_joint_gap_sits_between_sacrum_and_hip_bone_at_the_atlas_contact(atlas_phantom, atlas_dir):
    ph = atlas_phantom(0, 0)
    at = A.load_atlas(atlas_dir)
    lm = A.landmarks(A.subject_shape(at, "10"))
    for side, hip in (("left", LEFT_ILIUM), ("right", RIGHT_ILIUM)):
        j = ph.truth["joints"][side]
        c, n = np.array(j["center_lps_mm"]), np.array(j["axes_lps"][2])
        # the normal points from the sacrum to the hip bone (laterally)
        assert np.sign(n[0]) == (1 if side == "left" else -1)
        ts = np.arange(-12, 12.01, 0.25)
        hu, lab = _sample(ph, c[None] + ts[:, None] * n[None])
        assert (lab[ts < -4] == SACRUM).mean() > 0.6 and (lab[ts > 4] == hip).mean() > 0.6
        gap = (lab == 0) & (np.abs(ts) < 4)
        assert gap.sum() * 0.25 >= 1.0  # a joint space of at least ~1 mm
        assert hu[gap].mean() < hu[lab > 0].mean() - 150
        # the contact region is the atlas's: as many hip-bone contact vertices as the atlas shape has
        assert j["contact_points"] == len(lm.joints[side].hip_idx)
    # grade 0: the distance between the joint centres is the atlas's
    d = np.linalg.norm(np.subtract(ph.truth["joints"]["left"]["center_lps_mm"], ph.truth["joints"]["right"]["center_lps_mm"]))
    assert d == pytest.approx(np.linalg.norm(lm.joints["left"].center - lm.joints["right"].center), abs=0.01)


def test_label_map_classes_and_sides(atlas_phantom):
    ph = atlas_phantom(0, 0)
    assert set(np.unique(ph.labels)) == {0, SACRUM, LEFT_ILIUM, RIGHT_ILIUM, OTHER_BONE}
    cen = {k: ph.volume.index_to_world(np.argwhere(ph.labels == k).mean(axis=0)) for k in (SACRUM, LEFT_ILIUM, RIGHT_ILIUM)}
    assert cen[LEFT_ILIUM][0] > cen[SACRUM][0] > cen[RIGHT_ILIUM][0]
    hu = ph.volume.array
    assert 100 < np.median(hu[ph.labels == SACRUM]) < 700  # mostly trabecular bone
    assert np.percentile(hu[ph.labels == LEFT_ILIUM], 99) > 900  # cortex


def test_truth_sacral_axis_and_joint_centres_are_consistent(atlas_phantom):
    ph = atlas_phantom(1, 2, seed=3)
    ax = ph.truth["sacral_axis"]
    top, bot, d = (np.array(ax[k]) for k in ("superior_point_lps_mm", "inferior_point_lps_mm", "direction_lps"))
    assert np.allclose(d, (top - bot) / np.linalg.norm(top - bot), atol=1e-5)
    assert top[2] > bot[2] and top[1] < bot[1]  # the base is superior and anterior to the apex
    assert abs(np.dot(d, ax["thickness_direction_lps"])) < 1e-5
    assert 60 < np.linalg.norm(top - bot) < 160
    cl, cr = (np.array(ph.truth["joints"][s]["center_lps_mm"]) for s in ("left", "right"))
    assert cl[0] > top[0] > cr[0]
    # both joint centres lie beside the sacral axis, level with its upper half
    for c in (cl, cr):
        tpos = np.dot(c - bot, d) / np.linalg.norm(top - bot)
        assert 0.3 < tpos < 1.1
    assert ph.truth["grades"] == {"left": 1, "right": 2} and ph.truth["true_grades"] == {"left": 1, "right": 2}


def _burden(p):
    """(number of lesions, summed extent in mm along the joint) of a joint plan."""
    return (len(p["erosions"]) + len(p["sclerosis"]) + len(p["bridges"]) + len(p["blur"]),
            sum(2 * e["r"] for e in p["erosions"]) + sum(s["r"] for s in p["sclerosis"])
            + sum(b["r"] for b in p["blur"]) + sum(b["r"] for b in p["bridges"]))


def test_lesion_counts_and_sizes_overlap_between_neighbouring_grades():
    rng = np.random.default_rng(0)
    plans = {g: [plan_joint(g, rng, 0.0) for _ in range(300)] for g in range(5)}
    for g in (1, 2):
        n_lo = [_burden(p)[0] for p in plans[g]]
        n_hi = [_burden(p)[0] for p in plans[g + 1]]
        assert max(n_lo) >= min(n_hi) and np.percentile(n_lo, 90) >= np.percentile(n_hi, 10)
        s_lo = [_burden(p)[1] for p in plans[g]]
        s_hi = [_burden(p)[1] for p in plans[g + 1]]
        assert max(s_lo) > np.percentile(s_hi, 25)
    assert np.mean([_burden(p)[1] for p in plans[3]]) > np.mean([_burden(p)[1] for p in plans[2]])
    assert all(_burden(p)[0] == 0 for p in plans[0])
    assert all(p["fusion"] > 0 for p in plans[4]) and not any(p["fusion"] > 0 for p in plans[2])
    assert all(p["blur"] for p in plans[1])  # grade 1: indistinct margin on part of the joint


def test_borderline_share_labels_the_neighbouring_grade():
    rng = np.random.default_rng(1)
    plans = [plan_joint(g, rng, 0.1) for g in range(5) for _ in range(400)]
    moved = [p for p in plans if p["label_grade"] != p["true_grade"]]
    assert 0.07 < len(moved) / len(plans) < 0.13
    assert all(abs(p["label_grade"] - p["true_grade"]) == 1 for p in moved)
    assert all(abs(p["severity"] - (p["label_grade"] + p["true_grade"]) / 2) < 0.2 for p in moved)


def test_mimics_only_in_grade_0_and_1():
    rng = np.random.default_rng(2)
    seen = {g: 0 for g in range(5)}
    for g in range(5):
        for _ in range(300):
            p = plan_joint(g, rng, 0.1)
            m = plan_mimics(p["label_grade"], g, rng, age_narrowing=rng.random() < 0.2)
            if m:
                assert max(g, p["label_grade"]) <= 1
                seen[g] += 1
    assert seen[0] > 60 and seen[1] > 60 and seen[2] == seen[3] == seen[4] == 0


def test_mimics_in_a_phantom_sit_on_the_normal_side(atlas_phantom):
    ph = atlas_phantom(0, 3, seed=11)
    assert all(m["side"] == "left" for m in ph.truth["mimics"])
    assert all(les["side"] == "right" for les in ph.truth["lesions"])


def test_nuisance_is_independent_of_the_grade():
    a = AtlasSpec(left_grade=0, right_grade=0, seed=5, atlas_dir="x").draw_nuisance()
    b = AtlasSpec(left_grade=4, right_grade=3, seed=5, atlas_dir="x").draw_nuisance()
    assert a == b
    grades = np.array([i % 5 for i in range(400)])
    nus = [AtlasSpec(left_grade=int(g), right_grade=0, seed=i, atlas_dir="x").draw_nuisance() for i, g in enumerate(grades)]
    for key in ("pixel_mm", "slice_thickness_mm", "blur_fwhm_mm", "sharpen", "noise_hu", "bone_density", "fov_mm"):
        v = np.array([getattr(n, key) for n in nus])
        assert abs(np.corrcoef(grades, v)[0, 1]) < 0.15, key
    rot = np.array([n.rotation_deg for n in nus])
    assert np.abs(rot).max() <= 15 and np.abs(rot).max() > 12
    px = np.array([n.pixel_mm for n in nus])
    th = np.array([n.slice_thickness_mm for n in nus])
    assert px.min() >= 0.5 and px.max() <= 1.0 and th.min() >= 0.6 and th.max() <= 3.0
    assert {n.coverage for n in nus} == {"abdomen-pelvis", "pelvis", "sij"}
    assert {n.metal for n in nus} >= {"none", "screws"} and {n.contrast for n in nus} == {"none", "arterial", "venous"}


def test_pose_rotation_moves_the_anatomy(atlas_phantom):
    a = atlas_phantom(0, 0, seed=4)
    b = atlas_phantom(0, 0, seed=4, rotation_deg=(0.0, 0.0, 15.0))
    ca = {k: a.volume.index_to_world(np.argwhere(a.labels == k).mean(axis=0)) for k in (LEFT_ILIUM, RIGHT_ILIUM)}
    cb = {k: b.volume.index_to_world(np.argwhere(b.labels == k).mean(axis=0)) for k in (LEFT_ILIUM, RIGHT_ILIUM)}
    va, vb = ca[LEFT_ILIUM] - ca[RIGHT_ILIUM], cb[LEFT_ILIUM] - cb[RIGHT_ILIUM]
    ang = np.degrees(np.arctan2(vb[1], vb[0]) - np.arctan2(va[1], va[0]))
    assert ang == pytest.approx(15.0, abs=3.0)
    ja = np.subtract(a.truth["joints"]["left"]["center_lps_mm"], a.truth["joints"]["right"]["center_lps_mm"])
    jb = np.subtract(b.truth["joints"]["left"]["center_lps_mm"], b.truth["joints"]["right"]["center_lps_mm"])
    assert np.degrees(np.arctan2(jb[1], jb[0]) - np.arctan2(ja[1], ja[0])) == pytest.approx(15.0, abs=0.5)


def _hf_noise(ph):
    """Median absolute Laplacian of HU in soft tissue away from edges (noise power at high frequency)."""
    hu = ph.volume.array.astype(np.float32)
    soft = (ph.labels == 0) & (hu > -250) & (hu < 250)
    soft = ndimage.binary_erosion(soft, iterations=3)
    lap = np.stack([ndimage.laplace(s) for s in hu])
    return float(np.median(np.abs(lap[soft])))


def test_sites_differ_in_a_measured_image_statistic(atlas_dir):
    vals = {}
    for site in ("atlas-A", "atlas-B"):
        ph = make_atlas_phantom(AtlasSpec(seed=8, subject="10", atlas_dir=atlas_dir, site=site, crop="sij",
                                          nuisance={"metal": "none", "coverage": "sij", "pixel_mm": 0.9,
                                                    "slice_spacing_mm": 2.0}))
        vals[site] = _hf_noise(ph)
    # sharp thin-slice bone kernel vs a soft thick-slice routine protocol
    assert vals["atlas-A"] > 3 * vals["atlas-B"], vals


def test_split_by_subject_keeps_holdout_out_of_training(atlas_dir, tmp_path):
    from sirad_viewer.phantom.atlas_dataset import make_atlas_dataset, split_subjects
    from sirad_viewer.phantom.ssm import build_shape_model

    subjects = A.list_subjects(atlas_dir)
    parts = split_subjects(subjects, ["2", "13", "29", "40", "51", "65"])
    assert set(parts["test"]) == {"2", "13", "29", "40", "51", "65"}
    assert not set(parts["train"]) & (set(parts["test"]) | set(parts["val"]))
    model = build_shape_model(A.load_atlas(atlas_dir), parts["train"])
    assert set(model.subjects) == set(parts["train"])
    csv_path = make_atlas_dataset(tmp_path, 10, seed=1, atlas_dir=atlas_dir, workers=1, crop="sij",
                                  max_voxels=150_000, nuisance={"metal": "none"})
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 10 and {"subject", "true_left", "true_right", "image", "labels", "truth"} <= set(rows[0])
    for r in rows:
        if r["split"] in ("train", "val"):
            assert r["subject"] not in parts["test"]
        if r["subject"].startswith("ssm:"):
            assert r["split"] == "train"
        if r["split"] == "test":
            assert r["subject"] in parts["test"]
        truth = json.loads((tmp_path / r["truth"]).read_text())
        assert truth["grades"] == {"left": int(r["left"]), "right": int(r["right"])}
        assert truth["subject"] == r["subject"]


def test_shape_model_keeps_the_joints_congruent(atlas_dir):
    from sirad_viewer.phantom.ssm import build_shape_model

    at = A.load_atlas(atlas_dir)
    model = build_shape_model(at, at.subjects[6:])
    shapes = [model.sample(s)[0] for s in range(3)]
    for sh in shapes:
        lm = A.landmarks(sh)
        for side in ("left", "right"):
            assert len(lm.joints[side].hip_idx) > 60  # the hip bone still touches the sacrum
    assert not np.allclose(shapes[0].verts["sacrum"], shapes[1].verts["sacrum"])


def test_cli_writes_an_atlas_phantom(atlas_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "phantom", "--anatomy", "atlas", "--atlas-dir",
                        atlas_dir, "--subject", "ssm:3", "--left", "2", "--right", "0", "--crop", "sij",
                        "--max-voxels", "200000", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["grades"] == {"left": 2, "right": 0} and truth["subject"] == "ssm:3"
    assert (tmp_path / "ct.nii.gz").exists() and (tmp_path / "labels.nii.gz").exists()
    bad = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "phantom", "--anatomy", "atlas", "--atlas-dir",
                          atlas_dir, "--subject", "999", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "999" in bad.stderr


def test_draw_nuisance_refuses_unknown_site():
    with pytest.raises(ValueError, match="atlas-A"):
        draw_nuisance(0, "nowhere")
