"""AI and reader results as DICOM (highdicom): content, geometry, identity, and dciodvfy."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.localise import JointBox, Localisation
from sirad_viewer.ai.pipeline import GradeResult, JointResult
from sirad_viewer.errors import ExportError
from sirad_viewer.imaging.volume import SeriesMetadata, Volume
from sirad_viewer.io import dicom_results as DR
from sirad_viewer.io import load_series, scan
from sirad_viewer.io.export import write_dicom_series

GROUPS = [[0, 1], [2, 3], [4]]


class _Seg:
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels


def _ct_volume(tmp_path: Path, *, dicom: bool) -> Volume:
    """A 20 x 40 x 48 CT (2.5 x 1.2 x 1.1 mm) with a planted identity, read back from DICOM or not."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(1)
    arr = rng.integers(-200, 1200, size=(20, 40, 48)).astype(np.int16)
    aff = np.array([[0, 0, 1.1, -20.0], [0, 1.2, 0, -30.0], [-2.5, 0, 0, 60.0], [0, 0, 0, 1]])
    meta = SeriesMetadata(patient_name="DOE^JANE", patient_id="PAT-0001", study_date="20240105", modality="CT",
                          accession_number="ACC-1", study_instance_uid=str(generate_uid()),
                          series_instance_uid=str(generate_uid()), frame_of_reference_uid=str(generate_uid()))
    v = Volume(arr, aff, meta)
    if not dicom:
        return v
    write_dicom_series(v, tmp_path / "src", deidentify=False, extra_tags={"AcquisitionNumber": "1"})
    return load_series(scan(tmp_path / "src").series[0])


def _result(volume: Volume, *, ood: bool | None = None) -> GradeResult:
    joints = {}
    for side, probs, c in (("right", [0.05, 0.1, 0.6, 0.2, 0.05], 10.0), ("left", [0.7, 0.2, 0.05, 0.03, 0.02], -10.0)):
        centre = volume.index_to_world([10, 20, 24]) + np.array([c, 0, 0])
        box = JointBox(side, centre, np.eye(3)[[2, 1, 0]], np.array([30.0, 12.0, 8.0]), 100)
        block = np.linspace(0, 1, 4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
        hm = GR.Heatmap(side, int(np.argmax(probs)), block, np.array([8, 17, 20 if side == "right" else 30]),
                        volume.shape)
        jr = JointResult(side, box, np.array(probs), np.log(probs), GROUPS, hm)
        if ood is not None:
            jr.ood = {"score": 9.0 if ood else 1.0, "threshold": 5.0, "flagged": ood}
        joints[side] = jr
    labels = np.zeros(volume.shape, np.uint8)
    labels[5:15, 10:30, 20:28] = 1  # sacrum
    labels[5:15, 10:30, 4:14] = 3  # right ilium (patient right = low column index here)
    labels[5:15, 10:30, 34:44] = 2  # left ilium
    loc = Localisation(joints={s: j.box for s, j in joints.items()},
                       sacral_axis=(np.zeros(3), np.array([0.0, 0.0, -1.0])), warnings=[])
    return GradeResult({"name": "sij-test", "version": "9.8.7", "segmentation": "seg-test 1.0"}, joints, loc, {}, "cpu",
                       segmentation=_Seg(labels))


def _annotations() -> dict:
    """The reader's marks, measurements and checklist as the viewer keeps them (core objects)."""
    from sirad_viewer.state.annotations import Angle, AnnotationSet, CircleROI, LesionMark, Ruler

    a = AnnotationSet()
    a.add(Ruler(np.array([-40.0, 10.0, 5.0]), np.array([-36.5, 10.0, 5.0])))
    a.add(Angle(np.array([0.0, 0.0, 10.0]), np.zeros(3), np.array([10.0, 0.0, 0.0])))
    a.add(CircleROI(np.array([30.0, 12.0, 4.0]), 4.0, np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]),
                    {"mean": 812.5, "sd": 61.2, "min": 640.0, "max": 990.0, "n": 37}))
    a.add(LesionMark("erosion", "right", [np.array([-38.0, 11.0, 6.0])]))
    a.add(LesionMark("partial ankylosis", "left", [np.array([35.0, 9.0, 2.0]), np.array([39.0, 9.0, 2.0]),
                                                   np.array([37.0, 9.0, -3.0])]))
    a.set_finding("right", "sclerosis", True)
    return a.to_dict()


