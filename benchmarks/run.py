"""SIRAD Viewer benchmarks: ours against a named baseline, in the same run, on this machine.

Run with ``make bench``. Prints a table and writes ``benchmarks/results.json``: a list of
``{"name", "ours", "baseline", "baseline_name", "ratio", "unit"}``. ``ratio`` is always
"how many times better ours is": ours/baseline for throughput, baseline/ours for times and memory.

Each measurement runs in a fresh child process (so peak memory is that loader's alone), after
the libraries are imported; the files are read once beforehand so both sides read from the page
cache. Each side runs ``--repeat`` times, alternating, and the median is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

CHILD = r"""
import json, sys, time
kind, path = sys.argv[1], sys.argv[2]

def hwm_kb():
    # VmHWM is this process image's own peak RSS (ru_maxrss can carry the parent's over exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import numpy as np
if kind == "ours":
    import pydicom, scipy.ndimage  # imported before timing, like SimpleITK below
    from sirad_viewer.io import open_volume
    rss0 = hwm_kb()
    t = time.perf_counter()
    vol = open_volume(path)
    arr = vol.array
    dt = time.perf_counter() - t
else:
    import SimpleITK as sitk
    rss0 = hwm_kb()
    t = time.perf_counter()
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(path))
    img = r.Execute()
    arr = sitk.GetArrayViewFromImage(img)
    dt = time.perf_counter() - t
peak = hwm_kb()
print(json.dumps({"seconds": dt, "peak_mb": (peak - rss0) / 1024.0, "shape": list(arr.shape),
                  "checksum": float(np.asarray(arr[::37, ::41, ::43], dtype=np.float64).sum())}))
"""


def make_series(path: Path, n: int, size: int, compression: str) -> int:
    """Write a CT-like series once (cached); return its size in bytes."""
    marker = path / ".complete"
    if not marker.exists():
        import numpy as np

        from sirad_viewer.imaging import Volume
        from sirad_viewer.imaging.geometry import make_affine
        from sirad_viewer.io.export import write_dicom_series

        print(f"writing {n} slices of {size}x{size} ({compression}) to {path} (once) ...", flush=True)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size, 0:size]
        body = ((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.35 * size)) ** 2 < 1
        base = np.where(body, 40, -1000).astype(np.int16)
        arr = np.empty((n, size, size), dtype=np.int16)
        for k in range(n):
            arr[k] = base + rng.normal(0, 20, size=(size, size)).astype(np.int16)
            arr[k, size // 2 - 30: size // 2 + 30, size // 2 - 20: size // 2 + 20] = 300 + k
        vol = Volume(arr, make_affine([-200.0, -200.0, -300.0], np.eye(3)[::-1], [1.0, 0.78, 0.78]))
        write_dicom_series(vol, path, compression=compression, deidentify=False)
        marker.write_text("ok")
    return sum(p.stat().st_size for p in path.glob("*.dcm"))


def run_child(kind: str, path: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{kind} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_loader(label: str, path: Path, nbytes: int, repeat: int) -> list[dict]:
    run_child("ours", path)  # warm the page cache and check both see the same volume
    a, b = run_child("ours", path), run_child("sitk", path)
    if a["shape"] != b["shape"] or abs(a["checksum"] - b["checksum"]) > 1e-6 * max(1.0, abs(b["checksum"])):
        raise RuntimeError(f"ours and SimpleITK disagree on {path}: {a} vs {b}")
    ours, base = [a], [b]
    for _ in range(repeat - 1):
        ours.append(run_child("ours", path))
        base.append(run_child("sitk", path))
    t_o = statistics.median(r["seconds"] for r in ours)
    t_b = statistics.median(r["seconds"] for r in base)
    m_o = statistics.median(r["peak_mb"] for r in ours)
    m_b = statistics.median(r["peak_mb"] for r in base)
    mb = nbytes / 1e6
    return [
        {"name": f"{label}: throughput", "ours": round(mb / t_o, 1), "baseline": round(mb / t_b, 1),
         "baseline_name": "SimpleITK ImageSeriesReader", "ratio": round(t_b / t_o, 2), "unit": "MB/s"},
        {"name": f"{label}: peak memory added", "ours": round(m_o, 1), "baseline": round(m_b, 1),
         "baseline_name": "SimpleITK ImageSeriesReader", "ratio": round(m_b / max(m_o, 1e-9), 2), "unit": "MB"},
    ]


def print_table(rows: list[dict]) -> None:
    w = max(len(r["name"]) for r in rows)
    head = f"{'benchmark':<{w}}  {'ours':>10}  {'baseline':>10}  {'unit':<5}  {'x better':>8}  baseline"
    print(head)
    print("-" * len(head))
    for r in rows:
        base = "-" if r["baseline"] is None else r["baseline"]
        ratio = "-" if r["ratio"] is None else r["ratio"]
        print(f"{r['name']:<{w}}  {r['ours']:>10}  {base:>10}  {r['unit']:<5}  {ratio:>8}  {r['baseline_name']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    rows: list[dict] = []
    t0 = time.time()
    unc = CACHE / f"ct_512x512x{args.slices}_uncompressed"
    rows += bench_loader(f"load 512x512x{args.slices} uncompressed CT series", unc,
                         make_series(unc, args.slices, 512, "none"), args.repeat)
    j2k = CACHE / "ct_512x512x60_j2k"
    rows += bench_loader("load 512x512x60 JPEG 2000 lossless CT series", j2k,
                         make_series(j2k, 60, 512, "j2k"), max(1, args.repeat // 2))
    import viewer  # noqa: E402 - benchmarks/ is on sys.path when run as a script

    big = viewer.big_ct()
    rows += viewer.slice_rendering(big)
    rows += viewer.wheel_burst(big)
    rows += viewer.open_to_first_image(unc)
    rows += viewer.mesh_on_screen(big)
    import grade  # noqa: E402

    rows += grade.grading(max(2, args.repeat // 2))
    import batch  # noqa: E402

    rows += batch.scaling(8)
    print()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {time.time() - t0:.0f} s")
    print_table(rows)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
