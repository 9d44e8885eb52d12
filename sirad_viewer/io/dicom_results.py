"""AI and reader results as standard DICOM objects, written with highdicom.

* :func:`ai_structured_report` – Comprehensive 3D SR, TID 1500 measurement report: per joint a
  measurement group (finding site sacroiliac joint + laterality, the modified New York grade as a
  coded qualitative evaluation, the probability of each grade and each 3-category group, the OOD
  flag when the result has one, the joint box as a volume surface); a patient-level group; the
  model as algorithm identification with the phantom-trained disclaimer; a device observer.
* :func:`bone_segmentation` – DICOM SEG of the pelvic bones.
* :func:`heatmap_parametric_map` – the Grad-CAM heatmap of one joint as a Parametric Map.
* :func:`key_image` – a secondary-capture key image with the overlay burned in and marked
  "AI overlay - not for diagnosis".
* :func:`reader_structured_report` – the reader's grades (locked pre-AI and post-AI, times) as
  their own SR with a person observer.
* :func:`read_ai_report` – the stored AI result back from an SR (for the round trip).

Every object keeps the patient's identifiers of the source series (it goes back to the same
patient's study); research exports go through :mod:`sirad_viewer.io.deid` instead.

Codes: SNOMED CT and DCM where they exist; where they do not, the private scheme ``99SIRAD``
(see :data:`PRIVATE_CODES` and the README). Inputs are duck-typed (the AI's ``GradeResult``) so
that this io module does not import the AI package.
"""
from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sirad_viewer import __version__
from sirad_viewer.errors import ExportError

log = logging.getLogger(__name__)

SCHEME = "99SIRAD"
SCHEME_NAME = "SIRAD Viewer private codes"
MANUFACTURER = "SIRAD Viewer"
OVERLAY_TEXT = "AI overlay - not for diagnosis"
SIDES = ("right", "left")

PRIVATE_CODES: dict[str, str] = {
    "SRD0001": "Modified New York sacroiliitis grade",
    **{f"SRDG{g}": f"Modified New York grade {g}" for g in range(5)},
    **{f"SRDP{g}": f"Probability of modified New York grade {g}" for g in range(5)},
    "SRD0002": "Sacroiliitis 3-category group",
    "SRDC<a>-<b>": "Grades <a>-<b> (a 3-category group; value SRDC<a> for a single grade)",
    "SRDPC<a>-<b>": "Probability of grades <a>-<b>",
    "SRD0005": "Input outside the model's training distribution",
    "SRD0006": "Modified New York criterion for ankylosing spondylitis",
    "SRD0007": "Probability that the modified New York criterion is met",
    "SRD0008": "Reading phase",
    "SRD0081": "Unaided, locked before the AI reveal",
    "SRD0082": "Aided, after the AI reveal",
    "SRD0009": "Time graded",
    "SRD0010": "Gradient-weighted class activation (Grad-CAM)",
    "SRD0011": "Sacral axis (superior point, inferior point)",
    # the reader's findings (#13): no SCT code for these SIJ lesions in pydicom's code dictionary
    "SRD0012": "Modified New York grade suggested by the findings",
    "SRD0013": "Number of voxels in the region",
    "SRDL1": "Erosion",
    "SRDL2": "Sclerosis",
    "SRDL3": "Joint-width change",
    "SRDL4": "Partial ankylosis",
    "SRDL5": "Total ankylosis",
}
# lesion kinds (sirad_viewer.state.annotations.LesionKind values) -> their private codes
LESION_CODES = {"erosion": "SRDL1", "sclerosis": "SRDL2", "joint-width change": "SRDL3",
                "partial ankylosis": "SRDL4", "total ankylosis": "SRDL5"}
_LESION_BY_CODE = {v: k for k, v in LESION_CODES.items()}


def _code(value: str, meaning: str | None = None):
    import highdicom as hd

    return hd.sr.CodedConcept(value, SCHEME, meaning or PRIVATE_CODES[value])


def _sct():
    from pydicom.sr.codedict import codes

    return codes


def _group_label(group: Sequence[int]) -> str:
    return f"{group[0]}-{group[-1]}" if len(group) > 1 else str(group[0])


def _now_dt() -> str:
    return _dt.datetime.now().strftime("%Y%m%d%H%M%S")


# --- source series ----------------------------------------------------------------------------

