"""#13: the AI-derived oblique plane follows the auricular surfaces (what readers use), and is accepted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sirad_viewer.imaging.sacral_plane import proposed_axis
from sirad_viewer.state.viewer import ViewerState, axis_tilt_deg

DEMO = Path(__file__).resolve().parents[2] / "resources" / "demo" / "example_ct.nii.gz"
# the README's reader axis on the demo CT (--sacral-axis=0,-130,235,0,-75,160)
READER_DEMO = np.array([0.0, -130.0, 235.0]) - np.array([0.0, -75.0, 160.0])


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.degrees(np.arccos(min(1.0, abs(a @ b)))))


@pytest.fixture(scope="module")
def grader():
    from sirad_viewer.ai.pipeline import Grader

    return Grader(device="cpu")


def _proposal(grader, volume):
    r = grader(volume, heatmaps=False)
    seg_axis = r.localisation.sacral_axis[0] - r.localisation.sacral_axis[1]
    return proposed_axis(r), seg_axis


def _accepted(axis: np.ndarray) -> bool:
    st = ViewerState()
    st.set_sacral_axis(axis, source="segmentation")
    return st.sacral_axis_source == "segmentation" and not st.oblique_warning


def test_demo_ct_plane_is_the_readers_and_accepted(grader):
    from sirad_viewer.io.formats import read_volume_file

    axis, seg_axis = _proposal(grader, read_volume_file(DEMO))  # 62 -> 35 degrees (reader: 36)
    assert not _accepted(seg_axis)  # the old proposal (62 degrees) was refused
    assert _angle(axis, READER_DEMO) < 10.0, (axis_tilt_deg(axis), axis_tilt_deg(READER_DEMO))
    assert _accepted(axis)


@pytest.mark.slow  # builds an atlas phantom (about 20 s)
def test_atlas_phantom_plane_is_near_the_truth(grader, shared_data):
    from sirad_viewer.phantom.atlas_phantom import AtlasSpec, make_atlas_phantom

    atlas = shared_data / "pelvis-atlas"
    if not atlas.exists():
        pytest.skip(f"atlas not found: {atlas}")
    ph = make_atlas_phantom(AtlasSpec(left_grade=3, right_grade=1, seed=4, atlas_dir=str(atlas)))
    axis, seg_axis = _proposal(grader, ph.volume)
    truth = np.asarray(ph.truth["sacral_axis"]["direction_lps"])
    print("atlas", axis_tilt_deg(axis), axis_tilt_deg(truth), _angle(axis, truth), _angle(seg_axis, truth))
    assert _angle(axis, truth) < 10.0  # 2.1 (the segmentation's axis: 14.3, tilted 57 degrees)
    assert _accepted(axis)


def test_sij_centre_finds_the_joints_level_on_the_demo_ct_from_bone_alone():
    """#13: the hanging protocol opened the demo CT at the volume centre, z +260.8 mm, above the joints."""
    from sirad_viewer.imaging.sacral_plane import sij_centre
    from sirad_viewer.io.formats import read_volume_file

    vol = read_volume_file(DEMO).reoriented()
    mid = np.array([-0.5, -92.0, 211.6])  # between the segmentation's joint centres
    c = sij_centre(vol)
    assert c is not None and np.linalg.norm(c - mid) < 15.0, c
    assert np.linalg.norm(vol.center_world() - mid) > 50.0  # where it opened before
