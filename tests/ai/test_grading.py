"""Grading plumbing with tiny random networks: crops, mirroring, heatmap mapping, Grad-CAM, device policy."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.ai import grading as GR
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import Volume


def _spec(size=24, sp=2.0, mirror=True):
    return GR.CropSpec(np.full(3, sp), np.full(3, size, int), (-200.0, 1500.0), mirror)


def _stored_differently(vol: Volume, perm, flip) -> Volume:
    arr = np.transpose(vol.array, perm)
    axes = tuple(i for i, f in enumerate(flip) if f)
    if axes:
        arr = np.flip(arr, axis=axes)
    return vol.with_array(np.ascontiguousarray(arr), geo.permute_affine(vol.affine, vol.shape, perm, flip))


@pytest.fixture(scope="module")
def ct(small_phantom):
    return small_phantom(0, 4, seed=3, matrix=96).volume


def test_patient_rule_and_probability():
    assert GR.patient_rule(2, 2) and GR.patient_rule(3, 0) and GR.patient_rule(0, 4)
    assert not GR.patient_rule(1, 2) and not GR.patient_rule(1, 1) and not GR.patient_rule(0, 2)
    one = np.eye(5)
    for a in range(5):
        for b in range(5):
            assert GR.patient_probability(one[a], one[b]) == float(GR.patient_rule(a, b))
    p = np.array([0.5, 0, 0.5, 0, 0])  # grade 0 or 2, each side independently
    assert GR.patient_probability(p, p) == pytest.approx(0.25)  # positive only when both are 2


def test_groups_sum_grade_probabilities():
    p = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    np.testing.assert_allclose(GR.group_probabilities(p), [0.3, 0.45, 0.25])
    np.testing.assert_allclose(GR.group_probabilities(p, [[0], [1, 2, 3, 4]]), [0.1, 0.9])


def test_temperature_scaling_softens_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    logits = rng.normal(0, 1, (400, 5))
    logits[np.arange(400), y] += 1.5  # informative ...
    logits *= 6.0  # ... but far too confident
    t = GR.fit_temperature(logits, y)
    assert t > 2.0
    nll = lambda tt: -np.mean(np.log(GR.softmax(logits, tt)[np.arange(400), y]))  # noqa: E731
    assert nll(t) < nll(1.0) - 0.3


@pytest.mark.parametrize("perm,flip", [((0, 2, 1), (False, True, False)), ((2, 1, 0), (True, False, True)),
                                       ((0, 1, 2), (True, True, True))])
def test_crops_do_not_depend_on_how_the_ct_is_stored(ct, perm, flip):
    spec = _spec()
    c = ct.center_world() + np.array([40.0, 10.0, 5.0])
    other = _stored_differently(ct, perm, flip)
    for side in ("left", "right"):
        a = GR.extract_crop(ct, c, side, spec)
        b = GR.extract_crop(other, c, side, spec)
        np.testing.assert_allclose(a, b, atol=1e-2)


def test_crop_survives_resampling(ct):
    spec = _spec()
    c = ct.center_world() + np.array([40.0, 10.0, 5.0])
    fine = ct.resampled(ct.spacing * np.array([0.5, 0.8, 0.8]), order=1)
    a, b = GR.extract_crop(ct, c, "right", spec), GR.extract_crop(fine, c, "right", spec)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97


def test_left_crop_is_the_mirror_image_of_the_right(ct):
    # a CT mirrored left-right about x = c: the left joint there must read as the right joint here
    spec = _spec()
    c = ct.center_world()
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[0, 3] = 2 * c[0]
    flipped = ct.with_array(ct.array, mirror @ ct.affine)
    p = c + np.array([-45.0, 12.0, 3.0])
    p_m = p * np.array([-1, 1, 1]) + np.array([2 * c[0], 0, 0])
    np.testing.assert_allclose(GR.extract_crop(ct, p, "right", spec), GR.extract_crop(flipped, p_m, "left", spec), atol=1e-2)


@pytest.mark.parametrize("side", ["left", "right"])
def test_heatmap_maps_back_to_the_same_world_point(ct, side):
    spec = _spec(size=24, sp=2.0)
    centre = ct.center_world() + np.array([30.0, -5.0, 8.0])
    cam = np.zeros(tuple(spec.size), np.float32)
    k = np.array([6, 15, 4])  # an off-centre crop voxel
    cam[tuple(k)] = 1.0
    from scipy import ndimage

    cam = ndimage.gaussian_filter(cam, 1.5)
    cam /= cam.max()
    pts = spec.points(centre, side)
    expected = pts[tuple(k)]
    for vol in (ct, _stored_differently(ct, (2, 0, 1), (True, False, True))):
        hm = GR.cam_to_ct(cam, vol, centre, side, spec)
        assert hm.block.max() == pytest.approx(1.0)
        peak = vol.index_to_world(hm.peak_index())
        assert np.linalg.norm(peak - expected) < 1.5 * max(vol.spacing)
        full = hm.full()
        assert full.shape == vol.shape and full.max() == pytest.approx(1.0)


def test_heatmap_is_limited_to_the_region(ct):
    from sirad_viewer.ai.localise import JointBox

    spec = _spec(size=24, sp=2.0)
    centre = ct.center_world()
    box = JointBox("right", centre, np.eye(3), np.array([10.0, 10.0, 10.0]), 1)
    hm = GR.cam_to_ct(np.ones(tuple(spec.size), np.float32), ct, centre, "right", spec, box)
    idx = np.argwhere(hm.block > 0) + hm.offset
    assert len(idx) and box.contains(ct.index_to_world(idx)).all()


def _tiny_densenet():
    from sirad_viewer.ai.bundle import build_network

    return build_network({"type": "densenet", "config": {"init_features": 4, "growth_rate": 4, "block_config": [2, 2]}},
                         n_classes=5).eval()


def test_gradcam_depends_on_the_weights():
    import torch

    torch.manual_seed(0)
    net = _tiny_densenet()
    x = torch.rand(1, 1, 24, 24, 24)
    cam1, logits = GR.gradcam(net, x, 3)
    assert cam1.shape == (24, 24, 24) and logits.shape == (5,)
    assert 0.0 <= cam1.min() and cam1.max() <= 1.0
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    cam2, _ = GR.gradcam(net, x, 3)
    assert not np.allclose(cam1, cam2, atol=1e-3)


def test_device_policy():
    import torch

    from sirad_viewer.ai.pipeline import DeviceError, _on_device, resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto") in ("cpu", "mps")
        with pytest.raises(DeviceError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")

    def fn(d):
        if d == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return d

    warnings: list[str] = []
    assert _on_device(fn, "cuda", "grade", warnings) == "cpu"
    assert "out of memory" in warnings[0] and "'grade'" in warnings[0]


def _rotated(vol: Volume, axis: str, degrees: float):
    """The same voxels, the patient turned by ``degrees`` about ``axis`` through the volume centre."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
    c = vol.center_world()
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, c - r @ c
    return vol.with_array(vol.array, m @ vol.affine), r


