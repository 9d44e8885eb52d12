"""TotalSegmentator as the segmenter: its label map mapped onto ours, then our localisation and grading;
clear, typed refusals when it is not installed, its weights are missing or it would go online.

TotalSegmentator itself is not installed here (it would pull another torch). Its output format is
rebuilt from a phantom's truth labels with the class ids of its own class map (task "total", v2:
wasserth/TotalSegmentator totalsegmentator/map_to_binary.py, class_map["total"]). The error paths
use ``FAKE_TS``: a fake ``totalsegmentator`` package written into a tmp dir, used only to drive OUR
checks (is it importable, are the weight folders there, is its telemetry off, is a download refused).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sirad_viewer.ai import totalseg as TS
from sirad_viewer.ai.segmentation import LEFT_ILIUM, OTHER_BONE, RIGHT_ILIUM, SACRUM, Segmentation
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import Volume

ROOT = Path(__file__).resolve().parents[2]

#: Ids copied from TotalSegmentator's class_map["total"] (v2) for the classes the test writes.
TS_IDS = {"urinary_bladder": 21, "sacrum": 25, "vertebrae_S1": 26, "vertebrae_L5": 27, "vertebrae_L4": 28,
          "femur_left": 75, "femur_right": 76, "hip_left": 77, "hip_right": 78, "iliopsoas_left": 88}


def to_totalseg_ids(truth: np.ndarray, volume: Volume) -> np.ndarray:
    """Our 4-class truth -> TotalSegmentator ids: the sacrum's top as vertebrae_S1 (v2), other bone split
    into femora (lateral, low) and L5/L4 (the rest), two soft-tissue classes in the background."""
    out = np.zeros(truth.shape, np.uint8)
    idx = np.argwhere(truth > 0)
    w = volume.index_to_world(idx)
    t = truth[tuple(idx.T)]
    z_top = w[t == SACRUM, 2].max()
    ids = np.zeros(len(idx), np.uint8)
    ids[t == SACRUM] = np.where(w[t == SACRUM, 2] > z_top - 25.0, TS_IDS["vertebrae_S1"], TS_IDS["sacrum"])
    ids[t == LEFT_ILIUM] = TS_IDS["hip_left"]
    ids[t == RIGHT_ILIUM] = TS_IDS["hip_right"]
    ob = t == OTHER_BONE
    femur = ob & (np.abs(w[:, 0]) > 40.0) & (w[:, 2] < z_top - 60.0)
    ids[femur] = np.where(w[femur, 0] > 0, TS_IDS["femur_left"], TS_IDS["femur_right"])  # LPS: +x = patient left
    spine = ob & ~femur
    ids[spine] = np.where(w[spine, 2] < z_top + 20.0, TS_IDS["vertebrae_L5"], TS_IDS["vertebrae_L4"])
    out[tuple(idx.T)] = ids
    # soft tissue (must become background): a bladder in front of the sacrum, a psoas beside it
    bg = np.argwhere(truth == 0)[::7]
    wb = volume.index_to_world(bg)
    c = volume.index_to_world(np.argwhere(truth == SACRUM)).mean(axis=0)
    out[tuple(bg[np.linalg.norm(wb - (c + [0, -70, -30]), axis=1) < 25].T)] = TS_IDS["urinary_bladder"]
    out[tuple(bg[np.linalg.norm(wb - (c + [60, -40, 40]), axis=1) < 15].T)] = TS_IDS["iliopsoas_left"]
    return out


def write_totalseg_output(ts_ids: np.ndarray, volume: Volume, path: Path) -> Path:
    """As TotalSegmentator writes its ``--ml`` output: one uint8 NIfTI on the input grid (RAS affine)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.transpose(ts_ids, (2, 1, 0)), geo.affine_to_nifti(volume.affine)), str(path))
    return path


@pytest.fixture(scope="module")
def phantom():
    from sirad_viewer.phantom import make_phantom, random_spec

    return make_phantom(random_spec(900_004, left_grade=1, right_grade=3, matrix=128))


def test_class_ids_agree_with_totalsegmentators_class_map():
    for name, i in TS_IDS.items():
        if name in ("urinary_bladder", "iliopsoas_left"):
            assert i not in TS.TOTAL_V2_BONES
        else:
            assert TS.TOTAL_V2_BONES[i] == name
    lut = TS.lookup_table(TS.TOTAL_V2_BONES, TS.TOTAL_V2_MAX_ID)
    assert [lut[i] for i in (25, 26, 27, 28, 75, 76, 77, 78, 21, 88, 117)] == [
        SACRUM, SACRUM, OTHER_BONE, OTHER_BONE, OTHER_BONE, OTHER_BONE, LEFT_ILIUM, RIGHT_ILIUM, 0, 0, 0]