def _is_dicom(p: str | Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def source_datasets(volume: Any, work_dir: str | Path) -> tuple[list, list[Path]]:
    """The CT series the results refer to, as header-only data sets.

    A volume read from DICOM refers to its own files. Any other source (NIfTI, NRRD, MHA) is first
    written as a CT DICOM series into ``work_dir/ct`` with the existing export (identity as the
    volume carries it), and the results refer to that; its paths are returned so it can be stored
    with them.
    """
    import pydicom

    from sirad_viewer.io.export import write_dicom_series

    files = [Path(s) for s in getattr(volume, "sources", []) if _is_dicom(s)]
    written: list[Path] = []
    if not files:
        written = write_dicom_series(volume, Path(work_dir) / "ct", deidentify=False,
                                     series_description=volume.metadata.series_description or "CT (from NIfTI)",
                                     extra_tags={"AcquisitionNumber": "1"})  # CT Image module, Type 2
        files = written
    dss = []
    for f in files:
        try:
            dss.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
            raise ExportError(f"source file cannot be read ({exc})", path=f) from exc
    series = {str(d.SeriesInstanceUID) for d in dss}
    if len(series) != 1 or not next(iter(series)):
        raise ExportError(f"the volume's files belong to {len(series)} series or have no Series Instance UID; "
                          "results must refer to exactly one series", path=files[0])
    if not str(dss[0].get("FrameOfReferenceUID", "")):
        raise ExportError("the source series has no Frame of Reference UID", path=files[0])
    return dss, written


def _hd_volume(array: np.ndarray, affine: np.ndarray, for_uid: str):
    import highdicom as hd

    # Our affine maps (slice, row, column) indices to LPS mm, highdicom's the same axes to the
    # patient frame (LPS): they are the same matrix.
    return hd.Volume(array=array, affine=np.asarray(affine, float), coordinate_system="PATIENT",
                     frame_of_reference_uid=for_uid)


def _algorithm(result: Any):
    import highdicom as hd

    m = dict(getattr(result, "model", {}) or {})
    params = [f"segmentation: {m['segmentation']}"] if m.get("segmentation") else []
    params.append(_disclaimer(result))
    return hd.sr.AlgorithmIdentification(name=str(m.get("name", "unknown")), version=str(m.get("version", "?")),
                                         parameters=params)


def _disclaimer(result: Any) -> str:
    d = getattr(result, "disclaimer", None)
    if not d and hasattr(result, "to_dict"):
        d = result.to_dict().get("disclaimer")
    return str(d or "phantom-trained demonstration model: not for clinical use")


def _ood_flag(obj: Any) -> bool | None:
    """The OOD flag of a joint result (``ood = {"score", "threshold", "flagged"}``, see ai.pipeline);
    None when the bundle has no OOD statistics."""
    v = getattr(obj, "ood", None)
    if isinstance(v, dict):
        return bool(v["flagged"]) if "flagged" in v else None
    return None



def _finish(ds, description: str, *, laterality: str | None = None):
    """Series description; the private coding scheme declared (PS3.3 C.12.1.1.4); laterality of a
    one-joint object (General Series, Type 2C: absent when the object covers both sides)."""
    from pydicom.dataset import Dataset

    ds.SeriesDescription = description[:64]
    _fill_slice_thickness(ds)
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "SIRAD Viewer project"
    ds.CodingSchemeIdentificationSequence = [item]
    if laterality is not None:
        ds.Laterality = {"right": "R", "left": "L"}[laterality]
    return ds


def _fill_slice_thickness(ds) -> None:
    """Pixel Measures of a multi-frame object on the CT grid need SliceThickness (Type 1C). highdicom
    copies it from the source images; a source without one (our exports invent none) leaves it out,
    and the voxel thickness of the derived grid, its slice spacing, is then the honest value."""
    for fg in ds.get("SharedFunctionalGroupsSequence", []) or []:
        for pm in fg.get("PixelMeasuresSequence", []) or []:
            if "SliceThickness" not in pm and "SpacingBetweenSlices" in pm:
                pm.SliceThickness = pm.SpacingBetweenSlices


# --- AI structured report ---------------------------------------------------------------------

def _joint_group(side: str, jr: Any, result: Any, for_uid: str, series_uid: str, algo):
    import highdicom as hd

    codes = _sct()
    probs = np.asarray(jr.probabilities, float)
    groups = [list(g) for g in jr.groups]
    cat = np.asarray(jr.category3_probabilities, float)
    quals = [hd.sr.QualitativeEvaluation(_code("SRD0001"), _code(f"SRDG{int(jr.grade)}"))]
    label = _group_label(groups[int(jr.category3)])
    quals.append(hd.sr.QualitativeEvaluation(_code("SRD0002"), _code(f"SRDC{label}", f"Grades {label}")))
    flag = _ood_flag(jr)
    flag = _ood_flag(result) if flag is None else flag
    if flag is not None:
        quals.append(hd.sr.QualitativeEvaluation(_code("SRD0005"), codes.SCT.Yes if flag else codes.SCT.No))
    unit = codes.UCUM.NoUnits
    meas = [hd.sr.Measurement(_code(f"SRDP{g}"), float(p), unit) for g, p in enumerate(probs)]
    meas += [hd.sr.Measurement(_code(f"SRDPC{_group_label(g)}", f"Probability of grades {_group_label(g)}"),
                               float(p), unit) for g, p in zip(groups, cat)]
    box = jr.box
    axes = np.asarray(box.axes_lps, float)
    half = np.asarray(box.size_mm, float) / 2.0
    order = np.argsort(-half)  # ellipsoid: major, minor, third axis
    c = np.asarray(box.center_lps_mm, float)
    pts = np.concatenate([[c - half[i] * axes[i], c + half[i] * axes[i]] for i in order])
    surface = hd.sr.VolumeSurface(graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID, graphic_data=pts,
                                  frame_of_reference_uid=for_uid,
                                  source_series=hd.sr.SourceSeriesForSegmentation(series_uid))
    lat = codes.SCT.Right if side == "right" else codes.SCT.Left
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{side} sacroiliac joint"),
        referenced_volume_surface=surface, algorithm_id=algo,
        finding_sites=[hd.sr.FindingSite(codes.SCT.SacroiliacJoint, laterality=lat)],
        measurements=meas, qualitative_evaluations=quals)


