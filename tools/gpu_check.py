"""Does the AI pipeline give the same result on a CUDA GPU as on the CPU, and how fast is each?

    python tools/gpu_check.py [CT ...] [--repeats N] [--json OUT]

For each CT (default: the demo CT) the whole pipeline (segmentation, joint boxes and their registration,
crops, grade with test-time frames, OOD check, Grad-CAM) runs once on the CPU and once on ``cuda``, in
this process, with the installed bundles. It prints, per CT, the largest difference between the two
devices in the calibrated probabilities, the joint boxes, the OOD scores and the heatmaps, whether the
grades agree, and the warm time of each device (the median of ``--repeats`` runs after one warm-up).
The GPU result must say it ran on ``cuda`` with no fallback warning, or the check fails.

Exit status 0 when every CT passes (grades equal, probabilities within 0.02, boxes within 0.5 mm,
heatmap correlation >= 0.98), 1 when one does not, 2 when no CUDA GPU is available. The tolerances
allow for floating-point differences between the devices' convolution kernels, which move the
registration's optimiser a little; they are not a claim about a site's GPU beyond this check.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

P_TOL, BOX_MM, CAM_CORR = 0.02, 0.5, 0.98


def _run(grader, volume, repeats: int):
    t = time.perf_counter()
    res = grader(volume, heatmaps=True)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = grader(volume, heatmaps=True)
        warm.append(time.perf_counter() - t)
    return res, cold, warm


def compare(cpu, gpu) -> dict:
    out = {"joints": {}}
    for side in ("left", "right"):
        a, b = cpu.joints[side], gpu.joints[side]
        ha, hb = a.heatmap.full().ravel(), b.heatmap.full().ravel()
        both = (ha > 0) | (hb > 0)
        if np.array_equal(ha, hb):
            corr = 1.0
        else:  # over the voxels either heatmap covers; NaN (a failure) where one is constant there
            corr = float(np.corrcoef(ha[both], hb[both])[0, 1]) if both.sum() > 2 else float("nan")
        turn = float(np.degrees(np.arccos(np.clip((np.trace(a.box.axes_lps @ b.box.axes_lps.T) - 1) / 2, -1, 1))))
        out["joints"][side] = {
            "grade_cpu": a.grade, "grade_cuda": b.grade,
            "max_abs_probability_difference": float(np.max(np.abs(a.probabilities - b.probabilities))),
            "box_centre_difference_mm": float(np.linalg.norm(a.box.center_lps_mm - b.box.center_lps_mm)),
            "box_turn_difference_deg": turn,
            "ood_score_cpu": None if a.ood is None else float(a.ood["score"]),
            "ood_score_cuda": None if b.ood is None else float(b.ood["score"]),
            "heatmap_correlation": corr,
        }
    j = out["joints"].values()
    out["passed"] = bool(all(x["grade_cpu"] == x["grade_cuda"] and x["max_abs_probability_difference"] <= P_TOL
                             and x["box_centre_difference_mm"] <= BOX_MM and x["heatmap_correlation"] >= CAM_CORR
                             for x in j)
                         and gpu.device == "cuda" and not any("GPU" in w for w in gpu.warnings))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ct", nargs="*", default=[str(ROOT / "resources" / "demo" / "example_ct.nii.gz")])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    import torch

    from sirad_viewer.ai.pipeline import Grader
    from sirad_viewer.errors import SiradError
    from sirad_viewer.io import open_volume

    if not torch.cuda.is_available():
        print("no CUDA GPU is available to this torch build: nothing to compare", file=sys.stderr)
        return 2
    report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cases": {}}
    graders = {d: Grader(device=d) for d in ("cpu", "cuda")}
    ok = True
    for path in args.ct:
        try:
            vol = open_volume(path)
            runs = {d: _run(g, vol, args.repeats) for d, g in graders.items()}
        except SiradError as exc:  # an unreadable file, or not a pelvis: nothing to compare, and said so
            report["cases"][Path(path).name] = {"passed": False, "error": str(exc)}
            ok = False
            print(f"{path}: not compared: {exc}", file=sys.stderr)
            continue
        case = compare(runs["cpu"][0], runs["cuda"][0])
        for d, (res, cold, warm) in runs.items():
            case[d] = {"first_s": round(cold, 3), "warm_median_s": round(statistics.median(warm), 3),
                       "warm_s": [round(w, 3) for w in warm],
                       "stages_s": {k: round(v, 3) for k, v in res.timings_s.items()},
                       "device": res.device, "warnings": res.warnings}
        report["cases"][Path(path).name] = case
        ok &= case["passed"]
        print(f"{Path(path).name}: {'passed' if case['passed'] else 'FAILED'}; warm cpu "
              f"{case['cpu']['warm_median_s']:.2f} s, cuda {case['cuda']['warm_median_s']:.2f} s")
        for side, x in case["joints"].items():
            print(f"  {side}: grade {x['grade_cpu']}/{x['grade_cuda']}, |dp| {x['max_abs_probability_difference']:.2e}, "
                  f"box {x['box_centre_difference_mm']:.3f} mm {x['box_turn_difference_deg']:.3f} deg, "
                  f"OOD {x['ood_score_cpu']}/{x['ood_score_cuda']}, heatmap r {x['heatmap_correlation']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
