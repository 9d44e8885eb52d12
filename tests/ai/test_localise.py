"""The joint frame refined from the CT at full resolution (issue #10 item 3)."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.ai.localise import JointBox, refine_joint
from sirad_viewer.imaging.volume import Volume


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _joint_ct(centre, axes, *, spacing=1.0, n=84, seed=0, patch_u=0.0):
    """Two bones meeting along a tilted plane: cortices either side of a 2.5 mm joint space, over an
    elliptic auricular patch 60 x 34 mm (long axis ``axes[0]``); soft tissue outside; CT noise."""
    rng = np.random.default_rng(seed)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = np.asarray(centre) - spacing * (n - 1) / 2.0
    k = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * spacing
    ax = np.asarray(axes, np.float32)
    u, v, w = (ax[r, 0] * k[:, None, None] + ax[r, 1] * k[None, :, None] + ax[r, 2] * k[None, None, :] for r in range(3))
    a = np.abs(w)
    hu = np.where(a < 1.25, 30.0, np.where(a < 3.0, 1300.0, np.where(a < 22.0, 280.0, 20.0))).astype(np.float32)
    patch = ((u - patch_u) / 30.0) ** 2 + (v / 17.0) ** 2 <= 1.0
    hu[~patch & (a < 22.0)] = 20.0
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    return Volume(hu, aff)


def _angle(a, b):
    return float(np.degrees(np.arccos(np.clip(abs(float(np.dot(a, b))), 0.0, 1.0))))


@pytest.mark.parametrize("side", ["left", "right"])
def test_refined_box_finds_the_joint_plane_centre_and_long_axis(side):
    centre = np.array([10.0, -20.0, 35.0])
    normal = _unit([0.9, 0.25, -0.2]) * (1 if side == "left" else -1)
    long = _unit(np.cross(normal, [0.0, 1.0, 0.0]))
    long = long if long[2] > 0 else -long
    ap = np.cross(normal, long)
    ap = ap if ap[1] > 0 else -ap
    truth = np.stack([long, ap, normal])
    vol = _joint_ct(centre, truth)
    # the coarse box a 4 mm segmentation gives: 3 mm off the plane, 4 mm along it, axes 8 degrees off
    from scipy.spatial.transform import Rotation

    tilt = Rotation.from_rotvec(np.radians(8.0) * _unit([0.3, -0.5, 0.8])).as_matrix()
    coarse = JointBox(side, centre + 3.0 * normal + 4.0 * long - 2.0 * ap, truth @ tilt.T, np.array([60.0, 40.0, 20.0]), 99)
    box, why = refine_joint(vol, coarse)
    assert why is None
    assert abs(float((box.center_lps_mm - centre) @ normal)) < 0.2  # on the joint space, sub-millimetre
    assert np.linalg.norm(box.center_lps_mm - centre) < 1.0  # in the middle of the auricular patch
    assert _angle(box.axes_lps[2], normal) < 0.5
    assert _angle(box.axes_lps[0], long) < 2.0
    assert box.axes_lps[2] @ normal > 0 and box.axes_lps[0] @ long > 0  # orientation kept (lateral, superior)
    np.testing.assert_allclose(box.size_mm, coarse.size_mm)


@pytest.mark.parametrize("patch_u", [24.0, 50.0])
def test_curvature_frame_stays_on_the_segmentations_joint_centre(patch_u):
    """The joint space visible only off the coarse centre (the rest ankylosed): the refined centre
    used to walk along the surface to that patch (up to 50 mm from the true joint centre on held-out
    phantoms); now it stays at the coarse centre, on the fitted plane (or the coarse box is kept where
    no joint space reaches near the coarse centre)."""
    centre = np.array([10.0, -20.0, 35.0])
    normal = _unit([0.9, 0.25, -0.2])
    long = _unit(np.cross(normal, [0.0, 1.0, 0.0]))
    long = long if long[2] > 0 else -long
    ap = np.cross(normal, long)
    truth = np.stack([long, ap, normal])
    vol = _joint_ct(centre, truth, patch_u=patch_u)
    coarse = JointBox("left", centre + 2.0 * normal, truth, np.array([60.0, 40.0, 20.0]), 99)
    box, why = refine_joint(vol, coarse, long_axis="curvature")
    d = box.center_lps_mm - centre
    assert np.hypot(d @ long, d @ ap) < 1.0, (d @ long, d @ ap)
    if patch_u < 40.0:
        assert why is None and abs(float(d @ normal)) < 0.3  # on the joint plane fitted to the patch
    else:
        assert box is coarse and "within" in why
    # the outline frame (the bundles before 0.3.0 were trained on it) is unchanged: it follows the patch
    box, why = refine_joint(vol, coarse, long_axis="outline")
    assert why is None and (box.center_lps_mm - centre) @ long > 15.0


def test_without_a_visible_joint_space_the_coarse_box_stays_and_says_why():
    centre = np.zeros(3)
    axes = np.eye(3)[[2, 1, 0]]
    vol = Volume(np.full((60, 60, 60), 300.0, np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))  # solid bone: ankylosis
    coarse = JointBox("left", centre + 30.0, axes, np.array([50.0, 30.0, 20.0]), 10)
    box, why = refine_joint(vol, coarse)
    assert box is coarse and "not visible" in why


def _bent_joint_ct(centre, axes, bend, *, n=72, seed=0):
    """A joint whose surface bends along the in-plane direction ``bend`` (a parabola, 2 mm deep 20 mm out)
    over a nearly round auricular patch (radius 25 / 24 mm), so that its outline hardly fixes an axis."""
    rng = np.random.default_rng(seed)
    aff = np.eye(4)
    aff[:3, 3] = np.asarray(centre) - (n - 1) / 2.0
    k = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
    ax = np.asarray(axes, np.float32)
    u, v, w = (ax[r, 0] * k[:, None, None] + ax[r, 1] * k[None, :, None] + ax[r, 2] * k[None, None, :] for r in range(3))
    s = bend[0] * u + bend[1] * v
    a = np.abs(w - s * s / 200.0)
    hu = np.where(a < 1.25, 30.0, np.where(a < 3.0, 1300.0, np.where(a < 20.0, 280.0, 20.0))).astype(np.float32)
    hu[((u / 25.0) ** 2 + (v / 24.0) ** 2 > 1.0) & (a < 20.0)] = 20.0
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    return Volume(hu, aff)


@pytest.mark.parametrize("side", ["left", "right"])
def test_curvature_axis_follows_the_joint_surface_bend_and_keeps_its_sign_when_turned(side):
    # issue #10 item 3: where the auricular surface is nearly round in its plane the outline fixes the long
    # axis only to degrees; the direction of its largest bend fixes it (tools/rotation_check.py: crops >= 0.97)
    from scipy.spatial.transform import Rotation

    from sirad_viewer.ai import localise as L

    normal = np.array([1.0, 0.0, 0.0]) * (1 if side == "left" else -1)
    truth = np.stack([np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0]), normal])  # superior, posterior, lateral
    bend2 = np.array([np.cos(np.radians(60.0)), np.sin(np.radians(60.0))])  # 60 degrees from superior to posterior
    bend = bend2[0] * truth[0] + bend2[1] * truth[1]
    found = []
    for turn in (0.0, 12.0):
        r = Rotation.from_rotvec(np.radians(turn) * _unit([0.2, 0.5, 0.8])).as_matrix()
        axes = truth @ r.T
        vol = _bent_joint_ct(np.zeros(3), axes, bend2)
        coarse = JointBox(side, 2.0 * axes[2], axes, np.array([60.0, 40.0, 20.0]), 99)
        box, why = refine_joint(vol, coarse, long_axis="curvature")
        assert why is None
        assert _angle(box.axes_lps[0], r @ bend) < 1.0, turn
        assert _angle(box.axes_lps[2], r @ normal) < 0.5
        phi = np.radians(L.CURVATURE_REFERENCE_DEG)
        assert box.axes_lps[0] @ (np.cos(phi) * axes[0] + np.sin(phi) * axes[1]) > 0  # signed by the reference
        # right-handed on the right, the mirror image on the left (as the crop's mirror expects)
        assert np.linalg.det(box.axes_lps) * (1 if side == "right" else -1) > 0.99
        found.append(box.axes_lps @ r)  # back in the unturned pose
    np.testing.assert_allclose(found[0], found[1], atol=0.02)


def test_unknown_long_axis_is_refused():
    with pytest.raises(ValueError, match="long_axis"):
        refine_joint(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4)),
                     JointBox("left", np.zeros(3), np.eye(3), np.ones(3), 1), long_axis="diagonal")


def _pelvis_joints_ct(centre, frames, *, spacing=1.5, shape=(110, 64, 64), seed=0):
    """Two joints in one CT (``frames``: side -> (joint centre, axes rows long/ap/normal)), each a joint space
    between two cortices over its own auricular patch 60 x 34 mm; soft tissue elsewhere."""
    rng = np.random.default_rng(seed)
    sh = np.asarray(shape)
    aff = np.diag([spacing] * 3 + [1.0])
    aff[:3, 3] = np.asarray(centre) - spacing * (sh - 1) / 2.0
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    p = idx * spacing + aff[:3, 3]
    hu = np.full(len(p), 20.0, np.float32)
    for c, ax in frames.values():
        d = (p - c) @ np.asarray(ax).T
        a = np.abs(d[:, 2])
        inside = ((d[:, 0] / 30.0) ** 2 + (d[:, 1] / 17.0) ** 2 <= 1.0) & (a < 22.0)
        hu[inside] = np.where(a[inside] < 1.25, 30.0, np.where(a[inside] < 3.0, 1300.0, 280.0))
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    return Volume(hu.reshape(shape), aff)


def _pelvis_frames(turn):
    """Left and right joint frames of a pelvis: planes opening 25 degrees from sagittal towards anterior,
    the auricular surface's long axis tilted 20 degrees forward; ``turn`` (3x3) turns the whole pelvis."""
    from scipy.spatial.transform import Rotation

    frames = {}
    for side, sx in (("left", 1.0), ("right", -1.0)):
        normal = Rotation.from_euler("z", -sx * 25.0, degrees=True).apply([sx, 0.0, 0.0])  # lateral, turned anterior
        long = Rotation.from_rotvec(np.radians(20.0) * normal).apply([0.0, 0.0, 1.0])
        long = _unit(long - (long @ normal) * normal)
        ap = _unit(np.cross(normal, long))
        ap = ap if ap[1] > 0 else -ap
        frames[side] = (turn @ np.array([sx * 45.0, 0.0, 0.0]), np.stack([long, ap, normal]) @ turn.T)
    return frames


