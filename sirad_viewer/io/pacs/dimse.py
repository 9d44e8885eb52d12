"""DIMSE side of the PACS client (pynetdicom): C-ECHO, C-FIND, C-GET, C-MOVE to our own
storage SCP, C-STORE.

Every function takes a :class:`~.node.Node` and raises :class:`~.node.PacsError` naming it.
Patient identifiers are never logged (only counts and the node).
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sirad_viewer.errors import CancelledError
from sirad_viewer.io.pacs.node import Node, PacsError, Query, SeriesInfo, StudyInfo, _float, _int

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]

# Storage SOP classes we accept on C-GET (a presentation context each; DICOM allows 128 in all).
RETRIEVE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",        # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",      # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",        # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",      # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",      # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.88.22",    # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",    # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",    # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",    # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation
    "1.2.840.10008.5.1.4.1.1.30",       # Parametric Map
    "1.2.840.10008.5.1.4.1.1.128",      # PET
    "1.2.840.10008.5.1.4.1.1.1",        # CR
    "1.2.840.10008.5.1.4.1.1.1.1",      # DX
    "1.2.840.10008.5.1.4.1.1.481.3",    # RT Structure Set
)


def _probe(node: Node) -> None:
    """Open and close a TCP connection first: a dead node fails here, fast and clearly."""
    try:
        with socket.create_connection((node.host, node.port), timeout=min(node.timeout_s, 5.0)):
            pass
    except socket.timeout as exc:
        raise PacsError(f"{node}: no answer within {min(node.timeout_s, 5.0):.0f} s (is the PACS running and the "
                        "address right?)", code="timeout") from exc
    except OSError as exc:
        raise PacsError(f"{node}: cannot connect ({exc.strerror or exc}); is the PACS running and the address "
                        "right?", code="unreachable") from exc


def _ae(node: Node):
    from pynetdicom import AE

    ae = AE(ae_title=node.calling_aet)
    ae.acse_timeout = node.timeout_s
    ae.dimse_timeout = node.timeout_s
    ae.network_timeout = node.timeout_s
    ae.connection_timeout = min(node.timeout_s, 5.0)
    return ae


@contextmanager
def _associate(node: Node, ae, **kw) -> Iterator:
    _probe(node)
    t0 = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, **kw)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise PacsError(f"{node}: association refused (check the called AE title '{node.aet}' and that our AE "
                            f"title '{node.calling_aet}' is known to the PACS)", code="refused")
        if time.monotonic() - t0 >= 0.9 * node.timeout_s:
            raise PacsError(f"{node}: the PACS accepted the connection but did not answer the association "
                            f"request within {node.timeout_s:g} s", code="timeout")
        raise PacsError(f"{node}: association aborted by the PACS", code="unreachable")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _check_status(node: Node, status, what: str) -> int:
    if status is None or "Status" not in status:
        raise PacsError(f"{node}: no answer to {what} within {node.timeout_s:.0f} s (connection lost or timed out)",
                        code="timeout")
    return int(status.Status)


def echo(node: Node) -> float:
    """C-ECHO; returns the round-trip time in seconds."""
    from pynetdicom.sop_class import Verification

    ae = _ae(node)
    ae.add_requested_context(Verification)
    t = time.perf_counter()
    with _associate(node, ae) as assoc:
        st = _check_status(node, assoc.send_c_echo(), "C-ECHO")
    if st != 0:
        raise PacsError(f"{node}: C-ECHO answered status 0x{st:04X}", code="failed")
    return time.perf_counter() - t


def _find(node: Node, assoc, level: str, keys: dict) -> list:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    out = []
    for status, ident in assoc.send_c_find(ds, FIND):
        st = _check_status(node, status, f"C-FIND ({level})")
        if st in (0xFF00, 0xFF01):
            if ident is not None:
                out.append(ident)
        elif st != 0:
            raise PacsError(f"{node}: C-FIND ({level}) failed with status 0x{st:04X}", code="failed")
    return out


def find(node: Node, query: Query, *, with_series: bool = True) -> list[StudyInfo]:
    """C-FIND at study level, then series level for each study (and one instance for the slice thickness)."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ae = _ae(node)
    ae.add_requested_context(FIND)
    keys = {"StudyInstanceUID": query.study_uid, "PatientID": query.patient_id, "PatientName": query.name,
            "StudyDate": query.study_date, "AccessionNumber": query.accession, "StudyDescription": "",
            "ModalitiesInStudy": query.modality, "NumberOfStudyRelatedInstances": ""}
    studies: list[StudyInfo] = []
    with _associate(node, ae) as assoc:
        for d in _find(node, assoc, "STUDY", keys):
            mods = d.get("ModalitiesInStudy", "")
            mods = [str(m) for m in mods] if not isinstance(mods, str) else [m for m in mods.split("\\") if m]
            studies.append(StudyInfo(study_uid=str(d.get("StudyInstanceUID", "")), patient_id=str(d.get("PatientID", "")),
                                     patient_name=str(d.get("PatientName", "")), study_date=str(d.get("StudyDate", "")),
                                     accession=str(d.get("AccessionNumber", "")),
                                     description=str(d.get("StudyDescription", "")), modalities=mods))
        if with_series:
            for s in studies:
                for d in _find(node, assoc, "SERIES", {"StudyInstanceUID": s.study_uid, "SeriesInstanceUID": "",
                                                       "SeriesDescription": "", "Modality": "",
                                                       "NumberOfSeriesRelatedInstances": "", "SeriesNumber": ""}):
                    info = SeriesInfo(series_uid=str(d.get("SeriesInstanceUID", "")),
                                      description=str(d.get("SeriesDescription", "")),
                                      modality=str(d.get("Modality", "")),
                                      n_images=_int(d.get("NumberOfSeriesRelatedInstances")))
                    inst = _find(node, assoc, "IMAGE", {"StudyInstanceUID": s.study_uid,
                                                        "SeriesInstanceUID": info.series_uid,
                                                        "SOPInstanceUID": "", "SliceThickness": ""})
                    if info.n_images is None:
                        info.n_images = len(inst)
                    if inst:
                        info.slice_thickness_mm = _float(inst[0].get("SliceThickness"))
                    s.series.append(info)
                if not s.modalities:
                    s.modalities = sorted({x.modality for x in s.series if x.modality})
    if query.modality:
        studies = [s for s in studies if query.modality in s.modalities]
    log.info("%s: C-FIND found %d stud%s", node, len(studies), "y" if len(studies) == 1 else "ies")
    return studies


