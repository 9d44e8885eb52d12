"""Benchmark: ``sirad grade`` on a 512x512x300 CT against a straightforward MONAI pipeline.

The baseline does what a first MONAI script would: ``LoadImage`` -> ``EnsureChannelFirst`` ->
``Spacing`` (to the grading bundle's 1.25 mm) on the whole CT -> ``ScaleIntensityRange`` -> the same
two joint crops (at the centres our pipeline found) -> ``DenseNet121`` -> ``monai.visualize.GradCAM``
per crop. It does no segmentation or localisation, so it is given that work for free.

Each side runs in a fresh child process with torch limited to the machine's cores; time is wall
clock from reading the file to both heatmaps, peak memory is the child's VmHWM above its baseline
after imports.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

CHILD = r"""
import json, sys, time
kind, path = sys.argv[1], sys.argv[2]

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

import numpy as np, torch
if kind == "ours":
    from sirad_viewer.ai.pipeline import Grader
    from sirad_viewer.io import open_volume
    grader = Grader(device="cpu")
    grader.network("grading", "cpu"); grader.network("segmentation", "cpu")
    rss0 = hwm_kb()
    t = time.perf_counter()
    vol = open_volume(path)
    t_load = time.perf_counter() - t
    res = grader(vol, heatmaps=True)
    dt = time.perf_counter() - t
    stages = {"load": t_load, **{k: v for k, v in res.timings_s.items() if k != "total"}}
    out = {"seconds": dt, "stages": stages, "centres": {s: j.box.center_lps_mm.tolist() for s, j in res.joints.items()},
           "grades": {s: j.grade for s, j in res.joints.items()}}
else:
    from monai.networks.nets import DenseNet121
    from monai.transforms import EnsureChannelFirst, LoadImage, ScaleIntensityRange, Spacing
    from monai.visualize import GradCAM
    centres = json.loads(sys.argv[3])
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=5).eval()
    cam = GradCAM(nn_module=net, target_layers="class_layers.relu")
    rss0 = hwm_kb()
    t = time.perf_counter()
    img = EnsureChannelFirst()(LoadImage(image_only=True)(path))
    img = Spacing(pixdim=(1.25, 1.25, 1.25), mode="bilinear")(img)
    img = ScaleIntensityRange(-200, 1500, 0.0, 1.0, clip=True)(img)
    inv = np.linalg.inv(np.asarray(img.affine, dtype=float))
    stages = {"load+spacing+scale": time.perf_counter() - t}
    t2 = time.perf_counter()
    maps = []
    for side, c in centres.items():
        ras = np.array([-c[0], -c[1], c[2], 1.0])
        ijk = np.rint(inv @ ras)[:3].astype(int)
        sl = tuple(slice(max(0, k - 32), max(0, k - 32) + 64) for k in ijk)
        x = torch.as_tensor(np.asarray(img[0][sl]))[None, None].float()
        x = torch.nn.functional.pad(x, [0, 64 - x.shape[4], 0, 64 - x.shape[3], 0, 64 - x.shape[2]])
        with torch.no_grad():
            net(x)
        maps.append(cam(x))
    stages["densenet121+gradcam"] = time.perf_counter() - t2
    dt = time.perf_counter() - t
    out = {"seconds": dt, "stages": stages}
out["peak_mb"] = (hwm_kb() - rss0) / 1024.0
print(json.dumps(out))
"""


def big_ct_nifti(slices: int = 300) -> Path:
    """A 512x512xN phantom pelvis CT (uncompressed NIfTI), made once."""
    path = CACHE / f"phantom_ct_512x512x{slices}.nii"
    if not path.exists():
        import numpy as np

        from sirad_viewer.imaging.geometry import make_affine
        from sirad_viewer.imaging.volume import resample_to
        from sirad_viewer.io.export import write_nifti
        from sirad_viewer.phantom import make_phantom, random_spec

        print(f"writing a 512x512x{slices} phantom CT to {path} (once) ...", flush=True)
        ph = make_phantom(random_spec(7, left_grade=1, right_grade=3, matrix=256))
        v = ph.volume
        c = v.center_world()
        sp = np.array([1.0, 0.78, 0.78])
        shape = np.array([slices, 512, 512])
        aff = make_affine(c - (shape[::-1] - 1) / 2.0 * sp[::-1] * np.array([1, 1, 1]), np.eye(3)[::-1], sp)
        big = resample_to(v, aff, tuple(int(n) for n in shape), order=1)
        CACHE.mkdir(parents=True, exist_ok=True)
        write_nifti(big, path, sidecar=False)
    return path


def _child(kind: str, path: Path, extra: str = "") -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), extra], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"{kind} failed: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def grading(repeat: int = 3) -> list[dict]:
    path = big_ct_nifti()
    ours = [_child("ours", path) for _ in range(repeat)]
    centres = json.dumps(ours[0]["centres"])
    base = [_child("monai", path, centres) for _ in range(max(1, repeat - 1))]
    t_o = statistics.median(r["seconds"] for r in ours)
    t_b = statistics.median(r["seconds"] for r in base)
    m_o = statistics.median(r["peak_mb"] for r in ours)
    m_b = statistics.median(r["peak_mb"] for r in base)
    best = min(ours, key=lambda r: abs(r["seconds"] - t_o))
    print("sirad grade stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in best["stages"].items()))
    bb = min(base, key=lambda r: abs(r["seconds"] - t_b))
    print("MONAI pipeline stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in bb["stages"].items()))
    name = "MONAI LoadImage+Spacing+DenseNet121+GradCAM"
    return [
        {"name": "grade 512x512x300 CT, file to both heatmaps", "ours": round(t_o, 2), "baseline": round(t_b, 2),
         "baseline_name": name, "ratio": round(t_b / t_o, 2), "unit": "s"},
        {"name": "grade 512x512x300 CT: peak memory added", "ours": round(m_o, 1), "baseline": round(m_b, 1),
         "baseline_name": name, "ratio": round(m_b / max(m_o, 1e-9), 2), "unit": "MB"},
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from run import print_table

    rows = grading()
    print_table(rows)