def test_planes_axis_is_where_the_two_joint_planes_meet_and_turns_with_the_pelvis():
    # issue #10 item 3: the segmentation's long axis (the sacral axis projected) turns by 1-5 degrees when the
    # pelvis turns by 15; the line where the two refined joint planes meet is fixed by the CT to tenths of a degree
    # (tools/rotation_check.py on a held-out atlas phantom: crops correlate 0.987-0.999 against 0.71-0.99)
    from scipy.spatial.transform import Rotation

    from sirad_viewer.ai.localise import Localisation, refine_joints

    found = []
    for turn_deg in (0.0, 15.0):
        turn = Rotation.from_rotvec(np.radians(turn_deg) * _unit([0.3, 0.2, 0.9])).as_matrix()
        frames = _pelvis_frames(turn)
        vol = _pelvis_joints_ct(np.zeros(3), frames)
        boxes = {}
        for k, (side, (c, ax)) in enumerate(frames.items()):  # coarse boxes: 2-4 mm off, axes 5-7 degrees off
            off = Rotation.from_rotvec(np.radians(5.0 + 2 * k) * _unit([0.2 - k, 0.9, 0.3])).as_matrix()
            boxes[side] = JointBox(side, c + 2.0 * ax[2] + (3.0 - k) * ax[0], ax @ off.T, np.array([60.0, 40.0, 20.0]), 99)
        loc = refine_joints(vol, Localisation(boxes, (np.zeros(3), np.zeros(3)), []), long_axis="planes")
        assert loc.warnings == []
        line = _unit(np.cross(frames["left"][1][2], frames["right"][1][2]))
        for side, (c, ax) in frames.items():
            b = loc.joints[side]
            assert _angle(b.axes_lps[2], ax[2]) < 0.5, side
            assert _angle(b.axes_lps[0], line) < 0.5, side  # in both planes: the line where they meet
            assert b.axes_lps[0] @ ax[0] > 0 and b.axes_lps[1] @ ax[1] > 0  # superior, posterior kept
            assert abs(np.linalg.det(b.axes_lps)) > 0.999
            found.append(b.axes_lps @ turn)  # back in the unturned pose
    np.testing.assert_allclose(found[0], found[2], atol=0.01)
    np.testing.assert_allclose(found[1], found[3], atol=0.01)


