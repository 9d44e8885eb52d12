"""An AI result read back from the DICOM objects stored in a PACS, in the AI's own result type.

The viewer hands it to :meth:`Reading.receive_ai` like a fresh result, so the grade-first rule
(hidden until the reader locks) is enforced by the same owner. Nothing is recomputed: grades,
probabilities, joint boxes, sacral axis, heatmaps and bone labels all come from the stored SR,
parametric maps and SEG.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.localise import JointBox, Localisation
from sirad_viewer.ai.pipeline import GradeResult, JointResult
from sirad_viewer.io.dicom_results import load_stored_results


class _StoredLabels:
    """The stored SEG on the CT grid, with the attribute the viewer reads (``labels``)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.method = "stored DICOM SEG"


def stored_grade_result(paths: Sequence[str], volume: Any) -> GradeResult | None:
    """A :class:`GradeResult` built from the stored objects among ``paths`` that refer to
    ``volume``'s series; None when no stored AI report refers to it."""
    rep = load_stored_results(paths, volume)
    if rep is None:
        return None
    joints = {}
    for side, j in rep["joints"].items():
        b = j.get("box")
        if b is None or any(p is None for p in j["probabilities"]):
            return None
        box = JointBox(side, np.asarray(b["center_lps_mm"]), np.asarray(b["axes_lps"]), np.asarray(b["size_mm"]), 0)
        probs = np.asarray(j["probabilities"], float)
        hm = None
        if side in rep["heatmaps"]:
            h = rep["heatmaps"][side]
            hm = GR.Heatmap(side, int(h["target_grade"]), h["block"], np.asarray(h["offset"]), tuple(volume.shape))
        joints[side] = JointResult(side, box, probs, np.log(np.clip(probs, 1e-9, 1.0)),
                                   j.get("groups") or [list(g) for g in GR.DEFAULT_GROUPS], hm)
        if j.get("ood") is not None:
            # the SR keeps the flag, not the score: the same form as a fresh result's OOD record
            joints[side].ood = {"score": None, "threshold": None, "flagged": bool(j["ood"])}
    axis = rep.get("sacral_axis_lps_mm")
    if axis is None:
        return None  # not written by this program's writer: no invented axis
    loc = Localisation(joints={s: jr.box for s, jr in joints.items()},
                       sacral_axis=(np.asarray(axis[0], float), np.asarray(axis[1], float)), warnings=[])
    model = {"name": rep["model"].get("name", "?"), "version": rep["model"].get("version", "?"),
             "segmentation": "stored DICOM SEG" if rep["labels"] is not None else "none stored"}
    res = GradeResult(model, joints, loc, {}, "none (loaded from the stored report)",
                      warnings=[f"loaded from the stored DICOM report (SR {rep['sop_instance_uid']}), "
                                f"model {model['name']} {model['version']}; the model was not run"],
                      segmentation=_StoredLabels(rep["labels"]) if rep["labels"] is not None else None,
                      source="stored DICOM report")
    res.stored = True  # type: ignore[attr-defined]
    return res


__all__ = ["stored_grade_result"]
