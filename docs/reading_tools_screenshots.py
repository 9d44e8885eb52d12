"""Make the README's reading-tool screenshots from the demo CT (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/reading_tools_screenshots.py docs/

The sacral axis below is a reader's line along the dorsal border of S1-S2 on the demo CT
(30 degrees from craniocaudal); the ruler, ROI and marks are placed where a reader would put
them on that plane. Nothing here is used by the program.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PyQt6 import QtCore, QtWidgets

ROOT = Path(__file__).resolve().parents[1]


def main(out: str) -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    from sirad_viewer.qt.app import DARK_QSS, MainWindow
    from sirad_viewer.state import annotations as an

    app.setStyleSheet(DARK_QSS)
    win = MainWindow(interactive=False, with_3d=False)
    win.resize(1600, 1000)
    win.show()
    win.open_path(str(ROOT / "resources" / "demo" / "example_ct.nii.gz"))
    if not win.wait_until_ready(mesh=False):
        print("could not load the demo CT", file=sys.stderr)
        return 2
    for _ in range(5):
        app.processEvents()
    st = win.state
    st.set_sacral_axis_from_line(np.array([-3.5, -112.0, 240.0]), np.array([-3.5, -82.0, 188.0]))
    win.reading_tools.frame_oblique()
    ob = win.views["oblique"]
    for _ in range(3):
        app.processEvents()
    img = ob.slice_image()
    plane = ob.plane()
    c = st.crosshair
    # the joints: the first soft-tissue dip lateral of the sacrum on each side along the plane's row
    from sirad_viewer.imaging.measure import line_profile

    marks = {}
    for side, sgn in (("right", -1), ("left", 1)):
        # the joint: the darkest point 50-78 mm lateral of the midline, its edges half way to the cortex
        t, hu = line_profile(st.volume, c + sgn * 50 * plane.right, c + sgn * 78 * plane.right, step_mm=0.25)
        lo = int(np.argmin(hu))
        a, b = lo, lo
        while a > 0 and hu[a] < (hu[lo] + hu[:lo + 1].max()) / 2:
            a -= 1
        while b < len(t) - 1 and hu[b] < (hu[lo] + hu[lo:].max()) / 2:
            b += 1
        marks[side] = (c + sgn * (50 + t[a]) * plane.right, c + sgn * (50 + t[b]) * plane.right)
    ann = st.annotations
    ann.add(an.Ruler(*marks["left"]))
    ann.add(an.Ruler(*marks["right"]))
    tools = ob.tools
    tools.add_roi(marks["left"][1] + 7 * plane.right + 8 * plane.down, 5.0)  # iliac side of the left joint
    ann.add(an.LesionMark("erosion", "left", [marks["left"][0] + 14 * plane.down]))
    ring = [marks["left"][1] + 6 * plane.right - 14 * plane.down + 6.0 * (np.cos(a) * plane.right + np.sin(a) * plane.down)
            for a in np.linspace(0, 2 * np.pi, 9)[:-1]]
    ann.add(an.LesionMark("sclerosis", "left", ring))
    ann.set_finding("right", "sclerosis", True)
    win.reading_tools.dock.raise_()
    for _ in range(5):
        app.processEvents()
    win.export_window(str(out_dir / "reading-tools.png"))
    win.export_view(str(out_dir / "oblique-ruler-roi.png"), "oblique")
    win.export_view(str(out_dir / "reference-lines-sagittal.png"), "sagittal")
    # a prior: the demo CT moved (6 degrees, 12 mm) and resampled on another grid, then registered back
    from sirad_viewer.imaging.registration import register_rigid
    from sirad_viewer.imaging.volume import resample_to

    cur = st.volume
    t = np.deg2rad(6.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    cw = cur.center_world()
    moved = np.eye(4)
    moved[:3, :3] = rot @ cur.affine[:3, :3]
    moved[:3, 3] = rot @ (cur.affine[:3, 3] - cw) + cw + np.array([8.0, -6.0, 6.0])
    prior = cur.with_array(cur.array, moved)
    grid = cur.affine.copy()
    grid[:3, 3] -= 10.0
    prior = resample_to(prior, grid, tuple(int(n) for n in np.array(cur.shape) + 6), order=1)
    tx = register_rigid(cur, prior)
    win.reading_tools.prior.show(prior, tx)
    for _ in range(5):
        app.processEvents()
    win.export_layout(str(out_dir / "prior-side-by-side.png"))
    print(f"prior registered: {tx.angle_deg:.2f} deg (6 applied)")
    print("written:", ", ".join(p.name for p in sorted(out_dir.glob("*.png"))))
    win.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs")))
