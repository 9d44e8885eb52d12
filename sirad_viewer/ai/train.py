"""Training the grading DenseNet from a ``DATA.csv`` (phantoms or a site's own labelled CTs).

``DATA.csv`` columns: ``image`` (path relative to the CSV, or absolute: a NIfTI/NRRD file, a DICOM
folder or zip), ``left`` and ``right`` (grades 0-4; empty when a side cannot be graded),
``site``, ``split`` (train / val / test). Nothing here knows about phantoms: each CT goes through
the same segmentation and localisation as ``sirad grade``, and the joint crops are cached.

Training: class-weighted cross-entropy, AdamW with a cosine learning-rate schedule, per-sample augmentation
with the stress sweep's nuisances (:data:`AUG`: blur, slice thickness, rotation and shift, HU offset and gain, noise), early stopping on the validation loss, a checkpoint after every
epoch (``--resume`` continues from it), a bundle, then the post-hoc temperature and OOD fit of
:mod:`sirad_viewer.ai.calibration` on the validation split (kept out when that split is too small), and a
bundle written with its metrics.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.bundle import ModelBundle, build_network, save_bundle
from sirad_viewer.ai.localise import LOCALISATION_VERSION
from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)
PAD = 12  # voxels of margin around each cached crop: a 48-voxel crop turned 45 degrees in its plane, plus a shift


class DataError(SiradError):
    code = "bad_data"


@dataclass
class Row:
    image: Path
    left: int | None
    right: int | None
    site: str
    split: str


def read_data_csv(path: str | Path) -> list[Row]:
    """Rows of a DATA.csv, checked: a bad row is an error naming the line and the problem."""
    path = Path(path)
    try:
        fh = open(path, newline="")
    except OSError as exc:
        raise DataError(f"cannot be read: {exc}", path=path) from exc
    with fh:
        reader = csv.DictReader(fh)
        missing = {"image", "left", "right"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"lacks the column(s) {sorted(missing)}; needed: image,left,right[,site,split]", path=path)
        rows = []
        for n, r in enumerate(reader, start=2):
            grades = []
            for side in ("left", "right"):
                v = (r.get(side) or "").strip()
                if v == "":
                    grades.append(None)
                    continue
                try:
                    g = int(float(v))
                except ValueError:
                    raise DataError(f"line {n}: {side} grade {v!r} is not a number 0-4", path=path) from None
                if g not in GR.GRADES:
                    raise DataError(f"line {n}: {side} grade {g} is outside 0-4", path=path)
                grades.append(g)
            img = Path(r["image"].strip())
            if not img.is_absolute():
                img = path.parent / img
            split = (r.get("split") or "train").strip().lower() or "train"
            if split not in ("train", "val", "test"):
                raise DataError(f"line {n}: split {split!r} is not train, val or test", path=path)
            rows.append(Row(img, grades[0], grades[1], (r.get("site") or "").strip() or "unknown", split))
    if not rows:
        raise DataError("has no rows", path=path)
    return rows


class Progress:
    """A plain-text progress bar on stderr (one line per update when not a terminal)."""

    def __init__(self, total: int, label: str, stream=None) -> None:
        self.total, self.label, self.n, self.t0 = total, label, 0, time.time()
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = -1.0

    def update(self, n: int = 1, info: str = "") -> None:
        self.n += n
        frac = self.n / max(self.total, 1)
        now = time.time()
        if not self.tty and now - self._last < 5 and self.n < self.total:
            return
        self._last = now
        bar = "#" * int(frac * 24)
        line = f"{self.label} [{bar:<24}] {self.n}/{self.total} {now - self.t0:5.0f}s {info}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and self.n >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _cache_key(row: Row, spec: GR.CropSpec, seg_sha: str) -> str:
    st = row.image.stat() if row.image.exists() else None
    h = hashlib.sha256(json.dumps([str(row.image.resolve()), st.st_size if st else 0, st.st_mtime_ns if st else 0,
                                   spec.spacing_mm.tolist(), spec.size.tolist(), spec.mirror_left, spec.joint_frame, PAD,
                                   seg_sha, LOCALISATION_VERSION, spec.refine_frame, spec.long_axis,
                                   spec.registration.to_metadata() if spec.registration is not None else None]).encode())
    return h.hexdigest()[:24]


def prepare_crops(rows: Sequence[Row], grader, cache_dir: Path, *, progress: bool = True
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Joint crops (HU, with a margin of PAD voxels) for every graded joint; returns (items, problems)."""
    from sirad_viewer.io import open_volume

    cache_dir.mkdir(parents=True, exist_ok=True)
    seg_sha = grader.segmenter.metadata["weights"]["sha256"]
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    bar = Progress(len(rows), "crops") if progress else None
    for row in rows:
        f = cache_dir / f"{_cache_key(row, grader.spec, seg_sha)}.npz"
        try:
            if f.exists():
                z = np.load(f)
                crops = {"left": z["left"], "right": z["right"]}
            else:
                vol = open_volume(row.image)
                warns: list[str] = []
                seg = grader.segment(vol, warns)
                from sirad_viewer.ai.localise import localise

                loc = grader.joint_frames(vol, localise(seg.coarse_labels, seg.affine))
                crops = grader.crops(vol, loc, pad=PAD)  # in the joint's frame when the spec says so
                np.savez(f, left=crops["left"].astype(np.float32), right=crops["right"].astype(np.float32))
        except SiradError as exc:
            problems.append(f"{row.image}: {exc.user_message() if hasattr(exc, 'user_message') else exc}")
            crops = None
        if crops is not None:
            for side, g in (("left", row.left), ("right", row.right)):
                if g is not None:
                    items.append({"crop": crops[side], "grade": g, "side": side, "site": row.site,
                                  "split": row.split, "image": str(row.image)})
        if bar:
            bar.update()
    return items, problems


