"""De-identification for every export: DICOM objects, series metadata, side-cars and reports.

Choice of library (issue #12)
-----------------------------
We evaluated the two maintained pydicom-based de-identifiers on PyPI (both install and run with
pydicom 3) on one CT object carrying 126 planted identifying values (``tests/io/test_deid.py``):

* ``dicognito`` 0.19 left 43: it walks nested sequences and shifts dates, but keeps descriptions,
  protocol name, admission id, allergies, private tags, the preamble and codes in nested
  sequences; it derives new UIDs as ``md5(seed + uid)`` and uses one date offset per run, not
  per patient, and has no clean-descriptors option.
* ``deid`` 0.4.13 with its default recipe left 50 (allergies, institution, station,
  descriptions, verifying observer, nested codes, preamble, ...): its recipe is a site's
  CTP-derived list, not the standard's table; keyed UIDs and per-patient date shifts need custom
  functions, and it pulls a plotting stack into a core package.
* the previous ``io/deid.py`` left 57; this package leaves 0.

Neither fits without rewriting most of its behaviour, so we apply the standard's own table:
:mod:`.profile` implements the PS3.15 Annex E Basic Application Level Confidentiality Profile
recursively, with the attribute table taken from the maintained ``dicom-anonymizer`` package
(Table E.1-1, 2026c edition), and the *Retain Longitudinal Temporal Information with Modified
Dates* and *Clean Descriptors* options. UIDs, pseudonyms and date offsets are HMAC-SHA256 under a
per-project key (:mod:`.keys`).
"""
from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import replace
from pathlib import Path

from sirad_viewer.imaging.volume import SeriesMetadata
from sirad_viewer.io.deid.keys import (date_shift_days, default_key_path, load_or_create_key, pseudonym,
                                       remap_uid)
from sirad_viewer.io.deid.profile import (PROFILE_NAME, DeidOptions, action_for, deidentify_dataset,
                                          parse_private_rule)


def source_reference(path: str | Path | None, *, include_path: bool = False) -> str:
    """What outputs say about their input: a non-identifying reference unless the path is asked for.

    The reference is ``sha256:`` and the first 16 hex digits of the SHA-256 of the absolute
    path, so the owner of the data can match it (``sirad`` prints it) while a reader of the output
    cannot read a patient name out of a folder name.
    """
    if not path:
        return ""
    if str(path).startswith("sha256:"):  # already a reference
        return str(path)
    p = os.path.abspath(os.fspath(path))
    if include_path:
        return p
    return "sha256:" + hashlib.sha256(p.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def scrub_paths(text: str, sources: list[str] | tuple[str, ...]) -> str:
    """``text`` with every source path, file name and folder name of ``sources`` replaced by
    ``<source>`` (warnings name files; folders often carry the patient's name)."""
    names: set[str] = set()
    for s in sources:
        if not s:
            continue
        p = Path(str(s).replace("!", "/"))
        names.update({str(s), os.path.abspath(str(s)), str(p)})
        names.update(part for part in p.parts if part not in ("/", ".", ".."))
    for n in sorted((n for n in names if len(n) >= 3), key=len, reverse=True):
        text = text.replace(n, "<source>")
    return text


def deidentify_metadata(meta: SeriesMetadata, *, key: bytes | None = None,
                        options: DeidOptions | None = None) -> SeriesMetadata:
    """De-identified copy of a volume's :class:`SeriesMetadata` for side-cars and reports.

    Follows the same profile as :func:`deidentify_dataset`: patient name and id become the
    keyed pseudonym (empty without a key), descriptions go (free text; a NIfTI volume's
    description is its file name), dates go unless ``options.retain_dates_shifted``; UIDs are
    remapped with ``key``, or removed when no key is given (so nothing links back).
    """
    opts = options or DeidOptions()
    pkey = meta.patient_id or meta.patient_name
    pseudo = pseudonym(pkey, key) if (key and pkey) else ""
    study_date = ""
    if opts.retain_dates_shifted and key and meta.study_date:
        from sirad_viewer.io.deid.profile import _shift

        study_date = _shift(meta.study_date, "DA", date_shift_days(pkey, key)) or ""

    def uid(u: str) -> str:
        return remap_uid(u, key) if (key and u) else ""

    return replace(
        meta,
        patient_name=pseudo, patient_id=pseudo, patient_birth_date="", patient_sex="", accession_number="",
        institution_name="", study_date=study_date, study_description="", series_description="",
        study_instance_uid=uid(meta.study_instance_uid), series_instance_uid=uid(meta.series_instance_uid),
        frame_of_reference_uid=uid(meta.frame_of_reference_uid),
        extra={k: v for k, v in meta.extra.items()
               if (isinstance(v, (bool, int, float)) or k == "format")
               and not k.lower().startswith(("patient", "institution"))},
    )


def one_off_key() -> bytes:
    """A random key for a single export that must not link to anything (nothing stored)."""
    return secrets.token_bytes(32)


__all__ = ["DeidOptions", "PROFILE_NAME", "action_for", "deidentify_dataset", "deidentify_metadata",
           "default_key_path", "load_or_create_key", "one_off_key", "parse_private_rule", "pseudonym",
           "remap_uid", "scrub_paths", "source_reference"]