class _Receiver:
    """Writes each received instance into a folder; counts; checks for cancellation."""

    def __init__(self, folder: Path, cancel: Cancel | None) -> None:
        self.folder = folder
        self.cancel = cancel
        self.files: list[Path] = []
        self.lock = threading.Lock()
        self.cancelled = False

    def handle(self, event) -> int:
        if self.cancel is not None and self.cancel():
            self.cancelled = True
            return 0xA700  # refused: out of resources (we stop taking files once cancelled)
        uid = str(event.request.AffectedSOPInstanceUID)
        p = self.folder / f"{uid}.dcm"
        p.write_bytes(event.encoded_dataset())
        with self.lock:
            self.files.append(p)
        return 0x0000


def _retrieve_identifier(study_uid: str, series_uid: str | None):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    return ds


def _drive(node: Node, assoc, responses, recv: _Receiver, expected: int, what: str,
           progress: Progress | None, cancel: Cancel | None) -> None:
    failed = 0
    for status, _ in responses:
        st = _check_status(node, status, what)
        if cancel is not None and cancel():
            recv.cancelled = True
        if recv.cancelled:
            assoc.abort()
            raise CancelledError(f"{node}: retrieve cancelled after {len(recv.files)} of {expected} files")
        if st in (0xFF00, 0xFF01):
            if progress:
                progress(min(len(recv.files) / max(expected, 1), 1.0), f"{len(recv.files)} of {expected} files")
            continue
        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        if st == 0xFE00:
            raise CancelledError(f"{node}: retrieve cancelled by the PACS")
        if st not in (0x0000, 0xB000):
            raise PacsError(f"{node}: {what} failed with status 0x{st:04X} after {len(recv.files)} files",
                            code="failed")
    if failed:
        raise PacsError(f"{node}: {what} incomplete: {failed} sub-operation(s) failed, {len(recv.files)} of "
                        f"{expected} files arrived", code="partial")