def test_mapping_goes_by_name_so_a_v3_class_map_works_too():
    v3 = {25: "sacrum", 26: "vertebrae_L6", 77: "hip_left", 78: "hip_right", 21: "urinary_bladder"}
    got = TS.map_labels(np.array([[[25, 26, 77, 78, 21, 0]]]), v3)
    assert got.tolist() == [[[SACRUM, OTHER_BONE, LEFT_ILIUM, RIGHT_ILIUM, 0, 0]]]


def test_a_label_outside_task_total_is_refused():
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.map_labels(np.array([[[0, 25, 140]]]), source="seg.nii.gz")
    assert e.value.code == "totalsegmentator_bad_output" and "140" in e.value.message and e.value.path == "seg.nii.gz"


def test_totalsegmentator_output_grades_like_our_truth_labels(phantom, tmp_path):
    """Its multilabel NIfTI, mapped, equals our truth labels; the pipeline grades from it and the joint
    boxes are those localised on the truth labels."""
    import nibabel as nib

    from sirad_viewer.ai.localise import localise
    from sirad_viewer.ai.pipeline import Grader

    vol = phantom.volume
    truth = phantom.labels.array if hasattr(phantom.labels, "array") else phantom.labels
    ts = to_totalseg_ids(truth, vol)
    for name in ("vertebrae_S1", "vertebrae_L5", "vertebrae_L4", "femur_left", "femur_right", "urinary_bladder"):
        assert (ts == TS_IDS[name]).sum() > 100, name  # vertebrae, femora and soft tissue are present
    out = write_totalseg_output(ts, vol, tmp_path / "totalseg_ml.nii.gz")
    calls = []

    def network_from_file(img, **kw):  # stands in for TotalSegmentator's network: its saved output
        calls.append((img.shape, kw))
        return nib.load(str(out))

    seg = TS.TotalSegmentatorSegmenter(runner=network_from_file)
    grader = Grader(segmenter=seg, device="cpu")
    res = grader(vol, heatmaps=False)
    assert calls[0][0] == vol.shape[::-1] and calls[0][1]["fast"] is True
    assert set(calls[0][1]["roi_subset"]) >= {"sacrum", "hip_left", "hip_right"}
    np.testing.assert_array_equal(TS.segmentation_from_image(nib.load(str(out)), vol).labels, truth)
    assert res.segmentation.method == "totalsegmentator"
    assert res.model["segmentation"].startswith("TotalSegmentator")
    ref = localise(truth, vol.affine)
    limited = Segmentation(labels=truth.copy(), volume=vol, midline_x_mm=0.0, sij_z_range_mm=(0.0, 0.0))
    if ref.sacrum_limit is not None:  # the pipeline gives sacrum above the lumbosacral plane to other bone
        limited.limit_sacrum(*ref.sacrum_limit)
    np.testing.assert_array_equal(res.segmentation.labels, limited.labels)
    for side in ("left", "right"):
        np.testing.assert_allclose(res.joints[side].box.center_lps_mm, ref.joints[side].center_lps_mm, atol=1e-6)
        np.testing.assert_allclose(res.joints[side].box.axes_lps, ref.joints[side].axes_lps, atol=1e-6)
        assert 0 <= res.joints[side].grade <= 4 and res.joints[side].ood is not None
    d = res.to_dict()
    assert "ood_flagged" in d and d["model"]["segmentation"].startswith("TotalSegmentator")


def test_a_totalsegmentator_map_without_a_pelvis_gives_no_grade(tmp_path):
    """A head CT: TotalSegmentator finds a skull and a vertebra, no sacrum -> the not-a-pelvis refusal."""
    import nibabel as nib

    from sirad_viewer.ai.pipeline import Grader, NotAPelvisError

    vol = Volume(array=np.full((40, 40, 40), -1000, np.int16),
                 affine=geo.make_affine((0, 0, 0), np.eye(3)[::-1], (3, 3, 3)))
    ts = np.zeros(vol.shape, np.uint8)
    ts[20:35, 8:32, 8:32] = 91  # skull
    ts[5:15, 24:30, 17:23] = 49  # vertebrae_C2
    out = write_totalseg_output(ts, vol, tmp_path / "head.nii.gz")
    grader = Grader(segmenter=TS.TotalSegmentatorSegmenter(runner=lambda img, **kw: nib.load(str(out))), device="cpu")
    with pytest.raises(NotAPelvisError):
        grader(vol, heatmaps=False)


