"""PS3.15 Annex E *Basic Application Level Confidentiality Profile*, applied recursively.

The attribute table (which attribute gets D, Z, X, U or a combination) is not typed in here: it
is the 2026c edition of the standard's Table E.1-1 as shipped by the maintained
``dicom-anonymizer`` package (KitwareMedical, BSD), module
``dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c``. We use only its table; its
engine replaces UIDs with unkeyed random values cached in a global dictionary, does not shift
dates per patient and has no *clean descriptors* option, so the actions themselves are applied
here.

Rules, applied to every data set at every nesting depth:

* table action **X** (and the combinations X/Z, X/D, X/Z/D, X/Z/U*): remove;
* **Z** and **Z/D**: empty value (PatientName and PatientID get a keyed pseudonym instead, so
  one patient's series still group);
* **D**: a dummy value of the right VR; sequences are kept and their items cleaned;
* **U**, and every other UI value that is not a DICOM-defined UID (``1.2.840.10008.*``):
  HMAC-keyed remap (:func:`~.keys.remap_uid`), so references between objects survive;
* every PN anywhere: empty (or the pseudonym for PatientName);
* every DA, DT and TM anywhere: removed or emptied, or with
  ``retain_dates_shifted`` every DA/DT moved back by the patient's keyed offset (times of day
  kept); the birth date is never kept;
* descriptions (SeriesDescription, ProtocolName, ...): removed, or with ``clean_descriptions``
  kept after removing every word that matches an identifying value of the same object and
  every number of 4 or more digits;
* private elements: removed unless their (group, creator, element) is on the whitelist;
  public elements of unknown VR (UN) that the dictionary does not know: removed;
* overlays and curves (60xx/50xx data and comments): removed (from the table);
* ``BurnedInAnnotation`` or ``RecognizableVisualFeatures`` = YES: refused (pixel data are not
  cleaned), or with ``allow_burned_in`` written with PatientIdentityRemoved = NO.

Geometry attributes (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, ...) are not in the table and are kept as they are; FrameOfReferenceUID is
remapped like every UID, so a series keeps one frame of reference.
"""
from __future__ import annotations

import copy
import datetime as _dt
import functools
import logging
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sirad_viewer.errors import ExportError
from sirad_viewer.io.deid.keys import date_shift_days, pseudonym, remap_uid

log = logging.getLogger(__name__)

PROFILE_NAME = "PS3.15 E.1 Basic Application Level Confidentiality Profile"
_DICOM_ROOT = "1.2.840.10008."


class Action(str, Enum):
    """What happens to one attribute (PS3.15 Table E.1-1 letters)."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"


#: Table combinations folded to the more private single action.
_COMBOS = {
    "D_TAGS": Action.DUMMY, "Z_TAGS": Action.EMPTY, "X_TAGS": Action.REMOVE, "U_TAGS": Action.UID,
    "Z_D_TAGS": Action.EMPTY, "X_Z_TAGS": Action.REMOVE, "X_D_TAGS": Action.REMOVE,
    "X_Z_D_TAGS": Action.REMOVE, "X_Z_U_STAR_TAGS": Action.REMOVE,
}

#: Editions of Table E.1-1 in dicom-anonymizer, newest first.
_EDITIONS = ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023")

#: Descriptions kept (cleaned) with the Clean Descriptors option; removed otherwise.
DESCRIPTORS = frozenset({
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription",
    "ScheduledProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
    "DerivationDescription", "ContrastBolusAgent", "AcquisitionComments",
})

#: Dummy values for action D, by VR.
_DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
          "ST": "ANONYMIZED", "UT": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED",
          "DA": "19000101", "DT": "19000101000000", "TM": "000000", "IS": "0", "DS": "0"}


@functools.lru_cache(maxsize=1)
def annex_e_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Tag -> table category (``"X_D_TAGS"``, ...) for the basic profile, plus masked ranges
    ``(group, elem, gmask, emask, category)``."""
    import importlib

    table = None
    for edition in _EDITIONS:
        try:
            table = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{edition}")
            break
        except ImportError:
            continue
    if table is None:  # pragma: no cover - declared dependency
        raise ExportError("the 'dicom-anonymizer' package (Annex E attribute table) is not installed",
                          code="missing_dependency")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for name in _COMBOS:
        for entry in getattr(table, name):
            if len(entry) == 2:
                exact.setdefault((entry[0] << 16) | entry[1], name)
            else:
                masked.append((entry[0], entry[1], entry[2], entry[3], name))
    return exact, tuple(masked)


