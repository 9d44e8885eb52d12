"""``make pacs``: a local Orthanc (DIMSE + DICOMweb) holding the demo CT and a few phantoms.

The demo CT (resources/demo/example_ct.nii.gz) is written as a DICOM series with the viewer's own
export and a made-up identity; the phantoms carry their planted fake identities. Nothing here is
patient data. Orthanc listens on 127.0.0.1 only and stops with Ctrl-C; its storage is kept in
``--dir`` so a second start is instant.
"""
from __future__ import annotations

import argparse
import datetime as dt
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sirad_viewer.io.pacs.local_orthanc import LocalOrthanc, free_port  # noqa: E402

PHANTOMS = [(0, 0, 11), (2, 3, 12), (4, 4, 13)]


def _port(preferred: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT after a restart is free
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _demo_series(out: Path) -> list[Path]:
    from dataclasses import replace

    from sirad_viewer.io import load_series, scan
    from sirad_viewer.io.export import write_dicom_series
    from sirad_viewer.phantom import PhantomSpec, make_phantom

    files: list[Path] = []
    vol = load_series(scan(ROOT / "resources" / "demo" / "example_ct.nii.gz").series[0])
    vol.metadata = replace(vol.metadata, patient_name="DEMO^PELVIS", patient_id="SIRAD-DEMO-1", patient_sex="O",
                           accession_number="DEMO-CT-1", study_description="PELVIS CT (demo, TotalSegmentator sample)",
                           study_date=dt.date.today().strftime("%Y%m%d"), series_description="AX 3mm demo CT")
    files += write_dicom_series(vol, out / "demo_ct", deidentify=False, extra_tags={"AcquisitionNumber": "1"})
    for left, right, seed in PHANTOMS:
        ph = make_phantom(PhantomSpec(left_grade=left, right_grade=right, seed=seed, matrix=192))
        v = ph.volume
        v.metadata = replace(v.metadata, accession_number=f"PHANTOM-{seed}",
                             study_description=f"PELVIS CT phantom L{left} R{right} (synthetic)",
                             series_description=f"phantom L{left} R{right}")
        files += write_dicom_series(v, out / f"phantom_{seed}", deidentify=False)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=str(ROOT / "out" / "pacs"), help="Orthanc storage (kept between starts)")
    ap.add_argument("--http-port", type=int, default=8042)
    ap.add_argument("--dicom-port", type=int, default=4242)
    ap.add_argument("--move-port", type=int, default=11112, help="our storage SCP port for C-MOVE (AE title SIRAD)")
    ap.add_argument("--check", action="store_true", help="start, load, print, stop (no waiting)")
    args = ap.parse_args()
    # SIGTERM (and SIGINT in a background job) stop Orthanc cleanly too, like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    store = Path(args.dir)
    fresh = not (store / "db" / "index").exists()
    srv = LocalOrthanc(modalities={"sirad": ("SIRAD", args.move_port)}, storage=store,
                       http_port=_port(args.http_port), dicom_port=_port(args.dicom_port))
    srv.start()
    try:
        if fresh:
            print("loading the demo CT and phantoms (first start only) ...", flush=True)
            n = srv.upload(_demo_series(store / "source"))
            print(f"  {n} DICOM files stored", flush=True)
        print(f"""
SIRAD local PACS (Orthanc) is running on this machine only (127.0.0.1):
  DICOMweb   {srv.dicomweb_url}
  DIMSE      {srv.dimse_node}   (our AE title SIRAD; C-MOVE destination port {args.move_port})
  Web UI     {srv.rest_url}/app/explorer.html
Try:
  sirad pacs echo {srv.dimse_node}
  sirad pacs find {srv.dicomweb_url} --patient-id SIRAD-DEMO-1 --json
  sirad pacs get {srv.dimse_node} --study STUDY_UID --out case1
  sirad grade case1 --dicom case1-results
  sirad pacs store {srv.dicomweb_url} case1-results
Ctrl-C stops it; the data stays in {store}.""", flush=True)
        if args.check:
            return 0
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping Orthanc")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
