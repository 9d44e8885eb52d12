"""``sirad-viewer``: the desktop application's entry point (the composition root).

Parses arguments, configures logging, builds the services and hands them to the Qt window.
Heavy modules (torch, monai, vtk) are never imported here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from sirad_viewer import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sirad-viewer", description="SIRAD Viewer: read sacroiliac-joint CTs.")
    p.add_argument("path", nargs="?", help="CT file, DICOM folder or .zip to open")
    p.add_argument("--series", type=int, default=None, help="series number (1-based) to open instead of the default")
    p.add_argument("--screenshot", metavar="FILE.png", help="load, render the layout, write the image and exit")
    p.add_argument("--layout", choices=("sij", "1x1", "1x2", "2x2", "joints"),
                   help="reading layout (default: the saved one, or sij; joints = both joints side by side, after the reveal)")
    p.add_argument("--grades", metavar="RIGHT,LEFT",
                   help="with --screenshot: enter these reader grades, lock them and show the revealed AI result")
    p.add_argument("--report", metavar="FILE.html|pdf", help="with --grades: also write the case report")
    p.add_argument("--sacral-axis", metavar="X1,Y1,Z1,X2,Y2,Z2",
                   help="two LPS points (mm) along the sacrum that set the oblique coronal plane, as a "
                        "drag on the sagittal view does")
    p.add_argument("--study", metavar="STUDY.sqlite", help="read a reader study (sign in, then case by case)")
    p.add_argument("--reader", help="with --study: the reader id (skips the sign-in dialog)")
    p.add_argument("--coordinator", metavar="STUDY.sqlite", help="open the coordinator view of a study")
    p.add_argument("--version", action="version", version=f"sirad-viewer {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    axis = None
    if args.sacral_axis:
        try:
            vals = [float(v) for v in args.sacral_axis.split(",")]
        except ValueError:
            vals = []
        if len(vals) != 6:
            print("sirad-viewer: --sacral-axis needs six numbers: X1,Y1,Z1,X2,Y2,Z2 (LPS mm)", file=sys.stderr)
            return 2
        axis = (vals[:3], vals[3:])
    grades = None
    if args.grades:
        try:
            grades = tuple(int(v) for v in args.grades.split(","))
        except ValueError:
            grades = ()
        if len(grades) != 2 or not all(0 <= g <= 4 for g in grades):
            print("sirad-viewer: --grades needs two grades 0-4: RIGHT,LEFT", file=sys.stderr)
            return 2
    from sirad_viewer.qt.scripted import run

    return run(path=args.path, series=None if args.series is None else args.series - 1,
               screenshot=args.screenshot, layout=args.layout,
               sacral_axis=axis, grades=grades, report=args.report, study=args.study, reader=args.reader,
               coordinator=args.coordinator)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