# Per-sample nuisances of the stress sweep (issue #10 item 5), each drawn independently of the grade:
# a softer kernel (extra blur 0-2 mm FWHM), thicker slices (up to 3 mm along the crop's long axis,
# which is near the scanner's z axis), a pose and frame error (rotation up to +-15 degrees about a
# random axis, a shift of up to 2 voxels), a HU offset of +-60 and a gain, and extra noise (up to
# twice a typical phantom's level).
AUG = {"blur_fwhm_mm": (0.0, 2.0), "slice_mm": (0.0, 3.0), "rotation_deg": 15.0, "shift_voxels": 2,
       "hu_offset": 60.0, "gain": (0.92, 1.08), "noise_hu": (0.0, 40.0)}
# For crops whose in-plane axis is the joint surface's bend (long_axis "curvature"): that direction is
# stable under a turn of the pelvis but differs from joint to joint, so the network is taught to read
# the joint at any in-plane angle (a uniform turn about the joint normal), with milder versions of the
# other nuisances (a fine-tuned network should keep what it knew).
AUG_INPLANE = {"blur_fwhm_mm": (0.0, 1.75), "slice_mm": (0.0, 3.0), "rotation_deg": 8.0, "shift_voxels": 2,
               "hu_offset": 50.0, "gain": (0.95, 1.05), "noise_hu": (0.0, 30.0), "inplane_deg": 180.0,
               "p_blur": 0.5, "p_slice": 0.35, "p_noise": 0.5, "p_tilt": 0.5}
AUGMENTATIONS = {"stress": AUG, "inplane": AUG_INPLANE}
# grading.harmonise: the muscle peak within -40..160 HU (fat, about -100, stays out even 50 HU
# higher) moved to 50 HU, by at most 80 HU; measured on the training crops: the peak lies at 8-78 HU
# and follows a +-50 HU offset exactly in 99 % of them, and 30 HU of noise moves it by 5-15 HU
HU_REFERENCE = {"window_hu": [-40.0, 160.0], "level_hu": 50.0, "max_shift_hu": 80.0}