def ai_structured_report(result: Any, srcs: list, *, series_number: int = 901):
    """TID 1500 measurement report of the AI result, referring to the source CT series.

    Parameters
    ----------
    result : the AI's GradeResult (``model``, ``joints`` with ``probabilities``, ``grade``,
        ``groups``, ``category3``, ``category3_probabilities``, ``box``; ``patient_probability``,
        ``patient_positive``; optional ``ood``)
    srcs : header-only data sets of the source CT series (:func:`source_datasets`)
    """
    import highdicom as hd

    codes = _sct()
    for_uid = str(srcs[0].FrameOfReferenceUID)
    series_uid = str(srcs[0].SeriesInstanceUID)
    algo = _algorithm(result)
    m = dict(result.model)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=f"SIRAD AI {m.get('name', '')}"[:64], manufacturer_name=MANUFACTURER,
            model_name=f"{m.get('name', '')} {m.get('version', '')}"[:64]))
    groups = [_joint_group(s, result.joints[s], result, for_uid, series_uid, algo) for s in SIDES]
    positive = bool(result.patient_positive)
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient"),
        algorithm_id=algo,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            _code("SRD0006"), codes.SCT.Positive if positive else codes.SCT.Negative)],
        measurements=[hd.sr.Measurement(_code("SRD0007"), float(result.patient_probability), codes.UCUM.NoUnits)]))
    axis = getattr(getattr(result, "localisation", None), "sacral_axis", None)
    if axis is not None:
        groups[-1][0].ContentSequence.append(hd.sr.Scoord3DContentItem(
            name=_code("SRD0011"), graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
            graphic_data=np.asarray(axis, float).reshape(2, 3), frame_of_reference_uid=for_uid,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=srcs, content=report[0], series_instance_uid=hd.UID(),
                                 series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
                                 manufacturer=MANUFACTURER, is_complete=True)
    return _finish(sr, f"SIRAD AI result {m.get('name', '')} {m.get('version', '')}")


# --- reader structured report -----------------------------------------------------------------

def _iso_to_dt(iso: str | None) -> str | None:
    if not iso:
        return None
    try:
        t = _dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.strftime("%Y%m%d%H%M%S")


def reader_structured_report(reading: dict, srcs: list, *, series_number: int = 902):
    """The reader's grades as TID 1500 with a person observer (kept apart from the AI's device).

    ``reading`` is a reads-log record (:func:`sirad_viewer.state.reading.latest_reading`) or
    ``Reading.summary()``: ``reader``, ``pre_ai`` {right, left, at}, ``post_ai`` or None.
    """
    import highdicom as hd

    codes = _sct()
    pre = reading.get("pre_ai") or {}
    if pre.get("right") is None or pre.get("left") is None:
        raise ExportError("the reader's SR needs locked pre-AI grades for both joints")
    reader = str(reading.get("reader") or "reader")
    person = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=(reader if "^" in reader else reader + "^")[:64], login_name=reader[:64]))
    phases = [("SRD0081", pre, pre.get("at") or reading.get("locked_at"))]
    post = reading.get("post_ai")
    if post and post.get("right") is not None and post.get("left") is not None:
        phases.append(("SRD0082", post, post.get("at")))
    groups = []
    for phase, grades, at in phases:
        for side in SIDES:
            lat = codes.SCT.Right if side == "right" else codes.SCT.Left
            g = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{side} sacroiliac joint, {'pre' if phase == 'SRD0081' else 'post'}-AI"),
                finding_sites=[hd.sr.FindingSite(codes.SCT.SacroiliacJoint, laterality=lat)],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(_code("SRD0001"),
                                                                    _code(f"SRDG{int(grades[side])}")),
                                         hd.sr.QualitativeEvaluation(_code("SRD0008"), _code(phase))])
            when = _iso_to_dt(at)
            if when:
                g[0].ContentSequence.append(hd.sr.DateTimeContentItem(
                    name=_code("SRD0009"), value=_dt.datetime.strptime(when, "%Y%m%d%H%M%S"),
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
            groups.append(g)
    if reading.get("annotations"):
        groups += _finding_groups(reading["annotations"], str(srcs[0].FrameOfReferenceUID))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(evidence=srcs, content=report[0], series_instance_uid=hd.UID(),
                                 series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
                                 manufacturer=MANUFACTURER, is_complete=True)
    return _finish(sr, f"Reader grades ({reader})")


def _finding_groups(ann: dict, for_uid: str) -> list:
    """The reader's findings checklist, lesion marks and measurements as TID 1500 measurement groups.

    ``ann`` is :meth:`sirad_viewer.state.annotations.AnnotationSet.to_dict` output. Per joint, one
    TID 1501 group holds each lesion kind as a qualitative evaluation (SCT Present / Absent) and
    the grade the findings suggest. A ruler is a TID 1501 group with SCT Length (mm) inferred from
    a 3D polyline; an angle, SCT Angle (degrees) from the polyline a-vertex-b; a circular ROI, a
    TID 1410 planar ROI (3D ellipse) with DCM Attenuation Coefficient in HU and SCT Mean,
    Standard Deviation, Minimum, Maximum as derivations; a lesion mark, a TID 1410 planar ROI
    (a point, or the region's polygon) with the lesion kind as finding type and the joint as site.
    The lesion kinds, the suggested grade and the voxel count use private 99SIRAD codes (no
    SCT/DCM code for them in pydicom's dictionary).
    """
    import highdicom as hd

    codes = _sct()
    groups: list = []

    def site(side: str):
        return hd.sr.FindingSite(codes.SCT.SacroiliacJoint, laterality=codes.SCT.Right if side == "right" else codes.SCT.Left)

    def track(text: str):
        return hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=text)

    def coords(kind: str, pts):
        return hd.sr.CoordinatesForMeasurement3D(graphic_type=kind, graphic_data=np.asarray(pts, float).reshape(-1, 3),
                                                 frame_of_reference_uid=for_uid)

    findings = ann.get("findings") or {}
    for side in SIDES:
        present = set(findings.get(side) or [])
        quals = [hd.sr.QualitativeEvaluation(_code(code), codes.SCT.Present if kind in present else codes.SCT.Absent)
                 for kind, code in LESION_CODES.items()]
        sug = (ann.get("suggested_grade") or {}).get(side)
        if sug is not None:
            quals.append(hd.sr.QualitativeEvaluation(_code("SRD0012"), _code(f"SRDG{int(sug)}")))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=track(f"{side} sacroiliac joint, reader's findings"), finding_sites=[site(side)],
            qualitative_evaluations=quals))
    for item in ann.get("items") or []:
        kind = item.get("kind")
        ident = f"{kind} {item.get('id')}"
        if kind == "ruler":
            p0, p1 = np.asarray(item["p0"], float), np.asarray(item["p1"], float)
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=track(ident), measurements=[hd.sr.Measurement(
                    codes.SCT.Length, float(np.linalg.norm(p1 - p0)), codes.UCUM.Millimeter,
                    referenced_coordinates=[coords("POLYLINE", [p0, p1])])]))
        elif kind == "angle":
            a, v, b = (np.asarray(item[k], float) for k in ("a", "vertex", "b"))
            u, w = a - v, b - v
            deg = float(np.degrees(np.arccos(np.clip(u @ w / (np.linalg.norm(u) * np.linalg.norm(w)), -1.0, 1.0))))
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=track(ident), measurements=[hd.sr.Measurement(
                    codes.SCT.Angle, deg, codes.UCUM.Degree, referenced_coordinates=[coords("POLYLINE", [a, v, b])])]))
        elif kind == "roi":
            c = np.asarray(item["center"], float)
            r = float(item["radius_mm"])
            right, down = np.asarray(item["right"], float), np.asarray(item["down"], float)
            ellipse = np.array([c - r * right, c + r * right, c - r * down, c + r * down])
            st = item.get("stats") or {}
            ms = [hd.sr.Measurement(codes.DCM.AttenuationCoefficient, float(st[k]), codes.UCUM.HounsfieldUnit,
                                    derivation=getattr(codes.SCT, d))
                  for k, d in (("mean", "Mean"), ("sd", "StandardDeviation"), ("min", "Minimum"), ("max", "Maximum"))
                  if k in st]
            if "n" in st:
                ms.append(hd.sr.Measurement(_code("SRD0013"), float(st["n"]), codes.UCUM.NoUnits))
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=track(ident), measurements=ms or None,
                referenced_region=hd.sr.ImageRegion3D(graphic_type="ELLIPSE", graphic_data=ellipse,
                                                      frame_of_reference_uid=for_uid)))
        elif kind == "lesion":
            pts = np.asarray(item["points"], float).reshape(-1, 3)
            if len(pts) >= 3:
                gtype, data = "POLYGON", np.vstack([pts, pts[:1]])
            elif len(pts) == 2:
                gtype, data = "POLYLINE", pts
            else:
                gtype, data = "POINT", pts[:1]
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=track(f"{ident}, {item['side']} sacroiliac joint"),
                finding_type=_code(LESION_CODES[item["lesion"]]), finding_sites=[site(item["side"])],
                referenced_region=hd.sr.ImageRegion3D(graphic_type=gtype, graphic_data=data,
                                                      frame_of_reference_uid=for_uid)))
    return groups


