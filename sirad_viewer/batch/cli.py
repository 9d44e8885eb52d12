"""``sirad batch``: the command-line face of the batch package (argument parsing and the progress bar).

``sirad batch SOURCE --out RESULTS`` (SOURCE: a folder, a CSV, or a PACS node with find filters),
``sirad batch export RESULTS --out FILE.csv|FILE.parquet`` and
``sirad batch report RESULTS --out report.html``. A folder literally named ``export`` or ``report``
is graded with ``sirad batch ./export``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable


class ProgressBar:
    """One self-rewriting line on a terminal; plain lines (at most every 5 s) when piped."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._last_msg = ""

    def __call__(self, fraction: float, message: str) -> None:
        if self.tty:
            width = max(10, min(40, shutil.get_terminal_size((100, 20)).columns - len(message) - 10))
            filled = int(round(width * max(0.0, min(1.0, fraction))))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {message}\033[K")
            self.stream.flush()
            return
        now = time.monotonic()
        if message != self._last_msg and (fraction >= 1.0 or now - self._last >= 5.0 or "done" not in message):
            self.stream.write(message + "\n")
            self.stream.flush()
            self._last, self._last_msg = now, message

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    b = sub.add_parser(
        "batch", help="grade every CT of an archive on a Dask cluster; export and report the results",
        description="sirad batch SOURCE --out RESULTS: grade every series under SOURCE (a folder tree: DICOM and "
                    "NIfTI/NRRD/MHA; a CSV with an 'image' column; or a PACS node with find filters) on a local Dask cluster (--workers) or an "
                    "existing one (--scheduler). Rows are written to RESULTS (SQLite file, or an SQLAlchemy URL such "
                    "as postgresql+psycopg://...) as cases finish; a rerun skips series already there. "
                    "sirad batch export RESULTS --out FILE.csv|FILE.parquet writes the table; "
                    "sirad batch report RESULTS --out report.html writes the screening report.")
    b.add_argument("items", nargs="+", metavar="SOURCE | export RESULTS | report RESULTS")
    b.add_argument("--out", required=True, help="RESULTS store (grading), or the file to write (export, report)")
    b.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    b.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="use this existing Dask scheduler instead (its workers' own memory limits and retries apply)")
    b.add_argument("--retry-failed", action="store_true", help="grade again the series that failed before")
    b.add_argument("--memory-limit", default="4GiB",
                   help="per-worker memory limit of the local cluster (default 4GiB; 0 for none); a case above it "
                        "fails alone")
    b.add_argument("--max-retries", type=int, default=2,
                   help="how often a case whose worker died is run again elsewhere (default 2)")
    b.add_argument("--bundle", help="grading bundle folder (default: the installed one)")
    b.add_argument("--segmenter", help="segmentation bundle folder (default: the installed one), or 'totalsegmentator' "
                                       "/ 'totalsegmentator-full' when TotalSegmentator and its weights are installed")
    b.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    b.add_argument("--top", type=int, default=50, help="report: likely positives shown with thumbnails (default 50)")
    p = b.add_argument_group("PACS source", "SOURCE may be a PACS node: a DICOMweb URL (http[s]://host:port/dicom-web) "
                             "or AET@host:port, parsed as by 'sirad pacs'; credentials from $SIRAD_PACS_USER/"
                             "$SIRAD_PACS_PASSWORD or $SIRAD_PACS_TOKEN (never printed, logged or stored)")
    p.add_argument("--patient-id")
    p.add_argument("--name", help="patient name, * wildcards allowed")
    p.add_argument("--study-date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    p.add_argument("--modality", help="e.g. CT (studies holding it; only its series are graded)")
    p.add_argument("--accession")
    p.add_argument("--calling-aet", default="SIRAD", help="our AE title (default SIRAD)")
    p.add_argument("--timeout", type=float, default=30.0, help="PACS network timeout in seconds (default 30)")
    p.add_argument("--move-port", type=int, help="retrieve by C-MOVE to a storage SCP on this port; default C-GET")
    b.set_defaults(func=func)


def run_command(args: argparse.Namespace) -> int:
    items = list(args.items)
    if len(items) == 2 and items[0] in ("export", "report"):
        return _export(items[1], args.out) if items[0] == "export" else _report(items[1], args.out, args.top)
    if len(items) != 1:
        print("sirad batch: give one SOURCE, or 'export RESULTS', or 'report RESULTS'", file=sys.stderr)
        return 2
    return _grade(items[0], args)


def _export(results: str, out: str) -> int:
    from sirad_viewer.batch.store import ResultStore

    store = ResultStore(results, create=False)
    path = store.export(out)
    print(f"{store.count()} row(s) written to {path}")
    return 0


def _report(results: str, out: str, top: int) -> int:
    from sirad_viewer.batch.report import write_report
    from sirad_viewer.batch.store import ResultStore

    path = write_report(ResultStore(results, create=False), out, top=top)
    print(f"screening report written to {path}")
    return 0


_FILTERS = ("patient_id", "name", "study_date", "modality", "accession")


def _pacs_source(source: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """``(node, query)`` when SOURCE names a PACS node and is not an existing path, else ``(source, None)``."""
    import os
    import re

    from sirad_viewer.errors import SiradError
    from sirad_viewer.io import pacs

    filters = {k: getattr(args, k, None) or "" for k in _FILTERS}
    is_node = not Path(source).exists() and (source.lower().startswith(("http://", "https://"))
                                             or re.fullmatch(r"[^@\\/]{1,16}@[^@/]+:\d{1,5}", source) is not None)
    if not is_node:
        if any(filters.values()):
            raise SiradError(f"--{'/--'.join(k.replace('_', '-') for k, v in filters.items() if v)} filter(s) only "
                             f"apply to a PACS SOURCE (a DICOMweb URL or AET@host:port); '{source}' is a path",
                             code="bad_arguments")
        return source, None
    node = pacs.parse_node(source, calling_aet=args.calling_aet, move_port=args.move_port or 0, timeout_s=args.timeout,
                           username=os.environ.get("SIRAD_PACS_USER", ""),
                           password=os.environ.get("SIRAD_PACS_PASSWORD", ""),
                           token=os.environ.get("SIRAD_PACS_TOKEN", ""))
    return node, pacs.Query(**filters)


def _grade(source: str, args: argparse.Namespace) -> int:
    from sirad_viewer.batch.runner import run_batch

    src, query = _pacs_source(source, args)
    if args.segmenter:  # refuse before any worker starts (TotalSegmentator missing, a bad bundle folder)
        from sirad_viewer.ai.totalseg import resolve_segmenter

        resolve_segmenter(args.segmenter)

    bar = ProgressBar()

    def started(s: Any) -> None:
        where = args.scheduler or f"local cluster, {s.workers} worker process(es), one thread each"
        print(f"grading on {where}", file=sys.stderr)
        print(f"dashboard: {s.dashboard}" if s.dashboard else s.dashboard_note, file=sys.stderr)

    if not getattr(args, "verbose", 0):  # Dask logs every connection, worker start and stop at INFO
        import logging

        import distributed  # noqa: F401 - sets its loggers' levels on import; ours must come after

        for name in ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]:
            logging.getLogger(name).setLevel(logging.ERROR)
    import signal

    def stop(signum: int, frame: Any) -> None:  # Ctrl-C, or a job scheduler's SIGTERM: stop cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    mem = None if str(args.memory_limit) in ("0", "none", "None") else args.memory_limit
    try:
        s = run_batch(src, args.out, query=query, workers=args.workers, scheduler=args.scheduler, retry_failed=args.retry_failed,
                      memory_limit=mem, max_retries=args.max_retries, bundle=args.bundle, segmenter=args.segmenter,
                      device=args.device, progress=bar, on_start=started)
    finally:
        bar.close()
    codes = ", ".join(f"{k} {v}" for k, v in sorted(s.failures_by_code.items()))
    print(f"{s.ok} graded, {s.failed} failed{' (' + codes + ')' if codes else ''}, {s.already_done} already in "
          f"{args.out}; {s.wall_seconds:.1f} s"
          + (f", {s.cases_per_minute:.1f} cases/min while grading" if s.ok + s.failed else ""))
    if s.cancelled:
        print("stopped: the rows written so far are kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
