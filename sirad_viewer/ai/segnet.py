"""Learned pelvic-bone segmentation: a MONAI UNet on a coarse canonical grid, refined on the CT grid.

The network reads the whole body on a world-aligned grid of the bundle's spacing (4 mm for the
demo bundle) and predicts background, sacrum, left ilium, right ilium and other bone. Because the
grid is world-aligned, "left" is the patient's left however the CT is stored.

On the CT grid the class probabilities are interpolated linearly and then refined by the CT's own
intensities, which place the bone surface far more precisely than a 4 mm grid: a voxel dense
enough to be bone takes the most probable bone class, a voxel too faint to be bone is background
unless the network is sure it lies inside a bone (marrow of osteoporotic bone is faint), and fat
or fluid (below 0 HU: the sacral canal, the foramina) is never bone.

Training: :func:`train_segmenter` on any ``DATA.csv`` whose ``labels`` column points to label
maps (phantoms write them; a site can add its own).
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer.ai import grid as G
from sirad_viewer.ai.bundle import SEGMENTATION_CLASSES, ModelBundle, save_bundle
from sirad_viewer.imaging.volume import Volume, resample_to

log = logging.getLogger(__name__)

SACRUM, LEFT_ILIUM, RIGHT_ILIUM, OTHER_BONE = 1, 2, 3, 4
MULTIPLE = 8  # the UNet halves the grid three times


@dataclass
class CoarseSegmentation:
    """Class probabilities on a canonical grid, with lazy refinement onto the CT grid."""

    probabilities: np.ndarray  # (5, S, R, C) float32
    affine: np.ndarray  # canonical grid index -> LPS
    volume: Volume  # the CT
    method: str = "unet"
    notes: list[str] = field(default_factory=list)
    bone_hu: float = 140.0
    dense_p0_max: float = 0.9  # a dense voxel is bone unless the network is this sure of background
    faint_p0_min: float = 0.2  # a faint voxel is background unless the network is this sure it is bone
    # never bone: fat and fluid (the sacral canal and foramina, which a 4 mm grid fills in). Chosen with
    # bone_hu and the two p0 limits on validation-subject phantoms: sacrum Dice 0.869 -> 0.883, hips +0.01
    soft_hu: float = 0.0
    # second stage (:mod:`sirad_viewer.ai.segrefine`): the 2 mm network around the sacrum and both joints,
    # run lazily with the CT-grid labels (the joint boxes read the 4 mm labels only)
    refiner: Any = None
    device: str = "cpu"
    fine: tuple[np.ndarray, np.ndarray] | None = None  # (probabilities (5, ...), affine) inside the box
    sacrum_plane: tuple[np.ndarray, np.ndarray] | None = None
    _labels: np.ndarray | None = None

    @property
    def coarse_labels(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=0).astype(np.uint8)

    @property
    def labels(self) -> np.ndarray:
        """Label map on the CT grid (computed on first use, slab by slab)."""
        if self._labels is None:
            self._labels = self._refine()
        return self._labels

    def _refine(self) -> np.ndarray:
        from scipy import ndimage

        vol = self.volume
        out = np.zeros(vol.shape, np.uint8)
        if self.refiner is not None:
            from sirad_viewer.ai.segrefine import refine_probabilities

            self.fine = refine_probabilities(vol, self.probabilities, self.affine, self.refiner, self.device)
            if self.fine is not None and self.sacrum_plane is not None:  # lumbar bone stays other bone
                fp, fa = self.fine
                pts = G.geo.index_to_world(fa, np.argwhere(np.ones(fp.shape[1:], bool)).astype(float))
                above = ((pts - self.sacrum_plane[0]) @ self.sacrum_plane[1] > 0).reshape(fp.shape[1:])
                fp[OTHER_BONE][above] += fp[SACRUM][above]
                fp[SACRUM][above] = 0.0
        fg = self.probabilities[0] < 0.95
        if not fg.any():
            return out
        # CT index box covering the (dilated) foreground of the coarse grid
        fg = ndimage.binary_dilation(fg, iterations=1)
        spans = [np.nonzero(fg.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
        corners = np.array([[spans[0][i], spans[1][j], spans[2][k]] for i in (0, -1) for j in (0, -1) for k in (0, -1)],
                           float)
        ct_idx = vol.world_to_index(G.geo.index_to_world(self.affine, corners))
        lo = np.clip(np.floor(ct_idx.min(axis=0)).astype(int), 0, np.asarray(vol.shape) - 1)
        hi = np.clip(np.ceil(ct_idx.max(axis=0)).astype(int) + 1, 1, np.asarray(vol.shape))
        to_grid = np.linalg.inv(self.affine) @ vol.affine  # CT index -> coarse index
        if self.fine is not None:
            to_fine = np.linalg.inv(self.fine[1]) @ vol.affine  # CT index -> 2 mm box index
            fine_hi = np.asarray(self.fine[0].shape[1:], float) - 1
        jj, ii = np.meshgrid(np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
        for k in range(lo[0], hi[0]):
            pts = np.stack([np.full(jj.size, k), jj.ravel(), ii.ravel()], axis=0).astype(float)
            g = to_grid[:3, :3] @ pts + to_grid[:3, 3:4]
            p = np.stack([ndimage.map_coordinates(self.probabilities[c], g, order=1, mode="nearest", prefilter=False)
                          for c in range(self.probabilities.shape[0])])
            if self.fine is not None:  # inside the box the second stage's probabilities replace the first's
                f = to_fine[:3, :3] @ pts + to_fine[:3, 3:4]
                inside = ((f >= 0) & (f <= fine_hi[:, None])).all(axis=0)
                if inside.any():
                    fi = f[:, inside]
                    p[:, inside] = np.stack([ndimage.map_coordinates(self.fine[0][c], fi, order=1, mode="nearest",
                                                                     prefilter=False) for c in range(p.shape[0])])
            hu = vol.array[k, lo[1]:hi[1], lo[2]:hi[2]].ravel()
            lab = np.argmax(p, axis=0)
            bone_cls = 1 + np.argmax(p[1:], axis=0)
            dense = hu > self.bone_hu
            # dense and plausibly bone -> the likeliest bone; faint -> background unless surely inside bone
            lab = np.where(dense & (p[0] < self.dense_p0_max), bone_cls, lab)
            lab = np.where(~dense & (p[0] > self.faint_p0_min), 0, lab)
            lab = np.where(hu < self.soft_hu, 0, lab)
            out[k, lo[1]:hi[1], lo[2]:hi[2]] = lab.reshape(jj.shape)
        return out

    def mask(self, label: int) -> np.ndarray:
        return self.labels == label

    def limit_sacrum(self, point_lps: np.ndarray, normal: np.ndarray) -> int:
        """Tidy the bones with what the localisation found; returns the number of coarse voxels changed.

        Sacrum beyond the plane (``point_lps``, ``normal`` pointing superior) is lumbar spine, and
        pieces of sacrum or ilium apart from that bone's main body (a lumbar arch, a speck) are
        not that bone: both become other bone. Done in the probabilities, so that the label map,
        the overlay and everything after agree.
        """
        from scipy import ndimage

        self.sacrum_plane = (np.asarray(point_lps, float), np.asarray(normal, float))
        prob = self.probabilities
        lab = np.argmax(prob, axis=0)
        pts = G.geo.index_to_world(self.affine, np.argwhere(np.ones(lab.shape, bool)).astype(float))
        above = ((pts - np.asarray(point_lps, float)) @ np.asarray(normal, float) > 0).reshape(lab.shape)
        move = above & (lab == SACRUM)
        for k in (SACRUM, LEFT_ILIUM, RIGHT_ILIUM):
            m = (lab == k) & ~move
            comp, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
            if n > 1:
                sizes = np.bincount(comp.ravel())[1:]
                move |= m & (comp != 1 + int(np.argmax(sizes)))
        for k in (SACRUM, LEFT_ILIUM, RIGHT_ILIUM):
            sel = move & (lab == k) if k != SACRUM else (move & (lab == k)) | above
            prob[OTHER_BONE][sel] += prob[k][sel]
            prob[k][sel] = 0.0
        self._labels = None
        return int(move.sum())


def preprocess(volume: Volume, meta: dict[str, Any]) -> Volume:
    """The whole body on the bundle's canonical grid (HU, float32)."""
    sp = float(meta["input"]["spacing_mm"][0])
    return G.canonical_grid(volume, sp, multiple=MULTIPLE)