def category_for(tag: int) -> str | None:
    """The Table E.1-1 category of ``tag`` (``"Z_TAGS"``, ``"X_D_TAGS"``, ...), None if not listed."""
    exact, masked = annex_e_table()
    c = exact.get(int(tag))
    if c is not None:
        return c
    g, e = int(tag) >> 16, int(tag) & 0xFFFF
    for mg, me, gm, em, cat in masked:
        if g & gm == mg and e & em == me:
            return cat
    return None


def action_for(tag: int) -> Action | None:
    """The single action applied to ``tag`` (combinations folded to the more private one)."""
    c = category_for(tag)
    return None if c is None else _COMBOS[c]


@dataclass(frozen=True)
class DeidOptions:
    """Options of the profile (PS3.15 E.3).

    Attributes
    ----------
    retain_dates_shifted : bool
        *Retain Longitudinal Temporal Information with Modified Dates*: every date moves back
        by the same keyed number of days for one patient (PatientID), so intervals survive.
    clean_descriptions : bool
        *Clean Descriptors*: keep descriptions with identifying words removed.
    keep_private : frozenset of (int, str, int)
        Private elements to keep, as (group, private creator, element low byte),
        e.g. ``(0x0019, "SIEMENS CT VA0  COAD", 0x10)``.
    allow_burned_in : bool
        Write objects whose pixels may show identity (BurnedInAnnotation YES) with
        PatientIdentityRemoved NO instead of refusing them.
    """

    retain_dates_shifted: bool = False
    clean_descriptions: bool = False
    keep_private: frozenset[tuple[int, str, int]] = field(default_factory=frozenset)
    allow_burned_in: bool = False

    def method_text(self) -> list[str]:
        """Values of DeidentificationMethod (LO, each at most 64 characters)."""
        parts = ["SIRAD Viewer", PROFILE_NAME]
        if self.retain_dates_shifted:
            parts.append("Retain Longitudinal Temporal Information Modified Dates")
        if self.clean_descriptions:
            parts.append("Clean Descriptors")
        if self.keep_private:
            parts.append("Retain Safe Private (whitelist)")
        return [p[:64] for p in parts]


def parse_private_rule(text: str) -> tuple[int, str, int]:
    """``"0019,SIEMENS CT VA0  COAD,10"`` -> ``(0x0019, "SIEMENS CT VA0  COAD", 0x10)`` (hex numbers)."""
    try:
        g, creator, e = text.split(",", 2)
        group, elem = int(g, 16), int(e, 16)
    except ValueError as exc:
        raise ValueError(f"private rule {text!r}: expected GROUP,CREATOR,ELEMENT with hex numbers, "
                         "e.g. 0019,SIEMENS CT VA0  COAD,10") from exc
    if group % 2 == 0 or not 0 <= elem <= 0xFF or not creator.strip():
        raise ValueError(f"private rule {text!r}: the group must be odd and the element 00-FF")
    return group, creator.strip(), elem


# --- the walk --------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'-][A-Za-z0-9]+)*")
_FREE_TEXT = {"LO", "SH", "LT", "ST", "UT", "UC", "PN", "UN"}
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "CS", "AE", "UC", "DA", "DT", "TM", "IS", "DS", "UI"}


def _identifying_words(ds: Any) -> set[str]:
    """Words of every value the profile removes or replaces (for cleaning descriptions)."""
    words: set[str] = set()

    def visit(d: Any) -> None:
        for elem in _elements(d):
            if elem.VR == "SQ":
                for item in elem.value or ():
                    visit(item)
                continue
            act = action_for(elem.tag)
            if elem.keyword in DESCRIPTORS or elem.VR not in _TEXT_VRS:
                continue
            if act is not None or elem.VR in ("PN", "DA", "DT", "TM") or elem.tag.is_private:
                for w in _WORD.findall(str(elem.value)):
                    if len(w) >= 2:
                        words.add(w.lower())
    visit(ds)
    return words


def _clean_text(text: str, words: set[str]) -> str:
    def keep(m: re.Match[str]) -> str:
        w = m.group(0)
        if w.lower() in words or sum(c.isdigit() for c in w) >= 4:
            return ""
        return w
    cleaned = _WORD.sub(keep, text.replace("^", " "))
    cleaned = re.sub(r"[^\w\s.,:;()/+-]", " ", cleaned)
    return re.sub(r"\s+", " ", cleaned).strip(" ,;:-")


