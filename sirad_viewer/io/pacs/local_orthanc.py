"""A throw-away local Orthanc (DIMSE + DICOMweb) for tests and ``make pacs``.

Writes a configuration with free ports on 127.0.0.1 and a temporary storage folder, starts
``Orthanc CONFIG`` as a child process, waits until its REST API answers, stops it on exit.
Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide the server and the plugin.
Nothing here listens on anything but 127.0.0.1.
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sirad_viewer.io.pacs.node import PacsError

log = logging.getLogger(__name__)

PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                     "/usr/lib/orthanc/libOrthancDicomWeb.so",
                     "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: ask Linux to end it when its parent dies (a killed test run leaves no server)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def find_orthanc() -> str | None:
    return shutil.which("Orthanc") or (str(Path("/usr/sbin/Orthanc")) if Path("/usr/sbin/Orthanc").exists() else None)


def find_dicomweb_plugin() -> str | None:
    for p in PLUGIN_CANDIDATES:
        if Path(p).exists():
            return p
    return None


@dataclass
class LocalOrthanc:
    """An Orthanc child process on 127.0.0.1.

    Parameters
    ----------
    modalities : dict
        ``{name: (aet, port)}`` of peers on 127.0.0.1 Orthanc may C-STORE/C-MOVE to (our SCP).
    storage : folder for the database and files (a temporary one when None, removed on stop).
    aet : Orthanc's own AE title (the called AET; a wrong one is refused).
    """

    modalities: dict[str, tuple[str, int]] = field(default_factory=dict)
    storage: Path | None = None
    aet: str = "ORTHANC"
    http_port: int = 0
    dicom_port: int = 0
    _proc: subprocess.Popen | None = None
    _tmp: Path | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse_node(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise PacsError("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)",
                            code="not_installed")
        mods = {name: {"AET": aet, "Host": "127.0.0.1", "Port": port, "AllowEcho": True, "AllowFind": True,
                       "AllowGet": True, "AllowMove": True, "AllowStore": True}
                for name, (aet, port) in self.modalities.items()}
        return {
            "Name": "SIRAD local PACS",
            "StorageDirectory": str(self.storage / "db"),
            "IndexDirectory": str(self.storage / "db"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            # Orthanc 1.10 cannot bind its DICOM port to 127.0.0.1 alone (HTTP refuses remote clients
            # through RemoteAccessAllowed): only the configured modalities, from 127.0.0.1, are served.
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": mods,
            "DicomScuTimeout": 5,
            "DicomAssociationCloseDelay": 0,
            "UnknownSopClassAccepted": True,
            "SaveJobs": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1",
                         "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }

    def start(self, *, timeout_s: float = 20.0) -> "LocalOrthanc":
        exe = find_orthanc()
        if exe is None:
            raise PacsError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)", code="not_installed")
        if self.storage is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="sirad-orthanc-"))
            self.storage = self._tmp
        self.storage = Path(self.storage)
        (self.storage / "db").mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        cfg = self.storage / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        logf = open(self.storage / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the child's life
        self._proc = subprocess.Popen([exe, str(cfg)], stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        logf.close()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self._proc.poll() is not None:
                tail = (self.storage / "orthanc.log").read_text(errors="replace")[-2000:]
                raise PacsError(f"Orthanc exited with code {self._proc.returncode} at start:\n{tail}",
                                code="orthanc_failed")
            try:
                with urllib.request.urlopen(self.rest_url + "/system", timeout=1) as r:
                    if r.status == 200 and self._dicom_listening():
                        log.info("local Orthanc ready on HTTP %d, DICOM %d", self.http_port, self.dicom_port)
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PacsError(f"Orthanc did not answer within {timeout_s:.0f} s", code="orthanc_failed")

    def _dicom_listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def upload(self, paths: list[Path]) -> int:
        """Put files in through the REST API (for the demo loader); returns how many were accepted."""
        n = 0
        for p in paths:
            req = urllib.request.Request(self.rest_url + "/instances", data=Path(p).read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(req, timeout=30) as r:
                n += r.status == 200
        return n

    def clear(self) -> None:
        """Delete every stored patient (tests reset the server between cases)."""
        with urllib.request.urlopen(self.rest_url + "/patients", timeout=10) as r:
            ids = json.loads(r.read())
        for pid in ids:
            req = urllib.request.Request(f"{self.rest_url}/patients/{pid}", method="DELETE")
            urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "LocalOrthanc":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