@pytest.mark.parametrize("axis,degrees", [("z", 15.0), ("y", -15.0), ("x", 15.0)])
def test_joint_frame_crop_turns_with_the_pelvis(ct, axis, degrees):
    # a pelvis lying rotated: with the joint box turned with it, the joint-frame crop is the same,
    # the world-frame crop (what the grader used before) is not
    spec = _spec(size=32, sp=1.5)
    frame = GR.CropSpec(spec.spacing_mm, spec.size, spec.window_hu, True, joint_frame=True)
    c0 = ct.center_world()
    rot, r = _rotated(ct, axis, degrees)
    tilt = np.array([[0.0, -0.5, 0.866], [0.0, 0.866, 0.5], [1.0, 0.0, 0.0]])  # long, AP, normal (left: +x lateral)
    for side, off in (("left", [40.0, 10.0, 5.0]), ("right", [-40.0, 10.0, 5.0])):
        axes = tilt * np.array([[1.0], [1.0], [1.0 if side == "left" else -1.0]])
        c = c0 + np.array(off)
        a = GR.normalise(GR.extract_crop(ct, c, side, frame, axes=axes), spec.window_hu)
        b = GR.normalise(GR.extract_crop(rot, r @ (c - c0) + c0, side, frame, axes=axes @ r.T), spec.window_hu)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.95, side
        wa = GR.normalise(GR.extract_crop(ct, c, side, spec), spec.window_hu)
        wb = GR.normalise(GR.extract_crop(rot, r @ (c - c0) + c0, side, spec), spec.window_hu)
        assert np.corrcoef(wa.ravel(), wb.ravel())[0, 1] < 0.9, side