def read_reader_findings(ds: Any) -> dict[str, Any] | None:
    """The reader's findings and measurements from a reader SR written here (None for any other object).

    Returns ``{"findings": {side: [kind, ...]}, "suggested_grade": {side: grade}, "rulers": [{"length_mm",
    "points"}], "angles": [{"degrees", "points"}], "rois": [{"mean", "sd", "min", "max", "n", "points"}],
    "lesions": [{"lesion", "side", "points"}]}`` (points in LPS mm).
    """
    if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.88.34":
        return None
    out: dict[str, Any] = {"findings": {}, "suggested_grade": {}, "rulers": [], "angles": [], "rois": [], "lesions": []}
    seen = False
    for group in ds.get("ContentSequence") or []:
        if group.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for mg in group.ContentSequence:
            sub, ident = _group_items(mg)
            names = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sub if i.get("ConceptNameCodeSequence")}
            scoord = next((i for i in sub if i.ValueType == "SCOORD3D"), None)
            pts = None if scoord is None else np.asarray(scoord.GraphicData, float).reshape(-1, 3).tolist()
            if scoord is not None and scoord.GraphicType == "POLYGON":
                pts = pts[:-1]  # the closing point repeats the first
            if ident.endswith("reader's findings"):
                side = ident.split(" ")[0]
                out["findings"][side] = sorted(_LESION_BY_CODE[cv] for cv, i in names.items()
                                               if cv in _LESION_BY_CODE and i.ConceptCodeSequence[0].CodeValue == "52101004")
                if "SRD0012" in names:
                    out["suggested_grade"][side] = int(names["SRD0012"].ConceptCodeSequence[0].CodeValue[-1])
                seen = True
            elif ident.startswith("ruler "):
                out["rulers"].append({"length_mm": float(names["410668003"].MeasuredValueSequence[0].NumericValue),
                                      "points": pts})
            elif ident.startswith("angle "):
                out["angles"].append({"degrees": float(names["1483009"].MeasuredValueSequence[0].NumericValue),
                                      "points": pts})
            elif ident.startswith("roi "):
                roi: dict[str, Any] = {"points": pts}
                for i in sub:
                    cv = i.ConceptNameCodeSequence[0].CodeValue if i.get("ConceptNameCodeSequence") else ""
                    if cv == "112031":
                        der = next((m.ConceptCodeSequence[0].CodeValue for m in i.get("ContentSequence") or []
                                    if m.ConceptNameCodeSequence[0].CodeValue == "121401"), None)
                        key = {"373098007": "mean", "386136009": "sd", "255605001": "min", "56851009": "max"}.get(der or "")
                        if key:
                            roi[key] = float(i.MeasuredValueSequence[0].NumericValue)
                    elif cv == "SRD0013":
                        roi["n"] = int(float(i.MeasuredValueSequence[0].NumericValue))
                out["rois"].append(roi)
            elif ident.startswith("lesion "):
                ftype = names.get("121071")  # Finding
                code = ftype.ConceptCodeSequence[0].CodeValue if ftype is not None else ""
                out["lesions"].append({"lesion": _LESION_BY_CODE.get(code), "side": ident.rsplit(", ", 1)[-1].split(" ")[0],
                                       "points": pts})
    return out if seen else None