def _inplane_matrix(deg: float) -> np.ndarray:
    """Rotation of crop index space about its column axis (the joint normal) by ``deg``."""
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _augment(c: np.ndarray, rng, spec, aug: dict[str, Any] | None = None) -> np.ndarray:
    """One augmented crop of ``spec.size`` from a cached crop with a margin of PAD voxels (HU)."""
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    aug = aug or AUG
    s = np.asarray(spec.size)
    sp = float(spec.spacing_mm[0])
    shift = rng.integers(-aug["shift_voxels"], aug["shift_voxels"] + 1, size=3)
    inplane = float(aug.get("inplane_deg", 0.0))
    slice_sig = 0.0
    if rng.random() < aug.get("p_slice", 0.5):
        slice_sig = rng.uniform(*aug["slice_mm"]) / 2.355 / sp
    c = np.asarray(c, np.float32)
    if inplane and slice_sig > 0.05:  # along the crop's long axis before the in-plane turn
        c = ndimage.gaussian_filter1d(c, slice_sig, axis=0)
        slice_sig = 0.0
    m = np.eye(3)
    if inplane:
        m = _inplane_matrix(rng.uniform(-inplane, inplane))
    if rng.random() < aug.get("p_tilt", 0.7):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        m = m @ Rotation.from_rotvec(axis * np.radians(rng.uniform(-1, 1) * aug["rotation_deg"])).as_matrix()
    if not np.allclose(m, np.eye(3)):
        ctr_out = (s - 1) / 2.0
        ctr_in = (np.asarray(c.shape) - 1) / 2.0 + shift
        x = ndimage.affine_transform(c, m, offset=ctr_in - m @ ctr_out, output_shape=tuple(s), order=1,
                                     mode="nearest", prefilter=False).astype(np.float32)
    else:
        o = (np.asarray(c.shape) - s) // 2 + shift
        x = c[o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]].astype(np.float32)
    sig = np.zeros(3)
    if rng.random() < aug.get("p_blur", 0.6):
        sig += rng.uniform(*aug["blur_fwhm_mm"]) / 2.355 / sp
    sig[0] = np.hypot(sig[0], slice_sig)
    if sig.max() > 0.05:
        x = ndimage.gaussian_filter(x, sig)
    x = x * rng.uniform(*aug["gain"]) + rng.uniform(-1, 1) * aug["hu_offset"]
    if rng.random() < aug.get("p_noise", 0.6):
        x = x + rng.normal(0, rng.uniform(*aug["noise_hu"]), x.shape).astype(np.float32)
    return x


def _centre(c: np.ndarray, spec) -> np.ndarray:
    s = np.asarray(spec.size)
    o = (np.asarray(c.shape) - s) // 2
    return np.asarray(c[o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]], np.float32)


def _batch(items, idx, rng, spec, *, augment: bool, aug: dict[str, Any] | None = None):
    s = spec.size
    out = np.empty((len(idx), 1, *s), np.float32)
    for k, i in enumerate(idx):
        c = items[i]["crop"]
        x = _augment(c, rng, spec, aug) if augment else _centre(c, spec)
        out[k, 0] = GR.model_input(x, spec)
    return out


# Crop-level versions of the stress sweep's nuisances, for choosing an epoch on the validation split
# (the full sweep, 'sirad evaluate --stress', regrades whole CTs and is too slow for every epoch).
VAL_STRESS = (("blur 1.25 mm", {"blur": 1.25}), ("blur 1.75 mm", {"blur": 1.75}), ("slices 3 mm", {"slice": 3.0}),
              ("HU +50", {"hu": 50.0}), ("HU -50", {"hu": -50.0}), ("noise 20 HU", {"noise": 20.0}),
              ("turned 90 deg in plane", {"rot90": 1}), ("turned 10 deg in plane", {"inplane": 10.0}))


def _stressed(c: np.ndarray, spec, kind: dict[str, float], rng) -> np.ndarray:
    from scipy import ndimage

    sp = float(spec.spacing_mm[0])
    if "inplane" in kind:
        s = np.asarray(spec.size)
        m = _inplane_matrix(kind["inplane"])
        ctr_in = (np.asarray(c.shape) - 1) / 2.0
        return ndimage.affine_transform(np.asarray(c, np.float32), m, offset=ctr_in - m @ ((s - 1) / 2.0),
                                        output_shape=tuple(s), order=1, mode="nearest", prefilter=False)
    x = _centre(c, spec)
    if "rot90" in kind:
        return np.ascontiguousarray(np.rot90(x, int(kind["rot90"]), axes=(0, 1)))
    if "blur" in kind:
        x = ndimage.gaussian_filter(x, kind["blur"] / 2.355 / sp)
    if "slice" in kind:
        x = ndimage.gaussian_filter1d(x, kind["slice"] / 2.355 / sp, axis=0)
    if "hu" in kind:
        x = x + kind["hu"]
    if "noise" in kind:
        x = x + rng.normal(0, kind["noise"], x.shape).astype(np.float32)
    return x


