"""PACS nodes, query results and the typed error every PACS operation raises.

A node is written either as a DICOMweb base URL (``http[s]://host:port/dicom-web``) or as
``AET@host:port`` for DIMSE. Credentials (a password or a bearer token) live on the node and are
never part of its ``str``/``repr`` (which is what logs and error messages use).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sirad_viewer.errors import SiradError


class PacsError(SiradError):
    """A PACS operation failed. The message names the node (never its credentials).

    ``code`` is one of ``bad_node``, ``unreachable``, ``timeout``, ``refused``, ``failed``,
    ``partial``, ``not_found``, ``not_installed``, ``orthanc_failed``.
    """

    code = "pacs_error"


class Protocol(str, Enum):
    DICOMWEB = "dicomweb"
    DIMSE = "dimse"


_AE_RE = re.compile(r"^(?P<aet>[^@\\]{1,16})@(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Node:
    """Where a PACS is and how to talk to it.

    Attributes
    ----------
    protocol : DICOMweb or DIMSE
    url : DICOMweb base URL without credentials (DICOMweb only)
    aet, host, port : called AE title and address (DIMSE only)
    calling_aet : our AE title (DIMSE)
    move_port : where our storage SCP listens for C-MOVE (0: use C-GET)
    username, password, token : credentials (DICOMweb); hidden from str/repr
    timeout_s : network timeout per operation step
    """

    protocol: Protocol
    url: str = ""
    aet: str = ""
    host: str = ""
    port: int = 0
    calling_aet: str = "SIRAD"
    move_port: int = 0
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout_s: float = 10.0
    name: str = ""

    def __str__(self) -> str:
        label = self.url if self.protocol is Protocol.DICOMWEB else f"{self.aet}@{self.host}:{self.port}"
        return f"{self.name} ({label})" if self.name else label

    __repr__ = __str__

    def with_options(self, **kw: Any) -> "Node":
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update({k: v for k, v in kw.items() if v is not None})
        return Node(**d)


def parse_node(text: str, *, calling_aet: str = "SIRAD", move_port: int = 0, timeout_s: float = 10.0,
               username: str = "", password: str = "", token: str = "", name: str = "") -> Node:
    """Parse ``http[s]://[user:pass@]host:port/dicom-web`` or ``AET@host:port``.

    Credentials written into the URL are taken off it and kept apart (so the URL can be shown).
    """
    text = (text or "").strip()
    if text.lower().startswith(("http://", "https://")):
        parts = urlsplit(text)
        if not parts.hostname:
            raise PacsError(f"'{text.split('@')[-1]}' is not a DICOMweb URL (expected http[s]://host:port/dicom-web)",
                            code="bad_node")
        user = parts.username or username
        pw = parts.password or password
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return Node(Protocol.DICOMWEB, url=url, username=user or "", password=pw or "", token=token,
                    timeout_s=timeout_s, name=name, calling_aet=calling_aet)
    m = _AE_RE.match(text)
    if not m:
        raise PacsError(f"'{text}' is neither a DICOMweb URL (http[s]://host:port/dicom-web) nor AET@host:port",
                        code="bad_node")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise PacsError(f"port {port} of '{text}' is out of range 1-65535", code="bad_node")
    return Node(Protocol.DIMSE, aet=m["aet"].strip(), host=m["host"].strip("[]"), port=port,
                calling_aet=calling_aet, move_port=move_port, timeout_s=timeout_s, name=name)


@dataclass
class SeriesInfo:
    series_uid: str
    description: str = ""
    modality: str = ""
    n_images: int | None = None
    slice_thickness_mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StudyInfo:
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    accession: str = ""
    description: str = ""
    modalities: list[str] = field(default_factory=list)
    series: list[SeriesInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["series"] = [s.to_dict() for s in self.series]
        return d


@dataclass
class Query:
    """Study-level filters. ``name`` may hold ``*`` wildcards; ``study_date`` is ``YYYYMMDD`` or
    ``YYYYMMDD-YYYYMMDD`` (either end may be empty)."""

    patient_id: str = ""
    name: str = ""
    study_date: str = ""
    modality: str = ""
    accession: str = ""
    study_uid: str = ""

    def __post_init__(self) -> None:
        if self.study_date and not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", self.study_date):
            raise PacsError(f"study date '{self.study_date}' is not YYYYMMDD or YYYYMMDD-YYYYMMDD", code="bad_query")
        for k in ("patient_id", "name", "modality", "accession", "study_uid"):
            v = getattr(self, k)
            if len(v) > 64 or any(c in v for c in "\\\r\n"):
                raise PacsError(f"query field {k} is too long or holds a backslash or line break", code="bad_query")


@dataclass
class RetrieveResult:
    """Files that arrived complete, in their final folder."""

    folder: str
    files: list[str]
    expected: int
    study_uid: str
    series_uids: list[str]


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f > 0 else None


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