def get(node: Node, study_uid: str, series_uids: list[str] | None, folder: Path, expected: int, *,
        progress: Progress | None = None, cancel: Cancel | None = None) -> list[Path]:
    """C-GET the study (or the given series) into ``folder``; returns the files received."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    ae = _ae(node)
    ae.add_requested_context(GET)
    roles = []
    for uid in RETRIEVE_SOP_CLASSES:
        ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
        roles.append(build_role(uid, scp_role=True))
    recv = _Receiver(folder, cancel)
    with _associate(node, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, recv.handle)]) as assoc:
        for series in (series_uids or [None]):
            _drive(node, assoc, assoc.send_c_get(_retrieve_identifier(study_uid, series), GET), recv, expected,
                   "C-GET", progress, cancel)
    return recv.files


def move(node: Node, study_uid: str, series_uids: list[str] | None, folder: Path, expected: int, *,
         progress: Progress | None = None, cancel: Cancel | None = None) -> list[Path]:
    """C-MOVE to our own storage SCP (``node.calling_aet`` on ``node.move_port``), which the PACS
    must know as a destination."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    if not node.move_port:
        raise PacsError(f"{node}: C-MOVE needs the port of our storage SCP (--move-port)", code="bad_node")
    recv = _Receiver(folder, cancel)
    scp_ae = _ae(node)
    for uid in RETRIEVE_SOP_CLASSES:
        scp_ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    try:
        server = scp_ae.start_server(("127.0.0.1" if node.host in ("127.0.0.1", "localhost") else "",
                                      node.move_port), block=False,
                                     evt_handlers=[(evt.EVT_C_STORE, recv.handle)])
    except OSError as exc:
        raise PacsError(f"{node}: cannot listen on port {node.move_port} for C-MOVE ({exc})", code="failed") from exc
    try:
        ae = _ae(node)
        ae.add_requested_context(MOVE)
        with _associate(node, ae) as assoc:
            for series in (series_uids or [None]):
                _drive(node, assoc, assoc.send_c_move(_retrieve_identifier(study_uid, series), node.calling_aet, MOVE),
                       recv, expected, "C-MOVE", progress, cancel)
    finally:
        server.shutdown()
    return recv.files


def store(node: Node, paths: list[Path], *, progress: Progress | None = None, cancel: Cancel | None = None) -> int:
    """C-STORE each file (one association, a context per SOP class and transfer syntax found)."""
    import pydicom

    datasets = []
    for p in paths:
        try:
            datasets.append(pydicom.dcmread(p))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
            raise PacsError(f"{p}: not a DICOM file ({exc})", code="failed", path=p) from exc
    ae = _ae(node)
    for cls, ts in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(cls, ts)
    n = 0
    with _associate(node, ae) as assoc:
        for k, ds in enumerate(datasets):
            if cancel is not None and cancel():
                raise CancelledError(f"{node}: store cancelled after {n} of {len(datasets)} files")
            st = _check_status(node, assoc.send_c_store(ds), "C-STORE")
            if st not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise PacsError(f"{node}: C-STORE of {Path(paths[k]).name} refused with status 0x{st:04X} "
                                f"({n} of {len(datasets)} stored)", code="partial" if n else "failed")
            n += 1
            if progress:
                progress(n / len(datasets), f"stored {n} of {len(datasets)}")
    log.info("%s: C-STORE sent %d file(s)", node, n)
    return n
