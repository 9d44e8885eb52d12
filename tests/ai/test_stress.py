"""Stress sweep: each nuisance does what it says, the table counts right, the sweep runs end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sirad_viewer.ai import stress as ST
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import Volume


def _cond(kind, value=0.0, axis=""):
    return ST.Condition(f"{kind} {value}", kind, value, axis)


def _blank(shape=(24, 48, 48), sp=(1.0, 0.5, 0.5), fill=-1000.0):
    return Volume(np.full(shape, fill, np.float32), geo.make_affine([0, 0, 0], np.eye(3)[::-1], sp))


@pytest.mark.parametrize("fwhm", [0.75, 1.75])
def test_blur_is_in_plane_with_the_stated_fwhm(fwhm):
    vol = _blank()
    vol.array[12, 24, 24] = 1000.0
    out = ST.perturb(vol, _cond("blur", fwhm)).array
    assert out[11].max() == pytest.approx(-1000.0) and out[13].max() == pytest.approx(-1000.0)  # not across slices
    w = out[12] + 1000.0
    cols = np.arange(48) * 0.5
    prof = w.sum(axis=0)
    mean = (prof * cols).sum() / prof.sum()
    sd = np.sqrt((prof * (cols - mean) ** 2).sum() / prof.sum())
    assert sd * 2.3548 == pytest.approx(fwhm, rel=0.1)


def test_thick_slices_keep_the_world_and_average():
    vol = _blank(shape=(31, 8, 8), sp=(1.0, 1.0, 1.0))
    z = np.arange(31, dtype=np.float32)
    vol.array[:] = z[:, None, None] * 10.0  # HU = 10 x z(mm): linear, so averaging keeps it
    vol.array[15] += 300.0  # one thin bright slice: 3 mm slabs spread it over their thickness
    out = ST.perturb(vol, _cond("slices", 3.0))
    assert out.spacing[0] == pytest.approx(3.0) and out.shape[0] == 11
    zs = out.index_to_world(np.stack([np.arange(11), np.zeros(11), np.zeros(11)], 1))[:, 2]
    np.testing.assert_allclose(zs, np.arange(11) * 3.0)
    ramp = out.array[:, 0, 0] - zs * 10.0
    assert ramp[5] == pytest.approx(100.0, abs=1.0)  # 300 HU over a 3 mm slab
    assert np.abs(np.delete(ramp, [4, 5, 6])[1:-1]).max() < 1.0


def test_rotation_turns_the_world_not_the_voxels():
    vol = _blank()
    out = ST.perturb(vol, _cond("rotate", 15.0, "z"))
    assert out.array is vol.array
    c = vol.center_world()
    p = vol.index_to_world([3, 10, 40]) - c
    q = out.index_to_world([3, 10, 40]) - c
    assert np.linalg.norm(p) == pytest.approx(np.linalg.norm(q))
    assert np.degrees(np.arccos(p[:2] @ q[:2] / np.linalg.norm(p[:2]) / np.linalg.norm(q[:2]))) == pytest.approx(15.0)


def test_offset_and_double_noise(small_phantom):
    vol = small_phantom(0, 0, seed=5, matrix=96).volume
    assert float((ST.perturb(vol, _cond("offset", -50.0)).array - vol.array).mean()) == pytest.approx(-50.0)
    sd0 = ST.estimate_noise_hu(vol)
    assert sd0 > 3.0
    sd2 = ST.estimate_noise_hu(ST.perturb(vol, _cond("noise", 2.0)))
    assert sd2 / sd0 == pytest.approx(2.0, rel=0.2)


def test_summary_counts_changes_against_the_baseline():
    preds = []
    base = {0: 0, 1: 1, 2: 2, 3: 4}
    moved = {0: 1, 1: 3, 2: 2, 3: 3}  # +1, +2 (and 0-1 -> 2-3), 0, -1 (4 -> 2-3)
    for j in range(4):
        preds.append({"case": f"c{j}", "side": "left", "group": "held-out" if j < 2 else "seen",
                      "condition": "baseline", "truth": base[j], "grade": base[j]})
        preds.append({"case": f"c{j}", "side": "left", "group": "held-out" if j < 2 else "seen",
                      "condition": "blur", "truth": base[j], "grade": moved[j]})
    s = ST.summarise(preds)
    assert s["baseline"]["all"]["within_one_step"] == 1.0 and s["baseline"]["all"]["accuracy"] == 1.0
    b = s["blur"]
    assert b["all"]["joints"] == 4
    assert b["all"]["within_one_step"] == 0.75 and b["all"]["category3_kept"] == 0.5 and b["all"]["unchanged"] == 0.25
    assert b["held-out"]["within_one_step"] == 0.5 and b["seen"]["within_one_step"] == 1.0
    md = ST.summary_markdown(s, {"name": "m", "version": "1"})
    assert "below target" in md and "| blur | held-out | 2 |" in md


@pytest.mark.slow  # two full pipeline runs (about 10 s each on two busy cores)
def test_sweep_end_to_end_on_a_small_phantom(tmp_path, small_phantom):
    from sirad_viewer.ai.pipeline import Grader
    from sirad_viewer.phantom import write_phantom

    files = write_phantom(small_phantom(1, 3, seed=7, matrix=96), tmp_path / "case")
    rel = lambda p: str(__import__("pathlib").Path(p).relative_to(tmp_path))  # noqa: E731
    (tmp_path / "DATA.csv").write_text("image,left,right,site,split,subject\n"
                                       f"{rel(files['ct'])},1,3,phantom-A,test,s99\n")
    doc = ST.stress_sweep(tmp_path / "DATA.csv", tmp_path / "out", conditions=[_cond("offset", 50.0)],
                          grader=Grader(device="cpu"), progress=False)
    assert not doc["problems"]
    assert set(doc["summary"]) == {"baseline", "offset 50.0"}
    m = doc["summary"]["offset 50.0"]
    assert m["all"]["joints"] == 2 and m["held-out"]["joints"] == 2  # s99 is in no train/val row
    assert doc["summary"]["baseline"]["all"]["within_one_step"] == 1.0
    saved = json.loads((tmp_path / "out" / "stress.json").read_text())
    assert saved["summary"] == doc["summary"]
    assert "| offset 50.0 | held-out | 2 |" in (tmp_path / "out" / "stress.md").read_text()
