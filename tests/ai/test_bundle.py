"""Model bundles: round trip, checksum, metadata validation, no pickle, entry points (tiny random nets)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from sirad_viewer.ai import bundle as B  # noqa: E402

ARCH = {"type": "densenet", "config": {"init_features": 4, "growth_rate": 4, "block_config": [1, 1]}}


def metadata(**over):
    meta = {
        "name": "tiny-test", "version": "0.0.1", "architecture": ARCH,
        "input": {"spacing_mm": [1.5, 1.5, 1.5], "size": [16, 16, 16], "intensity_window_hu": [-200, 1500],
                  "mirror_left": True},
        "classes": [0, 1, 2, 3, 4], "groups": [[0, 1], [2, 3], [4]],
        "training_data": {"kind": "random", "n": 0}, "metrics": {}, "intended_use": "tests only",
        "disclaimer": "random weights",
    }
    meta.update(over)
    return meta


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    net = B.build_network(ARCH, n_classes=5).eval()
    return net, B.save_bundle(net, metadata(), tmp_path / "b")


def test_round_trip_gives_the_same_outputs(saved):
    net, bundle = saved
    x = torch.randn(2, 1, 16, 16, 16)
    again = B.load_bundle(bundle.path).build_network()
    with torch.no_grad():
        assert torch.allclose(net(x), again(x), atol=1e-6)
    meta = json.loads((bundle.path / "metadata.json").read_text())
    assert meta["weights"]["sha256"] == B.sha256_of(bundle.weights_path)


def test_changed_weights_are_refused(saved):
    _, bundle = saved
    data = bytearray(bundle.weights_path.read_bytes())
    data[-1] ^= 0xFF
    bundle.weights_path.write_bytes(bytes(data))
    with pytest.raises(B.BundleError) as ei:
        B.load_bundle(bundle.path)
    assert "checksum" in ei.value.message and ei.value.path.endswith("model.safetensors")


@pytest.mark.parametrize("change,needle", [
    ({"classes": [0, 1, 2]}, "classes"),
    ({"groups": [[0, 1], [2, 3]]}, "groups"),
    ({"intended_use": 7}, "intended_use"),
    ({"schema_version": 99}, "schema_version"),
])
def test_bad_metadata_names_the_problem(saved, change, needle):
    _, bundle = saved
    meta = json.loads((bundle.path / "metadata.json").read_text())
    meta.update(change)
    (bundle.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(B.BundleError, match=needle):
        B.load_bundle(bundle.path)


def test_pickled_weights_are_never_loaded(saved):
    _, bundle = saved
    meta = json.loads((bundle.path / "metadata.json").read_text())
    torch.save({"x": torch.zeros(1)}, bundle.path / "model.pt")
    meta["weights"]["file"] = "model.pt"
    (bundle.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(B.BundleError, match="pickle"):
        B.load_bundle(bundle.path)


def test_weights_that_do_not_fit_the_architecture(saved, tmp_path):
    _, bundle = saved
    meta = json.loads((bundle.path / "metadata.json").read_text())
    meta["architecture"] = {"type": "densenet", "config": {"init_features": 8, "growth_rate": 4, "block_config": [1, 1]}}
    (bundle.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(B.BundleError, match="do not fit"):
        B.load_bundle(bundle.path).build_network()


def test_discovery_from_folder_and_entry_points(saved, tmp_path, monkeypatch):
    _, bundle = saved
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{not json")
    ep = SimpleNamespace(name="plugin", load=lambda: (lambda: [str(bundle.path)]))
    monkeypatch.setattr(B.importlib_metadata, "entry_points", lambda group: [ep] if group == B.ENTRY_POINT_GROUP else [])
    bundles, problems = B.discover_bundles(tmp_path / "models")
    assert [b.name for b in bundles] == ["tiny-test"]
    assert len(problems) == 1 and "broken" in problems[0]


def test_shipped_bundles_load_and_say_they_are_phantom_trained():
    from sirad_viewer.ai.pipeline import default_models_dir

    bundles, problems = B.discover_bundles(default_models_dir())
    assert not problems
    tasks = {b.task: b for b in bundles}
    assert set(tasks) >= {"grading", "segmentation"}
    for b in tasks.values():
        assert "phantom" in b.metadata["disclaimer"].lower() and "not for clinical use" in b.metadata["disclaimer"]
        assert b.weights_path.stat().st_size < 5_000_000  # a few MB
    g = tasks["grading"].metadata
    assert g["groups"] == [[0, 1], [2, 3], [4]] and g["input"]["mirror_left"] is True
    assert 0.05 < g["calibration"]["temperature"] < 20
    assert (tasks["grading"].path / "MODEL_CARD.md").exists()


def test_segmentation_bundle_needs_its_classes(saved):
    _, b = saved
    meta = json.loads((b.path / "metadata.json").read_text())
    meta["task"] = "segmentation"
    (b.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(B.BundleError, match="segmentation classes"):
        B.load_bundle(b.path)
    meta["task"] = "detection"
    (b.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(B.BundleError, match="task .detection."):
        B.load_bundle(b.path)


# ------------------------------------------------------------------------------------------
# Hostile bundles (issue 12): weights only inside the folder, metadata bounded, one bad bundle
# never stops the others.
# ------------------------------------------------------------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402


def _edit(bundle_path, fn):
    meta = json.loads((bundle_path / "metadata.json").read_text())
    fn(meta)
    (bundle_path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_weights_outside_the_bundle_folder_are_refused(saved, tmp_path, where):
    _, bundle = saved
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(bundle.weights_path, outside)  # same bytes: the checksum alone would accept it
    name = "../elsewhere.safetensors" if where == "parent" else str(outside)
    _edit(bundle.path, lambda m: m["weights"].update(file=name))
    with pytest.raises(B.BundleError, match="outside the bundle folder"):
        B.load_bundle(bundle.path)


def test_weights_symlink_out_of_the_folder_or_to_a_device_is_refused(saved, tmp_path):
    _, bundle = saved
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(bundle.weights_path, outside)
    link = bundle.path / "linked.safetensors"
    os.symlink(outside, link)
    _edit(bundle.path, lambda m: m["weights"].update(file="linked.safetensors"))
    with pytest.raises(B.BundleError, match="outside the bundle folder"):
        B.load_bundle(bundle.path)
    # A link to /dev/zero inside the folder's name space: the checksum used to read forever.
    dev = bundle.path / "dev.safetensors"
    os.symlink("/dev/zero", dev)
    _edit(bundle.path, lambda m: m["weights"].update(file="dev.safetensors"))
    with pytest.raises(B.BundleError):
        B.load_bundle(bundle.path)


def test_deep_or_huge_metadata_is_a_bundle_error(saved):
    _, bundle = saved
    meta_path = bundle.path / "metadata.json"
    meta_path.write_text("[" * 200_000 + "]" * 200_000)  # json raised RecursionError
    with pytest.raises(B.BundleError, match="nests deeper"):
        B.load_bundle(bundle.path)
    meta_path.write_text('{"name": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(B.BundleError, match="at most"):
        B.load_bundle(bundle.path)


@pytest.mark.parametrize("change,needle", [
    (lambda m: m.update(calibration={"temperature": 0}), "temperature"),
    (lambda m: m.update(calibration={"temperature": -1.0}), "temperature"),
    (lambda m: m["input"].update(spacing_mm=[0, 1.5, 1.5]), "spacing_mm"),
    (lambda m: m["input"].update(size=[2000, 2000, 2000]), "input.size"),
    (lambda m: m["input"].update(size=["a", 1, 1]), "input.size"),
    (lambda m: m["input"].update(intensity_window_hu=[1500, -200]), "intensity_window_hu"),
    (lambda m: m["architecture"]["config"].update(init_features=10 ** 9), "init_features"),
    (lambda m: m.update(groups=[[0, 1], [2, [3]], [4]]), "groups"),
])
def test_out_of_range_metadata_is_refused_by_name(saved, change, needle):
    _, bundle = saved
    _edit(bundle.path, change)
    with pytest.raises(B.BundleError, match=needle):
        B.load_bundle(bundle.path)


def test_one_bad_bundle_is_skipped_with_a_warning_and_the_others_load(saved, tmp_path, monkeypatch, caplog):
    _, bundle = saved
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(bundle.path, models / "good")
    for name, change in [("zero-temp", lambda m: m.update(calibration={"temperature": 0})),
                         ("outside", lambda m: m["weights"].update(file="../good/model.safetensors"))]:
        shutil.copytree(bundle.path, models / name)
        _edit(models / name, change)
    (models / "deep").mkdir()
    (models / "deep" / "metadata.json").write_text("[" * 100_000)
    monkeypatch.setattr(B.importlib_metadata, "entry_points", lambda group: [])
    with caplog.at_level("WARNING", logger="sirad_viewer.ai.bundle"):
        bundles, problems = B.discover_bundles(models)
    assert [b.path.name for b in bundles] == ["good"]
    assert len(problems) == 3 and len([r for r in caplog.records if "skipped" in r.getMessage()]) == 3
    # sirad grade's lookup still finds the good bundle.
    from sirad_viewer.ai import pipeline

    monkeypatch.setenv("SIRAD_MODELS", str(models))
    assert pipeline.find_bundle("grading").path.name == "good"
