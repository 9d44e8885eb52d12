"""Query/retrieve and store against a PACS over DICOMweb or DIMSE.

>>> node = parse_node("ORTHANC@127.0.0.1:4242")          # or "http://127.0.0.1:8042/dicom-web"
>>> studies = find(node, Query(patient_id="123"))         # doctest: +SKIP
>>> res = retrieve(node, studies[0].study_uid, "case")    # doctest: +SKIP

A retrieve lands in a temporary folder next to ``out_dir``; only when the number of files that
arrived equals the number the PACS announced are they moved into ``out_dir``. A partial or
cancelled retrieve leaves nothing behind and raises.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from sirad_viewer.io.pacs.node import (Node, PacsError, Protocol, Query, RetrieveResult, SeriesInfo, StudyInfo,
                                       parse_node)

log = logging.getLogger(__name__)

# pynetdicom logs C-FIND identifiers (patient name and ID) at DEBUG, dicomweb-client and urllib3
# log query URLs (with the patient filters) and headers: keep them out of every log file.
for _name in ("pynetdicom", "dicomweb_client", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


def _impl(node: Node):
    if node.protocol is Protocol.DICOMWEB:
        from sirad_viewer.io.pacs import dicomweb as m
    else:
        from sirad_viewer.io.pacs import dimse as m
    return m


def echo(node: Node) -> float:
    """Check that the node answers (C-ECHO, or a one-result QIDO-RS); returns seconds."""
    return _impl(node).echo(node)


def find(node: Node, query: Query | None = None, *, with_series: bool = True) -> list[StudyInfo]:
    """Studies matching ``query``, each with its series (description, modality, count, thickness)."""
    return _impl(node).find(node, query or Query(), with_series=with_series)


def retrieve(node: Node, study_uid: str, out_dir: str | Path, *, series_uids: list[str] | None = None,
             method: str = "get", progress: Progress | None = None, cancel: Cancel | None = None) -> RetrieveResult:
    """Retrieve a study (or some of its series) into ``out_dir``, complete or not at all.

    Parameters
    ----------
    method : ``get`` (C-GET / WADO-RS) or ``move`` (C-MOVE to our storage SCP on ``node.move_port``)
    progress : ``progress(fraction, message)``
    cancel : polled between files; True stops the transfer, removes what arrived and raises
        :class:`~sirad_viewer.errors.CancelledError`
    """
    studies = find(node, Query(study_uid=study_uid))
    if not studies:
        raise PacsError(f"{node}: the study was not found", code="not_found")
    all_series = studies[0].series
    if series_uids:
        missing = [u for u in series_uids if u not in {s.series_uid for s in all_series}]
        if missing:
            raise PacsError(f"{node}: {len(missing)} requested series not found in the study", code="not_found")
        wanted = [s for s in all_series if s.series_uid in series_uids]
    else:
        wanted = all_series
    expected = sum(s.n_images or 0 for s in wanted)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out.parent))
    try:
        m = _impl(node)
        if node.protocol is Protocol.DICOMWEB:
            files = m.get(node, study_uid, [s.series_uid for s in wanted], tmp, expected, progress=progress,
                          cancel=cancel)
        elif method == "move":
            files = m.move(node, study_uid, series_uids, tmp, expected, progress=progress, cancel=cancel)
        else:
            files = m.get(node, study_uid, series_uids, tmp, expected, progress=progress, cancel=cancel)
        got = len({f.name for f in files})
        if got < expected:
            raise PacsError(f"{node}: incomplete retrieve: {got} of {expected} files arrived; nothing was kept",
                            code="partial")
        if progress:
            progress(1.0, f"{got} of {expected} files")
        out.mkdir(parents=True, exist_ok=True)
        final = []
        for f in files:
            dest = out / f.name
            shutil.move(str(f), dest)
            final.append(str(dest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: retrieved %d file(s) in %d series", node, len(final), len(wanted))
    return RetrieveResult(folder=str(out), files=sorted(final), expected=expected, study_uid=study_uid,
                          series_uids=[s.series_uid for s in wanted])


def store(node: Node, paths: list[str | Path], *, progress: Progress | None = None,
          cancel: Cancel | None = None) -> int:
    """C-STORE or STOW-RS the given files (folders are searched for ``*.dcm`` and DICM files)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and _is_dicom(f))
        elif p.is_file():
            files.append(p)
        else:
            raise PacsError("does not exist", code="not_found", path=p)
    if not files:
        raise PacsError(f"{node}: no DICOM files to store", code="not_found")
    return _impl(node).store(node, files, progress=progress, cancel=cancel)


def _is_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


__all__ = ["Node", "PacsError", "Protocol", "Query", "RetrieveResult", "SeriesInfo", "StudyInfo", "parse_node",
           "echo", "find", "retrieve", "store"]