def normalise(hu: np.ndarray, window: list[float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def segment_learned(volume: Volume, bundle: ModelBundle, *, device: str = "cpu", network=None,
                    refine: bool = True) -> CoarseSegmentation:
    """Run the segmentation bundle on ``volume``; returns probabilities on the canonical grid.

    A bundle with a second stage (``metadata["refine"]``) gets it attached, run when the CT-grid labels are
    first read (``refine=False``: the first stage alone).
    """
    import torch

    meta = bundle.metadata
    grid = preprocess(volume, meta)
    net = network if network is not None else bundle.build_network().to(device)
    x = torch.from_numpy(normalise(grid.array, meta["input"]["intensity_window_hu"]))[None, None].to(device)
    with torch.inference_mode():
        prob = torch.softmax(net(x), dim=1)[0].float().cpu().numpy()
    refiner = None
    if refine:
        from sirad_viewer.ai.segrefine import load_refiner

        refiner = load_refiner(bundle)
    return CoarseSegmentation(probabilities=prob, affine=grid.affine, volume=volume, method=f"unet:{bundle.name}",
                              refiner=refiner, device=device)


# --- training -------------------------------------------------------------------------------


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def load_training_pair(image: Path, labels: Path, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """CT and label map on the canonical grid used for training (labels by nearest neighbour)."""
    from sirad_viewer.io import open_volume

    vol = open_volume(image)
    lab = open_volume(labels)
    grid = G.canonical_grid(vol, spacing_mm, multiple=MULTIPLE)
    # a label is taken where most of a coarse voxel's fine voxels agree: majority of the one-hot means
    lab_arr = np.asarray(lab.array)
    onehot = []
    for c in range(len(SEGMENTATION_CLASSES)):
        m = lab.with_array((lab_arr == c).astype(np.float32))
        onehot.append(resample_to(G._block_mean(m, spacing_mm), grid.affine, grid.shape, order=1, fill_hu=float(c == 0),
                                  out_dtype=np.float32).array)
    return grid.array.astype(np.float32), np.argmax(np.stack(onehot), axis=0).astype(np.int64)


def _turned(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, max_deg: float, shift_vox: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """The CT and its labels turned together about the grid's centre by up to ``max_deg`` about each axis.

    Why: the phantoms' own poses stop at +-15 degrees and the network saw each pelvis only as it lay,
    so the same pelvis turned in the scanner got a different label map (the hip bones' voxel count
    changed by up to 30 %, the joint boxes moved up to 25 mm and turned up to 37 degrees on held-out
    phantoms turned by 15 degrees, ``tools/rotation_check.py``). The grid is isotropic and on the
    canonical axes, so a turn of the index grid is a turn in the patient. Labels by nearest
    neighbour; what comes in from outside is air.
    """
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    r = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()
    c = (np.asarray(img.shape) - 1) / 2.0
    off = c - r @ c
    if shift_vox > 0:  # and moved by a fraction of a voxel: where the 4 mm grid falls on the patient
        off = off + rng.uniform(-shift_vox, shift_vox, 3)
    img = ndimage.affine_transform(img, r, offset=off, order=1, mode="constant", cval=-1024.0, prefilter=False,
                                   output=np.float32)
    lab = ndimage.affine_transform(lab, r, offset=off, order=0, mode="constant", cval=0, prefilter=False)
    return img, lab


def _augment(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, rotate_deg: float = 0.0,
             shift_vox: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    if shift_vox > 0:  # every sample resampled (moved by up to shift_vox voxels; turned too, 70 % of them)
        img, lab = _turned(img, lab, rng, rotate_deg if rng.random() < 0.7 else 0.0, shift_vox)
    elif rotate_deg > 0 and rng.random() < 0.7:  # (drawn only when asked: older trainings stay reproducible)
        img, lab = _turned(img, lab, rng, rotate_deg)
    img = img.copy()
    bone = lab > 0
    # fainter or denser marrow (scanners, dose, osteoporosis), then global gain/offset and noise
    marrow = bone & (img < 700)
    img[marrow] += rng.uniform(-170, 60)
    img = img * rng.uniform(0.9, 1.1) + rng.uniform(-30, 30)
    img += rng.normal(0, rng.uniform(0, 25), img.shape).astype(np.float32)
    if rng.random() < 0.5:  # mirror image: the patient's left becomes the right
        img, lab = img[:, :, ::-1], lab[:, :, ::-1].copy()
        l2, l3 = lab == LEFT_ILIUM, lab == RIGHT_ILIUM
        lab[l2], lab[l3] = RIGHT_ILIUM, LEFT_ILIUM
    if rng.random() < 0.5:  # shorter craniocaudal coverage
        n = img.shape[0]
        keep = int(rng.uniform(0.6, 1.0) * n) // MULTIPLE * MULTIPLE
        if keep >= 3 * MULTIPLE:
            s = int(rng.integers(0, n - keep + 1))
            img, lab = img[s:s + keep], lab[s:s + keep]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def optimiser_step(net, loss_fn, opt, sched, x, y) -> float:
    """One training step (loss, backward, optimiser and schedule); returns the loss (both segmenter stages)."""
    loss = loss_fn(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def train_segmenter(data_csv: str | Path | list[str | Path], out_dir: str | Path, *, spacing_mm: float = 4.0, steps: int = 800,
                    channels: tuple[int, ...] = (8, 16, 32, 64), num_res_units: int = 2, lr: float = 3e-3,
                    seed: int = 0, name: str = "pelvis-unet-demo", version: str = "0.1.0",
                    init: ModelBundle | None = None, average_init: float | None = None, rotate_deg: float = 0.0,
                    shift_vox: float = 0.0,
                    progress: Callable[[int, int, float], None] | None = None) -> ModelBundle:
    """Train the segmentation UNet on the ``train`` rows of ``data_csv`` (one CSV or several; needs a ``labels`` column).

    With ``init`` the training continues from that bundle's weights; with ``average_init`` = w the
    saved weights are then ``(1 - w) * init + w * trained`` (a fine-tuned net averaged with its
    start keeps more of the start's behaviour; 0.3.0 of the demo bundle used w = 0.5).
    ``rotate_deg``: 70 % of the samples are turned by up to this many degrees about each axis (:func:`_turned`).
    ``shift_vox``: every sample is also moved by up to this fraction of a voxel along each axis (where a
    resampled CT's 4 mm grid falls on the patient moves by that much).
    """
    import torch
    from monai.losses import DiceCELoss

    from sirad_viewer.ai.bundle import build_network

    csvs = [Path(p) for p in (data_csv if isinstance(data_csv, (list, tuple)) else [data_csv])]
    rows = [dict(r, _base=str(c.parent)) for c in csvs for r in _read_rows(c)
            if r.get("split", "train") == "train" and r.get("labels")]
    if not rows:
        raise ValueError(f"{', '.join(map(str, csvs))}: no train rows with a 'labels' column")
    data_csv = csvs[0]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    window = [-200.0, 1600.0]
    pairs = [load_training_pair(Path(r["_base"]) / r["image"], Path(r["_base"]) / r["labels"], spacing_mm) for r in rows]
    arch = {"type": "unet", "config": {"channels": list(channels), "strides": [2] * (len(channels) - 1),
                                       "num_res_units": num_res_units}}
    if init is not None:  # continue from a bundle's weights (same architecture)
        arch = dict(init.metadata["architecture"])
        net = init.build_network()
    else:
        net = build_network(arch, n_classes=len(SEGMENTATION_CLASSES))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    t0 = time.time()
    for step in range(steps):
        img, lab = _augment(*pairs[int(rng.integers(len(pairs)))], rng, rotate_deg, shift_vox)
        x = torch.from_numpy(normalise(img, window))[None, None]
        y = torch.from_numpy(lab)[None, None]
        loss = optimiser_step(net, loss_fn, opt, sched, x, y)
        if progress:
            progress(step + 1, steps, loss)
    meta = {
        "name": name, "version": version, "task": "segmentation", "architecture": arch,
        "input": {"spacing_mm": [spacing_mm] * 3, "size": [0, 0, 0], "intensity_window_hu": window,
                  "mirror_left": False, "grid": "whole body, canonical LPS axes, padded to a multiple of 8"},
        "classes": list(SEGMENTATION_CLASSES), "groups": [],
        "training_data": {"csv": ", ".join(c.name for c in csvs), "cases": len(rows), "steps": steps,
                          "initialised_from": f"{init.name} {init.version}" if init is not None else None,
                          **({"rotation_augmentation_deg": float(rotate_deg)} if rotate_deg > 0 else {}),
                          **({"shift_augmentation_voxels": float(shift_vox)} if shift_vox > 0 else {}),
                          "seconds": round(time.time() - t0, 1)},
        "metrics": {},
        "intended_use": "Locating the pelvic bones and sacroiliac joints for the SIRAD grading model. Research only.",
        "disclaimer": "Trained on synthetic phantoms only; not validated on patients; not for clinical use.",
    }
    refine = init.metadata.get("refine") if init is not None else None
    if isinstance(refine, dict):  # a continued first stage keeps its start's 2 mm second stage (own weights)
        from sirad_viewer.ai.segrefine import REFINE_FILE

        src = Path(init.path) / str(refine.get("file", REFINE_FILE))
        if src.is_file():
            import shutil

            Path(out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, Path(out_dir) / REFINE_FILE)
            meta["refine"] = dict(refine, file=REFINE_FILE,
                                  carried_from=f"{init.name} {init.version} (trained on that bundle's first stage)")
    if init is not None and average_init is not None:
        start = init.build_network().state_dict()
        w = float(average_init)
        net.load_state_dict({k: (1 - w) * start[k] + w * v if v.is_floating_point() else v
                             for k, v in net.state_dict().items()})
        meta["training_data"]["weight_average"] = f"(1 - {w}) x {init.name} {init.version} + {w} x trained"
    net.eval()
    return save_bundle(net, meta, out_dir)


def evaluate_segmenter(data_csv: str | Path, bundle: ModelBundle, *, splits: tuple[str, ...] = ("test",),
                       limit: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Dice per bone on the CT grid (refined labels, as the viewer shows them) for rows with a label map.

    Subjects (the ``subject`` column) seen in the ``train`` or ``val`` rows are reported apart from
    those never trained on (``held-out``). Returns per case and per group (mean, min) Dice.
    """
    from sirad_viewer.io import open_volume

    data_csv = Path(data_csv)
    rows = _read_rows(data_csv)
    seen = {r.get("subject", "") for r in rows if r.get("split", "train") in ("train", "val")} - {""}
    chosen = []
    for sp in splits:  # ``limit`` cases from each split
        part = [r for r in rows if r.get("split", "train") == sp and r.get("labels")]
        chosen += part[:limit] if limit else part
    net = bundle.build_network().to(device)
    cases = []
    for r in chosen:
        vol = open_volume(data_csv.parent / r["image"])
        truth = np.asarray(open_volume(data_csv.parent / r["labels"]).array)
        seg = segment_learned(vol, bundle, device=device, network=net)
        lab = seg.labels
        d = {}
        for k, name in ((SACRUM, "sacrum"), (LEFT_ILIUM, "left_hip"), (RIGHT_ILIUM, "right_hip"),
                        (OTHER_BONE, "other_bone")):
            a, b = lab == k, truth == k
            s = int(a.sum() + b.sum())
            d[name] = float(2 * (a & b).sum() / s) if s else 1.0
        s = r.get("subject", "")
        cases.append({"image": r["image"], "subject": s, "group": "seen" if s in seen else "held-out", "dice": d})
    groups: dict[str, Any] = {}
    for g in ("held-out", "seen"):
        cs = [c for c in cases if c["group"] == g]
        if cs:
            groups[g] = {"cases": len(cs), **{k: {"mean": round(float(np.mean([c["dice"][k] for c in cs])), 4),
                                                   "min": round(float(np.min([c["dice"][k] for c in cs])), 4)}
                                               for k in cs[0]["dice"]}}
    return {"segmenter": f"{bundle.name} {bundle.version}", "data": str(data_csv), "splits": list(splits),
            "groups": groups, "cases": cases}
