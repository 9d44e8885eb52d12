"""Benchmark: seconds per atlas phantom at training settings (CPU time of this process, and wall).

    PYTHONPATH=. python benchmarks/atlas_phantom.py [--n 4] [--crop pelvis] [--max-voxels 3000000]

CPU seconds are reported next to wall seconds because a shared machine stretches wall time.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sirad_viewer.phantom.atlas_phantom import AtlasSpec, make_atlas_phantom


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--crop", default="pelvis", choices=("none", "pelvis", "sij"))
    ap.add_argument("--max-voxels", type=int, default=3_000_000)
    ap.add_argument("--site", default="atlas-mixed")
    a = ap.parse_args()
    make_atlas_phantom(AtlasSpec(subject="10", crop="sij", max_voxels=100_000))  # atlas and shape model cached
    make_atlas_phantom(AtlasSpec(subject="ssm:1", crop="sij", max_voxels=100_000))
    cpu, wall, shapes = [], [], []
    subjects = ["10", "ssm:5", "17", "ssm:9"]
    for i in range(a.n):
        t0, c0 = time.time(), time.process_time()
        ph = make_atlas_phantom(AtlasSpec(left_grade=i % 5, right_grade=(i + 2) % 5, seed=100 + i,
                                          subject=subjects[i % len(subjects)], site=a.site, crop=a.crop,
                                          max_voxels=a.max_voxels or None, borderline_share=0.1))
        wall.append(time.time() - t0)
        cpu.append(time.process_time() - c0)
        shapes.append(list(ph.volume.shape))
    print(json.dumps({"crop": a.crop, "max_voxels": a.max_voxels, "site": a.site, "n": a.n,
                      "cpu_s_per_phantom": round(float(np.mean(cpu)), 2), "wall_s_per_phantom": round(float(np.mean(wall)), 2),
                      "shapes": shapes}))


if __name__ == "__main__":
    main()
