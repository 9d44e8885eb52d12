"""tools/gpu_check.py: the CPU-against-CUDA comparison fails on what it must catch (runs without a GPU)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(device="cuda", warnings=(), shift=0.0, p_shift=0.0, grade_right=3, cam_noise=0.0):
    rng = np.random.default_rng(0)
    joints = {}
    for side, grade in (("left", 1), ("right", grade_right)):
        p = np.full(5, 0.05)
        p[grade] = 0.8
        p = p + np.array([p_shift, -p_shift, 0, 0, 0])
        block = np.zeros((8, 8, 8), np.float32)
        block[2:6, 2:6, 2:6] = np.linspace(0.2, 1.0, 4)
        block = block + cam_noise * rng.random(block.shape).astype(np.float32)
        joints[side] = SimpleNamespace(
            grade=int(np.argmax(p)), probabilities=p, ood={"score": 1.0},
            box=SimpleNamespace(center_lps_mm=np.array([shift, 0.0, 0.0]), axes_lps=np.eye(3)),
            heatmap=SimpleNamespace(full=lambda b=block: b))
    return SimpleNamespace(joints=joints, device=device, warnings=list(warnings))


def test_equal_results_on_cuda_pass(gpu_check):
    assert gpu_check.compare(_result("cpu"), _result())["passed"]


@pytest.mark.parametrize("gpu", [
    _result(device="cpu"),  # the "GPU" run did not run on the GPU
    _result(warnings=["the GPU ran out of memory during 'grade'; that stage ran on the CPU instead"]),
    _result(shift=0.8),  # box moved 0.8 mm
    _result(p_shift=0.03),  # probabilities 0.03 apart
    _result(grade_right=4),  # another grade
    _result(cam_noise=2.0),  # a different heatmap
], ids=["not-on-cuda", "fell-back", "box", "probability", "grade", "heatmap"])
def test_each_difference_fails(gpu_check, gpu):
    assert not gpu_check.compare(_result("cpu"), gpu)["passed"]


def test_no_gpu_is_exit_2(gpu_check, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_an_unreadable_file_is_named_and_fails_the_check(gpu_check, monkeypatch, capsys, tmp_path):
    import torch

    import sirad_viewer.ai.pipeline as P

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "stand-in GPU")
    monkeypatch.setattr(P, "Grader", lambda device: SimpleNamespace(device=device))  # never reached for this file
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a CT at all")
    out = tmp_path / "report.json"
    assert gpu_check.main([str(bad), "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert "broken.dcm: not compared:" in err
    import json

    assert json.loads(out.read_text())["cases"]["broken.dcm"]["passed"] is False
