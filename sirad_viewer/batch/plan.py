"""What a batch has to grade: every series under a folder tree, the ``image`` column of a CSV, or
the series a PACS finds for some filters (:func:`discover_pacs`).

Discovery runs in the client and reads headers only (the loader's :func:`sirad_viewer.io.scan`);
pixels are read by the workers. Volume files (NIfTI, NRRD, MHA) are not opened here at all: they
are keyed by path, size and mtime and read by the worker that grades them. A file the scan
rejects (not DICOM, truncated, no image) becomes a ``failed`` row with the loader's code at once.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from sirad_viewer.errors import CancelledError, LoadError, SiradError
from sirad_viewer.io import SeriesInfo, scan
from sirad_viewer.io.formats import is_volume_file

log = logging.getLogger(__name__)

@dataclass
class WorkUnit:
    """One series to grade: small and picklable (the scan's geometry plan is not shipped to workers;
    the worker scans ``source`` again and picks the series whose key is ``key``)."""

    key: str
    source: str
    kind: str  # "dicom", "file" or "pacs"
    series_uid: str = ""
    description: str = ""
    study_uid: str = ""  # "pacs": the study the worker retrieves the series from
    node: Any = None  # "pacs": the io.pacs Node (its credentials are hidden from str/repr, never in a row)


@dataclass
class Plan:
    units: list[WorkUnit]
    failed: list[dict[str, Any]]  # rows for the store: files the scan rejected
    duplicates: int = 0


def file_key(path: str | Path) -> str:
    """``file:<absolute path>:<size>:<mtime_ns>``: a changed file is a new case."""
    p = Path(path).resolve()
    st = p.stat()
    return f"file:{p}:{st.st_size}:{st.st_mtime_ns}"


def series_key(info: SeriesInfo, folder: str) -> str:
    if info.uid:
        return f"series:{info.uid}"
    return f"dicom:{Path(folder).resolve()}:{info.n_images}:{info.description}"


def failed_row(key: str, source: str, code: str, message: str) -> dict[str, Any]:
    return {"key": key, "source": source, "status": "failed", "error_code": code, "message": message}


def _targets(root: Path) -> Iterator[tuple[str, Path]]:
    """``("file", p)`` for every volume file; ``("dicom", folder)`` for each top-level folder (or loose file)
    that holds anything else, scanned as one (the loader's scan walks it recursively)."""
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            yield ("file" if is_volume_file(entry) else "dicom"), entry
            continue
        has_other = False
        for d, dirs, files in os.walk(entry):
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            for f in sorted(files):
                if f.startswith(".") or f.upper() == "DICOMDIR":
                    continue
                if is_volume_file(f):
                    yield "file", Path(d) / f
                else:
                    has_other = True
        if has_other:
            yield "dicom", entry


def _csv_targets(path: Path) -> Iterator[tuple[str, Path]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "image" not in (reader.fieldnames or []):
            raise LoadError(f"has no 'image' column (columns: {', '.join(reader.fieldnames or [])})",
                            code="unsupported", path=path)
        for row in reader:
            v = (row.get("image") or "").strip()
            if not v:
                continue
            p = Path(v) if Path(v).is_absolute() else (path.parent / v)
            yield ("file" if is_volume_file(p) else "dicom"), p


def _dicom_units(target: Path, plan: Plan, seen: set[str]) -> None:
    try:
        result = scan(target)
    except LoadError as exc:
        if target.is_dir():  # name each file that failed, with its own code
            for d, dirs, files in os.walk(target):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                for f in sorted(files):
                    fp = Path(d) / f
                    if not f.startswith(".") and not is_volume_file(fp):
                        _dicom_units(fp, plan, seen)  # a failure is recorded with that file's own code
        else:
            key = file_key(target) if target.exists() else f"missing:{target}"
            plan.failed.append(failed_row(key, str(target), exc.code, exc.message))
        return
    for name, code, message in result.skipped:
        if code == "unsupported" and is_volume_file(name):
            continue  # volume files are units of their own
        if "localizer" in message:
            continue
        fp = Path(name)
        key = file_key(fp) if fp.exists() else f"member:{name}"
        plan.failed.append(failed_row(key, name, code, message))
    for info in result.series:
        key = series_key(info, str(target))
        if key in seen:
            plan.duplicates += 1
            continue
        seen.add(key)
        plan.units.append(WorkUnit(key=key, source=str(target), kind="dicom", series_uid=info.uid,
                                   description=info.description))


def discover(source: str | Path, *, progress: Callable[[float, str], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> Plan:
    """Every series under ``source`` (a folder tree or a CSV with an ``image`` column).

    Raises
    ------
    LoadError
        ``not_found`` when ``source`` does not exist; ``unsupported`` for a CSV without ``image``.
    """
    src = Path(source).absolute()  # rows name absolute paths: the worklist and the report open them later
    if not src.exists():
        raise LoadError("does not exist", code="not_found", path=src)
    if src.is_file() and src.suffix.lower() == ".csv":
        targets = list(_csv_targets(src))
    elif src.is_dir():
        targets = list(_targets(src))
    else:
        targets = [("file" if is_volume_file(src) else "dicom", src)]
    plan = Plan([], [])
    seen: set[str] = set()
    for i, (kind, t) in enumerate(targets):
        if cancel is not None and cancel():
            raise CancelledError("discovery cancelled")
        if progress is not None:
            progress(i / max(len(targets), 1), f"scanning {t}")
        if kind == "file":
            if not t.exists():
                plan.failed.append(failed_row(f"missing:{t}", str(t), "not_found", "does not exist"))
                continue
            key = file_key(t)
            if key in seen:
                plan.duplicates += 1
                continue
            seen.add(key)
            plan.units.append(WorkUnit(key=key, source=str(t), kind="file", description=f"{t.parent.name}/{t.name}"))
        else:
            try:
                _dicom_units(t, plan, seen)
            except SiradError as exc:  # an unreadable folder must not stop discovery
                plan.failed.append(failed_row(f"missing:{t}", str(t), exc.code, exc.message))
    # a broken file can be met twice (a CSV naming it twice): keep one row per key
    uniq: dict[str, dict[str, Any]] = {}
    for r in plan.failed:
        uniq.setdefault(r["key"], r)
    plan.failed = list(uniq.values())
    return plan


def discover_pacs(node: Any, query: Any = None) -> Plan:
    """One unit per series of the studies a PACS finds for ``query`` (an :class:`io.pacs.Query`).

    Nothing is retrieved here: each worker retrieves its own series. The key is
    ``series:<SeriesInstanceUID>``, the same as for a folder, so a series graded from disk is not
    graded again from the PACS and a rerun retrieves nothing it already has. With a modality in the
    query (a study-level filter: ``ModalitiesInStudy``) series of other modalities (SR, SEG, ...)
    of the matching studies are left out.

    Raises
    ------
    PacsError
        When the node cannot be queried (``unreachable``, ``refused``, ``timeout``, ...).
    """
    from sirad_viewer.io import pacs

    q = query or pacs.Query()
    plan = Plan([], [])
    seen: set[str] = set()
    for study in pacs.find(node, q):
        for se in study.series:
            if q.modality and se.modality and se.modality.upper() != q.modality.upper():
                continue
            key = f"series:{se.series_uid}"
            if key in seen:
                plan.duplicates += 1
                continue
            seen.add(key)
            plan.units.append(WorkUnit(key=key, source=str(node), kind="pacs", series_uid=se.series_uid,
                                       description=se.description, study_uid=study.study_uid, node=node))
    return plan
