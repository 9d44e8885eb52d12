"""Command-line options of the atlas phantoms (``sirad phantom`` / ``sirad phantom-dataset``).

Kept apart from the generator so that building the CLI parser imports nothing heavy.
"""
from __future__ import annotations

import argparse
from typing import Any


def add_atlas_arguments(p: argparse.ArgumentParser, *, dataset: bool) -> None:
    g = p.add_argument_group("atlas anatomy (--anatomy atlas)")
    g.add_argument("--anatomy", choices=("analytic", "atlas"), default="analytic",
                   help="analytic shapes (default) or real bone surfaces from an atlas folder")
    g.add_argument("--atlas-dir", default=None,
                   help="folder laid out like ../shared/data/pelvis-atlas (default: that folder)")
    if not dataset:
        g.add_argument("--subject", default="ssm:0",
                       help="atlas subject id (e.g. 10) or ssm:SEED for a new shape-model pelvis (default ssm:0)")
        g.add_argument("--borderline-share", type=float, default=0.0,
                       help="probability that a joint is a borderline case labelled with the neighbouring grade")
        g.add_argument("--pose", type=float, nargs=3, default=None, metavar=("RX", "RY", "RZ"),
                       help="fix the pose (degrees about x, y, z) instead of drawing it")
        g.add_argument("--pixel", type=float, default=None, help="fix the pixel size in mm")
        g.add_argument("--coverage", choices=("abdomen-pelvis", "pelvis", "sij"), default=None,
                       help="fix the scanned range / field of view")
        g.add_argument("--metal", choices=("none", "hip-left", "hip-right", "hip-both", "screws"), default=None)
        g.add_argument("--contrast", choices=("none", "arterial", "venous"), default=None)
    else:
        g.add_argument("--holdout-subjects", default=None,
                       help="comma-separated atlas subjects that only appear in the test split "
                            "(default: 2,13,29,40,51,65)")
        g.add_argument("--ssm-share", type=float, default=0.5,
                       help="share of training cases on new shape-model pelves (default 0.5)")
        g.add_argument("--borderline-share", type=float, default=0.1,
                       help="share of joints labelled with the neighbouring grade (default 0.1)")
    g.add_argument("--crop", choices=("none", "pelvis", "sij"), default="none" if not dataset else "pelvis",
                   help="limit the field of view to the pelvis or to both joints (keeps the pixel size)")
    g.add_argument("--max-voxels", type=int, default=None,
                   help="coarsen pixels and slices when a volume would have more voxels")


def _nuisance_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "thickness", None):
        out["slice_thickness_mm"] = args.thickness
        out["slice_spacing_mm"] = args.spacing or args.thickness
    elif getattr(args, "spacing", None):
        out["slice_spacing_mm"] = args.spacing
    for name, key in (("pose", "rotation_deg"), ("pixel", "pixel_mm"), ("coverage", "coverage"),
                      ("metal", "metal"), ("contrast", "contrast")):
        v = getattr(args, name, None)
        if v is not None:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def atlas_spec_from_args(args: argparse.Namespace) -> Any:
    from sirad_viewer.phantom.atlas_phantom import DEFAULT_ATLAS, AtlasSpec

    if args.matrix is not None:
        raise SystemExit("--matrix does not apply to --anatomy atlas: the pixel size sets the matrix "
                         "(use --pixel, --crop or --max-voxels)")
    return AtlasSpec(left_grade=args.left, right_grade=args.right, seed=args.seed, subject=args.subject,
                     atlas_dir=str(args.atlas_dir or DEFAULT_ATLAS), site=args.site or "atlas-mixed",
                     crop=args.crop, max_voxels=args.max_voxels, borderline_share=args.borderline_share,
                     nuisance=_nuisance_overrides(args))


def atlas_dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    hold = None
    if args.holdout_subjects is not None:
        hold = [s.strip() for s in args.holdout_subjects.split(",") if s.strip()]
    return {"atlas_dir": args.atlas_dir, "holdout_subjects": hold, "ssm_share": args.ssm_share,
            "crop": args.crop, "max_voxels": args.max_voxels, "borderline_share": args.borderline_share}
