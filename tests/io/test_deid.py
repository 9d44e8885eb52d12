"""De-identification: PS3.15 Annex E basic profile, recursive, keyed UIDs; exports carry no identity."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from sirad_viewer.cli import main as sirad
from sirad_viewer.errors import ExportError, LoadError
from sirad_viewer.imaging.volume import SeriesMetadata, Volume
from sirad_viewer.io import open_volume
from sirad_viewer.io.deid import (DeidOptions, deidentify_dataset, deidentify_metadata, load_or_create_key,
                                  parse_private_rule, remap_uid, source_reference)
from sirad_viewer.io.deid.files import deidentify_path
from sirad_viewer.io.export import write_dicom_series, write_nifti
from sirad_viewer.phantom import PLANTED_IDENTITY

UID = "1.2.826.0.1.3680043.2.9999.77."

#: Identifying values planted at the top level (keyword -> value).
TOP = {
    "PatientName": "PLNTSURNAME^PLNTGIVEN", "PatientID": "PID-PLNT-0001", "PatientBirthDate": "19570213",
    "PatientBirthTime": "071523", "OtherPatientIDs": "OTHERPID-PLNT-7781", "OtherPatientNames": "PLNTALIAS^ONE",
    "PatientBirthName": "PLNTBIRTHNAME^X", "PatientMotherBirthName": "PLNTMOTHER^Y",
    "PatientAddress": "12 Plntstreet Ruralville", "PatientTelephoneNumbers": "5550199123",
    "PatientComments": "patient comment plntcmt", "AdditionalPatientHistory": "history plnthist",
    "Allergies": "plntallergen", "AdmissionID": "ADM-PLNT-4455", "IssuerOfAdmissionID": "PLNTADMISSUER",
    "AccessionNumber": "ACC-PLNT-9001", "StudyID": "STUDYID-PLNT", "StudyDate": "20190514",
    "StudyTime": "101112", "SeriesDate": "20190415", "SeriesTime": "101213", "AcquisitionDate": "20190316",
    "AcquisitionTime": "101314", "ContentDate": "20190217", "ContentTime": "101415",
    "AcquisitionDateTime": "20190118101516", "InstanceCreationDate": "20181219", "InstanceCreationTime": "101617",
    "StudyDescription": "STUDYDESC PLNTSTUDY", "SeriesDescription": "Pelvis bone PLNTSURNAME 20190514",
    "ProtocolName": "PROTOCOL PLNTPROTO", "ImageComments": "IMAGECOMMENT PLNTIMG",
    "InstitutionName": "PLNT GENERAL HOSPITAL", "InstitutionAddress": "99 Hospitalroad Plntcity",
    "InstitutionalDepartmentName": "PLNTRADIOLOGYDEPT", "ReferringPhysicianName": "PLNTREFDOC^A",
    "ReferringPhysicianAddress": "7 Refdoclane Plnttown", "PerformingPhysicianName": "PLNTPERFDOC^B",
    "NameOfPhysiciansReadingStudy": "PLNTREADDOC^C", "OperatorsName": "PLNTOPERATOR^D",
    "PhysiciansOfRecord": "PLNTRECORDDOC^E", "RequestingPhysician": "PLNTREQDOC^F",
    "ConsultingPhysicianName": "PLNTCONSULT^G", "StationName": "PLNTSTATION01",
    "DeviceSerialNumber": "SN-PLNT-3344", "PatientAge": "062Y", "PatientWeight": "83.25", "PatientSize": "1.7734",
    "MilitaryRank": "PLNTMAJOR", "BranchOfService": "PLNTNAVY", "EthnicGroup": "PLNTETHNIC",
    "Occupation": "PLNTOCCUPATION", "PatientReligiousPreference": "PLNTRELIGION",
    "MedicalRecordLocator": "MRL-PLNT-11", "RegionOfResidence": "PLNTREGION", "CountryOfResidence": "PLNTCOUNTRY",
    "PerformedProcedureStepID": "PPSID-PLNT", "PerformedProcedureStepDescription": "PPSDESC PLNTPPS",
    "PerformedProcedureStepStartDate": "20181120", "PerformedProcedureStepStartTime": "101718",
    "PerformedStationName": "PLNTPERFSTATION", "PerformedLocation": "PLNTROOM 3",
    "RequestedProcedureDescription": "REQPROCDESC PLNTREQ", "RequestingService": "PLNTREQSERVICE",
    "CurrentPatientLocation": "PLNTWARD 7", "PatientState": "PLNTSTATE", "ResponsiblePerson": "PLNTRESP^H",
    "ResponsibleOrganization": "PLNTRESPORG", "StudyComments": "STUDYCOMMENT PLNTSC",
    "ReasonForStudy": "PLNTREASON", "FillerOrderNumberImagingServiceRequest": "FILLER-PLNT-1",
    "PlacerOrderNumberImagingServiceRequest": "PLACER-PLNT-2", "MedicalAlerts": "PLNTALERT",
    "SpecialNeeds": "PLNTNEEDS", "LastMenstrualDate": "20190101", "ServiceEpisodeID": "EPISODE-PLNT",
    "TimezoneOffsetFromUTC": "+0345", "ContrastBolusAgent": "PLNTCONTRAST",
    "StudyInstanceUID": UID + "2", "SeriesInstanceUID": UID + "3", "FrameOfReferenceUID": UID + "1",
    "IrradiationEventUID": UID + "5", "InstanceCreatorUID": UID + "10", "DeviceUID": UID + "11",
}


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def plant(ds: Dataset, k: int) -> dict[str, str]:
    """Plant identifying values (top level, nested sequences up to depth 4, private, meta, preamble)."""
    values = dict(TOP)
    for kw, v in TOP.items():
        setattr(ds, kw, v)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = values[f"sop{k}"] = f"{UID}4.{k}"
    nested = {
        "sps_doc": "PLNTSPSDOC^I", "sps_date": "20180707", "sps_station": "PLNTSPSSTATION", "sps_id": "SPSID-PLNT",
        "sps_desc": "SPSDESC PLNTSPS", "rp_id": "RPID-PLNT", "verifier": "PLNTVERIFIER^J",
        "verify_org": "PLNTVERIFYORG", "verify_dt": "20180808101920", "verifier_code": "VOBSCODE-PLNT",
        "op_code": "OPCODE-PLNT", "op_meaning": "OPERATOR MEANING PLNTOPM", "op_address": "OPADDRESS PLNTOPA",
        "op_phone": "5550144777", "op_inst": "OPINSTITUTION PLNTOPI", "other_pid": "OTHERSEQPID-PLNT",
        "other_issuer": "PLNTISSUER", "ref_study_uid": UID + "6", "source_uid": UID + "7",
        "deep_person": "PLNTDEEPPERSON^K", "deep_text": "DEEP TEXT PLNTDEEP", "deep_dt": "20170909",
        "deep_uid": UID + "8", "deep_code_meaning": "DEEPCODE PLNTDCM", "contrib_inst": "CONTRIB PLNTCONTRIB",
        "contrib_station": "PLNTCSTATION", "contrib_op": "PLNTCONTRIBOP^L", "contrib_dt": "20171010111213",
        "ref_patient_uid": UID + "9", "insurance": "INSURANCE PLNTINS", "proc_uid": UID + "12",
        "proc_person": "PLNTPROCPERSON^M", "proc_date": "20161111", "ref_image_uid": UID + "13",
        "ref_for_uid": UID + "14",
    }
    values.update(nested)
    n = nested
    ds.RequestAttributesSequence = Sequence([_item(
        RequestedProcedureID=n["rp_id"], ScheduledProcedureStepID=n["sps_id"],
        ScheduledProcedureStepDescription=n["sps_desc"])])
    ds.ScheduledProcedureStepSequence = Sequence([_item(
        ScheduledPerformingPhysicianName=n["sps_doc"], ScheduledProcedureStepStartDate=n["sps_date"],
        ScheduledStationName=n["sps_station"])])
    ds.VerifyingObserverSequence = Sequence([_item(
        VerifyingObserverName=n["verifier"], VerifyingOrganization=n["verify_org"],
        VerificationDateTime=n["verify_dt"],
        VerifyingObserverIdentificationCodeSequence=Sequence([_item(
            CodeValue=n["verifier_code"], CodingSchemeDesignator="L", CodeMeaning="x")]))])
    ds.OperatorIdentificationSequence = Sequence([_item(
        PersonIdentificationCodeSequence=Sequence([_item(CodeValue=n["op_code"], CodingSchemeDesignator="L",
                                                         CodeMeaning=n["op_meaning"])]),
        PersonAddress=n["op_address"], PersonTelephoneNumbers=n["op_phone"], InstitutionName=n["op_inst"])])
    ds.OtherPatientIDsSequence = Sequence([_item(PatientID=n["other_pid"], IssuerOfPatientID=n["other_issuer"],
                                                 TypeOfPatientID="TEXT")])
    ds.ReferencedStudySequence = Sequence([_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                                                 ReferencedSOPInstanceUID=n["ref_study_uid"])])
    ds.SourceImageSequence = Sequence([_item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                                             ReferencedSOPInstanceUID=n["source_uid"])])
    ds.ReferencedPatientSequence = Sequence([_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.1.1",
                                                   ReferencedSOPInstanceUID=n["ref_patient_uid"])])
    ds.PatientInsurancePlanCodeSequence = Sequence([_item(CodeValue="1", CodingSchemeDesignator="L",
                                                          CodeMeaning=n["insurance"])])
    # depth 4: Content > Content > Content > item
    leaf = _item(PersonName=n["deep_person"], TextValue=n["deep_text"], Date=n["deep_dt"], UID=n["deep_uid"],
                 ConceptNameCodeSequence=Sequence([_item(CodeValue="X1", CodingSchemeDesignator="L",
                                                         CodeMeaning=n["deep_code_meaning"])]))
    ds.ContentSequence = Sequence([_item(ContentSequence=Sequence([_item(ContentSequence=Sequence([leaf]))]))])
    # sequences the table does not list: their contents are still cleaned by VR and by the table
    ds.ContributingEquipmentSequence = Sequence([_item(
        Manufacturer="SIRAD", InstitutionName=n["contrib_inst"], StationName=n["contrib_station"],
        OperatorsName=n["contrib_op"], ContributionDateTime=n["contrib_dt"])])
    ds.ProcedureCodeSequence = Sequence([_item(
        CodeValue="P1", CodingSchemeDesignator="L", CodeMeaning="pelvis",
        ReferencedImageSequence=Sequence([_item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                                                ReferencedSOPInstanceUID=n["ref_image_uid"])]),
        ReferencedFrameOfReferenceUID=n["ref_for_uid"], PersonName=n["proc_person"],
        InstanceCreationDate=n["proc_date"], ConcatenationUID=n["proc_uid"])])
    # private block, overlay comment, file meta, preamble
    values.update(priv1="PRIVATE-PLNT-VALUE", priv2="PLNTPRIVNAME^N", priv_un="PLNTUNBYTES", ovl="OVERLAY PLNTOVL",
                  aet="PLNTAET", pre="PREAMBLEPLNT")
    ds.private_block(0x0029, "PLNTVENDOR", create=True).add_new(0x10, "LO", values["priv1"])
    ds.private_block(0x0029, "PLNTVENDOR").add_new(0x11, "PN", values["priv2"])
    ds.add_new(0x00431010, "UN", values["priv_un"].encode())
    ds.add_new(0x60004000, "LT", values["ovl"])
    ds.file_meta.SourceApplicationEntityTitle = values["aet"]
    ds.preamble = values["pre"].encode().ljust(128, b"\0")
    ds.BurnedInAnnotation = "NO"
    return values


def oblique_volume() -> Volume:
    """24 x 40 x 36 ramp on an oblique, orthogonal grid (geometry must survive untouched)."""
    rng = np.random.default_rng(3)
    arr = (rng.integers(-1000, 1500, size=(24, 40, 36))).astype(np.int16)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = np.column_stack([rot[:, 2] * 2.5, rot[:, 1] * 0.7, rot[:, 0] * 0.8])
    aff[:3, 3] = [-31.5, 12.25, -605.0]
    return Volume(arr, aff, SeriesMetadata(modality="CT"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    src = tmp_path_factory.mktemp("planted") / "PLNTSURNAME_PLNTGIVEN"
    files = write_dicom_series(oblique_volume(), src, deidentify=False)
    planted_values = []
    for k, f in enumerate(files):
        ds = dcmread(f)
        planted_values.append(plant(ds, k))
        ds.save_as(f, enforce_file_format=True)
    return src, planted_values


def all_bytes(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def leaked(values: list[dict[str, str]], data: bytes) -> list[str]:
    """The planted values found in ``data``. A value of digits only (a date, a time, a phone number) counts
    where it is not part of a longer run of digits: a de-identified UID such as 2.25.1079...3930715234...
    is 39 random digits, and held a planted birth time "071523" by chance in one CI run."""
    import re

    found = set()
    for vals in values:
        for name, v in vals.items():
            if v.isdigit():
                hit = re.search(rb"(?<![0-9])" + v.encode() + rb"(?![0-9])", data) is not None
            else:
                hit = any(f.encode() in data for f in {v, v.replace("^", " ")})
            if hit:
                found.add(f"{name}={v}")
    return sorted(found)


def test_the_leak_check_finds_a_planted_number_but_not_a_random_uid_holding_its_digits():
    vals = [{"PatientBirthTime": "071523", "PatientName": "PLNT^X"}]
    assert leaked(vals, b"UI,\x002.25.107914838685013098678127371393071523467\x02") == []  # seen in CI
    assert leaked(vals, b"TM\x06\x00071523") == ["PatientBirthTime=071523"]
    assert leaked(vals, b"071523 ") == ["PatientBirthTime=071523"] and leaked(vals, b"PLNT X") == ["PatientName=PLNT^X"]


@pytest.fixture()
def key_file(tmp_path, monkeypatch) -> Path:
    kf = tmp_path / "keys" / "project.key"
    monkeypatch.setenv("SIRAD_DEID_KEY", str(kf))
    return kf


def test_planted_values_are_really_in_the_source(planted):
    src, values = planted
    assert len(values[0]) >= 80
    everything = {f"{k}={v}" for vals in values for k, v in vals.items()}
    assert set(leaked(values, all_bytes(src))) == everything  # every planted value is in the source bytes


def test_cli_deidentify_leaves_none_of_the_planted_values_and_keeps_the_volume(planted, tmp_path, key_file):
    src, values = planted
    out = tmp_path / "out"
    assert sirad(["deidentify", str(src), "--out", str(out)]) == 0
    assert key_file.exists() and not key_file.resolve().is_relative_to(out.resolve())
    data = all_bytes(out)
    assert leaked(values, data) == []
    assert b"PLNT" not in data  # nor any fragment (each planted value carries PLNT or is a date/uid/number)
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 24 and all("PLNT" not in str(f) for f in files)
    ds = dcmread(files[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert "113100" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    assert not any(e.tag.is_private for e in ds.iterall())
    # geometry and pixels: the same volume through the viewer's loader
    before, after = open_volume(src), open_volume(out)
    assert np.array_equal(before.array, after.array)
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-6)
    src0 = dcmread(sorted(src.glob("*.dcm"))[0])
    by_instance = {int(dcmread(f).InstanceNumber): dcmread(f) for f in files}
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        assert getattr(by_instance[int(src0.InstanceNumber)], kw) == getattr(src0, kw)
    assert len({dcmread(f).FrameOfReferenceUID for f in files}) == 1
    assert len({dcmread(f).SeriesInstanceUID for f in files}) == 1


def test_uids_are_keyed_consistent_and_not_an_unkeyed_hash(planted, tmp_path):
    import hashlib

    src, _ = planted
    key_a, key_b = b"a" * 32, b"b" * 32
    uids = {}
    for name, key in (("a1", key_a), ("a2", key_a), ("b", key_b)):
        rep = deidentify_path(src, tmp_path / name, key=key)
        assert rep.written == 24
        uids[name] = sorted(str(dcmread(f).SOPInstanceUID) for f in (tmp_path / name).rglob("*.dcm"))
    assert uids["a1"] == uids["a2"]  # same key: same UIDs
    assert not set(uids["a1"]) & set(uids["b"])  # other key: other UIDs
    orig = UID + "3"
    new = remap_uid(orig, key_a)
    assert str(dcmread(next((tmp_path / "a1").rglob("*.dcm"))).SeriesInstanceUID) == new
    unkeyed = {"2.25." + str(int.from_bytes(h(orig.encode()).digest()[:16], "big"))
               for h in (hashlib.sha256, hashlib.md5, hashlib.sha1)}
    unkeyed.add("2.25." + str(int.from_bytes(hashlib.sha256(("sirad|" + orig).encode()).digest()[:16], "big")))
    assert new not in unkeyed and new.startswith("2.25.") and len(new) <= 64
    # references inside sequences follow the same map
    ds = dcmread(next((tmp_path / "a1").rglob("*.dcm")))
    assert ds.ProcedureCodeSequence[0].ReferencedFrameOfReferenceUID == remap_uid(UID + "14", key_a)
    assert ds.ProcedureCodeSequence[0].ConcatenationUID == remap_uid(UID + "12", key_a)
    assert ds.FrameOfReferenceUID == remap_uid(UID + "1", key_a)


def test_dates_shifted_per_patient_keep_intervals(planted):
    src, values = planted
    ds = dcmread(sorted(src.glob("*.dcm"))[0])
    key = b"k" * 32
    out = deidentify_dataset(ds, key=key, options=DeidOptions(retain_dates_shifted=True))
    import datetime as dt

    def d(s):
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    assert out.StudyDate != ds.StudyDate and out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert (d(out.StudyDate) - d(out.ContentDate)) == (d(ds.StudyDate) - d(ds.ContentDate))
    text = b"\0".join(str(e.value).encode() for e in out.iterall() if e.VR not in ("OW", "OB"))  # one per element
    left = leaked([values[0]], text)
    assert left and all(v.split("=")[0].endswith("Time") for v in left), left  # only times of day stay
    assert "PatientBirthDate" not in out or not out.PatientBirthDate
    assert out.VerifyingObserverSequence[0].VerificationDateTime[8:] == ds.VerifyingObserverSequence[0].VerificationDateTime[8:]
    again = deidentify_dataset(dcmread(sorted(src.glob("*.dcm"))[5]), key=key,
                               options=DeidOptions(retain_dates_shifted=True))
    assert again.StudyDate == out.StudyDate  # same patient, same shift
    other = dcmread(sorted(src.glob("*.dcm"))[0])
    other.PatientID = "SOMEONE-ELSE"
    assert deidentify_dataset(other, key=key, options=DeidOptions(retain_dates_shifted=True)).StudyDate != out.StudyDate


def test_clean_descriptions_keeps_words_and_drops_identity(planted):
    src, _ = planted
    ds = dcmread(sorted(src.glob("*.dcm"))[0])
    plain = deidentify_dataset(ds, key=b"k" * 32)
    assert "SeriesDescription" not in plain and "ProtocolName" not in plain
    cleaned = deidentify_dataset(ds, key=b"k" * 32, options=DeidOptions(clean_descriptions=True))
    assert cleaned.SeriesDescription == "Pelvis bone"  # name and date words gone


def test_burned_in_annotation_is_refused_or_flagged(planted, tmp_path):
    src, _ = planted
    ds = dcmread(sorted(src.glob("*.dcm"))[0])
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(ExportError) as err:
        deidentify_dataset(ds, key=b"k" * 32, where="x.dcm")
    assert err.value.code == "burned_in_annotation" and "x.dcm" in err.value.user_message()
    out = deidentify_dataset(ds, key=b"k" * 32, options=DeidOptions(allow_burned_in=True))
    assert out.PatientIdentityRemoved == "NO" and out.BurnedInAnnotation == "YES"


def test_private_whitelist_keeps_only_the_named_element(planted):
    src, _ = planted
    ds = dcmread(sorted(src.glob("*.dcm"))[0])
    out = deidentify_dataset(ds, key=b"k" * 32, options=DeidOptions(keep_private=frozenset({(0x29, "PLNTVENDOR", 0x10)})))
    kept = {e.tag: e.value for e in out if e.tag.is_private}
    assert kept == {0x00290010: "PLNTVENDOR", 0x00291010: "PRIVATE-PLNT-VALUE"}
    assert parse_private_rule("0029,PLNTVENDOR,10") == (0x29, "PLNTVENDOR", 0x10)
    for bad in ("0028,X,10", "0029,X,100", "zz"):
        with pytest.raises(ValueError):
            parse_private_rule(bad)


def test_zip_input_zip_output_and_nothing_half_written(planted, tmp_path, key_file):
    src, values = planted
    zsrc = tmp_path / "in.zip"
    with zipfile.ZipFile(zsrc, "w") as zf:
        for f in sorted(src.glob("*.dcm")):
            zf.write(f, f"PLNTSURNAME/{f.name}")
        zf.writestr("PLNTSURNAME/notes.txt", "not dicom")
    assert sirad(["deidentify", str(zsrc), "--out", str(tmp_path / "out.zip")]) == 0
    data = all_bytes(tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        names = zf.namelist()
        data += b"".join(zf.read(n) for n in names)
    assert len(names) == 24 and leaked(values, data) == [] and b"PLNT" not in data
    # a broken DICOM file stops the run, names the file, and leaves no output
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for f in sorted(src.glob("*.dcm"))[:3]:
        (bad_dir / f.name).write_bytes(f.read_bytes())
    whole = next(src.glob("*.dcm")).read_bytes()
    for cut in (700, len(whole) - 100):  # in the header, in the pixel data: pydicom reads both quietly
        broken = bad_dir / "zz_broken.dcm"
        broken.write_bytes(whole[:cut])
        with pytest.raises(LoadError) as err:
            deidentify_path(bad_dir, tmp_path / "half", key=b"k" * 32)
        assert "zz_broken.dcm" in err.value.user_message() and "truncated" in err.value.message, err.value.message
        assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))
    rep = deidentify_path(bad_dir, tmp_path / "skipping", key=b"k" * 32, skip_unreadable=True)
    assert rep.written == 3 and [n for n, _ in rep.skipped] == [str(broken)]
    one = deidentify_path(next(src.glob("*.dcm")), tmp_path / "single", key=b"k" * 32)
    assert one.written == 1 and len(list((tmp_path / "single").rglob("*.dcm"))) == 1
    # existing output is never overwritten; a key inside the output is refused
    assert sirad(["deidentify", str(src), "--out", str(tmp_path / "skipping")]) == 2
    assert sirad(["deidentify", str(src), "--out", str(tmp_path / "o2"), "--key", str(tmp_path / "o2" / "k")]) == 2


def test_key_file_is_created_once_private_and_reused(tmp_path):
    k1, p, created = load_or_create_key(tmp_path / "k" / "deid.key")
    assert created and oct(p.stat().st_mode & 0o777) == "0o600" and len(k1) == 32
    k2, _, created2 = load_or_create_key(p)
    assert k2 == k1 and not created2
    p.write_text("zz")
    with pytest.raises(ExportError):
        load_or_create_key(p)


def test_old_profile_leaks_are_gone_for_single_dataset(planted):
    """Regression for issue #12's list: nested names, UIDs in sequences, descriptions, protocol,
    admission id, allergies, dates; PatientIdentityRemoved with burned-in annotation."""
    src, values = planted
    ds = dcmread(sorted(src.glob("*.dcm"))[0])
    out = deidentify_dataset(ds, key=b"k" * 32)
    text = repr(out).encode() + b"\0".join(str(e.value).encode() for e in out.iterall() if e.VR != "OW")
    assert leaked([values[0]], text) == []


# --- exports ---------------------------------------------------------------------------------

def identity_volume() -> Volume:
    v = oblique_volume()
    v.metadata = SeriesMetadata(patient_name=PLANTED_IDENTITY["patient_name"], patient_id=PLANTED_IDENTITY["patient_id"],
                                patient_birth_date=PLANTED_IDENTITY["patient_birth_date"], modality="CT",
                                institution_name="PLNT HOSPITAL", slice_thickness_mm=2.5, study_date="20200101")
    return v


def test_dicom_export_removes_planted_identity(tmp_path):
    src = tmp_path / "src"
    write_dicom_series(identity_volume(), src, deidentify=False)
    raw = all_bytes(src)
    assert PLANTED_IDENTITY["patient_name"].encode() in raw  # planted on purpose
    vol = open_volume(src)
    out = tmp_path / "export"
    write_dicom_series(vol, out)  # default: de-identified, one-off key
    data = all_bytes(out)
    for value in PLANTED_IDENTITY.values():
        assert value.encode() not in data
    back = open_volume(out)
    assert np.array_equal(back.array, vol.array)
    assert back.metadata.patient_name != PLANTED_IDENTITY["patient_name"]
    assert back.metadata.series_instance_uid not in (vol.metadata.series_instance_uid, "")
    keyed = tmp_path / "keyed"
    write_dicom_series(vol, keyed, key=b"p" * 32)
    assert open_volume(keyed).metadata.series_instance_uid == remap_uid(vol.metadata.series_instance_uid, b"p" * 32)


def test_dicom_export_invents_no_acquisition_values(tmp_path):
    vol = oblique_volume()  # metadata has no date, kVp, position, body part, thickness
    for deid in (False, True):
        out = tmp_path / f"e{deid}"
        write_dicom_series(vol, out, deidentify=deid)
        ds = dcmread(sorted(out.glob("*.dcm"))[0])
        # Type 2 attributes may be present empty (unknown), never with a guessed value
        for kw in ("KVP", "StudyDate", "StudyTime", "SeriesDate", "SliceThickness", "SeriesNumber", "StudyID",
                   "PatientPosition"):
            assert not str(ds.get(kw, "") or ""), (kw, ds.get(kw))
        for kw in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
            assert kw not in ds, kw
        assert "ORIGINAL" not in list(ds.ImageType)
    meta = SeriesMetadata(modality="CT", study_date="20200102", slice_thickness_mm=1.25,
                          extra={"kvp": "100", "patient_position": "HFS"})
    write_dicom_series(Volume(vol.array, vol.affine, meta), tmp_path / "copy", deidentify=False)
    ds = dcmread(sorted((tmp_path / "copy").glob("*.dcm"))[0])
    assert (ds.StudyDate, ds.KVP, ds.PatientPosition, float(ds.SliceThickness)) == ("20200102", 100, "HFS", 1.25)


def test_phantom_dicom_export_carries_no_truth(tmp_path):
    """Two phantoms that differ only in their grades give DICOM headers that differ only in UIDs."""
    from sirad_viewer.phantom import PhantomSpec, make_phantom, write_phantom

    headers = []
    for lg, rg in ((0, 1), (4, 3)):
        spec = PhantomSpec(left_grade=lg, right_grade=rg, seed=5, matrix=48, fov_mm=300.0,
                           slice_thickness_mm=5.0, slice_spacing_mm=5.0, z_range_mm=(-20.0, 20.0))
        files = write_phantom(make_phantom(spec), tmp_path / f"ph{lg}{rg}", fmt="dicom")
        first = dcmread(sorted(Path(files["ct"]).glob("*.dcm"))[0])
        values = {}
        for e in first.iterall():
            if e.VR in ("UI", "OB", "OW") or e.keyword == "PixelData":
                continue
            values[e.keyword or str(e.tag)] = str(e.value)
        text = " ".join(values.values()).lower()
        for word in ("grade", "lesion", "truth", f"l{lg}", f"r{rg}", "seed"):
            assert word not in text, word
        headers.append(values)
    assert headers[0] == headers[1]


# --- no source path in outputs -----------------------------------------------------------------

def test_nifti_sidecar_is_deidentified_and_names_no_source(tmp_path):
    src = tmp_path / "PLNTSURNAME_case.nii.gz"
    write_nifti(identity_volume(), src, deidentify=False, sidecar=False)
    vol = open_volume(src)
    assert vol.metadata.series_description == src.name  # the loader names the volume after its file
    out = tmp_path / "out" / "ct.nii.gz"
    write_nifti(vol, out)
    side = (tmp_path / "out" / "ct.json").read_text()
    assert "PLNTSURNAME" not in side and str(tmp_path) not in side
    assert json.loads(side)["deidentified"] is True
    write_nifti(identity_volume(), tmp_path / "out2" / "ct.nii.gz")
    side = (tmp_path / "out2" / "ct.json").read_text()
    for value in [*PLANTED_IDENTITY.values(), "PLNT HOSPITAL", "20200101"]:
        assert value not in side


def test_sidecar_warnings_name_no_source_folder(tmp_path):
    from sirad_viewer.errors import VolumeWarning

    v = identity_volume()
    v.sources = ["/data/PLNTSURNAME^X/IM1.dcm", "/data/PLNTSURNAME^X/IM2.dcm"]
    v.warnings = [VolumeWarning("uneven_spacing", "2.5 mm expected, 5.0 mm found between files "
                                "/data/PLNTSURNAME^X/IM1.dcm and IM2.dcm")]
    write_nifti(v, tmp_path / "ct.nii.gz")
    side = json.loads((tmp_path / "ct.json").read_text())
    msg = side["warnings"][0]["message"]
    assert "PLNT" not in msg and "IM2.dcm" not in msg and msg.startswith("2.5 mm expected, 5.0 mm found")


def test_metadata_deidentification_keeps_clinical_geometry_fields():
    meta = identity_volume().metadata
    d = deidentify_metadata(meta)
    assert d.patient_name == "" and d.patient_birth_date == "" and d.institution_name == ""
    assert d.series_description == "" and d.series_instance_uid == ""
    assert d.slice_thickness_mm == meta.slice_thickness_mm == 2.5 and d.modality == "CT"
    k = deidentify_metadata(meta, key=b"q" * 32)
    assert k.patient_id.startswith("SIRAD-") and k.patient_id != meta.patient_id


def test_source_reference_hides_the_path_unless_asked(tmp_path):
    p = tmp_path / "SMITH^JOHN" / "ct"
    ref = source_reference(p)
    assert ref.startswith("sha256:") and "SMITH" not in ref
    assert source_reference(p) == ref and source_reference(tmp_path / "other") != ref
    assert source_reference(p, include_path=True) == str(p)


def _grade_result(source: str):
    from sirad_viewer.ai.localise import JointBox, Localisation
    from sirad_viewer.ai.pipeline import GradeResult, JointResult

    joints = {}
    for side, x in (("left", 20.0), ("right", -20.0)):
        box = JointBox(side, np.array([x, 0.0, -600.0]), np.eye(3), np.array([40.0, 20.0, 10.0]), 50)
        p = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
        joints[side] = JointResult(side, box, p, np.log(p), [[0, 1], [2, 3], [4]])
    loc = Localisation(joints={s: j.box for s, j in joints.items()},
                       sacral_axis=(np.array([0.0, 0.0, -560.0]), np.array([0.0, 10.0, -640.0])), warnings=[])
    return GradeResult({"name": "m", "version": "1"}, joints, loc, {"total": 0.1}, "cpu", [], None, source)


def test_grade_json_and_report_name_no_source_path_unless_asked(tmp_path, monkeypatch):
    import sirad_viewer.ai.pipeline as pipeline
    from sirad_viewer.viz.report import write_report

    folder = tmp_path / "PLNTSURNAME^PLNTGIVEN"
    ct = write_nifti(oblique_volume(), folder / "ct.nii.gz", deidentify=False, sidecar=False)
    vol = open_volume(ct)
    res = _grade_result(vol.sources[0])
    assert "PLNT" not in json.dumps(res.to_dict()) and str(tmp_path) not in json.dumps(res.to_dict())
    assert res.to_dict(include_source_path=True)["source"] == str(Path(vol.sources[0]).resolve())

    class FakeGrader:
        bundle = type("B", (), {"metadata": {}})()

        def __init__(self, *a, **k):
            pass

        def __call__(self, volume, **kw):
            return res

    monkeypatch.setattr(pipeline, "Grader", FakeGrader)
    monkeypatch.setattr(pipeline, "find_bundle", lambda *a, **k: None)
    assert sirad(["grade", str(ct), "--json", str(tmp_path / "grade.json")]) == 0
    text = (tmp_path / "grade.json").read_text()
    assert "PLNT" not in text and str(tmp_path) not in text
    assert json.loads(text)["source"] == source_reference(ct)
    assert sirad(["grade", str(ct), "--json", str(tmp_path / "g2.json"), "--include-source-path"]) == 0
    assert json.loads((tmp_path / "g2.json").read_text())["source"] == str(ct)
    reading = {"case": str(folder), "pre_ai": {"right": 1, "left": 2, "at": None}, "post_ai": None}
    html = write_report(tmp_path / "r.html", vol, res, reading, {}).read_text()
    assert "PLNT" not in html and str(tmp_path) not in html and source_reference(folder) in html
    html = write_report(tmp_path / "r2.html", vol, res, reading, {}, include_source_path=True).read_text()
    assert str(folder) in html
    # the reads log keys a case by its reference (as the viewer writes it); `sirad report` finds it
    from sirad_viewer.state.reading import Reading

    log = tmp_path / "reads.jsonl"
    r = Reading(source_reference(Path(ct).resolve()), reader="dr a", log_path=log)
    r.set_grade("right", 3)
    r.set_grade("left", 1)
    r.lock()
    assert sirad(["report", str(ct), "--out", str(tmp_path / "r3.html"), "--reads", str(log)]) == 0
    html = (tmp_path / "r3.html").read_text()
    assert "PLNT" not in html and str(tmp_path) not in html and "3 (" in html
    assert "PLNT" not in log.read_text()


def test_real_series_with_empty_uids_deidentifies_to_the_same_volume(real_dicom_dir, tmp_path):
    """The real Siemens series (JPEG 2000, empty Series/SOP UIDs) keeps its voxels and geometry."""
    rep = deidentify_path(real_dicom_dir, tmp_path / "out", key=b"r" * 32)
    assert rep.written == 20
    uids = {str(dcmread(f).SOPInstanceUID) for f in (tmp_path / "out").rglob("*.dcm")}
    assert len(uids) == 20 and all(u.startswith("2.25.") for u in uids)  # made for the file meta, keyed
    before, after = open_volume(real_dicom_dir), open_volume(tmp_path / "out")
    assert np.array_equal(before.array, after.array)
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-9)


def test_malformed_corpus_gives_our_errors_or_clean_copies(malformed_dir, tmp_path):
    """Every real malformed file is either written de-identified or skipped with our reason;
    without --skip-unreadable the first bad one stops the run, named, and nothing is left."""
    rep = deidentify_path(malformed_dir, tmp_path / "out", key=b"m" * 32, skip_unreadable=True)
    assert rep.written >= 40 and rep.skipped
    for f in (tmp_path / "out").rglob("*.dcm"):
        ds = dcmread(f)
        assert ds.PatientIdentityRemoved == "YES" and not any(e.tag.is_private for e in ds.iterall())
    with pytest.raises((LoadError, ExportError)) as err:
        deidentify_path(malformed_dir, tmp_path / "strict", key=b"m" * 32)
    assert str(malformed_dir) in err.value.user_message()
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("case", ["missing_input", "existing_output"])
def test_cli_deidentify_refuses_bad_paths_before_creating_a_key(tmp_path, key_file, capsys, case):
    """A typo in the input path used to leave a new project key behind (a secret nobody asked for)."""
    src = tmp_path / "nope"
    out = tmp_path / "out"
    if case == "existing_output":
        src.write_bytes(b"x")
        out.mkdir()
        (out / "old.dcm").write_bytes(b"x")
    assert sirad(["deidentify", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("nope: does not exist" in err) if case == "missing_input" else ("out: already exists" in err)
    assert not key_file.exists()