def test_joint_frame_left_crop_is_the_mirror_image_of_the_right(ct):
    # mirrored CT, mirrored box: the left joint there reads exactly as the right joint here
    spec = GR.CropSpec(np.full(3, 2.0), np.full(3, 24, int), (-200.0, 1500.0), True, joint_frame=True)
    c = ct.center_world()
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[0, 3] = 2 * c[0]
    flipped = ct.with_array(ct.array, mirror @ ct.affine)
    p = c + np.array([-45.0, 12.0, 3.0])
    p_m = p * np.array([-1, 1, 1]) + np.array([2 * c[0], 0, 0])
    axes_r = np.array([[0.2, -0.5, 0.84], [0.0, 0.86, 0.51], [-0.98, -0.1, 0.17]])
    axes_r /= np.linalg.norm(axes_r, axis=1, keepdims=True)
    axes_l = axes_r * np.array([-1.0, 1.0, 1.0])  # the mirror image of each axis
    np.testing.assert_allclose(GR.extract_crop(ct, p, "right", spec, axes=axes_r),
                               GR.extract_crop(flipped, p_m, "left", spec, axes=axes_l), atol=1e-2)


@pytest.mark.parametrize("side", ["left", "right"])
def test_joint_frame_heatmap_maps_back_to_the_same_world_point(ct, side):
    spec = GR.CropSpec(np.full(3, 2.0), np.full(3, 24, int), (-200.0, 1500.0), True, joint_frame=True)
    axes = np.array([[0.3, -0.6, 0.74], [0.0, 0.78, 0.62], [0.95, 0.18, -0.24]])
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    centre = ct.center_world() + np.array([30.0, -5.0, 8.0])
    from scipy import ndimage

    cam = np.zeros(tuple(spec.size), np.float32)
    k = np.array([6, 15, 4])
    cam[tuple(k)] = 1.0
    cam = ndimage.gaussian_filter(cam, 1.5)
    cam /= cam.max()
    expected = spec.points(centre, side, axes=axes)[tuple(k)]
    hm = GR.cam_to_ct(cam, ct, centre, side, spec, axes=axes)
    peak = ct.index_to_world(hm.peak_index())
    assert np.linalg.norm(peak - expected) < 1.5 * max(ct.spacing)


def test_bundle_frame_is_read_and_checked():
    meta = {"input": {"spacing_mm": [1, 1, 1], "size": [8, 8, 8], "intensity_window_hu": [0, 1], "mirror_left": True}}
    assert not GR.CropSpec.from_metadata(meta).joint_frame  # older bundles: world axes
    meta["input"]["frame"] = "joint"
    assert GR.CropSpec.from_metadata(meta).joint_frame
    meta["input"]["frame"] = "sideways"
    with pytest.raises(ValueError, match="frame"):
        GR.CropSpec.from_metadata(meta)


def test_bundle_long_axis_and_test_time_turns_are_read_and_checked():
    meta = {"input": {"spacing_mm": [1, 1, 1], "size": [8, 8, 8], "intensity_window_hu": [0, 1], "mirror_left": True,
                      "frame": "joint", "refine_frame": True}}
    spec = GR.CropSpec.from_metadata(meta)
    assert (spec.long_axis, spec.turns) == ("outline", 1)  # bundles before 0.3.0
    meta["input"].update(long_axis="curvature", test_time_turns=4)
    spec = GR.CropSpec.from_metadata(meta)
    assert (spec.long_axis, spec.turns) == ("curvature", 4)
    for key, bad in (("long_axis", "diagonal"), ("test_time_turns", 3)):
        with pytest.raises(ValueError, match=key):
            GR.CropSpec.from_metadata({"input": {**meta["input"], key: bad}})


