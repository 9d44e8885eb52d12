from __future__ import annotations

import json

import numpy as np
import pytest

from sirad_viewer.state import annotations as an


def test_objects_serialise_round_trip_in_lps_mm():
    s = an.AnnotationSet()
    s.add(an.Ruler(np.array([0.0, 0, 0]), np.array([3.0, 4.0, 0])))
    s.add(an.Angle(np.array([1.0, 0, 0]), np.zeros(3), np.array([0.0, 1.0, 0])))
    s.add(an.CircleROI(np.array([1.0, 2, 3]), 4.0, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]),
                       {"mean": 10.0, "sd": 1.0, "min": 5.0, "max": 12.0, "n": 20.0}))
    s.add(an.LesionMark("erosion", "left", [np.array([5.0, 6, 7])]))
    s.set_finding("right", "sclerosis", True)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["items"][0]["length_mm"] == 5.0 and d["items"][1]["degrees"] == 90.0
    back = an.AnnotationSet.from_dict(d)
    assert [a.to_dict() for a in back.items] == [a.to_dict() for a in s.items]
    assert back.findings("right") == {an.LesionKind.SCLEROSIS}
    assert back.findings("left") == {an.LesionKind.EROSION}  # marked on the image
    with pytest.raises(ValueError):
        an.from_dict({"kind": "ruler", "id": 1, "p0": [0, 0, float("nan")], "p1": [0, 0, 0]})


def test_undo_redo():
    s = an.AnnotationSet()
    r = s.add(an.Ruler(np.zeros(3), np.ones(3)))
    s.set_finding("left", "erosion", True)
    assert s.undo() and s.findings("left") == set()
    assert s.undo() and s.items == []
    assert not s.undo()
    assert s.redo() and [a.id for a in s.items] == [r.id]
    s.clear()
    assert s.items == [] and not s.undo()


@pytest.mark.parametrize("findings,n_ero,grade", [
    ([], 0, 0), (["erosion"], 1, 2), (["sclerosis"], 0, 2), (["erosion"], 3, 3),
    (["joint-width change"], 0, 3), (["partial ankylosis", "erosion"], 1, 3), (["total ankylosis"], 0, 4)])
def test_findings_suggest_the_modified_new_york_grade(findings, n_ero, grade):
    assert an.suggest_grade(set(findings), n_erosions=n_ero) == grade


def test_suggestion_counts_marked_erosions_per_joint():
    s = an.AnnotationSet()
    for i in range(3):
        s.add(an.LesionMark("erosion", "right", [np.array([float(i), 0, 0])]))
    s.add(an.LesionMark("sclerosis", "left", [np.zeros(3)]))
    assert s.suggested_grade("right") == 3 and s.suggested_grade("left") == 2


def test_a_lesion_mark_takes_the_side_where_it_lies_not_the_dropdowns():
    """#13: with the joint selection on "right", a mark on the patient's left (+x) was "R erosion"."""
    from types import SimpleNamespace

    from sirad_viewer.imaging.volume import Volume
    from sirad_viewer.state.viewer import ViewerState

    st = ViewerState()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-100.0, -100.0, -50.0)  # x from -100 to +98 mm: centre near x = -1
    st.set_volume(Volume(np.zeros((50, 100, 100), np.int16), aff))
    seen = []
    st.tool_changed.connect(seen.append)
    st.set_tool("lesion", lesion_kind="erosion", side="right")
    m = st.mark_lesion([np.array([30.0, 0.0, 0.0])])  # patient's left of the volume's centre
    assert m.side == "left" and m.label() == "L erosion"
    assert st.lesion_side == "left" and seen[-1] == "lesion"  # the selection follows the mark
    assert an.LesionKind.EROSION in st.annotations.findings("left")
    assert st.annotations.findings("right") == set()
    # the reader's sacral line puts the midline at x = 40: x = 30 is now the right joint's
    st.set_sacral_axis_from_line(np.array([40.0, -30.0, 40.0]), np.array([40.0, 0.0, 0.0]))
    assert st.mark_lesion([np.array([30.0, 0.0, 0.0])]).side == "right"
    # revealed: the AI's joint boxes decide (a pelvis lying off centre, midline at x = 10)
    boxes = [SimpleNamespace(side="left", center_lps_mm=np.array([60.0, 0.0, 0.0])),
             SimpleNamespace(side="right", center_lps_mm=np.array([-40.0, 0.0, 0.0]))]
    st.set_overlays(boxes=boxes)
    assert st.mark_lesion([np.array([15.0, 0, 0]), np.array([25.0, 5, 0]), np.array([18.0, 9, 0])]).side == "left"
    assert st.mark_lesion([np.array([5.0, 0.0, 0.0])]).side == "right" and st.lesion_side == "right"
