"""#13: the hanging protocol frames both sacroiliac joints without the AI (no sacral axis set).

The demo CT used to open with the crosshair at the volume centre (z +260.8 mm, above the joints):
both joints sat at the bottom edge of the oblique panel, cut off, until J/K.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.qt.conftest import module_window

pytestmark = pytest.mark.qt

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo" / "example_ct.nii.gz"
# the demo CT's joint centres (LPS mm; the segmentation's joint boxes, on the README reader axis' level)
DEMO_JOINTS = {"left": [46.8, -90.6, 211.8], "right": [-47.7, -93.5, 211.5]}


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory):
    with module_window(qapp, tmp_path_factory.mktemp("hang")) as w:
        yield w


def _open(win, qapp, path) -> None:
    win.open_path(str(path))
    assert win.wait_until_ready(mesh=False), win.info.toPlainText()
    for _ in range(5):
        qapp.processEvents()


def _assert_framed(win, joints) -> None:
    """Each joint, its centre and 25 mm up and down the oblique plane (a joint is 50-60 mm long),
    lies inside the main oblique view and not within 10% of its edge."""
    v = win.views["oblique"]
    st = win.state
    assert st.layout == "sij" and st.sacral_axis is None and win.reading.ai is None
    axis = st.default_sacral_axis()
    W, H = v.width(), v.height()
    for side, c in joints.items():
        for t in (-25.0, 0.0, 25.0):
            p = v.world_to_widget(np.asarray(c, float) + t * axis)
            assert p is not None
            assert 0.1 * W < p.x() < 0.9 * W and 0.1 * H < p.y() < 0.9 * H, (side, t, p.x(), p.y(), W, H,
                                                                              st.crosshair)


def test_demo_ct_opens_with_both_joints_framed(win, qapp):
    _open(win, qapp, DEMO)
    _assert_framed(win, DEMO_JOINTS)


def test_phantom_opens_with_both_joints_framed(win, qapp, tmp_path, small_phantom):
    from sirad_viewer.phantom import write_phantom

    ph = small_phantom(0, 3, seed=1)
    path = write_phantom(ph, tmp_path / "ph", fmt="nifti")["ct"]
    _open(win, qapp, path)
    _assert_framed(win, {s: j["center_lps_mm"] for s, j in ph.truth["joints"].items()})


@pytest.mark.slow  # builds an atlas phantom (about 20 s)
def test_atlas_phantom_opens_with_both_joints_framed(win, qapp, tmp_path, shared_data):
    from sirad_viewer.phantom import write_phantom
    from sirad_viewer.phantom.atlas_phantom import AtlasSpec, make_atlas_phantom

    atlas = shared_data / "pelvis-atlas"
    if not atlas.exists():
        pytest.skip(f"atlas not found: {atlas}")
    ph = make_atlas_phantom(AtlasSpec(left_grade=3, right_grade=1, seed=4, atlas_dir=str(atlas)))
    path = write_phantom(ph, tmp_path / "ph", fmt="nifti")["ct"]
    truth = json.loads(json.dumps(ph.truth))
    _open(win, qapp, path)
    _assert_framed(win, {s: j["center_lps_mm"] for s, j in truth["joints"].items()})
