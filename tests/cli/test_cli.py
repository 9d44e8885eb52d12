"""The ``sirad`` command line: fast start, stable JSON, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "monai", "vtk", "PyQt6", "pyvista", "SimpleITK", "pydicom")


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sirad_viewer.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_nothing_heavy(flag):
    code = ("import sys, runpy\nsys.argv=['sirad', %r]\ntry:\n    runpy.run_module('sirad_viewer.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('LOADED', [m for m in %r if m in sys.modules])") % (flag, HEAVY)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in p.stdout, p.stdout + p.stderr
    if flag == "--version":
        assert p.stdout.startswith("sirad 0.")


def test_info_json_on_the_real_dicom_series(real_dicom_dir):
    p = run("info", str(real_dicom_dir), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["chosen"] == 0
    s = d["series"][0]
    assert set(s) >= {"uid", "description", "modality", "n_images", "shape", "spacing_mm", "origin_lps_mm",
                      "direction", "warnings"}
    assert s["shape"] == [20, 512, 512] and s["n_images"] == 20 and s["modality"] == "CT"
    assert s["spacing_mm"] == pytest.approx([2.0, 0.9765625, 0.9765625])
    assert s["origin_lps_mm"] == pytest.approx([-249.51171875, -437.51171875, -804.5])
    assert s["direction"] == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_info_text_on_the_real_nifti(real_nifti):
    p = run("info", str(real_nifti))
    assert p.returncode == 0
    assert "112 x 101 x 122" in p.stdout and "NIfTI" in p.stdout


def test_info_error_json_and_exit_2(tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"this is not a dicom file at all" * 10)
    p = run("info", str(bad), "--json")
    assert p.returncode == 2
    err = json.loads(p.stdout)["error"]
    assert err["code"] == "not_dicom" and err["path"] == str(bad) and err["message"]
    assert len(p.stderr.strip().splitlines()) == 1


def test_phantom_command_writes_dicom_that_info_reads(tmp_path):
    out = tmp_path / "ph"
    p = run("phantom", "--left", "2", "--right", "3", "--out", str(out), "--format", "dicom", "--seed", "5",
            "--matrix", "96", "--thickness", "3")
    assert p.returncode == 0, p.stderr
    truth = json.loads((out / "truth.json").read_text())
    assert truth["grades"] == {"left": 2, "right": 3}
    info = json.loads(run("info", str(out / "dicom"), "--json").stdout)
    assert info["series"][0]["modality"] == "CT" and info["series"][0]["shape"][1:] == [96, 96]


def test_phantom_rejects_a_bad_grade(tmp_path):
    p = run("phantom", "--left", "7", "--out", str(tmp_path))
    assert p.returncode == 2 and "0-4" in p.stderr
