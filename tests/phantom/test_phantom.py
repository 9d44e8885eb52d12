"""Synthetic phantoms: anatomy, HU, labels, grades and lesions, determinism, writing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sirad_viewer.io import open_volume
from sirad_viewer.phantom import PLANTED_IDENTITY, PhantomSpec, make_phantom, random_spec, write_phantom
from sirad_viewer.phantom.anatomy import LEFT_ILIUM, OTHER_BONE, RIGHT_ILIUM, SACRUM


def lateral_profile(ph, side: str, half_width_mm: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """HU along patient x through the joint centre (world), and the x positions."""
    c = np.array(ph.truth["joints"][side]["center_lps_mm"])
    xs = np.arange(-half_width_mm, half_width_mm, 0.25)
    pts = c[None, :] + np.column_stack([xs, np.zeros_like(xs), np.zeros_like(xs)])
    from scipy import ndimage

    idx = ph.volume.world_to_index(pts).T
    return ndimage.map_coordinates(ph.volume.array.astype(np.float32), idx, order=1), xs


def test_same_spec_same_voxels(small_phantom):
    a = small_phantom(1, 2, seed=3)
    b = make_phantom(a.spec)
    assert np.array_equal(a.volume.array, b.volume.array)
    assert np.array_equal(a.labels, b.labels)


def test_realistic_hu_per_tissue(small_phantom):
    ph = small_phantom(0, 0)
    hu, lab = ph.volume.array, ph.labels
    assert np.percentile(hu, 1) <= -990  # air around the body
    sac = hu[lab == SACRUM]
    assert 150 < np.median(sac) < 450  # trabecular bone
    assert np.percentile(hu[lab > 0], 99) > 1000  # cortex
    soft = hu[(lab == 0) & (hu > -200) & (hu < 200)]
    fat = soft[soft < -30]
    assert fat.size and -140 < np.median(fat) < -60
    assert set(np.unique(lab)) == {0, SACRUM, LEFT_ILIUM, RIGHT_ILIUM, OTHER_BONE}


def test_left_ilium_is_on_the_patients_left(small_phantom):
    ph = small_phantom(0, 0)
    for label, sign in ((LEFT_ILIUM, 1), (RIGHT_ILIUM, -1)):
        idx = np.argwhere(ph.labels == label).mean(axis=0)
        assert np.sign(ph.volume.index_to_world(idx)[0]) == sign
    assert ph.truth["joints"]["left"]["center_lps_mm"][0] > 0 > ph.truth["joints"]["right"]["center_lps_mm"][0]


def test_open_joint_shows_a_gap_and_a_fused_joint_does_not(small_phantom):
    ph = small_phantom(0, 4, seed=1, matrix=256, fov_mm=300.0, slice_thickness_mm=1.0, slice_spacing_mm=1.0)
    open_prof, _ = lateral_profile(ph, "left")
    fused_prof, _ = lateral_profile(ph, "right")
    # grade 0: a soft-tissue dip (joint space) between two bright cortical plates
    assert open_prof.min() < 200 and open_prof.max() > 700
    # grade 4: bone all the way across the old joint line
    assert fused_prof.min() > 150


def test_grades_plant_the_lesions_the_scale_describes(small_phantom):
    kinds = {}
    for g in range(5):
        ph = small_phantom(g, 0, seed=2)
        kinds[g] = [les["kind"] for les in ph.truth["lesions"] if les["side"] == "left"]
        assert ph.truth["grades"] == {"left": g, "right": 0}
        assert [les for les in ph.truth["lesions"] if les["side"] == "right"] == []
    assert kinds[0] == []
    assert kinds[1] == ["irregularity"]
    assert 2 <= len(kinds[2]) <= 4 and set(kinds[2]) <= {"erosion", "sclerosis"}
    assert kinds[3].count("erosion") >= 5 and "bridge" in kinds[3]
    assert ("widening" in kinds[3]) != ("narrowing" in kinds[3])
    assert "fusion" in kinds[4]


def test_lesions_sit_on_the_joint(small_phantom):
    ph = small_phantom(3, 2, seed=4)
    for les in ph.truth["lesions"]:
        c = np.array(les["center_lps_mm"])
        joint = np.array(ph.truth["joints"][les["side"]]["center_lps_mm"])
        assert np.linalg.norm(c - joint) < 60
        assert np.sign(c[0]) == (1 if les["side"] == "left" else -1)


def test_erosion_replaces_bone_with_soft_tissue(small_phantom):
    ph = small_phantom(3, 0, seed=5, matrix=256, fov_mm=300.0, slice_thickness_mm=1.0, slice_spacing_mm=1.0)
    big = max((les for les in ph.truth["lesions"] if les["kind"] == "erosion"), key=lambda e: e["radius_mm"])
    idx = np.round(ph.volume.world_to_index(big["center_lps_mm"])).astype(int)
    assert ph.labels[tuple(idx)] == 0
    assert ph.volume.array[tuple(idx)] < 500


def test_varied_specs_cover_the_requested_ranges():
    specs = [random_spec(s) for s in range(40)] + [random_spec(s, site="phantom-B") for s in range(20)]
    th = np.array([s.slice_thickness_mm for s in specs])
    sp = np.array([s.slice_spacing_mm for s in specs])
    assert th.min() >= 0.6 and th.max() <= 3.0 and sp.min() >= 0.6 and sp.max() <= 3.0
    assert np.ptp(th) > 1.0
    assert max(abs(a) for s in specs for a in s.rotation_deg) <= 4.0
    assert len({s.table_offset_mm for s in specs}) == len(specs)
    assert all(320 <= s.fov_mm <= 420 for s in specs)  # the whole pelvis, whatever the matrix
    assert all(320 <= random_spec(s, matrix=96).fov_mm <= 420 for s in range(5))
    with pytest.raises(ValueError):
        PhantomSpec(left_grade=5)


def test_phantom_written_as_dicom_loads_back_with_planted_identity(tmp_path, small_phantom):
    ph = small_phantom(2, 3, seed=6)
    files = write_phantom(ph, tmp_path, fmt="dicom", compression="rle")
    vol = open_volume(files["ct"])
    assert np.array_equal(vol.array, ph.volume.array)
    assert np.allclose(vol.affine, ph.volume.affine, atol=1e-3)
    assert vol.metadata.patient_name == PLANTED_IDENTITY["patient_name"]
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["grades"] == {"left": 2, "right": 3}
    labels = open_volume(files["labels"])
    assert np.array_equal(labels.array, ph.labels)


def test_phantom_nifti_round_trip(tmp_path, small_phantom):
    ph = small_phantom(1, 1)
    files = write_phantom(ph, tmp_path, fmt="nifti")
    vol = open_volume(files["ct"])
    assert np.array_equal(vol.array, ph.volume.array)
    assert np.allclose(vol.affine, ph.volume.affine, atol=1e-4)