def test_a_label_map_on_another_grid_is_resampled_onto_the_ct(phantom):
    import nibabel as nib

    vol = phantom.volume
    truth = phantom.labels.array if hasattr(phantom.labels, "array") else phantom.labels
    ts = to_totalseg_ids(truth, vol)
    ras = geo.affine_to_nifti(vol.affine)
    img = nib.Nifti1Image(np.transpose(ts, (2, 1, 0))[:, :, ::-1].copy(), ras @ np.diag([1, 1, -1, 1]) @
                          np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -(ts.shape[0] - 1)], [0, 0, 0, 1]]))
    seg = TS.segmentation_from_image(img, vol)  # the same labels, stored with the slice axis flipped
    np.testing.assert_array_equal(seg.labels, truth)


# ---------------------------------------------------------------------------------------------
# Refusals: not installed, weights missing, telemetry on, a download attempted
# ---------------------------------------------------------------------------------------------

FAKE_API = '''
"""FAKE_TS: not TotalSegmentator. A stand-in package used only to test SIRAD's own checks."""
import json, os
import nibabel as nib
from totalsegmentator import libs

def totalsegmentator(input, output=None, ml=False, task="total", fast=False, roi_subset=None, device="gpu",
                     quiet=False, **kw):
    if os.environ.get("FAKE_TS_TRY_DOWNLOAD"):
        libs.download_pretrained_weights(297)
    with open(os.environ["FAKE_TS_CALLS"], "a") as f:
        f.write(json.dumps({"ml": ml, "task": task, "fast": fast, "roi_subset": roi_subset, "device": device,
                            "output": output, "shape": list(input.shape)}) + "\\n")
    print("FAKE_TS prints to stdout like the real one")
    return nib.load(os.environ["FAKE_TS_OUTPUT"])
'''
FAKE_LIBS = '''
"""FAKE_TS: a download function that leaves a marker if it is ever reached."""
import os

def download_url_and_unpack(url, config_dir):
    open(os.environ["FAKE_TS_DOWNLOADED"], "w").write(url)

def download_pretrained_weights(task_id):
    download_url_and_unpack("https://example.invalid/Dataset%d.zip" % task_id, "/nonexistent")
'''
FAKE_MAP = '''
class_map = {"total": {21: "urinary_bladder", 25: "sacrum", 26: "vertebrae_S1", 77: "hip_left", 78: "hip_right"}}
'''


