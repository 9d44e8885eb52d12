"""Second segmentation stage: a small UNet at 2 mm inside a box around the sacrum and both sacroiliac joints.

Why: the first stage reads the whole body on a 4 mm grid, and a 4 mm grid caps the Dice of a thin
bone like the sacrum (perfect 4 mm probabilities give only 0.93-0.96 on the CT grid). The second
stage reads, in a box around the first stage's sacrum (plus margins that take in both sacroiliac
joints and the medial ilia), the CT at 2 mm together with the first stage's class probabilities
(trilinear), and predicts the five classes again. Outside the box the 4 mm result stays.

It only changes the label map on the CT grid (``CoarseSegmentation.labels``, computed lazily for
the overlay, exports and Dice): the joint boxes are found from the 4 mm labels, so the grading path and
its timing do not change.

The weights are a second safetensors file in the segmentation bundle (``metadata["refine"]``);
inference builds the plain-torch UNet mirror (:mod:`sirad_viewer.ai.nets`), so no MONAI import.
Training: :func:`train_refiner` (``sirad train-segmenter-refine``).
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer.ai import grid as G
from sirad_viewer.imaging.volume import Volume, resample_to

log = logging.getLogger(__name__)

SACRUM, LEFT_ILIUM, RIGHT_ILIUM, OTHER_BONE = 1, 2, 3, 4
N_CLASSES = 5
MULTIPLE = 8
SPACING_MM = 2.0
#: box margins around the first stage's sacrum, (z, y, x) in mm: the joints sit at the sacrum's lateral
#: edges, the posterior iliac spines behind it
MARGIN_MM = (16.0, 16.0, 24.0)
WINDOW_HU = (-200.0, 1600.0)
REFINE_FILE = "refine.safetensors"

_NETS: dict[tuple[str, str], Any] = {}


def refine_box(coarse_labels: np.ndarray, affine: np.ndarray, *, margin_mm=MARGIN_MM,
               spacing_mm: float = SPACING_MM) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """(affine, shape) of the 2 mm canonical box around the sacrum of a canonical 4 mm label map; None without sacrum.

    The sacrum is its largest connected piece (a speck elsewhere would stretch the box).
    """
    from scipy import ndimage

    comp, n = ndimage.label(coarse_labels == SACRUM, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    idx = np.argwhere(comp == 1 + int(np.argmax(np.bincount(comp.ravel())[1:])))
    if len(idx) < 8:
        return None
    sp = np.asarray(G.geo.affine_spacing(affine), float)  # (x, y, z) spacing of the canonical grid
    lo_w = G.geo.index_to_world(affine, idx.min(axis=0)[None].astype(float))[0] - sp / 2
    hi_w = G.geo.index_to_world(affine, idx.max(axis=0)[None].astype(float))[0] + sp / 2
    m = np.asarray(margin_mm, float)[::-1]  # (x, y, z)
    lo_w, hi_w = lo_w - m, hi_w + m
    shape = np.ceil((hi_w - lo_w)[::-1] / spacing_mm).astype(int)  # (z, y, x)
    shape = ((shape + MULTIPLE - 1) // MULTIPLE) * MULTIPLE
    centre = (lo_w + hi_w) / 2
    origin = centre - (shape[::-1] - 1) / 2.0 * spacing_mm
    return G.grid_affine(origin, spacing_mm), tuple(int(n) for n in shape)


def upsample(prob: np.ndarray, affine: np.ndarray, fine_affine: np.ndarray, fine_shape) -> np.ndarray:
    """Class probabilities of a canonical grid, trilinear on another canonical grid (same axes)."""
    from scipy import ndimage

    m = np.linalg.inv(affine) @ fine_affine  # fine index -> coarse index (diagonal for canonical grids)
    out = np.empty((prob.shape[0],) + tuple(fine_shape), np.float32)
    for c in range(prob.shape[0]):
        out[c] = ndimage.affine_transform(prob[c], m[:3, :3], offset=m[:3, 3], output_shape=tuple(fine_shape),
                                          order=1, mode="nearest", prefilter=False)
    return out


def fine_ct(volume: Volume, fine_affine: np.ndarray, fine_shape) -> np.ndarray:
    """The CT (HU) on the 2 mm box grid, anti-aliased as the first stage's grid is."""
    src = G._block_mean(volume, SPACING_MM)
    return resample_to(src, fine_affine, tuple(fine_shape), order=1, fill_hu=-1024.0, out_dtype=np.float32).array


