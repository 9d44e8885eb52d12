"""How far the segmentation's joint boxes move when the same pelvis is turned or resampled (issue #10).

``turn`` (default): atlas phantoms of the given subjects, each segmented as it is and turned by
+-15 degrees about x, y and z (the CT's affine; the voxels are untouched); for each joint the box
centre's distance from where the turn puts it and the largest angle between its axes and the turned
ones, and the sacral axis' angle. ``--truth`` localises on the phantoms' true labels sampled on the
same 4 mm grids instead (the localisation's own floor). ``resample``: the pipeline's boxes and
3-category results on held-out phantoms (six analytic, four atlas) and their copies resampled two
ways (1.5x slices and 0.8x pixels; 0.6x slices and 1.25x pixels).

    python tools/box_stability.py [turn|resample] [--segmenter DIR] [--subjects 6,34,37,43] [--truth]

Synthetic phantoms only. The validation subjects (6, 34, 37, 43) are the default for ``turn``: a
segmenter is chosen on them; the held-out subjects (2, 13, 29, 40, 51, 65) are for reporting.
"""
from __future__ import annotations

import argparse

import numpy as np


def _phantom(subject: str, k: int):
    from sirad_viewer.phantom.atlas_phantom import AtlasSpec, make_atlas_phantom

    grades = [(1, 3), (0, 4), (2, 2), (3, 1), (2, 0), (4, 1)][k % 6]
    return make_atlas_phantom(AtlasSpec(left_grade=grades[0], right_grade=grades[1], seed=900_011 + k,
                                        subject=subject, crop="pelvis", max_voxels=3_000_000))


def _turns():
    from scipy.spatial.transform import Rotation

    return [(f"{ax} {deg:+.0f}", Rotation.from_euler(ax, deg, degrees=True).as_matrix())
            for ax in "xyz" for deg in (15.0, -15.0)]


def turn(grader, subjects: list[str], truth: bool) -> dict[str, float]:
    from sirad_viewer.ai import localise as L
    from sirad_viewer.ai.grid import sample_points

    moved, turned, sacral = [], [], []
    for k, subj in enumerate(subjects):
        ph = _phantom(subj, k)
        vol = ph.volume
        c = vol.center_world()

        def boxes(r: np.ndarray):
            m = np.eye(4)
            m[:3, :3], m[:3, 3] = r, c - r @ c
            v = vol.with_array(vol.array, m @ vol.affine)
            seg = grader.segment(v, [])
            lab, aff = seg.coarse_labels, seg.affine
            if truth:  # the true labels on the same grid (nearest): what a perfect 4 mm segmenter would give
                idx = np.argwhere(np.ones(lab.shape, bool)).astype(float)
                world = idx @ aff[:3, :3].T + aff[:3, 3]
                lab = sample_points(np.asarray(ph.labels, np.float32), v.affine, world, order=0)
                lab = lab.reshape(seg.coarse_labels.shape).astype(np.uint8)
            return L.localise(lab, aff)

        ref = boxes(np.eye(3))
        s0 = ref.sacral_axis[0] - ref.sacral_axis[1]
        for name, r in _turns():
            loc = boxes(r)
            for side in ("left", "right"):
                b0, b = ref.joints[side], loc.joints[side]
                moved.append(float(np.linalg.norm(b.center_lps_mm - (r @ (b0.center_lps_mm - c) + c))))
                cos = np.abs(np.sum((b0.axes_lps @ r.T) * b.axes_lps, axis=1))
                turned.append(float(np.degrees(np.arccos(np.clip(cos, 0, 1))).max()))
            s1 = loc.sacral_axis[0] - loc.sacral_axis[1]
            sacral.append(float(np.degrees(np.arccos(np.clip(abs((r @ s0) @ s1) / np.linalg.norm(s0) /
                                                             np.linalg.norm(s1), 0, 1)))))
        print(f"subject {subj}: boxes moved median {np.median(moved[-12:]):.1f} mm (max {max(moved[-12:]):.1f}), "
              f"turned median {np.median(turned[-12:]):.1f} deg (max {max(turned[-12:]):.1f})", flush=True)
    out = {"centre_median_mm": float(np.median(moved)), "centre_max_mm": float(np.max(moved)),
           "axes_median_deg": float(np.median(turned)), "axes_max_deg": float(np.max(turned)),
           "sacral_median_deg": float(np.median(sacral)), "sacral_max_deg": float(np.max(sacral))}
    print(f"{'true labels' if truth else 'segmentation'}, {len(moved)} joints turned 15 degrees: box centre moved median "
          f"{out['centre_median_mm']:.1f} mm (max {out['centre_max_mm']:.1f}), box axes turned median "
          f"{out['axes_median_deg']:.1f} deg (max {out['axes_max_deg']:.1f}), sacral axis median "
          f"{out['sacral_median_deg']:.1f} deg (max {out['sacral_max_deg']:.1f})")
    return out


def resample(grader) -> dict[str, float]:
    from sirad_viewer.phantom import make_phantom, random_spec

    cases = [make_phantom(random_spec(900_000 + seed, left_grade=lg, right_grade=rg, site=site, matrix=128)).volume
             for seed, lg, rg, site in [(5, 0, 4, "phantom-A"), (1, 0, 4, "phantom-A"), (2, 4, 4, "phantom-B"),
                                        (3, 2, 3, "phantom-C"), (6, 1, 2, "phantom-A"), (7, 3, 0, "phantom-A")]]
    cases += [_phantom(s, k).volume for k, s in enumerate(["29", "13", "51", "2"])]
    moves, changed = [], 0
    for v in cases:
        ref = grader(v, heatmaps=False)
        for fac in ([1.5, 0.8, 0.8], [0.6, 1.25, 1.25]):
            res = grader(v.resampled(v.spacing * np.array(fac)), heatmaps=False)
            for side in ("left", "right"):
                moves.append(float(np.linalg.norm(ref.joints[side].box.center_lps_mm - res.joints[side].box.center_lps_mm)))
                changed += int(ref.joints[side].category3 != res.joints[side].category3)
    m = np.array(moves)
    out = {"median_mm": float(np.median(m)), "p90_mm": float(np.percentile(m, 90)), "max_mm": float(m.max()),
           "category_changed": changed, "joints": len(m)}
    print(f"{len(m)} joints resampled: box moved median {out['median_mm']:.1f} mm, 90th percentile {out['p90_mm']:.1f}, "
          f"max {out['max_mm']:.1f}; 3-category result changed in {changed}")
    return out


def main(argv=None) -> int:
    from sirad_viewer.ai.bundle import load_bundle
    from sirad_viewer.ai.pipeline import Grader

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", choices=("turn", "resample"), default="turn")
    ap.add_argument("--segmenter", help="segmentation bundle folder (default: the installed one)")
    ap.add_argument("--subjects", default="6,34,37,43", help="atlas subjects for 'turn' (default: the validation subjects)")
    ap.add_argument("--truth", action="store_true", help="'turn' on the true labels (the localisation's floor)")
    a = ap.parse_args(argv)
    g = Grader(None, segmenter=load_bundle(a.segmenter) if a.segmenter else None, device="cpu")
    if a.mode == "turn":
        turn(g, [s.strip() for s in a.subjects.split(",") if s.strip()], a.truth)
    else:
        resample(g)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
