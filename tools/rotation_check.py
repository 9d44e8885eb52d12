"""End-to-end check of the joint frame under rotation (issue #10 item 3).

A small atlas phantom of a held-out subject is graded as it is and turned by +-15 degrees about each
axis (the CT's affine, so the voxels are untouched); for each joint it prints the correlation of the
joint-frame crops (segmentation -> localisation -> crop, exactly as ``sirad grade``), how far the box's
centre moved from where the turn puts it and the angle of each box axis, and the grades.

    python tools/rotation_check.py [SUBJECT LEFT RIGHT SEED] [--bundle DIR] [--no-refine] [--long-axis AXIS]

By default the crops are cut as the bundle cuts them when it registers or refines its joint boxes
(``input.registration``, ``input.refine_frame``), else along the refined frame with the curvature axis;
``--no-refine``: the segmentation's boxes alone; ``--long-axis``: the refined frame with that axis.

Synthetic phantoms only.
"""
from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    from scipy.spatial.transform import Rotation

    from sirad_viewer.ai import grading as GR
    from sirad_viewer.ai import localise as L
    from sirad_viewer.ai.pipeline import Grader
    from sirad_viewer.phantom.atlas_phantom import AtlasSpec, make_atlas_phantom

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("case", nargs="*", default=["29", "1", "3", "3"], help="SUBJECT LEFT RIGHT SEED")
    ap.add_argument("--no-refine", action="store_true", help="boxes from the 4 mm segmentation alone (before)")
    ap.add_argument("--bundle", help="grading bundle folder (default: the installed one)")
    ap.add_argument("--long-axis", choices=("outline", "curvature", "coarse", "planes"),
                    help="the refined frame's in-plane axis (default: the installed bundle's, else curvature)")
    a = ap.parse_args(argv)
    subj, left, right, seed = a.case[0], int(a.case[1]), int(a.case[2]), int(a.case[3])
    from sirad_viewer.ai.pipeline import find_bundle

    g = Grader(find_bundle("grading", a.bundle) if a.bundle else None, device="cpu")
    # default: the bundle's own joint frames (registered to its template, or refined) when it has them
    own = not a.no_refine and not a.long_axis and (g.spec.registration is not None or g.spec.refine_frame)
    long_axis = a.long_axis or (g.spec.long_axis if g.spec.refine_frame else "curvature")
    vol = make_atlas_phantom(AtlasSpec(left_grade=left, right_grade=right, seed=900_000 + seed, subject=subj,
                                       crop="pelvis", max_voxels=3_000_000)).volume

    def run(v):
        seg = g.segment(v, [])
        loc = L.localise(seg.coarse_labels, seg.affine)
        if own:
            loc = g.joint_frames(v, loc)
            for w in loc.warnings:
                print("  warning:", w)
        elif not a.no_refine:
            loc = L.refine_joints(v, loc, long_axis=long_axis)
        # crops in the refined frame whatever the installed bundle was trained on (the check is about the frame)
        crops = g.crops(v, loc)
        lg, _ = g.logits_and_features([crops["left"], crops["right"]], [])
        return loc, crops, dict(zip(("left", "right"), lg.argmax(1)))

    loc0, c0, g0 = run(vol)
    c = vol.center_world()
    corr = []
    for axis in "xyz":
        for deg in (15.0, -15.0):
            r = Rotation.from_euler(axis, deg, degrees=True).as_matrix()
            m = np.eye(4)
            m[:3, :3], m[:3, 3] = r, c - r @ c
            loc1, c1, g1 = run(vol.with_array(vol.array, m @ vol.affine))
            for s in ("left", "right"):
                cc = float(np.corrcoef(GR.normalise(c0[s], g.spec.window_hu).ravel(),
                                       GR.normalise(c1[s], g.spec.window_hu).ravel())[0, 1])
                corr.append(cc)
                moved = np.linalg.norm(loc1.joints[s].center_lps_mm - (r @ (loc0.joints[s].center_lps_mm - c) + c))
                ang = np.degrees(np.arccos(np.clip(np.abs(np.sum((loc0.joints[s].axes_lps @ r.T)
                                                                 * loc1.joints[s].axes_lps, axis=1)), 0, 1)))
                print(f"{axis} {deg:+.0f} deg {s:5s}: crop correlation {cc:.3f}, centre moved {moved:.2f} mm, axes "
                      f"{np.round(ang, 2).tolist()} deg, grade {g0[s]} -> {g1[s]}")
    frame = ("the bundle's own frame" + (" (registered to its template)" if g.spec.registration is not None else "")
             if own else "segmentation box" if a.no_refine else "refined frame, " + long_axis + " axis")
    print(f"crop correlation ({frame}): "
          f"min {min(corr):.3f}, mean {np.mean(corr):.3f} over {len(corr)} joints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