def _elements(ds: Any) -> list[Any]:
    """The elements of ``ds``; one that cannot be decoded is dropped (it might hide identity)."""
    out = []
    for tag in list(ds.keys()):
        try:
            out.append(ds[tag])
        except Exception as exc:  # noqa: BLE001 - any decoding failure: drop the element
            log.debug("dropping undecodable element %s: %s", tag, exc)
            del ds[tag]
    return out


def _shift(value: str, vr: str, days: int) -> str | None:
    v = value.strip()
    if len(v) < 8 or not v[:8].isdigit():
        return None
    try:
        d = _dt.date(int(v[:4]), int(v[4:6]), int(v[6:8])) - _dt.timedelta(days=days)
    except ValueError:
        return None
    return d.strftime("%Y%m%d") + (v[8:] if vr == "DT" else "")


class _Walker:
    def __init__(self, key: bytes, opts: DeidOptions, patient_key: str, words: set[str]) -> None:
        self.key, self.opts, self.words = key, opts, words
        self.shift_days = date_shift_days(patient_key, key) if opts.retain_dates_shifted else 0
        self.patient_pseudonym = pseudonym(patient_key, key) if patient_key else "ANONYMIZED"

    def uid(self, value: Any) -> Any:
        def one(u: str) -> str:
            u = str(u)
            return u if (not u or u.startswith(_DICOM_ROOT)) else remap_uid(u, self.key)
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return [one(u) for u in value]
        return one(value)

    def dates(self, ds: Any, elem: Any, act: Action | None) -> None:
        pure_x = category_for(elem.tag) == "X_TAGS"
        if elem.keyword == "PatientBirthDate" or pure_x or (act is Action.REMOVE and not self.opts.retain_dates_shifted):
            del ds[elem.tag]
            return
        if elem.VR == "TM" or not self.opts.retain_dates_shifted:
            if self.opts.retain_dates_shifted:  # times of day are kept with modified dates
                return
            if act is Action.DUMMY:
                elem.value = _DUMMY[elem.VR]
            else:
                elem.value = ""
            return
        vals = list(elem.value) if type(elem.value).__name__ == "MultiValue" else [elem.value]
        new = [_shift(str(v), elem.VR, self.shift_days) for v in vals if str(v).strip()]
        if any(n is None for n in new):
            del ds[elem.tag]  # not a date we can shift: not kept
            return
        elem.value = new if len(new) > 1 else (new[0] if new else "")

    def private_keep(self, ds: Any) -> set[int]:
        """Tags of private elements (and their creators) on the whitelist."""
        keep: set[int] = set()
        if not self.opts.keep_private:
            return keep
        for tag in list(ds.keys()):
            g, e = tag.group, tag.element
            if g % 2 == 0 or e < 0x1000:
                continue
            creator_tag = (g << 16) | (e >> 8)
            creator = ds.get(creator_tag)
            name = str(creator.value).strip() if creator is not None else ""
            if (g, name, e & 0xFF) in self.opts.keep_private:
                keep.update({int(tag), creator_tag})
        return keep

    def clean(self, ds: Any, *, strict: bool = False) -> None:
        """Clean ``ds`` in place; ``strict`` inside a sequence the table marks D (content trees,
        person identification codes): there every free-text value not in the table goes too."""
        keep_private = self.private_keep(ds)
        for elem in _elements(ds):
            tag = elem.tag
            if tag.element == 0 and tag.group != 0x0002:  # group lengths: recomputed or dropped
                del ds[tag]
                continue
            if tag.is_private:
                if int(tag) not in keep_private:
                    del ds[tag]
                continue
            kw = elem.keyword
            if not kw and elem.VR == "UN":  # a public tag nobody can interpret
                del ds[tag]
                continue
            act = action_for(tag)
            if elem.VR == "SQ":
                if act in (Action.REMOVE, Action.EMPTY):
                    if act is Action.REMOVE:
                        del ds[tag]
                    else:
                        elem.value = []
                    continue
                for item in elem.value or ():
                    self.clean(item, strict=strict or act is Action.DUMMY)
                continue
            if strict and act is None and elem.VR in _FREE_TEXT:
                del ds[tag]
                continue
            if kw in DESCRIPTORS and act is not None:
                if self.opts.clean_descriptions and isinstance(elem.value, str):
                    elem.value = _clean_text(elem.value, self.words)
                else:
                    del ds[tag]
                continue
            if elem.VR in ("DA", "DT", "TM"):
                self.dates(ds, elem, act)
                continue
            if kw in ("PatientName", "PatientID"):
                elem.value = self.patient_pseudonym
                continue
            if elem.VR == "UI" or act is Action.UID:
                if elem.VR == "UI":
                    elem.value = self.uid(elem.value)
                else:
                    del ds[tag]
                continue
            if act is Action.REMOVE:
                del ds[tag]
            elif act is Action.EMPTY or elem.VR == "PN":
                elem.value = b"" if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") else ""
            elif act is Action.DUMMY:
                if elem.VR in _DUMMY:
                    elem.value = _DUMMY[elem.VR]
                else:
                    del ds[tag]