def test_planes_axis_falls_back_to_the_segmentations_when_a_joint_space_is_not_seen():
    from scipy.spatial.transform import Rotation

    from sirad_viewer.ai.localise import Localisation, refine_joints

    frames = _pelvis_frames(np.eye(3))
    vol = _pelvis_joints_ct(np.zeros(3), {"left": frames["left"]})  # the right joint ankylosed: no joint space
    off = Rotation.from_rotvec(np.radians(6.0) * _unit([0.1, 0.9, 0.3])).as_matrix()
    boxes = {s: JointBox(s, c, ax @ off.T, np.array([60.0, 40.0, 20.0]), 99) for s, (c, ax) in frames.items()}
    loc = refine_joints(vol, Localisation(boxes, (np.zeros(3), np.zeros(3)), []), long_axis="planes")
    assert any("segmentation" in w and "not visible" in w for w in loc.warnings)
    assert loc.joints["right"] is boxes["right"]
    # the refined left joint keeps the segmentation's long axis, projected into its refined plane
    b = loc.joints["left"]
    assert _angle(b.axes_lps[2], frames["left"][1][2]) < 0.5
    proj = _unit(boxes["left"].axes_lps[0] - (boxes["left"].axes_lps[0] @ b.axes_lps[2]) * b.axes_lps[2])
    assert _angle(b.axes_lps[0], proj) < 0.01
