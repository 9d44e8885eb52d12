"""One consistent story: the patient result follows its probability (positive iff P >= 0.5), the shown
3-category is the category of the shown grade, and a disagreement with the shown grades is explained."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.localise import JointBox
from sirad_viewer.ai.pipeline import GradeResult, JointResult, patient_summary

GROUPS = [[0, 1], [2, 3], [4]]


def _result(p_left, p_right) -> GradeResult:
    box = JointBox("left", np.zeros(3), np.eye(3), np.ones(3) * 30, 100)
    joints = {s: JointResult(s, box, np.asarray(p, float), np.log(np.asarray(p, float) + 1e-9), GROUPS)
              for s, p in (("left", p_left), ("right", p_right))}

    class Loc:
        def sacral_axis_dict(self):
            return {}

    return GradeResult({"name": "m", "version": "0"}, joints, Loc(), {}, "cpu")


def test_uncertain_grade_2_on_both_sides_is_negative_when_P_is_below_one_half():
    """The defect: 'positive' came from the argmax grades (2 and 2) while P was 0.30."""
    p = [0.0, 0.45, 0.55, 0.0, 0.0]
    r = _result(p, p)
    d = r.to_dict()
    assert d["patient"]["probability"] == pytest.approx(0.55 * 0.55)
    assert d["patient"]["as_positive"] is False and r.patient_positive is False
    assert d["joints"]["left"]["grade"] == 2 and d["patient"]["positive_from_shown_grades"] is True
    assert d["patient"]["agrees_with_shown_grades"] is False
    assert "0.30" in d["patient"]["explanation"] and "negative" in d["patient"]["explanation"]


def test_flat_distributions_give_P_0_68_positive_with_an_explanation():
    flat = [0.2] * 5
    d = _result(flat, flat).to_dict()
    assert d["patient"]["probability"] == pytest.approx(17 / 25)  # 9 pairs both >= 2, 8 pairs one >= 3 other < 2
    assert d["patient"]["as_positive"] is True
    assert d["joints"]["left"]["grade"] == 0  # a tie goes to the lower grade
    assert d["joints"]["left"]["category3_label"] == "0-1"
    assert d["patient"]["explanation"] and "positive" in d["patient"]["explanation"]


def test_P_exactly_one_half_is_positive():
    # left certainly grade 3 -> positive whatever the right is; P = 1. Make P = 0.5 exactly:
    left = [0.0, 0.0, 1.0, 0.0, 0.0]  # grade 2: positive iff right >= 2
    right = [0.5, 0.0, 0.5, 0.0, 0.0]  # tie between 0 and 2: shown grade 0 (lower)
    s = patient_summary(np.array(left), np.array(right))
    assert s["probability"] == pytest.approx(0.5) and s["as_positive"] is True
    assert s["positive_from_shown_grades"] is False and s["explanation"]


def test_shown_category_is_the_category_of_the_shown_grade():
    """The defect: grade 1 was shown beside category 2-3 (argmax of the summed probabilities)."""
    p = [0.05, 0.40, 0.30, 0.25, 0.0]
    j = _result(p, p).to_dict()["joints"]["left"]
    assert j["grade"] == 1 and j["category3_label"] == "0-1" and j["category3"] == 0
    assert j["category3_probabilities"] == pytest.approx([0.45, 0.55, 0.0])
    assert j["category3_most_probable"] == 1  # shown separately, as probabilities


@pytest.mark.parametrize("seed", range(20))
def test_random_distributions_always_tell_one_story(seed):
    rng = np.random.default_rng(seed)
    pl, pr = rng.dirichlet(np.ones(5) * 0.7), rng.dirichlet(np.ones(5) * 0.7)
    d = _result(pl, pr).to_dict()
    pt = d["patient"]
    assert pt["as_positive"] == (pt["probability"] >= 0.5)
    assert pt["agrees_with_shown_grades"] == (GR.patient_rule(d["joints"]["left"]["grade"], d["joints"]["right"]["grade"])
                                              == pt["as_positive"])
    assert (pt["explanation"] is None) == pt["agrees_with_shown_grades"]
    for j in d["joints"].values():
        assert j["grade"] in GROUPS[j["category3"]]
