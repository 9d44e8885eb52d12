"""``sirad``: the headless command line.

Subcommands import what they need when they run, so ``sirad --help`` and ``sirad --version``
start instantly and never import torch, monai, vtk or Qt.

Exit codes: 0 success (warnings allowed), 2 bad input (one line on stderr, or a JSON error
object with ``--json``), 130 cancelled.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from sirad_viewer import __version__
from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# --- info ------------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    from sirad_viewer.io import load_series, scan

    try:
        result = scan(args.path)
        # Reading the chosen series' pixels is the only honest answer to "can it be loaded?".
        volume = load_series(result.series[result.chosen])
        chosen = result.series[result.chosen]
        known = {(w.code, w.message) for w in chosen.warnings}
        chosen.warnings.extend(w for w in volume.warnings if (w.code, w.message) not in known)
    except SiradError as exc:
        if args.json:
            _print_json({"error": exc.to_dict()})
        print(f"sirad info: {exc.user_message()}", file=sys.stderr)
        return 2
    if args.json:
        d = result.to_dict()
        _print_json(d)
        return 0
    print(f"{result.path}: {len(result.series)} series")
    for i, s in enumerate(result.series):
        mark = "*" if i == result.chosen else " "
        print(f"{mark} [{i + 1}] {s.description or '(no description)'}  {s.modality or '?'}  {s.kind}  "
              f"{s.n_images} images")
        print(f"      uid        {s.uid or '(empty)'}")
        print(f"      shape      {s.shape[0]} x {s.shape[1]} x {s.shape[2]} (slice, row, column)")
        print(f"      spacing    {s.spacing_mm[0]:.4g} x {s.spacing_mm[1]:.4g} x {s.spacing_mm[2]:.4g} mm")
        print(f"      origin     ({', '.join(f'{v:.2f}' for v in s.origin_lps_mm)}) mm LPS")
        print("      direction  " + "  ".join("(" + ", ".join(f"{v:.3f}" for v in row) + ")" for row in s.direction))
        for w in s.warnings:
            print(f"      warning    [{w.code}] {w.message}")
    print(f"chosen: {result.reason}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s):")
        for path, code, msg in result.skipped[:20]:
            print(f"  [{code}] {path}: {msg}")
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more")
    return 0


# --- phantom ---------------------------------------------------------------------------------

def cmd_phantom(args: argparse.Namespace) -> int:
    from sirad_viewer.phantom import PhantomSpec, make_phantom, random_spec, write_phantom

    if args.vary:
        spec = random_spec(args.seed, left_grade=args.left, right_grade=args.right, site=args.site,
                           matrix=args.matrix)
    else:
        spec = PhantomSpec(left_grade=args.left, right_grade=args.right, seed=args.seed,
                           matrix=args.matrix or 256, slice_thickness_mm=args.thickness,
                           slice_spacing_mm=args.spacing or args.thickness, site=args.site)
    phantom = make_phantom(spec)
    files = write_phantom(phantom, args.out, fmt=args.format, compression=args.compression)
    v = phantom.volume
    print(f"phantom L{spec.left_grade} R{spec.right_grade} seed {spec.seed}: {v.shape[0]}x{v.shape[1]}x{v.shape[2]}, "
          f"spacing {v.spacing[0]:.2f}x{v.spacing[1]:.2f}x{v.spacing[2]:.2f} mm, "
          f"{len(phantom.truth['lesions'])} planted lesion(s)")
    for k, f in files.items():
        print(f"  {k:7s} {f}")
    print("  synthetic data with a planted fake identity; not patient data")
    return 0


# --- parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sirad",
        description="SIRAD Viewer command line: inspect CT series, make synthetic phantoms.",
    )
    p.add_argument("--version", action="version", version=f"sirad {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="list the series in a file/folder/zip, their geometry and warnings",
                          description="List series (DICOM folder, .zip, NIfTI, NRRD, MHA/MHD), their "
                                      "geometry in LPS and the loader's warnings. Exit 0 when a volume can "
                                      "be loaded, 2 on input errors.")
    info.add_argument("path", help="file, folder or .zip")
    info.add_argument("--json", action="store_true", help="print the stable JSON form (see README)")
    info.set_defaults(func=cmd_info)

    ph = sub.add_parser("phantom", help="write a synthetic pelvis CT with known grades",
                        description="Write a synthetic pelvic CT phantom with known per-joint grades, its "
                                    "label map and truth.json. Synthetic: not patient data.")
    ph.add_argument("--left", type=int, default=0, choices=range(5), metavar="0-4", help="left joint grade")
    ph.add_argument("--right", type=int, default=0, choices=range(5), metavar="0-4", help="right joint grade")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--format", choices=("nifti", "dicom"), default="nifti")
    ph.add_argument("--compression", choices=("none", "rle", "j2k", "jpeg-ls"), default="none",
                    help="DICOM transfer syntax (lossless)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--matrix", type=int, default=None, help="in-plane matrix (default 256)")
    ph.add_argument("--thickness", type=float, default=2.0, help="slice thickness in mm (default 2)")
    ph.add_argument("--spacing", type=float, default=None, help="slice spacing in mm (default: thickness)")
    ph.add_argument("--vary", action="store_true",
                    help="seeded variation of size, pose, table position, slice geometry, noise and blur")
    ph.add_argument("--site", default="phantom-A", help="scanner-like profile with --vary (phantom-A/B/C)")
    ph.set_defaults(func=cmd_phantom)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except SiradError as exc:
        print(f"sirad {args.command}: {exc.user_message()}", file=sys.stderr)
        return 130 if exc.code == "cancelled" else 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"sirad {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "Path"]