def network_input(hu: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """(5, ...) float32: the normalised CT and the first stage's four bone probabilities."""
    lo, hi = WINDOW_HU
    x = ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    return np.concatenate([x[None], prob[1:].astype(np.float32)], axis=0)


def architecture(config: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}
    cfg.update(config or {})
    return cfg


def build(cfg: dict[str, Any], *, backend: str = "mirror"):
    cfg = dict(cfg)
    cfg["channels"], cfg["strides"] = tuple(cfg["channels"]), tuple(cfg["strides"])
    if backend == "mirror":
        from sirad_viewer.ai.nets import UNet

        return UNet(5, N_CLASSES, **cfg)
    from monai.networks.nets import UNet as MUNet

    return MUNet(spatial_dims=3, in_channels=5, out_channels=N_CLASSES, **cfg)


def load_refiner(bundle) -> Any | None:
    """The second-stage network of a segmentation bundle (plain torch, cached), or None when it has none."""
    spec = bundle.metadata.get("refine")
    if not isinstance(spec, dict):
        return None
    from sirad_viewer.ai.bundle import BundleError, sha256_of, weights_file

    path = weights_file(Path(bundle.path), spec.get("file"))
    key = (str(path), str(spec.get("sha256")))
    if key not in _NETS:
        from safetensors.torch import load_file

        if not path.is_file():
            raise BundleError(f"second-stage weights {path.name} are missing", path=path)
        if spec.get("sha256") != sha256_of(path):
            raise BundleError(f"second-stage weights {path.name} do not match the sha256 in metadata.json", path=path)
        net = build(architecture(spec.get("config")))
        net.load_state_dict(load_file(str(path)), strict=True)
        net.eval()
        _NETS[key] = net
    return _NETS[key]


def refine_probabilities(volume: Volume, prob: np.ndarray, affine: np.ndarray, net,
                         device: str = "cpu") -> tuple[np.ndarray, np.ndarray] | None:
    """(fine probabilities (5, ...), fine affine) inside the box, or None when the first stage found no sacrum."""
    import torch

    box = refine_box(np.argmax(prob, axis=0), affine)
    if box is None:
        return None
    fa, shape = box
    x = network_input(fine_ct(volume, fa, shape), upsample(prob, affine, fa, shape))
    with torch.inference_mode():
        p = torch.softmax(net.to(device)(torch.from_numpy(x)[None].to(device)), dim=1)[0].float().cpu().numpy()
    return p, fa


# --- training -------------------------------------------------------------------------------------------


def _labels_fine(lab: Volume, fa: np.ndarray, shape) -> np.ndarray:
    """Majority label of each 2 mm voxel (block mean of the one-hot, as the first stage's training)."""
    arr = np.asarray(lab.array)
    oh = [resample_to(G._block_mean(lab.with_array((arr == c).astype(np.float32)), SPACING_MM), fa, tuple(shape),
                      order=1, fill_hu=float(c == 0), out_dtype=np.float32).array for c in range(N_CLASSES)]
    return np.argmax(np.stack(oh), axis=0).astype(np.uint8)


def prepare_case(image: Path, labels: Path, bundle, net, *, extra_mm: float = 8.0) -> dict[str, np.ndarray] | None:
    """First-stage probabilities, CT and labels on a 2 mm box (``extra_mm`` wider than at inference, for jitter)."""
    from sirad_viewer.ai.segnet import segment_learned
    from sirad_viewer.io import open_volume

    vol = open_volume(image)
    seg = segment_learned(vol, bundle, network=net, refine=False)
    box = refine_box(seg.coarse_labels, seg.affine, margin_mm=tuple(m + extra_mm for m in MARGIN_MM))
    if box is None:
        return None
    fa, shape = box
    prob = upsample(seg.probabilities, seg.affine, fa, shape)
    return {"hu": fine_ct(vol, fa, shape).astype(np.float16), "prob": (prob[1:] * 255).round().astype(np.uint8),
            "lab": _labels_fine(open_volume(labels), fa, shape)}


def _augment(hu, prob, lab, rng, size):
    """A random crop of ``size`` (jittered box), intensity changes, mirror, perturbed first-stage probabilities."""
    from scipy import ndimage

    sl = []
    for n, s in zip(lab.shape, size):
        s = min(n, s)
        a = int(rng.integers(0, n - s + 1))
        sl.append(slice(a, a + s))
    sl = tuple(sl)
    hu, prob, lab = hu[sl].astype(np.float32), prob[(slice(None),) + sl].astype(np.float32) / 255.0, lab[sl].copy()
    bone = lab > 0
    marrow = bone & (hu < 700)
    hu[marrow] += rng.uniform(-170, 60)
    hu = hu * rng.uniform(0.9, 1.1) + rng.uniform(-30, 30)
    hu += rng.normal(0, rng.uniform(0, 25), hu.shape).astype(np.float32)
    # the first stage is surer on its training cases than on new ones: soften, blur and shift its probabilities
    if rng.random() < 0.5:
        prob = ndimage.gaussian_filter(prob, (0, *(rng.uniform(0.3, 1.5),) * 3))
    if rng.random() < 0.4:
        sh = tuple(int(v) for v in rng.integers(-1, 2, 3))
        prob = np.roll(prob, sh, axis=(1, 2, 3))
    t = rng.uniform(0.6, 1.0)  # a lower confidence: p ** t, renormalised with the background
    bg = np.clip(1.0 - prob.sum(axis=0, keepdims=True), 1e-4, 1)
    pw = np.concatenate([bg, np.clip(prob, 1e-4, 1)]) ** t
    prob = (pw / pw.sum(axis=0, keepdims=True))[1:]
    if rng.random() < 0.5:  # the patient's left becomes the right
        hu, prob, lab = hu[:, :, ::-1], prob[:, :, :, ::-1][[0, 2, 1, 3]], lab[:, :, ::-1].copy()
        l2, l3 = lab == LEFT_ILIUM, lab == RIGHT_ILIUM
        lab[l2], lab[l3] = RIGHT_ILIUM, LEFT_ILIUM
    lo, hi = WINDOW_HU
    x = np.concatenate([((np.clip(hu, lo, hi) - lo) / (hi - lo))[None], prob]).astype(np.float32)
    return np.ascontiguousarray(x), np.ascontiguousarray(lab.astype(np.int64))


def train_refiner(data_csv, bundle_dir: str | Path, *, steps: int = 1000, lr: float = 3e-3, seed: int = 0,
                  crop: tuple[int, int, int] = (48, 48, 48), batch: int = 2, config: dict[str, Any] | None = None,
                  cache: str | Path | None = None, checkpoint_every: int = 200, init: str | Path | None = None,
                  progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Train the second stage on the ``train`` rows of ``data_csv`` (one or several) and add it to the bundle.

    The first stage (the bundle's UNet) gives the probabilities the second stage reads. Writes
    ``refine.safetensors`` into ``bundle_dir`` (also every ``checkpoint_every`` steps, so a long run
    can be stopped) and records it in ``metadata.json`` with its training data and time. ``init``: start
    from these second-stage weights (a safetensors file of the same configuration).
    """
    import json

    import torch
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file

    from sirad_viewer.ai.bundle import load_bundle, sha256_of
    from sirad_viewer.ai.segnet import optimiser_step

    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    csvs = [Path(p) for p in (data_csv if isinstance(data_csv, (list, tuple)) else [data_csv])]
    rows = []
    for c in csvs:
        with open(c, newline="") as fh:
            rows += [dict(r, _base=str(c.parent)) for r in csv.DictReader(fh)
                     if r.get("split", "train") == "train" and r.get("labels")]
    if not rows:
        raise ValueError(f"{', '.join(map(str, csvs))}: no train rows with a 'labels' column")
    t0 = time.time()
    net1 = bundle.build_network()
    cases = []
    cache_dir = Path(cache) if cache else None
    for i, r in enumerate(rows):
        f = cache_dir / f"case{i:04d}.npz" if cache_dir else None
        if f is not None and f.is_file():
            z = np.load(f)
            cases.append({k: z[k] for k in z.files})
            continue
        c = prepare_case(Path(r["_base"]) / r["image"], Path(r["_base"]) / r["labels"], bundle, net1)
        if c is None:
            log.warning("%s: the first stage finds no sacrum; left out", r["image"])
            continue
        cases.append(c)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, **c)
        log.info("prepared %d/%d %s", i + 1, len(rows), tuple(c["lab"].shape))
    t_prep = time.time() - t0
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = architecture(config)
    net = build(cfg, backend="monai")
    if init is not None:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(init)), strict=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    weights = bundle_dir / REFINE_FILE

    def save(step: int) -> None:
        net.eval()
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(weights))
        net.train()
        meta_path = bundle_dir / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["refine"] = {
            "file": REFINE_FILE, "sha256": sha256_of(weights), "format": "safetensors", "config": cfg,
            "spacing_mm": SPACING_MM, "margin_mm": list(MARGIN_MM), "intensity_window_hu": list(WINDOW_HU),
            "inputs": "CT (window) + the first stage's 4 bone probabilities, trilinear on the 2 mm box",
            "training_data": {"csv": ", ".join(str(c) for c in csvs), "cases": len(cases), "steps": step,
                              "steps_planned": steps, "crop": list(crop), "batch": batch, "lr": lr,
                              "first_stage": f"{bundle.name} {bundle.version}",
                              "initialised_from": str(init) if init is not None else None,
                              "seconds_prepare": round(t_prep, 1), "seconds": round(time.time() - t0, 1)},
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    net.train()
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            c = cases[int(rng.integers(len(cases)))]
            x, y = _augment(c["hu"], c["prob"], c["lab"], rng, crop)
            xs.append(x)
            ys.append(y)
        shp = np.min([y.shape for y in ys], axis=0)  # a small box can be below the crop size
        x = torch.from_numpy(np.stack([a[:, :shp[0], :shp[1], :shp[2]] for a in xs]))
        y = torch.from_numpy(np.stack([b[:shp[0], :shp[1], :shp[2]] for b in ys]))[:, None]
        loss = optimiser_step(net, loss_fn, opt, sched, x, y)
        if progress:
            progress(step + 1, steps, loss)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save(step + 1)
    return {"cases": len(cases), "steps": steps, "seconds": round(time.time() - t0, 1), "seconds_prepare": round(t_prep, 1)}
