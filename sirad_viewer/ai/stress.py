"""Stress sweep: does the grade follow the lesions, or the scanner and the pose?

Every case of a labelled ``DATA.csv`` is graded as it is (``baseline``) and again after one
nuisance at a time, each of a size that must not change a radiologist's grade:

- extra in-plane blur (a softer reconstruction kernel): Gaussian of 0.75, 1.25 and 1.75 mm FWHM;
- thicker slices: the slices averaged to 3 mm and sampled every 3 mm;
- the patient lying rotated by 15 degrees (about the left-right, anteroposterior or
  craniocaudal axis): the same voxels, the world turned, so nothing but the pose changes;
- a calibration offset of +50 or -50 HU;
- twice the image noise (the noise measured on the case, added with the same in-plane texture).

Reported per condition, and apart for atlas subjects the model was trained on (``seen``) and
subjects it never saw (``held-out``, from the ``subject`` column): the share of joints whose
grade moved by at most one step from the baseline grade, the share whose 3-category result
stayed the same, the share unchanged, and accuracy against the reference. The issue's target is
at least 90% on both shares for every condition.

Full sweeps are slow (one pipeline run per case and condition): ``sirad evaluate --stress``.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.imaging.volume import Volume

TARGET = 0.9


@dataclass(frozen=True)
class Condition:
    """One nuisance: ``kind`` in blur, slices, rotate, offset, noise; ``value`` its size."""

    name: str
    kind: str
    value: float = 0.0
    axis: str = ""


CONDITIONS: tuple[Condition, ...] = (
    Condition("baseline", "none"),
    Condition("blur +0.75 mm", "blur", 0.75),
    Condition("blur +1.25 mm", "blur", 1.25),
    Condition("blur +1.75 mm", "blur", 1.75),
    Condition("slices 3 mm", "slices", 3.0),
    Condition("rotation +15 deg (LR axis)", "rotate", 15.0, "x"),
    Condition("rotation -15 deg (AP axis)", "rotate", -15.0, "y"),
    Condition("rotation +15 deg (CC axis)", "rotate", 15.0, "z"),
    Condition("HU +50", "offset", 50.0),
    Condition("HU -50", "offset", -50.0),
    Condition("noise x2", "noise", 2.0),
)


def estimate_noise_hu(volume: Volume) -> float:
    """Noise standard deviation (HU) in flat soft tissue: the median local SD over 5x5 in-plane windows.

    Our own estimator because none of our libraries has one for CT: flat soft tissue (every
    voxel of the window between -150 and 150 HU) holds noise and little anatomy.
    """
    from scipy import ndimage

    a = np.asarray(volume.array, np.float32)
    size = (1, 5, 5)
    m = ndimage.uniform_filter(a, size)
    m2 = ndimage.uniform_filter(a * a, size)
    sd = np.sqrt(np.maximum(m2 - m * m, 0.0))
    soft = ndimage.minimum_filter(a, size) > -150.0
    soft &= ndimage.maximum_filter(a, size) < 150.0
    if soft.sum() < 100:
        return 0.0
    return float(np.median(sd[soft]))


def perturb(volume: Volume, cond: Condition, *, seed: int = 0) -> Volume:
    """``volume`` with one nuisance applied (array axes: slice, row, column; in-plane = row, column)."""
    from scipy import ndimage

    if cond.kind == "none":
        return volume
    a = np.asarray(volume.array, np.float32)
    sp = volume.spacing
    if cond.kind == "blur":
        sig = cond.value / 2.3548 / sp
        return volume.with_array(ndimage.gaussian_filter(a, (0.0, sig[1], sig[2])))
    if cond.kind == "offset":
        return volume.with_array(a + np.float32(cond.value))
    if cond.kind == "rotate":
        from scipy.spatial.transform import Rotation

        r = Rotation.from_euler(cond.axis, cond.value, degrees=True).as_matrix()
        c = volume.center_world()
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = r, c - r @ c
        return volume.with_array(volume.array, m @ volume.affine)
    if cond.kind == "slices":
        step = cond.value / sp[0]
        if step <= 1.0:
            return volume
        # slab average over the new thickness, then sample every new spacing (linear in between)
        avg = ndimage.uniform_filter1d(a, size=max(1, int(round(step))), axis=0, mode="nearest")
        n_new = int(np.floor((a.shape[0] - 1) / step)) + 1
        pos = np.arange(n_new) * step
        i0 = np.minimum(np.floor(pos).astype(int), a.shape[0] - 1)
        i1 = np.minimum(i0 + 1, a.shape[0] - 1)
        w = (pos - i0).astype(np.float32)[:, None, None]
        out = (1.0 - w) * avg[i0] + w * avg[i1]
        aff = volume.affine.copy()
        aff[:3, 0] *= step
        return volume.with_array(np.ascontiguousarray(out, np.float32), aff)
    if cond.kind == "noise":
        sd = estimate_noise_hu(volume)
        if sd <= 0:
            return volume
        rng = np.random.default_rng(seed)
        n = rng.normal(0.0, 1.0, a.shape).astype(np.float32)
        n = ndimage.gaussian_filter(n, (0.0, 0.7, 0.7))  # correlated in-plane, as filtered back-projection gives
        n *= np.float32(sd * np.sqrt(cond.value ** 2 - 1.0) / max(float(n.std()), 1e-6))
        return volume.with_array(a + n)
    raise ValueError(f"unknown stress condition kind {cond.kind!r}")


def summarise(preds: list[dict[str, Any]], groups: Sequence[Sequence[int]] = GR.DEFAULT_GROUPS
              ) -> dict[str, dict[str, dict[str, float]]]:
    """Per condition and subject group: agreement with the baseline grade and accuracy.

    ``preds`` rows: ``case``, ``side``, ``group`` (seen / held-out / all), ``condition``,
    ``truth``, ``grade``.
    """
    cat = lambda g: next(k for k, grp in enumerate(groups) if int(g) in grp)  # noqa: E731
    base = {(p["case"], p["side"]): p["grade"] for p in preds if p["condition"] == "baseline"}
    out: dict[str, dict[str, dict[str, float]]] = {}
    conds = list(dict.fromkeys(p["condition"] for p in preds))
    group_names = ["all"] + sorted({p["group"] for p in preds} - {"all"})
    for c in conds:
        out[c] = {}
        for gname in group_names:
            rows = [p for p in preds if p["condition"] == c and (gname == "all" or p["group"] == gname)
                    and (p["case"], p["side"]) in base]
            if not rows:
                continue
            b = np.array([base[(p["case"], p["side"])] for p in rows])
            g = np.array([p["grade"] for p in rows])
            t = np.array([p["truth"] for p in rows])
            cb, cg, ct = (np.array([cat(v) for v in arr]) for arr in (b, g, t))
            out[c][gname] = {"joints": int(len(rows)),
                             "within_one_step": float(np.mean(np.abs(g - b) <= 1)),
                             "category3_kept": float(np.mean(cg == cb)),
                             "unchanged": float(np.mean(g == b)),
                             "accuracy": float(np.mean(g == t)),
                             "accuracy_3cat": float(np.mean(cg == ct))}
    return out


def summary_markdown(summary: dict[str, Any], model: dict[str, str]) -> str:
    lines = [f"# Stress sweep of {model.get('name', '?')} {model.get('version', '')}", "",
             "Grade change against the same case's baseline grade; target: within one step and the same "
             f"3-category result in at least {TARGET:.0%} of joints for every condition.", "",
             "| condition | subjects | joints | grade within 1 step | 3-category kept | unchanged | accuracy (5) | "
             "accuracy (3) |", "|---|---|---|---|---|---|---|---|"]
    for c, per in summary.items():
        for gname, m in per.items():
            flag = "" if (m["within_one_step"] >= TARGET and m["category3_kept"] >= TARGET) else " **below target**"
            lines.append(f"| {c} | {gname} | {m['joints']} | {m['within_one_step']:.2f} | {m['category3_kept']:.2f}"
                         f"{flag} | {m['unchanged']:.2f} | {m['accuracy']:.2f} | {m['accuracy_3cat']:.2f} |")
    return "\n".join(lines) + "\n"


def _subjects(data_csv: Path) -> tuple[dict[str, str], set[str]]:
    """(image path -> subject) and the subjects of the train and val rows (seen in training)."""
    with open(data_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    subj, seen = {}, set()
    for r in rows:
        s = (r.get("subject") or "").strip()
        img = Path(r["image"].strip())
        img = img if img.is_absolute() else data_csv.parent / img
        subj[str(img)] = s
        if s and (r.get("split") or "train").strip().lower() in ("train", "val"):
            seen.add(s)
    return subj, seen


def stress_sweep(data_csv: str | Path, out_dir: str | Path, *, bundle_path: str | Path | None = None,
                 segmenter_path: str | Path | None = None, split: str = "test",
                 conditions: Sequence[Condition] = CONDITIONS, limit: int | None = None, device: str = "auto",
                 progress: bool = True, grader=None,
                 log_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Grade every chosen case under every condition; write ``stress.json``, ``stress.md``, ``stress.csv``.

    ``split`` : ``test``, ``all`` or several splits (``test,train``: held-out subjects and, for
    comparison, subjects the model was trained on); ``limit`` : at most that many cases per split.
    """
    from sirad_viewer.ai.pipeline import Grader, find_bundle
    from sirad_viewer.ai.train import DataError, Progress, read_data_csv
    from sirad_viewer.errors import SiradError
    from sirad_viewer.io import open_volume

    say = log_fn or (lambda m: print(m, file=sys.stderr, flush=True))
    data_csv = Path(data_csv)
    rows = read_data_csv(data_csv)
    if split != "all":  # one split or several ("test,train"); ``limit`` cases from each
        chosen = []
        for sp in split.split(","):
            part = [r for r in rows if r.split == sp.strip()]
            chosen += part[:limit] if limit else part
        rows = chosen
    elif limit:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"has no rows in split {split!r}", path=data_csv)
    if not any(c.kind == "none" for c in conditions):
        conditions = (CONDITIONS[0], *conditions)
    subj, seen = _subjects(data_csv)
    if grader is None:
        seg = find_bundle("segmentation", segmenter_path) if segmenter_path else None
        grader = Grader(find_bundle("grading", bundle_path), seg, device=device)
    preds: list[dict[str, Any]] = []
    problems: list[str] = []
    bar = Progress(len(rows) * len(conditions), "stress") if progress else None
    for k, row in enumerate(rows):
        s = subj.get(str(row.image), "")
        group = "all" if not s else ("seen" if s in seen else "held-out")
        try:
            vol = open_volume(row.image)
        except SiradError as exc:
            problems.append(f"{row.image}: {exc.user_message()}")
            continue
        for cond in conditions:
            try:
                res = grader(perturb(vol, cond, seed=k), heatmaps=False)
            except SiradError as exc:
                problems.append(f"{row.image} [{cond.name}]: {exc.user_message()}")
                res = None
            if res is not None:
                for side, t in (("left", row.left), ("right", row.right)):
                    if t is not None:
                        preds.append({"case": str(row.image), "side": side, "group": group, "subject": s,
                                      "condition": cond.name, "truth": int(t), "grade": res.joints[side].grade,
                                      "probabilities": [round(float(p), 4) for p in res.joints[side].probabilities]})
            if bar:
                bar.update()
    summary = summarise(preds, grader.groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = {"name": grader.bundle.name, "version": grader.bundle.version}
    doc = {"model": model, "data": str(data_csv), "split": split, "conditions": [c.__dict__ for c in conditions],
           "target": TARGET, "summary": summary, "problems": problems}
    (out / "stress.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "stress.md").write_text(summary_markdown(summary, model))
    with open(out / "stress.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "subject", "group", "side", "condition", "truth", "grade"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(preds)
    for p in problems:
        say(f"skipped: {p}")
    return doc