def test_test_time_turns_average_the_grader_over_in_plane_quarter_turns():
    import torch

    from sirad_viewer.ai.bundle import build_network
    from sirad_viewer.ai.ood import forward_with_features
    from sirad_viewer.ai.pipeline import Grader

    torch.manual_seed(0)
    net = build_network({"type": "densenet", "config": {"init_features": 4, "growth_rate": 4, "block_config": [2]}},
                        n_classes=5).eval()
    g = Grader.__new__(Grader)
    g.device, g._nets = "cpu", {("grading", "cpu"): net}
    g.spec = GR.CropSpec(np.full(3, 2.0), np.full(3, 16, int), (-200.0, 1500.0), True, True, True, "curvature", 4)
    rng = np.random.default_rng(1)
    crops = [rng.normal(300, 400, (16, 16, 16)).astype(np.float32) for _ in range(2)]
    lg, f = g.logits_and_features(crops, [])
    x = np.stack([GR.normalise(c, g.spec.window_hu) for c in crops])[:, None]
    with torch.inference_mode():
        outs = [forward_with_features(net, torch.from_numpy(np.ascontiguousarray(np.rot90(x, k, axes=(2, 3)))))
                for k in range(4)]
    np.testing.assert_allclose(lg, np.mean([o[0].numpy() for o in outs], axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f, np.mean([o[1].numpy() for o in outs], axis=0), rtol=1e-4, atol=1e-5)
    # a crop and its quarter turn in the plane grade the same (up to float rounding)
    lg_turned, _ = g.logits_and_features([np.ascontiguousarray(np.rot90(c, 1, axes=(0, 1))) for c in crops], [])
    np.testing.assert_allclose(lg, lg_turned, rtol=1e-4, atol=1e-5)
    g.spec.turns = 1
    assert not np.allclose(g.logits_and_features(crops, [])[0], lg)  # one pass: not invariant


def test_hu_reference_cancels_a_scanner_offset_and_the_blur_floor_is_read_from_the_bundle():
    rng = np.random.default_rng(2)
    hu = np.where(rng.random((24, 24, 24)) < 0.6, rng.normal(55, 12, (24, 24, 24)),  # muscle
                  np.where(rng.random((24, 24, 24)) < 0.5, rng.normal(-100, 15, (24, 24, 24)),  # fat
                           rng.normal(500, 150, (24, 24, 24)))).astype(np.float32)  # bone
    meta = {"input": {"spacing_mm": [1.5] * 3, "size": [24] * 3, "intensity_window_hu": [-200, 1500], "mirror_left": True,
                      "hu_reference": {"window_hu": [-40, 160], "level_hu": 50, "max_shift_hu": 80}}}
    spec = GR.CropSpec.from_metadata(meta)
    base = GR.model_input(hu, spec)
    for offset in (-50.0, 50.0):
        np.testing.assert_allclose(GR.model_input(hu + offset, spec), base, atol=3.0 / 1700)  # within a 5 HU bin
    plain = GR.CropSpec.from_metadata({"input": {k: v for k, v in meta["input"].items() if k != "hu_reference"}})
    assert np.abs(GR.model_input(hu + 50.0, plain) - GR.model_input(hu, plain)).max() > 0.02  # without it: moved
    assert abs(GR.soft_tissue_level(hu, (-40, 160)) - 55.0) < 5.0
    meta["input"]["pre_blur_fwhm_mm"] = 2.0
    blurred = GR.harmonise(hu, GR.CropSpec.from_metadata(meta))
    assert blurred.std() < 0.8 * GR.harmonise(hu, spec).std()
    with pytest.raises(ValueError, match="hu_reference"):
        GR.CropSpec.from_metadata({"input": {**meta["input"], "hu_reference": {"window_hu": [0]}}})


def test_frame_jitter_moves_and_turns_each_crop_and_is_read_from_the_bundle():
    from scipy import ndimage

    meta = {"input": {"spacing_mm": [1.5] * 3, "size": [16] * 3, "intensity_window_hu": [-200, 1500],
                      "mirror_left": True, "frame": "joint"}}
    spec = GR.CropSpec.from_metadata(meta)
    x = np.random.default_rng(0).normal(size=(2, 1, 16, 16, 16)).astype(np.float32)
    assert GR.frame_jitter(x, spec) is x  # no jitter in the bundle: the crop alone
    meta["input"]["test_time_jitter"] = {"shift_mm": 3.0, "turn_deg": 5.0}
    spec = GR.CropSpec.from_metadata(meta)
    assert spec.jitter == (3.0, 5.0)
    y = GR.frame_jitter(x, spec)
    assert y.shape == (26, 1, 16, 16, 16)
    np.testing.assert_array_equal(y[:2], x)  # perturbation-major: the crop as it is first
    # the first move: -3 mm (2 voxels) along the slice axis
    want = ndimage.shift(x[1, 0], (2.0, 0.0, 0.0), order=1, mode="nearest", prefilter=False)
    np.testing.assert_allclose(y[3, 0], want, atol=1e-5)
    assert all(not np.allclose(y[2 * k:2 * k + 2], x) for k in range(1, 13))
    meta["input"]["test_time_jitter"] = {"shift_mm": 30.0, "turn_deg": 5.0}
    with pytest.raises(ValueError, match="test_time_jitter"):
        GR.CropSpec.from_metadata(meta)
