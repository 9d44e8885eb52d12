"""DICOMweb side of the PACS client (dicomweb-client): QIDO-RS, WADO-RS, STOW-RS.

Credentials go into the HTTP session (basic auth or a bearer token), never into a URL, a log
line or an error message.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from sirad_viewer.errors import CancelledError
from sirad_viewer.io.pacs.node import Node, PacsError, Query, SeriesInfo, StudyInfo, _float, _int

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


def _client(node: Node):
    import requests
    from dicomweb_client.api import DICOMwebClient

    timeout = (min(node.timeout_s, 5.0), node.timeout_s)  # (connect, read) seconds

    class _Session(requests.Session):
        def send(self, request, **kw: Any):  # type: ignore[override]
            # requests percent-encodes '*' (a legal query character, RFC 3986 sub-delims) and
            # Orthanc then takes the QIDO wildcard literally: send it as written.
            request.url = request.url.replace("%2A", "*")
            return super().send(request, **kw)

    s = _Session()
    if node.username:
        s.auth = (node.username, node.password)
    if node.token:
        s.headers["Authorization"] = f"Bearer {node.token}"
    c = DICOMwebClient(url=node.url, session=s, timeout=timeout)
    # Its default retries a refused connection for about 30 s; a dead node must fail fast.
    c.set_http_retry_params(retry=False)
    return c


def _wrap(node: Node, what: str, exc: Exception) -> PacsError:
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return PacsError(f"{node}: no answer to {what} within {node.timeout_s:.0f} s", code="timeout")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return PacsError(f"{node}: cannot connect for {what}; is the PACS running and the address right?",
                         code="unreachable")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        st = exc.response.status_code
        if st in (401, 403):
            return PacsError(f"{node}: {what} refused (HTTP {st}: check the user name, password or token)",
                             code="refused")
        if st == 404:
            return PacsError(f"{node}: {what}: not found (HTTP 404; is the base URL .../dicom-web right?)",
                             code="not_found")
        return PacsError(f"{node}: {what} failed with HTTP {st}", code="failed")
    return PacsError(f"{node}: {what} failed ({type(exc).__name__})", code="failed")


def _call(node: Node, what: str, fn: Callable[[], Any]) -> Any:
    import requests

    try:
        return fn()
    except requests.exceptions.RequestException as exc:
        raise _wrap(node, what, exc) from exc
    except ValueError as exc:  # dicomweb-client raises it for malformed answers
        raise PacsError(f"{node}: {what}: the server's answer could not be read ({exc})", code="failed") from exc


def _val(d: dict, tag: str) -> Any:
    v = d.get(tag, {}).get("Value")
    if not v:
        return ""
    x = v[0]
    if isinstance(x, dict):  # PersonName
        return x.get("Alphabetic", "")
    return x


def echo(node: Node) -> float:
    """A QIDO-RS study search limited to one answer (DICOMweb has no verification service)."""
    c = _client(node)
    t = time.perf_counter()
    _call(node, "QIDO-RS (echo)", lambda: c.search_for_studies(limit=1))
    return time.perf_counter() - t


def find(node: Node, query: Query, *, with_series: bool = True) -> list[StudyInfo]:
    c = _client(node)
    filters = {k: v for k, v in {"PatientID": query.patient_id, "PatientName": query.name,
                                 "StudyDate": query.study_date, "AccessionNumber": query.accession,
                                 "ModalitiesInStudy": query.modality,
                                 "StudyInstanceUID": query.study_uid}.items() if v}
    fields = ["StudyDescription", "ModalitiesInStudy", "AccessionNumber", "PatientName", "PatientID", "StudyDate"]
    found = _call(node, "QIDO-RS study search", lambda: c.search_for_studies(search_filters=filters, fields=fields))
    studies = []
    for d in found:
        mods = d.get("00080061", {}).get("Value") or []
        studies.append(StudyInfo(study_uid=_val(d, "0020000D"), patient_id=str(_val(d, "00100020")),
                                 patient_name=str(_val(d, "00100010")), study_date=str(_val(d, "00080020")),
                                 accession=str(_val(d, "00080050")), description=str(_val(d, "00081030")),
                                 modalities=[str(m) for m in mods]))
    if with_series:
        for s in studies:
            ser = _call(node, "QIDO-RS series search", lambda s=s: c.search_for_series(
                s.study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances", "Modality"]))
            for d in ser:
                info = SeriesInfo(series_uid=_val(d, "0020000E"), description=str(_val(d, "0008103E")),
                                  modality=str(_val(d, "00080060")), n_images=_int(_val(d, "00201209")))
                # without a count from the server, count the instances (a retrieve checks against it)
                inst = _call(node, "QIDO-RS instance search", lambda i=info: c.search_for_instances(
                    s.study_uid, i.series_uid, fields=["SliceThickness"], limit=None if i.n_images is None else 1))
                if info.n_images is None:
                    info.n_images = len(inst)
                if inst:
                    info.slice_thickness_mm = _float(_val(inst[0], "00180050"))
                s.series.append(info)
            if not s.modalities:
                s.modalities = sorted({x.modality for x in s.series if x.modality})
    log.info("%s: QIDO-RS found %d stud%s", node, len(studies), "y" if len(studies) == 1 else "ies")
    return studies


def get(node: Node, study_uid: str, series_uids: list[str], folder: Path, expected: int, *,
        progress: Progress | None = None, cancel: Cancel | None = None) -> list[Path]:
    """WADO-RS, series by series, instance by instance (so progress and cancel work)."""
    import requests

    c = _client(node)
    files: list[Path] = []
    for series in series_uids:
        it = c.iter_series(study_uid, series, media_types=(("application/dicom", "*"),))
        try:
            for ds in it:
                if cancel is not None and cancel():
                    raise CancelledError(f"{node}: retrieve cancelled after {len(files)} of {expected} files")
                p = folder / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(p, enforce_file_format=True)
                files.append(p)
                if progress:
                    progress(min(len(files) / max(expected, 1), 1.0), f"{len(files)} of {expected} files")
        except requests.exceptions.RequestException as exc:
            raise _wrap(node, f"WADO-RS retrieve (after {len(files)} of {expected} files)", exc) from exc
        except ValueError as exc:
            raise PacsError(f"{node}: WADO-RS answer could not be read after {len(files)} files ({exc})",
                            code="partial") from exc
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
    return files


def store(node: Node, paths: list[Path], *, progress: Progress | None = None, cancel: Cancel | None = None) -> int:
    """STOW-RS in batches of 16 instances; a failed SOP reported by the server is an error."""
    import pydicom

    c = _client(node)
    n = 0
    for k in range(0, len(paths), 16):
        if cancel is not None and cancel():
            raise CancelledError(f"{node}: store cancelled after {n} of {len(paths)} files")
        batch = []
        for p in paths[k:k + 16]:
            try:
                batch.append(pydicom.dcmread(p))
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
                raise PacsError(f"{p}: not a DICOM file ({exc})", code="failed", path=p) from exc
        resp = _call(node, f"STOW-RS ({n} of {len(paths)} stored so far)", lambda b=batch: c.store_instances(b))
        failed = resp.get("FailedSOPSequence", []) if resp is not None else []
        if failed:
            raise PacsError(f"{node}: STOW-RS refused {len(failed)} instance(s) ({n} of {len(paths)} stored)",
                            code="partial" if n else "failed")
        n += len(batch)
        if progress:
            progress(n / len(paths), f"stored {n} of {len(paths)}")
    log.info("%s: STOW-RS sent %d file(s)", node, n)
    return n
