"""De-identification used by every export (DICOM, NIfTI side-cars, reports, JSON).

Follows the spirit of the DICOM PS3.15 Annex E *Basic Application Level Confidentiality
Profile*: identifying attributes are removed or replaced with a dummy, UIDs are replaced by new
ones derived deterministically from the old ones (so a re-exported series still groups), dates
are removed unless the caller keeps them. Private tags and overlays/curves are dropped.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from typing import Any

from sirad_viewer.imaging.volume import SeriesMetadata

#: Attributes replaced by an anonymous value (keyword -> replacement).
REPLACE = {
    "PatientName": "ANONYMOUS",
    "PatientID": "ANON",
    "AccessionNumber": "",
    "StudyID": "",
    "ReferringPhysicianName": "",
}

#: Attributes removed (Annex E: "X" and "X/Z" actions, plus obvious free text).
REMOVE = (
    "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName",
    "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientAddress",
    "PatientTelephoneNumbers", "PatientTelecomInformation", "MilitaryRank", "EthnicGroup",
    "PatientReligiousPreference", "PatientComments", "PatientInsurancePlanCodeSequence",
    "MedicalRecordLocator", "PatientState", "AdditionalPatientHistory", "Occupation",
    "CountryOfResidence", "RegionOfResidence", "ResponsiblePerson", "ResponsibleOrganization",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "ScheduledPerformingPhysicianName",
    "StationName", "DeviceSerialNumber", "RequestAttributesSequence", "ImageComments",
    "StudyComments", "DerivationDescription", "AdmittingDiagnosesDescription",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
    "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "InstanceCreationDate",
    "InstanceCreationTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "IssuerOfPatientID", "PatientAge", "PatientSize", "PatientWeight",
    "SourceImageSequence", "ReferencedImageSequence", "ReferencedStudySequence",
    "ReferencedPatientSequence", "ReferencedPerformedProcedureStepSequence",
)

#: Dates kept with ``keep_dates`` (never the patient's birth date).
_STUDY_DATES = {"StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
                "AcquisitionTime", "ContentTime", "AcquisitionDateTime"}

#: UID attributes that are remapped (consistently) rather than removed.
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
        "MediaStorageSOPInstanceUID")

#: Prefix for UIDs we derive (2.25 = UUID-derived OID arc, allowed by PS3.5 B.2).
_UID_ROOT = "2.25."


def remap_uid(uid: str, salt: str = "sirad") -> str:
    """A new UID derived from ``uid``: same input, same output; the original cannot be read back."""
    if not uid:
        return uid
    digest = hashlib.sha256((salt + "|" + uid).encode()).digest()
    return _UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def deidentify_dataset(ds: Any, *, keep_dates: bool = False, salt: str = "sirad") -> Any:
    """Return a de-identified deep copy of a pydicom ``Dataset``.

    Parameters
    ----------
    ds : pydicom.Dataset
    keep_dates : bool
        Keep study/series dates (allowed by the profile's *Retain Longitudinal Temporal
        Information* option) instead of removing them.
    salt : str
        Mixed into remapped UIDs; use a per-project secret to prevent re-linking.
    """
    out = copy.deepcopy(ds)
    out.remove_private_tags()
    for kw, value in REPLACE.items():
        if kw in out:
            setattr(out, kw, value)
    for kw in REMOVE:
        if keep_dates and kw in _STUDY_DATES:
            continue
        if kw in out:
            delattr(out, kw)
    for kw in UIDS:
        if kw in out and str(getattr(out, kw)):
            setattr(out, kw, remap_uid(str(getattr(out, kw)), salt))
    meta = getattr(out, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    # Overlays (60xx) and curves (50xx) may burn in text.
    for elem in list(out):
        if elem.tag.group & 0xFF00 in (0x6000, 0x5000):
            del out[elem.tag]
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "SIRAD Viewer basic profile (PS3.15 E.1 subset)" + (
        "; dates retained" if keep_dates else "")
    return out


def deidentify_metadata(meta: SeriesMetadata, *, keep_dates: bool = False, salt: str = "sirad") -> SeriesMetadata:
    """De-identified copy of a volume's :class:`SeriesMetadata` for exports and reports."""
    return replace(
        meta,
        patient_name="ANONYMOUS", patient_id="ANON", patient_birth_date="", accession_number="",
        institution_name="", study_date=meta.study_date if keep_dates else "",
        study_instance_uid=remap_uid(meta.study_instance_uid, salt),
        series_instance_uid=remap_uid(meta.series_instance_uid, salt),
        frame_of_reference_uid=remap_uid(meta.frame_of_reference_uid, salt),
        extra={k: v for k, v in meta.extra.items() if not k.lower().startswith(("patient", "institution"))},
    )
