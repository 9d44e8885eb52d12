"""Training and evaluation tools: DATA.csv checks, a short run that learns grade 0 vs 4, metrics, resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sirad_viewer.ai.evaluate import auc, metrics_for
from sirad_viewer.ai.train import DataError, read_data_csv


def _write_csv(path, rows, header=("image", "left", "right", "site", "split")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_data_csv_errors_name_the_file_and_line(tmp_path):
    p = _write_csv(tmp_path / "DATA.csv", [["a.nii.gz", "0", "7", "X", "train"]])
    with pytest.raises(DataError, match=r"line 2: right grade 7 is outside 0-4") as ei:
        read_data_csv(p)
    assert "DATA.csv" in ei.value.user_message()
    p = _write_csv(tmp_path / "D2.csv", [["a.nii.gz", "x", "1", "X", "train"]])
    with pytest.raises(DataError, match="not a number"):
        read_data_csv(p)
    p = _write_csv(tmp_path / "D3.csv", [["a.nii.gz", "1"]], header=("image", "left"))
    with pytest.raises(DataError, match="lacks the column"):
        read_data_csv(p)
    p = _write_csv(tmp_path / "D4.csv", [["a.nii.gz", "1", "", "X", "holdout"]])
    with pytest.raises(DataError, match="split 'holdout'"):
        read_data_csv(p)
    p = _write_csv(tmp_path / "D5.csv", [["sub/a.nii.gz", "1", "", "", ""]])
    (row,) = read_data_csv(p)
    assert row.image == tmp_path / "sub" / "a.nii.gz" and row.right is None and row.split == "train"


def test_auc_and_metrics_on_known_predictions():
    assert auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.5, 0.5], [False, True]) == 0.5
    assert np.isnan(auc([0.1, 0.2], [True, True]))
    eye = np.eye(5)
    preds = [{"image": f"c{i}", "side": s, "site": "A", "truth": g, "probabilities": list(eye[g])}
             for i, g in enumerate([0, 1, 2, 3, 4, 0, 2, 4]) for s in ("left", "right")]
    m = metrics_for(preds, [[0, 1], [2, 3], [4]], n_boot=50)
    assert m["accuracy"] == 1.0 and m["accuracy_3cat"] == 1.0
    assert m["kappa_quadratic"]["kappa"] == pytest.approx(1.0)
    assert all(v["auc"] == 1.0 for v in m["auc_per_grade"].values())
    assert np.trace(np.array(m["confusion_5"])) == 16 and m["patient"]["accuracy"] == 1.0


@pytest.fixture(scope="module")
def zero_vs_four(tmp_path_factory):
    """14 phantoms whose joints are grade 0 or 4 (train 10, val 2, test 2), written as a DATA.csv."""
    from sirad_viewer.phantom import make_phantom, random_spec, write_phantom

    root = tmp_path_factory.mktemp("zv4")
    rows = []
    for i in range(14):
        left, right = (0, 4) if i % 2 == 0 else (4, 0)
        if i % 3 == 0:
            left = right = 4 * (i % 2)
        split = "train" if i < 10 else ("val" if i < 12 else "test")
        files = write_phantom(make_phantom(random_spec(700_000 + i, left_grade=left, right_grade=right, matrix=96)),
                              root / f"c{i}")
        rows.append([f"c{i}/ct.nii.gz", str(left), str(right), "phantom-A", split])
    return _write_csv(root / "DATA.csv", rows)


def test_short_training_learns_grade_0_from_grade_4(zero_vs_four, tmp_path):
    from sirad_viewer.ai.bundle import load_bundle
    from sirad_viewer.ai.evaluate import evaluate
    from sirad_viewer.ai.train import train_grader

    tiny = {"init_features": 8, "growth_rate": 4, "block_config": [2, 2]}
    b = train_grader(zero_vs_four, tmp_path / "b", config=tiny, spacing_mm=2.5, size=32, epochs=12, patience=12,
                     batch_size=4, lr=3e-3, device="cpu", progress=False, log_fn=lambda m: None)
    meta = load_bundle(b.path).metadata
    assert meta["calibration"]["temperature"] > 0 and meta["training_data"]["train_joints"] == 20
    assert (tmp_path / "b" / "checkpoints" / "last.pt").exists()
    doc = evaluate(zero_vs_four, b.path, tmp_path / "ev", split="all", device="cpu", n_boot=50, progress=False)
    m = doc["results"]["all"]
    assert m["auc_per_grade"]["4"]["auc"] > 0.9, m["auc_per_grade"]["4"]
    for f in ("metrics.json", "summary.md", "predictions.csv", "roc_all.png"):
        assert (tmp_path / "ev" / f).exists()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["model"]["name"] == b.name


def test_resume_continues_from_the_checkpoint(zero_vs_four, tmp_path):
    from sirad_viewer.ai.train import train_grader

    tiny = {"init_features": 4, "growth_rate": 4, "block_config": [2]}
    kw = dict(config=tiny, spacing_mm=2.5, size=32, batch_size=4, device="cpu", progress=False, patience=50)
    msgs: list[str] = []
    train_grader(zero_vs_four, tmp_path / "b", epochs=2, log_fn=msgs.append, **kw)
    msgs.clear()
    b = train_grader(zero_vs_four, tmp_path / "b", epochs=3, resume=True, log_fn=msgs.append, **kw)
    assert any("resumed" in m and "epoch 2" in m for m in msgs)
    assert [h["epoch"] for h in b.metadata["training_data"]["history"]] == [1, 2, 3]


@pytest.mark.slow  # two short trainings with calibration: about a minute on an idle machine
def test_fine_tuning_starts_from_the_init_bundle_and_records_its_frame(zero_vs_four, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from sirad_viewer.ai.train import train_grader

    tiny = {"init_features": 4, "growth_rate": 4, "block_config": [2]}
    kw = dict(spacing_mm=2.5, size=32, batch_size=4, device="cpu", progress=False, patience=50, epochs=1)
    a = train_grader(zero_vs_four, tmp_path / "a", config=tiny, log_fn=lambda m: None, **kw)
    shutil.copytree(tmp_path / "a" / "cache", tmp_path / "b" / "cache")  # same crops: same spec and segmenter
    msgs: list[str] = []
    b = train_grader(zero_vs_four, tmp_path / "b", init=a.path, lr=1e-12, augmentation="inplane", select="score",
                     test_time_turns=4, config={"init_features": 99}, log_fn=msgs.append, **kw)
    assert any(m.startswith("starting from") for m in msgs) and any(m.startswith("start: val accuracy") for m in msgs)
    assert b.metadata["architecture"] == a.metadata["architecture"]  # the init's network, not 'config'
    wa, wb = load_file(str(a.path / "model.safetensors")), load_file(str(b.path / "model.safetensors"))
    # lr ~0: the weights are still the init's (batch-norm running statistics do move in training mode)
    assert all(float((wa[k].float() - wb[k].float()).abs().max()) < 1e-6 for k in wa
               if "running_" not in k and "num_batches" not in k)
    assert b.metadata["input"]["test_time_turns"] == 4 and b.metadata["input"]["long_axis"] == "outline"
    h = b.metadata["training_data"]["history"][0]
    assert 0.0 <= h["val_stress_kept_3"] <= 1.0 and "val_accuracy_3" in h
    with pytest.raises(ValueError, match="augmentation"):
        train_grader(zero_vs_four, tmp_path / "c", augmentation="heavy", **kw)


@pytest.mark.slow  # two short trainings and a template: about a minute on an idle machine
def test_fine_tuning_a_registering_bundle_keeps_its_template_and_trains_on_registered_crops(zero_vs_four, tmp_path):
    from sirad_viewer.ai.bundle import sha256_of
    from sirad_viewer.ai.pipeline import Grader
    from sirad_viewer.ai.register import add_template
    from sirad_viewer.ai.train import train_grader

    tiny = {"init_features": 4, "growth_rate": 4, "block_config": [2]}
    kw = dict(spacing_mm=2.5, size=32, batch_size=4, device="cpu", progress=False, patience=50, epochs=1,
              log_fn=lambda m: None, long_axis="segmentation")
    a = train_grader(zero_vs_four, tmp_path / "a", config=tiny, **kw)
    entry = add_template(a.path, zero_vs_four, tmp_path / "a-reg", min_joints=4, progress=False)
    b = train_grader(zero_vs_four, tmp_path / "b", init=tmp_path / "a-reg", **kw)
    reg = b.metadata["input"]["registration"]
    assert reg["sha256"] == entry["sha256"] == sha256_of(b.path / reg["file"])  # the template travels with the weights
    assert "registered rigidly" in b.metadata["input"]["orientation"]
    # its crops were cut along registered boxes: none of the plain bundle's cached crops was reused
    assert not set(p.name for p in (tmp_path / "a" / "cache").iterdir()) & set(p.name for p in (tmp_path / "b" / "cache").iterdir())
    assert Grader(b, device="cpu").spec.registration.sha256 == entry["sha256"]


def test_segmenter_trains_on_several_data_sets(tmp_path, small_phantom):
    # train_demo_models.sh trains the UNet on atlas phantoms plus analytic ones: two DATA.csv files
    from sirad_viewer.ai.bundle import load_bundle
    from sirad_viewer.ai.segnet import train_segmenter
    from sirad_viewer.phantom import write_phantom

    csvs = []
    for k, (left, right) in enumerate([(0, 4), (2, 1)]):
        d = tmp_path / f"set{k}"
        files = write_phantom(small_phantom(left, right, seed=20 + k, matrix=64), d / "case")
        rel = {key: str(__import__("pathlib").Path(files[key]).relative_to(d)) for key in ("ct", "labels")}
        csvs.append(_write_csv(d / "DATA.csv", [[rel["ct"], left, right, "X", "train", rel["labels"]],
                                                 [rel["ct"], left, right, "X", "test", rel["labels"]]],
                               header=("image", "left", "right", "site", "split", "labels")))
    b = train_segmenter(csvs, tmp_path / "seg", steps=2, channels=(4, 8, 16, 32), num_res_units=0)
    meta = load_bundle(b.path).metadata
    assert meta["training_data"]["cases"] == 2 and meta["training_data"]["steps"] == 2  # the train rows of both
    # fine-tuning continues from those weights (same architecture), not from scratch
    first = load_bundle(b.path)
    b2 = train_segmenter(csvs[0], tmp_path / "seg2", steps=1, lr=0.0, init=first, version="0.0.2")
    m2 = load_bundle(b2.path).metadata
    assert m2["training_data"]["initialised_from"] == f"{first.name} {first.version}"
    assert m2["architecture"] == meta["architecture"]
    import torch

    sd1, sd2 = first.state_dict(), load_bundle(b2.path).state_dict()
    assert all(torch.allclose(torch.as_tensor(sd1[k]).float(), torch.as_tensor(sd2[k]).float()) for k in sd1
               if "weight" in k)  # lr 0: unchanged weights
    # --average-init: the saved weights are (1 - w) x the start + w x the trained ones
    b3 = train_segmenter(csvs[0], tmp_path / "seg3", steps=1, lr=1e-2, init=first, seed=3)
    b4 = train_segmenter(csvs[0], tmp_path / "seg4", steps=1, lr=1e-2, init=first, seed=3, average_init=0.25)
    sd3, sd4 = load_bundle(b3.path).state_dict(), load_bundle(b4.path).state_dict()
    moved = [k for k in sd1 if "weight" in k and not torch.allclose(torch.as_tensor(sd1[k]), torch.as_tensor(sd3[k]))]
    assert moved
    for k in moved:
        want = 0.75 * torch.as_tensor(sd1[k]).float() + 0.25 * torch.as_tensor(sd3[k]).float()
        assert torch.allclose(torch.as_tensor(sd4[k]).float(), want, atol=1e-6), k
    assert "0.25" in load_bundle(b4.path).metadata["training_data"]["weight_average"]
    # --rotate: recorded; without it the samples (and so older trainings) are drawn exactly as before
    b5 = train_segmenter(csvs[0], tmp_path / "seg5", steps=1, lr=1e-2, init=first, seed=3, rotate_deg=15.0)
    assert load_bundle(b5.path).metadata["training_data"]["rotation_augmentation_deg"] == 15.0
    assert "rotation_augmentation_deg" not in meta["training_data"]
    # a continued first stage keeps its start's 2 mm second stage (and its checksum still holds)
    from sirad_viewer.ai import segrefine as SR
    from sirad_viewer.ai.pipeline import default_models_dir

    shipped = load_bundle(default_models_dir() / "pelvis-unet-demo")
    if isinstance(shipped.metadata.get("refine"), dict):
        b6 = load_bundle(train_segmenter(csvs[0], tmp_path / "seg6", steps=1, lr=0.0, init=shipped).path)
        assert b6.metadata["refine"]["sha256"] == shipped.metadata["refine"]["sha256"]
        assert "carried_from" in b6.metadata["refine"] and SR.load_refiner(b6) is not None
    assert "refine" not in meta  # none to carry: none written


def test_segmenter_turn_augmentation_turns_the_labels_with_the_ct():
    import numpy as np

    from sirad_viewer.ai import segnet

    img = np.full((24, 32, 40), -1000.0, np.float32)
    lab = np.zeros(img.shape, np.int64)
    img[6:14, 8:26, 10:18], lab[6:14, 8:26, 10:18] = 1200.0, 1  # an off-centre, elongated "bone"
    img[10:20, 4:12, 24:36], lab[10:20, 4:12, 24:36] = 900.0, 2
    turned_img, turned_lab = segnet._turned(img, lab, np.random.default_rng(4), 15.0)
    assert turned_img.shape == img.shape and turned_lab.dtype == lab.dtype
    assert set(np.unique(turned_lab)) == {0, 1, 2}  # nearest neighbour: no blended labels
    for c, hu in ((1, 1200.0), (2, 900.0)):
        bright = np.abs(turned_img - hu) < 1.0  # voxels wholly inside a turned bone
        assert bright.sum() > 0.3 * (lab == c).sum()
        assert (turned_lab[bright] == c).mean() > 0.97, c
        assert abs(int((turned_lab == c).sum()) - int((lab == c).sum())) < 0.15 * (lab == c).sum()
    assert (turned_lab != lab).mean() > 0.02  # it did turn
    # shift only: the bones move by a fraction of a voxel, labels with them, and nothing turns
    from scipy import ndimage

    moved_img, moved_lab = segnet._turned(img, lab, np.random.default_rng(5), 0.0, 0.5)
    d = np.subtract(ndimage.center_of_mass(np.clip(moved_img + 1000.0, 0, None)),
                    ndimage.center_of_mass(np.clip(img + 1000.0, 0, None)))
    assert 0.01 < np.abs(d).max() <= 0.5 + 1e-3, d  # linear interpolation moves the mass by the shift itself
    for c, hu in ((1, 1200.0), (2, 900.0)):
        assert (moved_lab[np.abs(moved_img - hu) < 1.0] == c).mean() > 0.97
    # rotate_deg 0: the random stream is the old one (no draw for the turn)
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    a, _ = segnet._augment(img, lab, r1)
    b, _ = segnet._augment(img, lab, r2, 0.0)
    assert np.array_equal(a, b) and r1.random() == r2.random()


def test_consistency_loss_is_zero_for_agreeing_views_and_symmetric_otherwise():
    import torch

    from sirad_viewer.ai.train import consistency_loss

    a = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, -2.0]], requires_grad=True)
    b = torch.tensor([[0.0, 2.0, -1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, -2.0]])
    assert float(consistency_loss(a, a + 7.0)) == pytest.approx(0.0, abs=1e-6)  # the same distribution
    la, lb = float(consistency_loss(a, b)), float(consistency_loss(b, a))
    assert la > 0.1 and la == pytest.approx(lb)
    consistency_loss(a, b).backward()
    assert float(a.grad[0].abs().sum()) > 0 and float(a.grad[1].abs().sum()) == pytest.approx(0.0, abs=1e-6)


def test_training_with_two_views_records_its_recipe(zero_vs_four, tmp_path):
    from sirad_viewer.ai.train import train_grader

    tiny = {"init_features": 4, "growth_rate": 4, "block_config": [2]}
    b = train_grader(zero_vs_four, tmp_path / "b", config=tiny, spacing_mm=2.5, size=32, batch_size=4, device="cpu",
                     progress=False, patience=50, epochs=1, consistency=1.0, long_axis="segmentation",
                     test_time_jitter=(1.5, 4.0), log_fn=lambda m: None)
    r = b.metadata["training_data"]["recipe"]
    assert r["consistency"] == 1.0 and r["augmentation"] == "stress" and r["select"] == "loss"
    inp = b.metadata["input"]
    # the segmentation's box as it is (as 0.2.0), graded over 13 nearby frames
    assert inp["refine_frame"] is False and inp["long_axis"] == "outline"
    assert inp["test_time_jitter"] == {"shift_mm": 1.5, "turn_deg": 4.0}


def test_the_same_training_gives_the_same_weights_with_its_crops_already_cut(zero_vs_four, tmp_path):
    # cutting crops builds the segmenter's networks, which drew from torch's generator before the grader's own
    # weights were drawn: a second run with a warm crop cache (or a second training in one process) differed
    import shutil

    import torch
    from safetensors.torch import load_file

    from sirad_viewer.ai.train import train_grader

    tiny = {"init_features": 4, "growth_rate": 4, "block_config": [2]}
    kw = dict(config=tiny, spacing_mm=2.5, size=32, batch_size=4, device="cpu", progress=False, patience=50,
              epochs=1, log_fn=lambda m: None)
    a = train_grader(zero_vs_four, tmp_path / "a", **kw)
    shutil.copytree(tmp_path / "a" / "cache", tmp_path / "b" / "cache")  # the same crops, already cut
    b = train_grader(zero_vs_four, tmp_path / "b", **kw)
    wa, wb = load_file(str(a.path / "model.safetensors")), load_file(str(b.path / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
