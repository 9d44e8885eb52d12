"""The segmenter's 2 mm second stage: its box, where it acts, the lumbar limit, its weights check (small and fast)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from sirad_viewer.ai import grid as G
from sirad_viewer.ai import segrefine as SR
from sirad_viewer.ai.segnet import OTHER_BONE, SACRUM, CoarseSegmentation
from sirad_viewer.imaging.volume import Volume


def test_box_holds_the_sacrum_with_its_margins_and_ignores_specks():
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[10:20, 12:20, 14:26] = SACRUM  # 40 x 32 x 48 mm (z, y, x) on a 4 mm grid
    lab[35, 35, 35] = SACRUM  # a speck far away must not stretch the box
    aff = G.grid_affine((-80.0, -80.0, -80.0), 4.0)
    fa, shape = SR.refine_box(lab, aff)
    assert all(n % 8 == 0 for n in shape)
    assert np.allclose(G.geo.affine_spacing(fa), 2.0)
    lo = G.geo.index_to_world(fa, np.zeros((1, 3)))[0]
    hi = G.geo.index_to_world(fa, np.asarray(shape, float)[None] - 1)[0]
    s_lo = G.geo.index_to_world(aff, np.array([[10.0, 12, 14]]))[0] - 2
    s_hi = G.geo.index_to_world(aff, np.array([[19.0, 19, 25]]))[0] + 2
    margin = np.asarray(SR.MARGIN_MM)[::-1]  # (x, y, z)
    # voxel centres: the box's edges lie half a voxel (1 mm) further out
    assert (lo - 1 <= s_lo - margin + 1e-6).all() and (hi + 1 >= s_hi + margin - 1e-6).all()
    assert (hi - lo < (s_hi - s_lo) + 2 * margin + 16).all()  # padded to a multiple of 8 voxels, no more
    assert SR.refine_box(np.zeros_like(lab), aff) is None


class _AlwaysSacrum(torch.nn.Module):
    """A stand-in second stage that calls every voxel sacrum."""

    def forward(self, x):
        out = torch.full((x.shape[0], 5) + tuple(x.shape[2:]), -10.0)
        out[:, SACRUM] = 10.0
        return out


def _case():
    """A 1 mm CT with a bone slab, and 4 mm first-stage probabilities: sacrum in the middle, other bone around."""
    ct = np.full((96, 96, 160), -1000.0, np.float32)
    ct[22:70, 32:64, 12:148] = 400.0  # bone, inside the first stage's bone
    vol = Volume(array=ct, affine=G.grid_affine((-80.0, -48.0, -48.0), 1.0))
    aff = G.grid_affine((-82.0, -50.0, -50.0), 4.0)
    prob = np.zeros((5, 26, 26, 42), np.float32)
    prob[0] = 1.0
    bone = np.zeros(prob.shape[1:], bool)
    bone[5:19, 8:17, 3:38] = True
    sac = np.zeros_like(bone)
    sac[9:15, 10:15, 17:25] = True
    prob[:, bone] = 0.0
    prob[OTHER_BONE][bone & ~sac] = 1.0
    prob[SACRUM][sac] = 1.0
    return vol, prob, aff


def test_second_stage_acts_only_inside_its_box_and_never_moves_the_4mm_labels():
    vol, prob, aff = _case()
    first = CoarseSegmentation(probabilities=prob.copy(), affine=aff, volume=vol)
    both = CoarseSegmentation(probabilities=prob.copy(), affine=aff, volume=vol, refiner=_AlwaysSacrum())
    assert (first.coarse_labels == both.coarse_labels).all()
    a, b = first.labels, both.labels
    fp, fa = both.fine
    idx = np.argwhere(np.ones(vol.shape, bool))
    f = G.geo.world_to_index(fa, vol.index_to_world(idx))
    inside = ((f >= 0) & (f <= np.asarray(fp.shape[1:]) - 1)).all(axis=1).reshape(vol.shape)
    assert (a[~inside] == b[~inside]).all()
    bone_in = inside & (vol.array > 140)
    assert bone_in.any() and (b[bone_in] == SACRUM).all()  # the second stage decides inside its box
    assert (a[bone_in] == OTHER_BONE).any()  # where the first stage alone said other bone


def test_second_stage_keeps_the_lumbar_limit():
    vol, prob, aff = _case()
    seg = CoarseSegmentation(probabilities=prob, affine=aff, volume=vol, refiner=_AlwaysSacrum())
    z0 = 10.0
    seg.limit_sacrum(np.array([0.0, 0.0, z0]), np.array([0.0, 0.0, 1.0]))
    z = vol.index_to_world(np.argwhere(seg.labels == SACRUM))[:, 2]
    assert len(z) and z.max() <= z0 + 1.0
    assert (seg.labels == OTHER_BONE).any()


def test_second_stage_weights_must_match_their_sha256(tmp_path):
    from sirad_viewer.ai.bundle import BundleError, load_bundle
    from sirad_viewer.ai.pipeline import default_models_dir

    src = default_models_dir() / "pelvis-unet-demo"
    if "refine" not in json.loads((src / "metadata.json").read_text()):
        pytest.skip("the installed segmenter has no second stage")
    dst = tmp_path / "seg"
    shutil.copytree(src, dst)
    assert SR.load_refiner(load_bundle(dst)) is not None
    SR._NETS.clear()
    w = dst / SR.REFINE_FILE
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        SR.load_refiner(load_bundle(dst))
