"""The core never imports Qt; imports point downward (import-linter contracts in pyproject)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_packages_do_not_import_qt():
    code = ("import sys\nimport sirad_viewer.io, sirad_viewer.imaging, sirad_viewer.phantom, sirad_viewer.ai, "
            "sirad_viewer.study, sirad_viewer.state, sirad_viewer.viz, sirad_viewer.cli\n"
            "from sirad_viewer.io import open_volume\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('PyQt6', 'pyvistaqt', 'torch', 'vtk')])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is part of the dev install"
    p = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
