"""Post-hoc calibration of a trained grading bundle: temperature and OOD statistics.

``sirad calibrate BUNDLE DATA.csv --split val`` (and ``sirad train`` at its end) grades the
chosen rows with the bundle as it is, then

* fits one **temperature** on all graded validation joints (Guo et al. 2017). Why temperature
  scaling and not vector/matrix scaling or isotonic regression: one parameter cannot overfit
  about a hundred joints over five grades, and dividing the logits by a constant never changes the
  argmax, so calibrating never changes a grade the reader sees. The fit refuses a split that the
  network separates perfectly (the likelihood then only rises as the temperature falls, and the
  "fitted" value is wherever the bound is) and one with fewer than ``min_joints`` joints;
* fits the **OOD** statistics (:mod:`sirad_viewer.ai.ood`: the crop's texture statistics and the
  grader's penultimate features) on the validation joints of the sites the bundle was trained on
  (``training_data.sites``), its threshold passing 95% of them;

and writes both into ``metadata.json`` (the weights and their checksum do not change).

Metrics for ``sirad evaluate`` and the model card: expected calibration error (top-label, 15
equal-width bins: scikit-learn has no ECE), multi-class Brier score and log loss (scikit-learn),
and a reliability diagram (scikit-learn's ``calibration_curve``).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.bundle import load_bundle
from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)

T_BOUNDS = (0.05, 50.0)


class CalibrationError(SiradError):
    code = "calibration_failed"


# --- metrics ----------------------------------------------------------------------------------

def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| x bin share.

    probs : ndarray of shape (N, K); labels : ndarray of shape (N,)
    """
    p = np.asarray(probs, float)
    y = np.asarray(labels, int)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def calibration_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ECE, multi-class Brier score (sum over grades, mean over joints), log loss and accuracy."""
    from sklearn.metrics import brier_score_loss, log_loss

    p = np.asarray(probs, float)
    y = np.asarray(labels, int)
    k = list(range(p.shape[1]))
    return {"joints": int(len(y)), "ece": expected_calibration_error(p, y),
            "brier": float(brier_score_loss(y, p, labels=k)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-12, 1.0), labels=k)),
            "accuracy": float(np.mean(p.argmax(1) == y)),
            "mean_confidence": float(np.mean(p.max(1)))}


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, path: str | Path, *, title: str = "",
                        n_bins: int = 10) -> Path:
    """Top-label reliability diagram (accuracy against confidence per bin, with bin counts) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    p = np.asarray(probs, float)
    y = np.asarray(labels, int)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(int)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.6, 5.4), dpi=110, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="perfect calibration")
    if len(np.unique(correct)) > 1:
        acc, mc = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
        ax.plot(mc, acc, "o-", color="C0", label="model")
    else:  # all right or all wrong: calibration_curve needs both outcomes
        ax.plot([conf.mean()], [correct.mean()], "o", color="C0", label="model (one outcome only)")
    m = calibration_metrics(p, y)
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_title(f"{title}\nECE {m['ece']:.3f}, Brier {m['brier']:.3f}, n = {len(y)} joints", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax2.hist(conf, bins=n_bins, range=(0, 1), color="C0", alpha=0.7)
    ax2.set_xlabel("confidence (probability of the grade shown)")
    ax2.set_ylabel("joints")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


# --- fitting ----------------------------------------------------------------------------------

def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, min_joints: int = 100,
                    bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature minimising the validation NLL; refuses splits that cannot determine it."""
    lg = np.asarray(logits, float)
    y = np.asarray(labels, int)
    if len(y) < min_joints:
        raise CalibrationError(f"the calibration split has {len(y)} graded joints; at least {min_joints} are needed "
                               "(make a larger or harder set with 'sirad phantom-dataset')")
    if np.all(lg.argmax(1) == y):
        raise CalibrationError(f"the network grades all {len(y)} calibration joints correctly, so the likelihood has no "
                               "minimum and the temperature would sit at its bound; add harder joints (another site "
                               "profile, e.g. 'sirad phantom-dataset --site phantom-B')")
    t = GR.fit_temperature(lg, y, bounds=bounds)
    if min(abs(np.log(t / bounds[0])), abs(np.log(t / bounds[1]))) < 1e-3:
        raise CalibrationError(f"the fitted temperature {t:.3g} sits at its bound {bounds}; the split cannot "
                               "determine it")
    return t


def _cache_file(cache_dir: Path, grader, image: Path) -> Path:
    import hashlib

    from sirad_viewer.ai.localise import LOCALISATION_VERSION

    st = image.stat() if image.exists() else None
    seg = grader.segmenter.metadata["weights"]["sha256"] if grader.segmenter is not None else "classical"
    key = json.dumps([str(image.resolve()), st.st_size if st else 0, st.st_mtime_ns if st else 0,
                      grader.bundle.metadata["weights"]["sha256"], seg, grader.spec.spacing_mm.tolist(),
                      grader.spec.size.tolist(), LOCALISATION_VERSION, grader.spec.refine_frame,
                      # everything else that changes the crops or the logits with the weights unchanged (frame,
                      # registration template, test-time frames, HU reference)
                      json.dumps(grader.bundle.metadata.get("input", {}), sort_keys=True, default=str)])
    return cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def collect_joints(grader, rows: Sequence[Any], *, progress: bool = True, cache_dir: str | Path | None = None,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Grade every row; returns (joints, failures).

    joints: one dict per graded joint with image, side, site, split, truth, logits (raw), features, texture
    (the OOD inputs) and the OOD check (with the grader's current statistics). failures: one dict per row that could not be
    graded (image, site, split, truth per side, code, message), so that callers count them rather than
    drop them. ``cache_dir`` keeps each CT's raw logits and features (keyed by file, weights and crop
    spec), so calibrating and evaluating the same rows grades each CT once; a cached record without
    texture statistics of the current :data:`~sirad_viewer.ai.ood.TEXTURE_VERSION` is graded again.
    """
    from sirad_viewer.ai.ood import TEXTURE_VERSION
    from sirad_viewer.ai.train import Progress
    from sirad_viewer.io import open_volume

    out: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    bar = Progress(len(rows), "grading") if progress else None
    recording, grader.record_texture = grader.record_texture, True  # the OOD inputs, even while none are fitted
    cdir = Path(cache_dir) if cache_dir is not None else None
    if cdir is not None:
        cdir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        graded = {s: g for s, g in (("left", row.left), ("right", row.right)) if g is not None}
        cf = _cache_file(cdir, grader, Path(row.image)) if cdir is not None else None
        rec = json.loads(cf.read_text()) if cf is not None and cf.exists() else None
        if rec is not None and "error" not in rec and any(v.get("texture_version") != TEXTURE_VERSION
                                                          for v in rec.values()):
            rec = None  # written before these texture statistics existed or with another definition of them
        if rec is None:
            try:
                res = grader(open_volume(row.image), heatmaps=False)
                rec = {s: {"logits": j.logits.tolist(), "features": j.features.tolist(), "texture": j.texture.tolist(),
                           "texture_version": TEXTURE_VERSION} for s, j in res.joints.items()}
            except SiradError as exc:
                rec = {"error": {"code": exc.code, "message": exc.user_message()}}
            if cf is not None:
                cf.write_text(json.dumps(rec))
        if "error" in rec:
            failed.append({"image": str(row.image), "site": row.site, "split": row.split, "truth": graded,
                           **rec["error"]})
        else:
            for side, g in graded.items():
                x = {"penultimate": np.asarray(rec[side]["features"], float),
                     "crop_texture": np.asarray(rec[side]["texture"], float)}
                out.append({"image": str(row.image), "side": side, "site": row.site, "split": row.split, "truth": int(g),
                            "logits": np.asarray(rec[side]["logits"], float), "features": x["penultimate"],
                            "texture": x["crop_texture"],
                            "ood": grader.ood.check(x)[0] if grader.ood is not None else None})
        if bar:
            bar.update()
    grader.record_texture = recording
    return out, failed


def calibrate_bundle(bundle_path: str | Path, data_csv: str | Path | Sequence[str | Path], *, split: str = "val",
                     segmenter_path: str | Path | None = None, device: str = "auto", min_joints: int = 100,
                     ood_sites: Sequence[str] | None = None, progress: bool = True,
                     allow_uncalibrated: bool = False, cache_dir: str | Path | None = None,
                     say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit temperature and OOD statistics on ``split`` of one or more DATA.csv; write them into the bundle.

    ``allow_uncalibrated`` (used by ``sirad train``): a split that cannot determine the temperature
    leaves it at 1 with the reason in the metadata instead of failing; the OOD statistics are still fitted.
    Returns the ``{"calibration": ..., "ood": ...}`` summary that was written (without the matrices).
    """
    from sirad_viewer.ai.ood import fit_ood
    from sirad_viewer.ai.pipeline import Grader, find_bundle
    from sirad_viewer.ai.train import DataError, read_data_csv

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    csvs = [data_csv] if isinstance(data_csv, (str, Path)) else list(data_csv)
    rows = [r for c in csvs for r in read_data_csv(c) if split == "all" or r.split == split]
    if not rows:
        raise DataError(f"has no rows in split {split!r}", path=", ".join(str(c) for c in csvs))
    bundle = load_bundle(bundle_path)
    # the statistics are about to be replaced: old ones (another version, another window) must not stop that
    bundle.metadata.pop("ood", None)
    seg = find_bundle("segmentation", segmenter_path) if segmenter_path else None
    grader = Grader(bundle, seg, device=device)  # scores nothing while the statistics are being fitted
    joints, failed = collect_joints(grader, rows, progress=progress, cache_dir=cache_dir)
    for f in failed:
        say(f"not graded (counted, not used for fitting): {f['message']}")
    if not joints:
        raise CalibrationError("no joint of the calibration split could be graded")
    lg = np.stack([j["logits"] for j in joints])
    y = np.array([j["truth"] for j in joints])
    try:
        t, t_note = fit_temperature(lg, y, min_joints=min_joints), ""
    except CalibrationError as exc:
        if not allow_uncalibrated:
            raise
        t, t_note = 1.0, f"not fitted (temperature left at 1): {exc.message}; run 'sirad calibrate' on a harder split"
        say(t_note)
    before, after = calibration_metrics(GR.softmax(lg, 1.0), y), calibration_metrics(GR.softmax(lg, t), y)
    sites = list(ood_sites) if ood_sites else list(bundle.metadata.get("training_data", {}).get("sites") or [])
    ind = [j for j in joints if not sites or j["site"] in sites]
    if len(ind) < 10:
        raise CalibrationError(f"only {len(ind)} validation joints from the training site(s) {sites}; the OOD "
                               "statistics need at least 10 (pass --ood-sites or add rows of those sites)")
    def inputs(js: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {"penultimate": np.stack([j["features"] for j in js]), "crop_texture": np.stack([j["texture"] for j in js])}

    model, oof = fit_ood(inputs(ind), [j["image"] for j in ind], fit_sites=sites,
                         texture_window_hu=GR.CropSpec.from_metadata(bundle.metadata).window_hu)
    other = [j for j in joints if sites and j["site"] not in sites]
    other_flag = float(np.mean(model.score(inputs(other)) > model.threshold)) if other else None
    cal = {"method": t_note or "temperature scaling (one parameter, NLL on the calibration split)",
           "fitted": not t_note,
           "temperature": round(t, 4), "split": split,
           "data": [str(Path(c).resolve()) for c in csvs], "joints": int(len(y)), "failed_cases": len(failed),
           "sites": sorted({j["site"] for j in joints}),
           "val_before": {k: round(v, 4) for k, v in before.items()},
           "val_after": {k: round(v, 4) for k, v in after.items()},
           "val_nll_before": round(before["log_loss"], 4), "val_nll_after": round(after["log_loss"], 4)}
    ood_meta = model.to_metadata()
    ood_meta["cross_fitted_pass_rate"] = round(float(np.mean(oof <= model.threshold)), 4)
    ood_meta["other_sites_flag_rate"] = None if other_flag is None else round(other_flag, 4)
    meta = dict(bundle.metadata)
    meta["calibration"] = cal
    meta["ood"] = ood_meta
    (bundle.path / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    load_bundle(bundle.path)  # the written metadata must still validate
    say(f"temperature {t:.3f} on {len(y)} joints: ECE {before['ece']:.3f} -> {after['ece']:.3f}, "
        f"NLL {before['log_loss']:.3f} -> {after['log_loss']:.3f}; OOD threshold {model.threshold:.2f} "
        f"from {len(ind)} joints of {sites}")
    summary = {k: v for k, v in ood_meta.items() if k != "components"}
    summary["components"] = [{k: v for k, v in c.items() if k not in ("mean", "precision")} for c in ood_meta["components"]]
    return {"calibration": cal, "ood": summary}