def _object_digest(ds: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for kw in ("SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient", "AcquisitionNumber"):
        h.update(str(ds.get(kw, "")).encode() + b"|")
    try:
        h.update(bytes(ds.get("PixelData") or b""))
    except (TypeError, ValueError):
        pass
    return h.hexdigest()


def _flag(ds: Any, keyword: str) -> bool:
    return str(ds.get(keyword, "") or "").strip().upper() == "YES"


def _method_code_sequence(opts: DeidOptions) -> list[Any]:
    from pydicom.dataset import Dataset

    codes = [("113100", "Basic Application Confidentiality Profile")]
    if opts.retain_dates_shifted:
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    if opts.clean_descriptions:
        codes.append(("113105", "Clean Descriptors Option"))
    if opts.keep_private:
        codes.append(("113111", "Retain Safe Private Option"))
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    return items


def deidentify_dataset(ds: Any, *, key: bytes, options: DeidOptions | None = None,
                       where: str | None = None) -> Any:
    """Return a de-identified deep copy of a pydicom ``Dataset`` (the input is untouched).

    Parameters
    ----------
    ds : pydicom.Dataset
    key : bytes
        The project secret (see :mod:`.keys`).
    options : DeidOptions, optional
    where : str, optional
        The file name, for error messages.

    Raises
    ------
    ExportError
        ``burned_in_annotation`` when the pixels may show identity and
        ``options.allow_burned_in`` is off.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    opts = options or DeidOptions()
    burned = _flag(ds, "BurnedInAnnotation") or _flag(ds, "RecognizableVisualFeatures")
    if burned and not opts.allow_burned_in:
        raise ExportError("BurnedInAnnotation or RecognizableVisualFeatures is YES: the pixels may show the "
                          "patient's identity and are not cleaned; not written (use --allow-burned-in to write "
                          "it marked PatientIdentityRemoved NO)", code="burned_in_annotation", path=where)
    out = copy.deepcopy(ds)
    patient_key = str(ds.get("PatientID", "") or "").strip() or str(ds.get("PatientName", "") or "").strip()
    words = _identifying_words(out) if opts.clean_descriptions else set()
    walker = _Walker(key, opts, patient_key, words)
    walker.clean(out)
    if "PatientName" not in out:
        out.PatientName = walker.patient_pseudonym
    if "PatientID" not in out:
        out.PatientID = walker.patient_pseudonym
    if not str(out.get("SOPInstanceUID", "") or "").strip():
        # an object without its own UID (it happens: see ../shared/data/ct) still needs one in the
        # file meta; derive it from what identifies the object, keyed, so a rerun gives the same
        out.SOPInstanceUID = remap_uid("sirad-empty-sop|" + _object_digest(ds), key)
    out.PatientIdentityRemoved = "NO" if burned else "YES"
    out.DeidentificationMethod = opts.method_text() + (["BURNED-IN ANNOTATION NOT REMOVED"] if burned else [])
    out.DeidentificationMethodCodeSequence = _method_code_sequence(opts)
    out.LongitudinalTemporalInformationModified = "MODIFIED" if opts.retain_dates_shifted else "REMOVED"
    old_meta = getattr(ds, "file_meta", None)
    meta = FileMetaDataset()
    sop_class = out.get("SOPClassUID") or (old_meta.get("MediaStorageSOPClassUID") if old_meta else None)
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    if old_meta is not None and "TransferSyntaxUID" in old_meta:
        meta.TransferSyntaxUID = old_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SIRAD_DEID"
    out.file_meta = meta
    out.preamble = b"\x00" * 128  # the preamble is free bytes: it can hold anything
    return out


__all__ = ["Action", "DeidOptions", "DESCRIPTORS", "PROFILE_NAME", "annex_e_table", "action_for", "category_for",
           "deidentify_dataset", "parse_private_rule"]