READING = {"reader": "rad01", "pre_ai": {"right": 1, "left": 2, "at": "2026-11-28T10:00:05+00:00"},
           "post_ai": {"right": 2, "left": 2, "at": "2026-11-28T10:02:30+00:00"}, "annotations": _annotations()}


@pytest.fixture(params=["dicom", "nifti"])
def written(request, tmp_path):
    vol = _ct_volume(tmp_path, dicom=request.param == "dicom")
    res = _result(vol, ood=True)
    key = {s: np.full((64, 80, 3), 90, np.uint8) for s in ("right", "left")}
    files = DR.write_ai_objects(res, vol, tmp_path / "out", key_images=key, key_pixel_mm=0.6)
    files["reader_sr"] = DR.write_reader_report(READING, vol, tmp_path / "out")
    return request.param, vol, res, files


def test_every_object_passes_dciodvfy(written):
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI"):
            raise AssertionError("dciodvfy missing in CI (apt-get install dicom3tools)")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    kind, _, _, files = written
    objs = [files[k] for k in ("ai_sr", "seg", "heatmap_right", "heatmap_left", "key_right", "key_left", "reader_sr")]
    if kind == "nifti":
        objs.append(sorted(Path(files["ct"]).glob("*.dcm"))[0])
    for f in objs:
        out = subprocess.run([exe, "-new", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{Path(f).name}: " + "\n".join(errors)


def test_ai_sr_content_identity_and_round_trip(written, caplog):
    kind, vol, res, files = written
    sr = pydicom.dcmread(files["ai_sr"])
    src = pydicom.dcmread(sorted(Path(files["ct"]).glob("*.dcm"))[0] if kind == "nifti" else vol.sources[0])
    assert (sr.PatientID, str(sr.PatientName), sr.StudyInstanceUID) == ("PAT-0001", "DOE^JANE", src.StudyInstanceUID)
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ev.SeriesInstanceUID == src.SeriesInstanceUID
    back = DR.read_ai_report(sr)
    assert back["model"] == {"name": "sij-test", "version": "9.8.7"}
    for side in ("right", "left"):
        j = res.joints[side]
        assert back["joints"][side]["grade"] == j.grade
        assert np.allclose(back["joints"][side]["probabilities"], j.probabilities)
        assert back["joints"][side]["category3_label"] == j.category_label()
        assert back["joints"][side]["ood"] is True
    assert back["patient"]["as_positive"] == res.patient_positive
    assert back["patient"]["probability"] == pytest.approx(res.patient_probability)
    # finding sites: SNOMED CT sacroiliac joint with a laterality modifier, one per joint
    items = []
    DR._walk(sr.ContentSequence, items)
    sites = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]
    assert {(s.ConceptCodeSequence[0].CodeValue, s.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning)
            for s in sites} == {("39723000", "Right"), ("39723000", "Left")}
    texts = " ".join(str(i.get("TextValue", "")) for i in items)
    assert "not for clinical use" in texts or "phantom" in texts
    with caplog.at_level(logging.DEBUG):
        DR.write_ai_objects(res, vol, Path(files["ai_sr"]).parent / "again")
    assert "PAT-0001" not in caplog.text and "DOE" not in caplog.text


def test_ood_flag_only_when_the_result_has_one(tmp_path):
    vol = _ct_volume(tmp_path, dicom=True)
    srcs, _ = DR.source_datasets(vol, tmp_path)
    sr = DR.ai_structured_report(_result(vol), srcs)
    assert DR.read_ai_report(sr)["joints"]["left"]["ood"] is None
    sr = DR.ai_structured_report(_result(vol, ood=False), srcs)
    assert DR.read_ai_report(sr)["joints"]["left"]["ood"] is False


def _to_our_grid(hd_vol, vol: Volume) -> np.ndarray:
    """Resample a highdicom volume onto our (slice, row, column) grid by exact index mapping."""
    t = np.linalg.inv(hd_vol.affine) @ vol.affine
    idx = np.indices(vol.shape).reshape(3, -1)
    j = np.rint(t[:3, :3] @ idx + t[:3, 3:4]).astype(int)
    arr = hd_vol.array
    ok = np.all((j >= 0) & (j < np.array(arr.shape[:3])[:, None]), axis=0)
    out = np.zeros(idx.shape[1], arr.dtype)
    out[ok] = arr[j[0, ok], j[1, ok], j[2, ok]]
    return out.reshape(vol.shape)


def test_seg_and_parametric_map_sit_on_the_ct(written):
    import highdicom as hd

    _, vol, res, files = written
    seg = hd.seg.segread(files["seg"])
    labels = res.segmentation.labels
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert set(names.values()) == {"sacrum", "left ilium", "right ilium"}
    lat = {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence")
           for d in seg.SegmentSequence}
    assert lat["left ilium"][0].CodeMeaning == "Left" and lat["sacrum"] is None
    for n, label in names.items():
        want = {"sacrum": 1, "left ilium": 2, "right ilium": 3}[label]
        got = _to_our_grid(seg.get_volume(segment_numbers=[n], combine_segments=True), vol)
        assert np.array_equal(got > 0, labels == want), label
    assert seg.PatientID == "PAT-0001"
    pm = pydicom.dcmread(files["heatmap_right"])
    assert pm.Laterality == "R" and pm.PatientID == "PAT-0001"
    hm = res.joints["right"].heatmap
    got = _to_our_grid(hd.pm.ParametricMap.from_dataset(pm).get_volume(), vol)
    assert np.allclose(got, hm.full(), atol=1e-6) and got.max() == pytest.approx(1.0)


def test_reader_sr_has_a_person_observer_and_both_phases(written):
    _, _, _, files = written
    sr = pydicom.dcmread(files["reader_sr"])
    items = []
    DR._walk(sr.ContentSequence, items)
    obs = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert obs[0].ConceptCodeSequence[0].CodeValue == "121006"  # Person, not Device
    assert "rad01" in [str(i.get("PersonName", "")).rstrip("^") for i in items]
    grades = [i.ConceptCodeSequence[0].CodeValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "SRD0001"]
    assert grades == ["SRDG1", "SRDG2", "SRDG2", "SRDG2"]  # right/left pre-AI, then right/left post-AI
    times = [i.DateTime for i in items if i.ConceptNameCodeSequence[0].CodeValue == "SRD0009"]
    assert times[0].startswith("20261128100005") and times[-1].startswith("20261128100230")
    assert DR.read_ai_report(sr) is None  # never mistaken for the AI's report
    assert sr.PatientID == "PAT-0001"
    with pytest.raises(ExportError):
        DR.reader_structured_report({"reader": "x", "pre_ai": {"right": 1, "left": None}}, [pydicom.dcmread(
            files["ai_sr"])])


def test_key_image_is_marked_not_for_diagnosis(written):
    _, _, _, files = written
    sc = pydicom.dcmread(files["key_left"])
    assert sc.BurnedInAnnotation == "YES" and "not for diagnosis" in sc.ImageComments and sc.Laterality == "L"
    px = sc.pixel_array
    assert (px[:4] != 90).any() and (px[-10:] == 90).all()  # text band burned in, the image below untouched


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run([sys.executable, "-m", "sirad_viewer.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_cli_report_dicom_writes_the_readers_sr(tmp_path):
    _ct_volume(tmp_path, dicom=True)
    r = _cli("report", str(tmp_path / "src"), "--right", "3", "--left", "0", "--reader", "rad07",
             "--dicom", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    sr = pydicom.dcmread(tmp_path / "out" / "reader_sr.dcm")
    items = []
    DR._walk(sr.ContentSequence, items)
    assert [i.ConceptCodeSequence[0].CodeValue for i in items
            if i.ConceptNameCodeSequence[0].CodeValue == "SRD0001"] == ["SRDG3", "SRDG0"]
    assert sr.PatientID == "PAT-0001"
    r = _cli("report", str(tmp_path / "src"), "--dicom", str(tmp_path / "out2"), "--reads", str(tmp_path / "none"))
    assert r.returncode == 2 and "no locked reader grades" in r.stderr


@pytest.mark.slow
def test_cli_grade_dicom_on_the_demo_ct(tmp_path, real_nifti):
    r = _cli("grade", str(real_nifti), "--dicom", str(tmp_path / "out"), "--device", "cpu", timeout=600)
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"ai_sr.dcm", "seg.dcm", "heatmap_right.dcm", "heatmap_left.dcm", "key_right.dcm", "key_left.dcm",
            "ct"} <= names
    rep = DR.read_ai_report(pydicom.dcmread(tmp_path / "out" / "ai_sr.dcm"))
    assert rep["model"]["name"] and set(rep["joints"]) == {"right", "left"}


def test_reader_sr_carries_the_findings_marks_and_measurements(written):
    """#13 tool 4: the lesion marks, the findings checklist and the measurements go into the reader's SR."""
    _, _, _, files = written
    sr = pydicom.dcmread(files["reader_sr"])
    got = DR.read_reader_findings(sr)
    ann = READING["annotations"]
    assert got["findings"] == {"right": ["erosion", "sclerosis"], "left": ["partial ankylosis"]}
    assert got["findings"] == ann["findings"]
    assert got["suggested_grade"] == ann["suggested_grade"] == {"right": 2, "left": 3}
    assert [r["length_mm"] for r in got["rulers"]] == pytest.approx([3.5])
    assert np.allclose(got["rulers"][0]["points"], [[-40, 10, 5], [-36.5, 10, 5]])
    assert [a["degrees"] for a in got["angles"]] == pytest.approx([90.0])
    roi = got["rois"][0]
    assert (roi["mean"], roi["sd"], roi["min"], roi["max"], roi["n"]) == pytest.approx((812.5, 61.2, 640.0, 990.0, 37))
    assert np.allclose(np.mean(roi["points"], axis=0), [30, 12, 4])  # the circle's ellipse, centred on the ROI
    les = sorted(got["lesions"], key=lambda x: x["side"])
    assert [(x["lesion"], x["side"], len(x["points"])) for x in les] == [("partial ankylosis", "left", 3),
                                                                          ("erosion", "right", 1)]
    # standard codes where they exist: SCT Length / Angle / Mean ..., DCM Attenuation Coefficient, SCT Present
    items: list = []
    DR._walk(sr.ContentSequence, items)
    concepts = {(i.ConceptNameCodeSequence[0].CodingSchemeDesignator, i.ConceptNameCodeSequence[0].CodeValue)
                for i in items if i.get("ConceptNameCodeSequence")}
    assert {("SCT", "410668003"), ("SCT", "1483009"), ("DCM", "112031"), ("DCM", "121401")} <= concepts
    units = {i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for i in items
             if i.ValueType == "NUM"}
    assert {"mm", "deg", "[hnsf'U]"} <= units
    # the grades are still read as before, and nothing makes it look like the AI's report
    assert DR.read_ai_report(sr) is None


def test_reader_sr_without_annotations_has_no_findings(tmp_path):
    vol = _ct_volume(tmp_path, dicom=False)
    reading = {k: v for k, v in READING.items() if k != "annotations"}
    sr = pydicom.dcmread(DR.write_reader_report(reading, vol, tmp_path / "out"))
    assert DR.read_reader_findings(sr) is None