def consistency_loss(logits_a, logits_b):
    """Symmetric Kullback-Leibler divergence between two views' grade distributions, batch mean."""
    import torch.nn.functional as F

    la, lb = F.log_softmax(logits_a, dim=1), F.log_softmax(logits_b, dim=1)
    return 0.5 * (F.kl_div(la, lb, log_target=True, reduction="batchmean")
                  + F.kl_div(lb, la, log_target=True, reduction="batchmean"))


def train_grader(data_csv: str | Path, out_dir: str | Path, *, segmenter: ModelBundle | None = None,
                 spacing_mm: float = 1.25, size: int = 64, window_hu: Sequence[float] = (-200.0, 1500.0),
                 config: dict[str, Any] | None = None, epochs: int = 40, batch_size: int = 8, lr: float = 1e-3,
                 patience: int = 8, seed: int = 0, resume: bool = False, name: str = "sij-densenet-demo",
                 version: str = "0.1.0", groups: Sequence[Sequence[int]] = GR.DEFAULT_GROUPS,
                 device: str = "auto", progress: bool = True, frame: str = "joint",
                 log_fn: Callable[[str], None] | None = None, init: str | Path | None = None,
                 long_axis: str = "outline", augmentation: str = "stress", select: str = "loss",
                 test_time_turns: int = 1, hu_reference: bool = False, pre_blur_fwhm_mm: float = 0.0,
                 consistency: float = 0.0, test_time_jitter: tuple[float, float] = (0.0, 0.0)) -> ModelBundle:
    """Train, calibrate and write a grading bundle to ``out_dir``; returns it.

    ``init`` : a grading bundle whose weights the training starts from (fine-tuning; its architecture
    is taken, ``config`` is ignored). ``long_axis`` : the refined joint frame's in-plane axis
    (``localise.refine_joint``). ``augmentation`` : a key of :data:`AUGMENTATIONS`. ``select`` : the
    epoch kept: lowest validation loss (``"loss"``) or highest validation score (``"score"``: 5-grade
    plus 3-category accuracy plus the share of 3-category results kept under :data:`VAL_STRESS`).
    ``test_time_turns`` : written to the bundle (``input.test_time_turns``): the grader averages over that
    many in-plane quarter turns of each crop (validation here does the same). ``hu_reference`` : crops
    referenced to their own soft tissue (:data:`HU_REFERENCE`, ``grading.harmonise``) in training and grading.
    ``pre_blur_fwhm_mm`` : every crop blurred by this much first (``grading.harmonise``).
    ``test_time_jitter`` : (shift mm, turn degrees) written to the bundle (``input.test_time_jitter``): the
    grader averages over the crop and 12 nearby frames (``grading.frame_jitter``; validation does the same).
    ``consistency`` : when > 0, every joint of a batch is drawn twice with independent nuisances, and
    the loss adds this weight times the symmetric Kullback-Leibler divergence between the two views'
    predicted grade distributions (:func:`consistency_loss`): augmentation alone teaches each view's
    label, this also teaches the network to give one joint the same answer whatever the scanner did.
    """
    import torch

    from sirad_viewer.ai.pipeline import Grader, find_bundle, resolve_device

    say = log_fn or (lambda m: print(m, file=sys.stderr, flush=True))
    data_csv, out_dir = Path(data_csv), Path(out_dir)
    rows = read_data_csv(data_csv)
    segmenter = segmenter or find_bundle("segmentation")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {sorted(AUGMENTATIONS)}, not {augmentation!r}")
    if select not in ("loss", "score"):
        raise ValueError(f"select must be 'loss' or 'score', not {select!r}")
    aug = AUGMENTATIONS[augmentation]
    start_bundle = None
    if init is not None:
        from sirad_viewer.ai.bundle import load_bundle

        start_bundle = load_bundle(init)
        if start_bundle.metadata.get("task") != "grading":
            raise DataError(f"--init {init} is not a grading bundle", path=Path(init))
    arch = (dict(start_bundle.metadata["architecture"]) if start_bundle is not None else
            {"type": "densenet", "config": dict(config or {"init_features": 16, "growth_rate": 8, "block_config": [4, 6],
                                                           "dropout_prob": 0.1})})
    meta: dict[str, Any] = {
        "name": name, "version": version, "task": "grading", "architecture": arch,
        "input": {"spacing_mm": [spacing_mm] * 3, "size": [size] * 3, "intensity_window_hu": list(window_hu),
                  "mirror_left": True, "frame": frame,
                  # long_axis "segmentation": the segmentation's box as it is (no refinement on the CT)
                  "refine_frame": frame == "joint" and long_axis != "segmentation",
                  "long_axis": "outline" if long_axis == "segmentation" else long_axis,
                  "test_time_turns": int(test_time_turns),
                  **({"hu_reference": dict(HU_REFERENCE)} if hu_reference else {}),
                  **({"pre_blur_fwhm_mm": float(pre_blur_fwhm_mm)} if pre_blur_fwhm_mm > 0 else {}),
                  **({"test_time_jitter": {"shift_mm": float(test_time_jitter[0]), "turn_deg": float(test_time_jitter[1])}}
                     if max(test_time_jitter) > 0 else {}),
                  "orientation": ("the joint box's axes refined on the CT (slice: the direction of the joint surface's "
                                  "largest bend; row: perpendicular to it in the joint plane; column: the joint normal, "
                                  "medial), centred on the joint" if frame == "joint" and long_axis == "curvature" else
                                  "the joint box's axes refined on the CT (slice: the line where the two joint planes "
                                  "meet, superior; row: anteroposterior in the joint plane, posterior; column: the joint "
                                  "normal, medial), centred on the joint" if frame == "joint" and long_axis == "planes" else
                                  "the joint box's axes (slice: the joint's long axis, superior; row: anteroposterior, "
                                  "posterior; column: the joint normal, medial), centred on the joint" if frame == "joint"
                                  else "canonical LPS axes (slice superior, row posterior, column patient left), "
                                       "centred on the joint")},
        "classes": list(GR.GRADES), "groups": [list(g) for g in groups],
        "training_data": {}, "metrics": {}, "intended_use": "", "disclaimer": "",
    }
    # a bundle fine-tuned from one that registers its joint boxes to a template (ai.register) registers them
    # the same way: the template travels with the weights, and the training crops are cut along those boxes
    inherited = (start_bundle.metadata.get("input", {}).get("registration") if start_bundle is not None
                 and frame == "joint" else None)
    if inherited:
        import shutil

        from sirad_viewer.ai.bundle import weights_file

        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights_file(start_bundle.path, inherited["file"]), out_dir / Path(inherited["file"]).name)
        meta["input"]["registration"] = dict(inherited, file=Path(inherited["file"]).name)
        meta["input"]["orientation"] += ("; the segmentation's joint box registered rigidly to the bundle's mean joint "
                                         "(template.safetensors) first")
    # a temporary grader for segmentation + cropping with the new bundle's input spec
    grader = Grader.__new__(Grader)
    grader.segmenter, grader.device, grader._nets = segmenter, dev, {}
    grader.external = None  # our segmentation bundle, not TotalSegmentator
    grader.spec = GR.CropSpec.from_metadata(meta)
    grader.bundle = start_bundle  # where the template is read from while the crops are cut
    items, problems = prepare_crops(rows, grader, out_dir / "cache", progress=progress)
    for p in problems:
        say(f"skipped: {p}")
    tr = [i for i, it in enumerate(items) if it["split"] == "train"]
    va = [i for i, it in enumerate(items) if it["split"] == "val"]
    if not tr or not va:
        raise DataError("needs joints in both the 'train' and the 'val' split", path=data_csv)
    counts = np.bincount([items[i]["grade"] for i in tr], minlength=5).astype(float)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / 5.0, 0.0)
    say(f"train joints {len(tr)} (per grade {counts.astype(int).tolist()}), val joints {len(va)}; class weights "
        f"{np.round(weights, 2).tolist()}")
    # seeded again here: cutting the crops builds the segmenter's networks (drawing from torch's generator) only
    # when they are not cached yet, so the same command gave other weights on a second run or with a warm cache
    torch.manual_seed(seed)
    net = build_network(arch, n_classes=5)
    if start_bundle is not None:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(start_bundle.path / "model.safetensors")))
        say(f"starting from {start_bundle.name} {start_bundle.version} ({start_bundle.path})")
    net = net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1), eta_min=lr * 0.02)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=dev))
    ckpt = out_dir / "checkpoints" / "last.pt"
    start, best, best_state, bad, history = 0, float("inf"), None, 0, []
    # the score is maximised: stored negated so that "lower is better" holds for both criteria
    if resume and ckpt.exists():
        st = torch.load(ckpt, map_location=dev, weights_only=True)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, best, bad = int(st["epoch"]) + 1, float(st["best"]), int(st["bad"])
        best_state = st["best_model"]
        history = json.loads(st["history"])
        rng = np.random.default_rng(seed + start)
        say(f"resumed from {ckpt} at epoch {start}")
    yv = np.array([items[i]["grade"] for i in va])

    def turned_logits(model, x: np.ndarray) -> np.ndarray:
        """Logits of a normalised batch, averaged over the bundle's test-time quarter turns."""
        xt = np.ascontiguousarray(GR.frame_jitter(GR.quarter_turns(x, grader.spec.turns), grader.spec))
        lg = model(torch.from_numpy(xt).to(dev)).float().cpu().numpy()
        return lg.reshape(-1, len(x), lg.shape[1]).mean(0)

    def val_logits(model) -> np.ndarray:
        model.eval()
        outs = []
        with torch.inference_mode():
            for k in range(0, len(va), batch_size):
                outs.append(turned_logits(model, _batch(items, va[k:k + batch_size], rng, grader.spec, augment=False)))
        return np.concatenate(outs)

    group_of = np.zeros(5, int)
    for gi, grp in enumerate(groups):
        group_of[list(grp)] = gi
    srng = np.random.default_rng(12345)
    # quarter turns in plane only matter for a frame whose in-plane axis differs from joint to joint (the bend's)
    checks = [(n, k) for n, k in VAL_STRESS if "rot90" not in k or long_axis == "curvature" or test_time_turns > 1]
    stressed = {name: np.stack([GR.model_input(_stressed(items[i]["crop"], grader.spec, kind, srng), grader.spec)
                                for i in va])[:, None] for name, kind in checks}

    def val_stress(model, base_pred: np.ndarray) -> dict[str, float]:
        """Share of validation joints whose 3-category result each crop-level nuisance keeps."""
        model.eval()
        kept = {}
        with torch.inference_mode():
            for name, x in stressed.items():
                pr = np.concatenate([turned_logits(model, x[k:k + 16]).argmax(1) for k in range(0, len(x), 16)])
                kept[name] = float(np.mean(group_of[pr] == group_of[base_pred]))
        return kept

    if start_bundle is not None and start == 0:
        lv = val_logits(net)
        kept = val_stress(net, lv.argmax(1))
        say(f"start: val accuracy {np.mean(lv.argmax(1) == yv):.3f} (3 categories "
            f"{np.mean(group_of[lv.argmax(1)] == group_of[yv]):.3f}), 3-category kept under crop-level stress "
            f"{np.mean(list(kept.values())):.3f} {({k: round(v, 2) for k, v in kept.items()})}")
    for epoch in range(start, epochs):
        net.train()
        order = rng.permutation(tr)
        bar = Progress(int(np.ceil(len(order) / batch_size)), f"epoch {epoch + 1}/{epochs}") if progress else None
        tot = 0.0
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            xb = torch.from_numpy(_batch(items, idx, rng, grader.spec, augment=True, aug=aug)).to(dev)
            yb = torch.tensor([items[i]["grade"] for i in idx], device=dev)
            if consistency > 0:
                xb2 = torch.from_numpy(_batch(items, idx, rng, grader.spec, augment=True, aug=aug)).to(dev)
                out = net(torch.cat([xb, xb2]))
                la, lb = out[:len(idx)], out[len(idx):]
                loss = 0.5 * (loss_fn(la, yb) + loss_fn(lb, yb)) + consistency * consistency_loss(la, lb)
            else:
                loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            if bar:
                bar.update(info=f"loss {float(loss.detach()):.3f}")
        sched.step()
        lv = val_logits(net)
        vloss = float(loss_fn(torch.from_numpy(lv).to(dev), torch.from_numpy(yv).to(dev)))
        vacc = float(np.mean(lv.argmax(1) == yv))
        vacc3 = float(np.mean(group_of[lv.argmax(1)] == group_of[yv]))
        kept = val_stress(net, lv.argmax(1))
        vkept = float(np.mean(list(kept.values())))
        score = vacc + vacc3 + vkept
        history.append({"epoch": epoch + 1, "train_loss": tot / len(order), "val_loss": vloss, "val_accuracy": vacc,
                        "val_accuracy_3": vacc3, "val_stress_kept_3": vkept, "val_stress_min_3": min(kept.values())})
        say(f"epoch {epoch + 1}: train loss {tot / len(order):.3f}, val loss {vloss:.3f}, val accuracy {vacc:.3f} "
            f"(3 categories {vacc3:.3f}), 3-category kept under crop-level stress {vkept:.3f} "
            f"(lowest {min(kept.values()):.3f}: {min(kept, key=kept.get)})")
        crit = vloss if select == "loss" else -score
        (ckpt.parent / "epochs").mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                   ckpt.parent / "epochs" / f"epoch_{epoch + 1:03d}.pt")
        if crit < best - 1e-4:
            best, bad = crit, 0
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "best": best, "bad": bad,
                    "best_model": best_state, "history": json.dumps(history)}, ckpt)
        if bad >= patience:
            say(f"early stop: no validation improvement for {patience} epochs")
            break
    net.load_state_dict(best_state)
    lv = val_logits(net)
    from sirad_viewer.study.agreement import cohen_kappa

    pv = lv.argmax(1)
    sites = sorted({items[i]["site"] for i in tr})
    # temperature and OOD statistics: fitted after saving, by the same post-hoc step as 'sirad calibrate'
    meta["calibration"] = {"method": "not calibrated (temperature 1); run 'sirad calibrate'", "temperature": 1.0,
                           "fitted": False}
    meta["metrics"] = {"validation": {"joints": len(va), "accuracy": round(float(np.mean(pv == yv)), 4),
                                      "kappa_quadratic": round(cohen_kappa(pv, yv, weights="quadratic",
                                                                           categories=list(GR.GRADES)).kappa, 4)}}
    meta["training_data"] = {"csv": str(data_csv.name), "train_joints": len(tr), "val_joints": len(va),
                             "grade_counts_train": counts.astype(int).tolist(), "sites": sites,
                             "skipped_cases": len(problems), "epochs_run": len(history), "history": history,
                             "segmentation_bundle": f"{segmenter.name} {segmenter.version}",
                             "recipe": {"augmentation": augmentation, "consistency": float(consistency), "select": select,
                                        "lr": lr, "epochs": epochs, "patience": patience, "batch_size": batch_size,
                                        "seed": seed},
                             **({"initialised_from": f"{start_bundle.name} {start_bundle.version}"} if start_bundle else {})}
    meta["intended_use"] = ("Research and demonstration of the SIRAD workflow: grading sacroiliac joints on the modified "
                            "New York scale from pelvic CT, as a second reader after the radiologist's own grade.")
    meta["disclaimer"] = ("Phantom-trained demo weights unless training_data says otherwise; not validated on patients; "
                          "not for clinical use.")
    net.eval()
    bundle = save_bundle(net.cpu(), meta, out_dir)
    from sirad_viewer.ai.calibration import CalibrationError, calibrate_bundle

    try:
        calibrate_bundle(bundle.path, data_csv, split="val", segmenter_path=segmenter.path, device=device,
                         allow_uncalibrated=True, progress=progress, say=say)
    except CalibrationError as exc:
        say(f"not calibrated: {exc.message}; run 'sirad calibrate {bundle.path} DATA.csv' on a larger validation set")
    from sirad_viewer.ai.bundle import load_bundle

    return load_bundle(bundle.path)