# --- segmentation, parametric map, key images -------------------------------------------------

BONE_SEGMENTS = {1: ("sacrum", "Sacrum", None), 2: ("left ilium", "Ilium", "Left"), 3: ("right ilium", "Ilium", "Right"),
                 4: ("other bone", "Bone", None)}


def bone_segmentation(labels: np.ndarray, affine: np.ndarray, srcs: list, result: Any = None, *,
                      series_number: int = 903):
    """DICOM SEG (binary, one segment per bone) of a label map on the CT grid.

    labels : ndarray of shape (S, R, C), values 0 background, 1 sacrum, 2 left ilium, 3 right
        ilium, 4 other bone.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset

    codes = _sct()
    labels = np.asarray(labels)
    present = [k for k in BONE_SEGMENTS if (labels == k).any()]
    if not present:
        raise ExportError("the segmentation is empty: no bone label to write")
    m = dict(getattr(result, "model", {}) or {})
    seg_name = str(m.get("segmentation", "classical segmentation"))
    algo = hd.AlgorithmIdentificationSequence(name=seg_name[:64], family=codes.DCM.ArtificialIntelligence,
                                              version=str(m.get("version", __version__))[:64])
    descs = []
    remap = np.zeros(int(labels.max()) + 1, np.uint8)
    for n, k in enumerate(present, start=1):
        label, prop, lat = BONE_SEGMENTS[k]
        d = hd.seg.SegmentDescription(segment_number=n, segment_label=label,
                                      segmented_property_category=codes.SCT.AnatomicalStructure,
                                      segmented_property_type=getattr(codes.SCT, prop),
                                      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                      algorithm_identification=algo)
        if lat:
            mod = Dataset()
            c = getattr(codes.SCT, lat)
            mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = c.value, c.scheme_designator, c.meaning
            d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [mod]
        descs.append(d)
        remap[k] = n
    vol = _hd_volume(remap[labels], affine, str(srcs[0].FrameOfReferenceUID))
    seg = hd.seg.Segmentation(source_images=srcs, pixel_array=vol, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                              segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=series_number,
                              sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
                              manufacturer_model_name="SIRAD Viewer", software_versions=__version__,
                              device_serial_number="none", content_label="PELVIC_BONES",
                              content_description="Pelvic bones (AI segmentation)")
    return _finish(seg, "SIRAD pelvic bones (AI)")


def heatmap_parametric_map(heatmap: Any, affine: np.ndarray, srcs: list, side: str, result: Any = None, *,
                           series_number: int = 904):
    """Parametric Map (float, 0..1) of one joint's Grad-CAM heatmap.

    Only the block of CT voxels the heatmap covers is written (``heatmap.block`` at
    ``heatmap.offset``), on the CT's own grid in the same frame of reference.
    """
    import highdicom as hd

    codes = _sct()
    block = np.asarray(heatmap.block, np.float32)
    off = np.asarray(heatmap.offset, float)
    aff = np.array(affine, float)
    aff[:3, 3] = aff[:3, :3] @ off + aff[:3, 3]  # block index (0,0,0) -> CT index offset
    vol = _hd_volume(np.clip(block, 0.0, 1.0), aff, str(srcs[0].FrameOfReferenceUID))
    rwvm = hd.pm.RealWorldValueMapping(
        lut_label="GRADCAM", lut_explanation=f"Grad-CAM for grade {heatmap.target_grade}, {side} joint",
        unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1.0, intercept=0.0,
        quantity_definition=_code("SRD0010"))
    pm = hd.pm.ParametricMap(source_images=srcs, pixel_array=vol, series_instance_uid=hd.UID(),
                             series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
                             manufacturer=MANUFACTURER, manufacturer_model_name="SIRAD Viewer",
                             software_versions=__version__, device_serial_number="none",
                             contains_recognizable_visual_features=False, real_world_value_mappings=[rwvm],
                             voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
                             content_label=f"GRADCAM_{side[0].upper()}",
                             content_description=f"AI heatmap {side} SIJ, grade {heatmap.target_grade}")
    return _finish(pm, f"SIRAD AI heatmap {side} SIJ", laterality=side)


def burn_in_label(rgb: np.ndarray, text: str = OVERLAY_TEXT) -> np.ndarray:
    """The image with ``text`` written into its pixels (white on a black band at the top)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    band = max(12, img.height // 16)
    draw.rectangle([0, 0, img.width, band], fill=(0, 0, 0))
    draw.text((3, max(0, (band - 10) // 2)), text, fill=(255, 255, 255))
    return np.asarray(img)


def key_image(rgb: np.ndarray, srcs: list, side: str, *, pixel_mm: float | None = None, series_number: int = 905,
              instance_number: int = 1, series_uid: str | None = None):
    """Secondary-capture key image of one joint with the AI overlay burned in and marked."""
    import highdicom as hd

    src = srcs[0]
    pix = burn_in_label(rgb)
    sc = hd.sc.SCImage(
        pixel_array=pix, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=str(src.StudyInstanceUID), series_instance_uid=series_uid or hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=instance_number,
        manufacturer=MANUFACTURER, patient_id=str(src.get("PatientID", "")),
        patient_name=src.get("PatientName", ""), patient_birth_date=str(src.get("PatientBirthDate", "")),
        patient_sex=str(src.get("PatientSex", "")) or None, accession_number=str(src.get("AccessionNumber", "")),
        study_id=str(src.get("StudyID", "")), study_date=str(src.get("StudyDate", "")) or None,
        study_time=str(src.get("StudyTime", "")) or None,
        referring_physician_name=src.get("ReferringPhysicianName", ""), patient_orientation=("L", "F"),
        pixel_spacing=(pixel_mm, pixel_mm) if pixel_mm else None)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{OVERLAY_TEXT}; oblique coronal through the {side} sacroiliac joint"
    return _finish(sc, f"SIRAD AI key images ({OVERLAY_TEXT})", laterality=side)


# --- writing everything -----------------------------------------------------------------------

def write_ai_objects(result: Any, volume: Any, out_dir: str | Path, *, key_images: dict[str, np.ndarray] | None = None,
                     key_pixel_mm: float | None = None, labels: np.ndarray | None = None) -> dict[str, Path]:
    """Write the AI's SR, SEG, one Parametric Map per joint with a heatmap and (optional) key
    images into ``out_dir`` (one ``.dcm`` each). Returns ``{kind: path}``; a NIfTI source is first
    written as a DICOM series into ``out_dir/ct`` (``ct`` in the result, a folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srcs, written = source_datasets(volume, out)
    files: dict[str, Path] = {}
    if written:
        files["ct"] = out / "ct"

    def save(kind: str, ds) -> None:
        p = out / f"{kind}.dcm"
        try:
            ds.save_as(p, enforce_file_format=True)
        except OSError as exc:
            raise ExportError(f"cannot be written: {exc}", path=p) from exc
        files[kind] = p

    save("ai_sr", ai_structured_report(result, srcs))
    seg = getattr(result, "segmentation", None)
    lab = labels if labels is not None else (getattr(seg, "labels", None) if seg is not None else None)
    if lab is not None and np.asarray(lab).shape == tuple(volume.shape):
        save("seg", bone_segmentation(lab, volume.affine, srcs, result))
    for side in SIDES:
        hm = result.joints[side].heatmap
        if hm is not None:
            save(f"heatmap_{side}", heatmap_parametric_map(hm, volume.affine, srcs, side, result))
    if key_images:
        import highdicom as hd

        uid = hd.UID()
        for k, side in enumerate(SIDES, start=1):
            if side in key_images:
                save(f"key_{side}", key_image(key_images[side], srcs, side, pixel_mm=key_pixel_mm, series_uid=uid,
                                              instance_number=k))
    log.info("wrote %d DICOM result object(s) into %s", len(files), out)
    return files


def write_reader_report(reading: dict, volume: Any, out_dir: str | Path) -> Path:
    """The reader's SR as ``reader_sr.dcm`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srcs, _ = source_datasets(volume, out)
    p = out / "reader_sr.dcm"
    reader_structured_report(reading, srcs).save_as(p, enforce_file_format=True)
    return p


# --- reading a stored AI result back ----------------------------------------------------------

def _group_items(mg: Any) -> tuple[list, str]:
    """A measurement group's content items (flattened) and its Tracking Identifier (112039) text."""
    sub: list = []
    _walk(mg.get("ContentSequence"), sub)
    ident = next((str(i.TextValue) for i in sub if i.ValueType == "TEXT"
                  and i.ConceptNameCodeSequence[0].CodeValue == "112039"), "")
    return sub, ident


def _walk(items, out: list) -> None:
    for it in items or []:
        out.append(it)
        _walk(it.get("ContentSequence"), out)


def read_ai_report(ds: Any) -> dict[str, Any] | None:
    """The AI result stored in one of our SRs (None for any other object).

    Returns ``{"model": {"name", "version"}, "joints": {side: {"grade", "probabilities",
    "category3_label", "ood"}}, "patient": {"as_positive", "probability"}, "sop_instance_uid",
    "content_datetime"}``.
    """
    if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.88.34":
        return None
    items: list = []
    _walk(ds.get("ContentSequence"), items)
    if not any(getattr(i.get("ConceptNameCodeSequence", [None])[0], "CodingSchemeDesignator", "") == SCHEME
               for i in items if i.get("ConceptNameCodeSequence")):
        return None
    res: dict[str, Any] = {"model": {}, "joints": {}, "patient": {},
                           "sop_instance_uid": str(ds.SOPInstanceUID),
                           "content_datetime": f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"}
    observer_person = False
    for group in ds.ContentSequence:
        name = group.ConceptNameCodeSequence[0]
        if name.CodeMeaning == "Observer Type" and group.get("ConceptCodeSequence"):
            observer_person = group.ConceptCodeSequence[0].CodeValue == "121006"
        if name.CodeMeaning != "Imaging Measurements":
            continue
        for mg in group.ContentSequence:
            sub, ident = _group_items(mg)
            for i in sub:
                cn = i.ConceptNameCodeSequence[0]
                if cn.CodeValue == "111001":
                    res["model"]["name"] = str(i.TextValue)
                elif cn.CodeValue == "111003":
                    res["model"]["version"] = str(i.TextValue)
            if ident == "patient":
                for i in sub:
                    cv = i.ConceptNameCodeSequence[0].CodeValue
                    if cv == "SRD0011":
                        pts = np.asarray(i.GraphicData, float).reshape(2, 3)
                        res["sacral_axis_lps_mm"] = [pts[0].tolist(), pts[1].tolist()]
                    elif cv == "SRD0006":
                        res["patient"]["as_positive"] = i.ConceptCodeSequence[0].CodeValue == "10828004"
                    elif cv == "SRD0007":
                        res["patient"]["probability"] = float(i.MeasuredValueSequence[0].NumericValue)
                continue
            side = ident.split(" ")[0]
            if side not in SIDES:
                continue
            j: dict[str, Any] = {"probabilities": [None] * 5, "ood": None}
            for i in sub:
                cv = i.ConceptNameCodeSequence[0].CodeValue
                if cv == "SRD0001":
                    j["grade"] = int(i.ConceptCodeSequence[0].CodeValue[-1])
                elif cv == "SRD0002":
                    j["category3_label"] = i.ConceptCodeSequence[0].CodeValue[4:]
                elif cv == "SRD0005":
                    j["ood"] = i.ConceptCodeSequence[0].CodeValue == "373066001"
                elif cv.startswith("SRDP") and not cv.startswith("SRDPC"):
                    j["probabilities"][int(cv[4:])] = float(i.MeasuredValueSequence[0].NumericValue)
                elif cv.startswith("SRDPC"):
                    lab = cv[5:]
                    a, _, b = lab.partition("-")
                    j.setdefault("groups", []).append(list(range(int(a), int(b or a) + 1)))
                elif i.ValueType == "SCOORD3D" and i.GraphicType == "ELLIPSOID":
                    pts = np.asarray(i.GraphicData, float).reshape(6, 3)
                    ends = pts.reshape(3, 2, 3)
                    vec = ends[:, 1] - ends[:, 0]
                    size = np.linalg.norm(vec, axis=1)
                    j["box"] = {"center_lps_mm": pts.mean(axis=0).tolist(),
                                "axes_lps": (vec / size[:, None]).tolist(), "size_mm": size.tolist()}
            res["joints"][side] = j
    if observer_person or set(res["joints"]) != set(SIDES):
        return None
    return res


def _grid_map(hd_affine: np.ndarray, ct_affine: np.ndarray, *, what: str) -> np.ndarray:
    """CT index -> object index as an integer matrix (the object must lie on the CT's grid)."""
    t = np.linalg.inv(hd_affine) @ np.asarray(ct_affine, float)
    if not np.allclose(t, np.rint(t), atol=1e-3):
        raise ExportError(f"the stored {what} is not on the CT's voxel grid; it cannot be shown on this series")
    return np.rint(t).astype(int)


def _onto_ct(hd_vol: Any, ct_affine: np.ndarray, ct_shape: tuple, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The part of a highdicom volume that covers the CT, as (block, offset) in CT index space."""
    arr = np.asarray(hd_vol.array)
    if arr.ndim == 4:
        arr = arr[..., 0]
    inv = _grid_map(np.asarray(ct_affine, float), hd_vol.affine, what=what)  # object index -> CT index
    corners = np.array([[i, j, k, 1] for i in (0, arr.shape[0] - 1) for j in (0, arr.shape[1] - 1)
                        for k in (0, arr.shape[2] - 1)]).T
    ct = (inv @ corners)[:3]
    lo = np.clip(ct.min(axis=1), 0, np.asarray(ct_shape) - 1)
    hi = np.clip(ct.max(axis=1) + 1, 1, np.asarray(ct_shape))
    t = _grid_map(hd_vol.affine, ct_affine, what=what)  # CT index -> object index
    idx = np.indices(tuple(int(h - l) for l, h in zip(lo, hi))).reshape(3, -1) + lo[:, None]
    j = t[:3, :3] @ idx + t[:3, 3:4]
    ok = np.all((j >= 0) & (j < np.array(arr.shape)[:, None]), axis=0)
    block = np.zeros(idx.shape[1], arr.dtype)
    block[ok] = arr[j[0, ok], j[1, ok], j[2, ok]]
    return block.reshape(tuple(int(h - l) for l, h in zip(lo, hi))), lo.astype(int)


_RESULT_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30"}


def load_stored_results(paths: Sequence[str | Path], volume: Any) -> dict[str, Any] | None:
    """The newest stored AI result (SR) for ``volume``'s series among ``paths``, with its bone
    segmentation (SEG) and heatmaps (parametric maps) put on the CT grid; None when there is none.

    Returns the :func:`read_ai_report` dict plus ``labels`` (ndarray of shape (S, R, C) or None)
    and ``heatmaps`` ({side: {"block", "offset", "target_grade"}}).
    """
    import highdicom as hd
    import pydicom

    series_uid = str(getattr(volume.metadata, "series_instance_uid", "") or "")
    if not series_uid:
        return None
    reports, segs, pms = [], [], []
    for p in paths:
        if not _is_dicom(p):
            continue
        try:  # the SOP class first (cheap), so a folder of CT slices is passed over quickly
            head = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            if str(head.get("SOPClassUID", "")) not in _RESULT_CLASSES:
                continue
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not ours to read: skip it like the loader does
            continue
        refs = {str(s.SeriesInstanceUID) for e in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for s in e.ReferencedSeriesSequence}
        refs |= {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
        if series_uid not in refs:
            continue
        cls = str(ds.SOPClassUID)
        if cls == "1.2.840.10008.5.1.4.1.1.88.34":
            rep = read_ai_report(pydicom.dcmread(p))
            if rep is not None:
                reports.append(rep)
        elif cls == "1.2.840.10008.5.1.4.1.1.66.4":
            segs.append(p)
        elif cls == "1.2.840.10008.5.1.4.1.1.30":
            pms.append(p)
    if not reports:
        return None
    rep = max(reports, key=lambda r: r["content_datetime"])
    rep["labels"] = None
    if segs:
        seg = hd.seg.segread(sorted(segs)[-1])
        ids = {d.SegmentNumber: next((k for k, v in BONE_SEGMENTS.items() if v[0] == d.SegmentLabel), 0)
               for d in seg.SegmentSequence}
        labels = np.zeros(tuple(volume.shape), np.uint8)
        for n, k in ids.items():
            if k:
                block, off = _onto_ct(seg.get_volume(segment_numbers=[n], combine_segments=True), volume.affine,
                                      tuple(volume.shape), what="segmentation")
                sl = tuple(slice(off[i], off[i] + block.shape[i]) for i in range(3))
                labels[sl][block > 0] = k
        rep["labels"] = labels
    rep["heatmaps"] = {}
    for p in pms:
        pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(p))
        side = {"R": "right", "L": "left"}.get(str(pm.get("Laterality", "")))
        if side is None:
            continue
        block, off = _onto_ct(pm.get_volume(), volume.affine, tuple(volume.shape), what="heatmap")
        expl = str(pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTExplanation)
        grade = int(expl.split("grade ")[1].split(",")[0]) if "grade " in expl else rep["joints"][side]["grade"]
        rep["heatmaps"][side] = {"block": block.astype(np.float32), "offset": off, "target_grade": grade}
    return rep


__all__ = ["PRIVATE_CODES", "load_stored_results", "SCHEME", "OVERLAY_TEXT", "source_datasets", "ai_structured_report",
           "reader_structured_report", "bone_segmentation", "heatmap_parametric_map", "key_image", "burn_in_label",
           "write_ai_objects", "write_reader_report", "read_ai_report"]