@pytest.fixture
def fake_ts(tmp_path, monkeypatch):
    """FAKE_TS package on sys.path and a TotalSegmentator home in tmp (weights and config added per test)."""
    pkg = tmp_path / "fake_site" / "totalsegmentator"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""FAKE_TS: not TotalSegmentator (tests of SIRAD\'s checks only)."""\n')
    (pkg / "python_api.py").write_text(textwrap.dedent(FAKE_API))
    (pkg / "libs.py").write_text(textwrap.dedent(FAKE_LIBS))
    (pkg / "map_to_binary.py").write_text(textwrap.dedent(FAKE_MAP))
    home = tmp_path / "tshome"
    home.mkdir()
    env = {"TOTALSEG_HOME_DIR": str(home), "FAKE_TS_CALLS": str(tmp_path / "calls.jsonl"),
           "FAKE_TS_DOWNLOADED": str(tmp_path / "downloaded"), "FAKE_TS_OUTPUT": str(tmp_path / "out.nii.gz")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for m in [m for m in sys.modules if m == "totalsegmentator" or m.startswith("totalsegmentator.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    yield {"site": tmp_path / "fake_site", "home": home, **env}
    for m in [m for m in sys.modules if m == "totalsegmentator" or m.startswith("totalsegmentator.")]:
        del sys.modules[m]


def add_weights(home: Path, datasets=(297, 298)) -> None:
    for ds in datasets:
        d = home / "nnunet" / "results" / TS.WEIGHT_FOLDERS[ds] / "trainer__plans__3d_fullres" / "fold_0"
        d.mkdir(parents=True)
        (d / "checkpoint_final.pth").write_bytes(b"FAKE_TS")


def stats_off(home: Path) -> None:
    (home / "config.json").write_text(json.dumps({"totalseg_id": "x", "send_usage_stats": False}))


def run_cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "sirad_viewer.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_not_installed_is_a_typed_error_and_a_clean_cli_exit(tmp_path, monkeypatch):
    for m in [m for m in sys.modules if m == "totalsegmentator" or m.startswith("totalsegmentator.")]:
        monkeypatch.delitem(sys.modules, m)
    assert TS.package_version() is None, "these tests assume TotalSegmentator is not installed"
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.resolve_segmenter("totalsegmentator")
    assert e.value.code == "totalsegmentator_not_installed" and "not installed" in e.value.message
    ok, why = TS.availability()
    assert not ok and "not installed" in why
    p = run_cli(["grade", str(tmp_path / "never-read.nii.gz"), "--segmenter", "totalsegmentator",
                 "--json", str(tmp_path / "r.json")], {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "TotalSegmentator is not installed" in p.stderr
    assert json.loads((tmp_path / "r.json").read_text())["error"]["code"] == "totalsegmentator_not_installed"


def test_missing_weights_are_named_and_never_downloaded(fake_ts, tmp_path):
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.resolve_segmenter("totalsegmentator")
    assert e.value.code == "totalsegmentator_weights_missing"
    msg = e.value.message
    assert TS.WEIGHT_FOLDERS[297] in msg and TS.WEIGHT_FOLDERS[298] in msg
    assert "totalseg_download_weights -t total_fast" in msg and str(fake_ts["home"]) in e.value.user_message()
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.resolve_segmenter("totalsegmentator-full")
    assert "-t total" in e.value.message and TS.WEIGHT_FOLDERS[291] in e.value.message
    p = run_cli(["grade", str(tmp_path / "never-read.nii.gz"), "--segmenter", "totalsegmentator"],
                {"PYTHONPATH": f"{fake_ts['site']}{os.pathsep}{ROOT}"})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "weights of its 'total_fast' model are missing" in p.stderr
    assert not Path(fake_ts["FAKE_TS_CALLS"]).exists() and not Path(fake_ts["FAKE_TS_DOWNLOADED"]).exists()


def test_usage_statistics_left_on_are_refused(fake_ts):
    add_weights(fake_ts["home"])
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.check_installed()
    assert e.value.code == "totalsegmentator_online" and "does not exist" in e.value.message
    (fake_ts["home"] / "config.json").write_text(json.dumps({"send_usage_stats": True}))
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.check_installed()
    assert '"send_usage_stats": false' in e.value.message
    stats_off(fake_ts["home"])
    assert TS.availability()[0]


def _tiny_case(tmp_path: Path) -> tuple[Volume, np.ndarray]:
    vol = Volume(array=np.zeros((20, 24, 24), np.int16), affine=geo.make_affine((0, 0, 0), np.eye(3)[::-1], (2, 2, 2)))
    ts = np.zeros(vol.shape, np.uint8)
    ts[5:15, 8:16, 9:15] = 25  # sacrum
    ts[12:15, 8:16, 9:15] = 26  # vertebrae_S1
    ts[5:15, 8:16, 16:22] = 77  # hip_left: +x (columns) is patient left
    ts[5:15, 8:16, 2:8] = 78
    ts[0:4, 0:4, 0:4] = 21  # urinary_bladder
    return vol, ts


def test_the_installed_api_is_called_in_memory_and_its_stdout_kept_off_ours(fake_ts, tmp_path, capsys):
    add_weights(fake_ts["home"])
    stats_off(fake_ts["home"])
    vol, ts = _tiny_case(tmp_path)
    write_totalseg_output(ts, vol, Path(fake_ts["FAKE_TS_OUTPUT"]))
    seg = TS.resolve_segmenter("totalsegmentator")
    out = seg.segment(vol, device="cuda")
    call = json.loads(Path(fake_ts["FAKE_TS_CALLS"]).read_text())
    assert call == {"ml": True, "task": "total", "fast": True, "device": "gpu", "output": None,
                    "shape": [24, 24, 20], "roi_subset": ["sacrum", "vertebrae_S1", "hip_left", "hip_right"]}
    assert "FAKE_TS" not in capsys.readouterr().out  # its prints go to stderr: `--json -` stays clean JSON
    assert (out.labels == SACRUM).sum() == 10 * 8 * 6 and (out.labels == LEFT_ILIUM).sum() == 10 * 8 * 6
    assert (out.labels == RIGHT_ILIUM).sum() == 10 * 8 * 6 and (out.labels == OTHER_BONE).sum() == 0
    assert out.labels[0:4, 0:4, 0:4].max() == 0


def test_a_download_attempt_during_the_run_is_refused(fake_ts, tmp_path, monkeypatch):
    add_weights(fake_ts["home"])
    stats_off(fake_ts["home"])
    vol, ts = _tiny_case(tmp_path)
    write_totalseg_output(ts, vol, Path(fake_ts["FAKE_TS_OUTPUT"]))
    monkeypatch.setenv("FAKE_TS_TRY_DOWNLOAD", "1")
    with pytest.raises(TS.TotalSegmentatorError) as e:
        TS.resolve_segmenter("totalsegmentator").segment(vol)
    assert e.value.code == "totalsegmentator_weights_missing" and "never downloads" in e.value.message
    assert not Path(fake_ts["FAKE_TS_DOWNLOADED"]).exists()
    import totalsegmentator.libs as libs

    assert libs.download_url_and_unpack.__module__ == "totalsegmentator.libs"  # restored afterwards
