"""Joint crops, calibrated grade probabilities, the patient-level rule, and Grad-CAM in CT space.

Crops are cubes centred on each joint, sampled at the bundle's spacing and size, along one of two
frames (the bundle's ``input.frame``):

- ``joint`` (current bundles): the joint box's own axes, slice = the joint's long axis (superior),
  row = its anteroposterior axis (posterior), column = its normal pointing medially. A pelvis
  lying rotated in the scanner gives the same crop, because the box turns with it.
- ``world`` (older bundles): canonical LPS axes (slice = superior, row = posterior, column =
  patient left), whatever the pose.

The left joint's crop is mirrored so that one network reads both joints as right joints (in the
joint frame the mirror is built in: the column axis points medially on both sides, which makes
the left frame the mirror image of the right one). Everything that maps crops back to the CT
(heatmaps) inverts exactly that sampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sirad_viewer.ai import grid as G
from sirad_viewer.imaging.volume import Volume

GRADES = (0, 1, 2, 3, 4)
DEFAULT_GROUPS = [[0, 1], [2, 3], [4]]


# the refined joint frame's in-plane axis (localise.refine_joint / refine_joints)
LONG_AXES = ("outline", "curvature", "coarse", "planes")


@dataclass
class CropSpec:
    spacing_mm: np.ndarray  # (3,) along (slice, row, column)
    size: np.ndarray  # (3,) voxels
    window_hu: tuple[float, float]
    mirror_left: bool
    joint_frame: bool = False  # crops along the joint box's axes (True) or the world's (False)
    refine_frame: bool = False  # the box re-fitted to the joint space on the CT (localise.refine_joints) first
    long_axis: str = "outline"  # the refined box's in-plane axis (localise.refine_joint's long_axis)
    turns: int = 1  # test-time: logits and features averaged over this many in-plane quarter turns (1, 2 or 4)
    # HU referenced to the crop's soft tissue (see :func:`harmonise`): (window low, window high, level, largest shift)
    hu_reference: tuple[float, float, float, float] | None = None
    pre_blur_fwhm_mm: float = 0.0  # every crop blurred by this much first (a common floor of sharpness)
    # test-time: logits and features averaged over the crop as it is and moved by +-shift (mm) along, and
    # turned by +-turn (degrees) about, each of its axes (:func:`frame_jitter`); (0, 0): one crop
    jitter: tuple[float, float] = (0.0, 0.0)
    # the joint box registered rigidly to the bundle's mean joint before cropping (ai.register.Registration)
    registration: Any = None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "CropSpec":
        inp = meta["input"]
        frame = str(inp.get("frame", "world"))
        if frame not in ("world", "joint"):
            raise ValueError(f"unknown crop frame {frame!r} in the bundle metadata; expected 'world' or 'joint'")
        long_axis = str(inp.get("long_axis", "outline"))
        if long_axis not in LONG_AXES:
            raise ValueError(f"unknown long_axis {long_axis!r} in the bundle metadata; expected one of {', '.join(LONG_AXES)}")
        turns = int(inp.get("test_time_turns", 1))
        if turns not in (1, 2, 4):
            raise ValueError(f"test_time_turns {turns} in the bundle metadata; expected 1, 2 or 4")
        ref = inp.get("hu_reference")
        if ref is not None:
            try:
                ref = (float(ref["window_hu"][0]), float(ref["window_hu"][1]), float(ref["level_hu"]),
                       float(ref["max_shift_hu"]))
            except (KeyError, TypeError, IndexError, ValueError) as exc:
                raise ValueError(f"hu_reference {ref!r} in the bundle metadata: expected "
                                 "{'window_hu': [lo, hi], 'level_hu': L, 'max_shift_hu': M}") from exc
        from sirad_viewer.ai.register import Registration

        registration = Registration.from_metadata(inp.get("registration"))
        if registration is not None and frame != "joint":
            raise ValueError("registration in the bundle metadata needs input.frame 'joint'")
        return cls(np.asarray(inp["spacing_mm"], float), np.asarray(inp["size"], int),
                   (float(inp["intensity_window_hu"][0]), float(inp["intensity_window_hu"][1])), bool(inp["mirror_left"]),
                   frame == "joint", frame == "joint" and bool(inp.get("refine_frame", False)), long_axis, turns, ref,
                   float(inp.get("pre_blur_fwhm_mm", 0.0)), _jitter_of(inp.get("test_time_jitter")), registration)

    def directions(self, side: str, axes: np.ndarray | None = None) -> np.ndarray:
        """(3, 3) LPS unit vectors of the crop's array axes (rows), mirror included.

        ``axes`` : the joint box's rows (long axis, anteroposterior, lateral normal); ``None``
        gives the world frame.
        """
        mirror = self.mirror_left and side == "left"
        if axes is None:
            d = G.CANONICAL_DIRECTIONS.copy()
            if mirror:
                d[:, 0] *= -1.0  # reflect LPS x
            return d
        a = np.asarray(axes, float)
        # column points medially (as the world frame's +x does for the right joint); without the
        # mirror the left joint keeps a right-handed frame
        col = -a[2] if (side == "right" or mirror) else a[2]
        return np.stack([a[0], a[1], col])

    def points(self, center_lps: Sequence[float], side: str, *, pad: int = 0,
               axes: np.ndarray | None = None) -> np.ndarray:
        """LPS positions of the crop's voxel centres, shape (*size + 2*pad, 3)."""
        return G.box_points(center_lps, self.directions(side, axes), self.size + 2 * pad, self.spacing_mm)


def _sub_block(volume: Volume, pts: np.ndarray, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The CT block covering ``pts`` (as float32) and the index offset of its first voxel."""
    idx = volume.world_to_index(pts.reshape(-1, 3))
    shape = np.asarray(volume.shape)
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - pad, 0, shape)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + pad + 1, 0, shape)
    return volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], lo


def extract_crop(volume: Volume, center_lps: Sequence[float], side: str, spec: CropSpec, *, pad: int = 0,
                 fill_hu: float = -1024.0, axes: np.ndarray | None = None) -> np.ndarray:
    """The joint crop in HU (float32, shape ``spec.size + 2*pad``); left crops mirrored when the spec says so.

    ``axes`` : the joint box's axes (rows long, anteroposterior, lateral normal) for a crop in the
    joint's own frame; ``None`` for world axes.
    """
    from scipy import ndimage

    size = spec.size + 2 * pad
    # crop index -> LPS -> CT index is one affine map: sample it with affine_transform over the CT block
    # the crop's corners span (a box is convex), without building the (size**3, 3) point array
    step = np.asarray(spec.directions(side, axes), float).T * spec.spacing_mm[None, :]  # LPS per crop index step
    first = np.asarray(center_lps, float) - step @ ((size - 1) / 2.0)  # LPS of crop voxel (0, 0, 0)
    signs = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
    block, lo = _sub_block(volume, first + (signs * (size - 1)) @ step.T)
    if block.size == 0:
        return np.full(tuple(size), fill_hu, np.float32)
    inv = np.linalg.inv(volume.affine[:3, :3])
    m = inv @ step
    off = inv @ (first - volume.affine[:3, 3]) - lo
    return ndimage.affine_transform(block, m, offset=off, output_shape=tuple(int(n) for n in size), order=1,
                                    mode="constant", cval=fill_hu, prefilter=False, output=np.float32)


def _jitter_of(j: Any) -> tuple[float, float]:
    if j is None:
        return (0.0, 0.0)
    try:
        shift, turn = float(j["shift_mm"]), float(j["turn_deg"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"test_time_jitter {j!r} in the bundle metadata: expected {{'shift_mm': S, 'turn_deg': T}}") from exc
    if not (0.0 <= shift <= 10.0 and 0.0 <= turn <= 20.0):
        raise ValueError(f"test_time_jitter {j!r} in the bundle metadata: shift 0-10 mm and turn 0-20 degrees")
    return (shift, turn)


def frame_jitter(x: np.ndarray, spec: "CropSpec") -> np.ndarray:
    """A batch (N, 1, D, H, W) followed by the same crops moved by +-``shift`` mm along each crop axis and
    turned by +-``turn`` degrees about each (``spec.jitter``): shape (13 * N, 1, D, H, W), perturbation-major.

    Why: the joint box from a 4 mm segmentation moves by millimetres and turns by degrees when the same
    pelvis lies differently in the scanner, and a network reads a 1.5 mm crop's texture; averaging its
    answer over a small neighbourhood of frames makes the grade a smooth function of the frame, so a
    frame error of that size no longer flips it. Edges are filled with the nearest voxel (a 3 mm move
    at 1.5 mm voxels repeats two rims of a 48-voxel crop).
    """
    from scipy import ndimage

    moves = jitter_moves(spec, spec.spacing_mm)
    if len(moves) == 1:
        return x
    ctr = (np.asarray(x.shape[2:]) - 1) / 2.0
    out = [x]
    for m, d in moves[1:]:
        off = ctr + d - m @ ctr
        out.append(np.stack([ndimage.affine_transform(c[0], m, offset=off, order=1, mode="nearest", prefilter=False)
                             for c in x])[:, None].astype(np.float32))
    return np.concatenate(out)


def jitter_moves(spec: "CropSpec", spacing_mm: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The frames of :func:`frame_jitter` as (rotation (3, 3), shift in voxels (3,)) about a grid's centre,
    for a grid of ``spacing_mm`` over the crop (the crop's own, or a coarser one for maps): the
    unmoved frame first, then +-shift along each axis, then +-turn about each. One frame when the
    bundle has no test-time jitter."""
    from scipy.spatial.transform import Rotation

    shift, turn = spec.jitter
    moves = [(np.eye(3), np.zeros(3))]
    if shift <= 0 and turn <= 0:
        return moves
    for ax in range(3):
        for sign in (-1.0, 1.0):
            d = np.zeros(3)
            d[ax] = sign * shift / float(spacing_mm[ax])
            moves.append((np.eye(3), d))
    for ax in range(3):
        for sign in (-1.0, 1.0):
            rv = np.zeros(3)
            rv[ax] = np.radians(sign * turn)
            moves.append((Rotation.from_rotvec(rv).as_matrix(), np.zeros(3)))
    return moves


def quarter_turns(x: np.ndarray, turns: int) -> np.ndarray:
    """A batch (N, 1, D, H, W) repeated with ``turns`` in-plane quarter turns (about the crop's column
    axis, the joint normal): shape (turns * N, 1, D, H, W), turn-major. Exact (no interpolation)."""
    step = 4 // turns
    return np.concatenate([np.rot90(x, k * step, axes=(2, 3)) for k in range(turns)]) if turns > 1 else x


def soft_tissue_level(hu: np.ndarray, window: tuple[float, float]) -> float:
    """The most common value within ``window`` (HU): the crop's muscle, from a histogram in 5 HU bins
    smoothed over 10 HU (a median would mix fat and muscle in proportions that differ from crop to crop)."""
    from scipy import ndimage

    edges = np.arange(window[0], window[1] + 2.5, 5.0)
    h, _ = np.histogram(hu, bins=edges)
    h = ndimage.gaussian_filter1d(h.astype(float), 2.0)
    return float(edges[int(np.argmax(h))] + 2.5)


def harmonise(hu: np.ndarray, spec: "CropSpec") -> np.ndarray:
    """A crop's HU referenced to its own soft tissue when the bundle asks for it (``input.hu_reference``).

    A scanner's HU calibration can be off by tens of HU; the grader reads bone density, so a global
    offset looks like sclerosis or its absence. Shifting each crop so that its muscle peak sits at a
    fixed level cancels such an offset by construction (shifts larger than the bundle's limit are
    taken as a crop without muscle and clipped).
    """
    if spec.pre_blur_fwhm_mm > 0:  # a softer kernel or thicker slices then change the crop relatively less
        from scipy import ndimage

        hu = ndimage.gaussian_filter(np.asarray(hu, np.float32), spec.pre_blur_fwhm_mm / 2.355 / spec.spacing_mm)
    if spec.hu_reference is None:
        return hu
    lo, hi, level, most = spec.hu_reference
    shift = float(np.clip(soft_tissue_level(hu, (lo, hi)) - level, -most, most))
    return (hu - shift).astype(np.float32, copy=False)


def model_input(hu: np.ndarray, spec: "CropSpec") -> np.ndarray:
    """A crop in HU as the grading network reads it: harmonised (when the bundle says so), windowed to 0..1."""
    return normalise(harmonise(hu, spec), spec.window_hu)


def normalise(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / max(float(temperature), 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.5, 20.0)) -> float:
    """Temperature minimising the negative log-likelihood on a validation split (Guo et al. 2017).

    Bounded: a small validation split that the network separates perfectly would drive the
    temperature to zero (ever sharper, one-hot probabilities), which it cannot justify.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, float)
    labels = np.asarray(labels, int)

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))


def group_probabilities(probs: np.ndarray, groups: Sequence[Sequence[int]] = DEFAULT_GROUPS) -> np.ndarray:
    return np.array([float(sum(probs[g] for g in grp)) for grp in groups])


def patient_rule(left: int, right: int) -> bool:
    """Modified New York radiological criterion: grade >= 2 on both sides or >= 3 on one side."""
    return (left >= 2 and right >= 2) or left >= 3 or right >= 3


def patient_probability(p_left: np.ndarray, p_right: np.ndarray) -> float:
    """P(modified New York positive) with the two joints' grade distributions taken as independent."""
    return float(sum(p_left[a] * p_right[b] for a in GRADES for b in GRADES if patient_rule(a, b)))


# --- Grad-CAM ---------------------------------------------------------------------------------


def _cam_head(network):
    """The final linear layer when ``network.class_layers`` is relu -> global average pool -> flatten -> linear
    (MONAI's DenseNet and its mirror); ``None`` for any other head."""
    import torch

    if not hasattr(network, "class_layers"):
        return None
    layers = dict(network.class_layers.named_children())
    if list(layers) != ["relu", "pool", "flatten", "out"]:
        return None
    pool, out = layers["pool"], layers["out"]
    if not (isinstance(layers["relu"], torch.nn.ReLU) and isinstance(pool, torch.nn.AdaptiveAvgPool3d)
            and pool.output_size in (1, (1, 1, 1)) and isinstance(out, torch.nn.Linear)):
        return None
    return out


def class_activation_maps(network, x, targets: Sequence[int]):
    """Grad-CAM at ``class_layers.relu`` for a batch, computed from the forward pass alone.

    With global average pooling and one linear layer after the last feature map A (C, d, h, w),
    logit_t = W[t] . mean(A) + b[t], so the gradient of logit_t with respect to A is W[t] / (d h w)
    at every voxel: Grad-CAM's channel weights are W[t] / (d h w) and its map
    relu(sum_c W[t, c] A_c) / (d h w) is the class activation map (Zhou et al. 2016) computed
    without a backward pass (``tests/ai/test_cam.py`` checks it against MONAI's ``GradCAM``).
    Other heads fall back to :func:`gradcam`'s backward pass, one sample at a time.

    Parameters
    ----------
    x : tensor of shape (N, 1, D, H, W)
    targets : N class indices

    Returns
    -------
    (maps of shape (N, D, H, W) as numpy, each scaled to max 1 unless all zero; logits (N, n_classes) as numpy)
    """
    import torch

    head = _cam_head(network)
    if head is None:
        pairs = [_gradcam_backward(network, x[k:k + 1], int(t)) for k, t in enumerate(targets)]
        return np.stack([c for c, _ in pairs]), np.stack([lg for _, lg in pairs])
    with torch.no_grad():
        acts = network.class_layers.relu(network.features(x))
        logits = head(acts.mean(dim=(2, 3, 4)))
        cam = _upsampled(_cams(acts, head.weight, targets), tuple(x.shape[2:]))
    return _peak_normalised(cam), logits.float().cpu().numpy()


def _cams(acts, weight, targets: Sequence[int]):
    """relu(sum_c W[t, c] A_c) / (d h w) per sample: (N, d, h, w) tensor from maps ``acts`` (N, C, d, h, w)."""
    import torch

    w = weight[torch.as_tensor([int(t) for t in targets], device=weight.device)].to(acts.device, acts.dtype)  # (N, C)
    return torch.relu(torch.einsum("nc,ncdhw->ndhw", w, acts) / float(acts[0, 0].numel()))


def _upsampled(cam, size: tuple[int, ...]) -> np.ndarray:
    import torch

    return torch.nn.functional.interpolate(cam[:, None].float(), size=size, mode="trilinear",
                                           align_corners=False)[:, 0].cpu().numpy()


def _peak_normalised(cam: np.ndarray) -> np.ndarray:
    peak = cam.reshape(len(cam), -1).max(axis=1)
    return cam / np.where(peak > 0, peak, 1.0)[:, None, None, None]


def frame_averaged_cams(network, acts, targets: Sequence[int], spec: "CropSpec") -> np.ndarray | None:
    """Class activation maps (N, D, H, W) of the grade pass itself, for the joints' ``targets``.

    ``acts`` are the last feature maps (after ``class_layers.relu``) of the batch the grade came from:
    shape (F * N, C, d, h, w), the N crops at each of the bundle's in-plane quarter turns
    (:func:`quarter_turns`) and test-time frames (:func:`frame_jitter`), in that nesting. Each frame's
    map is moved back into the crop's own frame (the inverse of its shift or turn, then of its quarter
    turn) and the maps are averaged, as the grade averages the frames' logits: one frame's map follows
    that frame's rim, the average follows the joint. Why here and not a second pass: the forward
    pass over all frames is most of the grade stage's time, and CAM needs nothing but these maps and
    the linear head (:func:`class_activation_maps`). The moves are applied on a grid of half the crop's
    resolution (the maps come from cells of 8 crop voxels; 48 small resamplings take ~0.03 s, at full
    resolution ~0.25 s), then the average is upsampled to the crop.

    Returns ``None`` for a head other than relu -> pool -> linear (callers fall back to a backward pass).
    """
    import torch
    from scipy import ndimage

    head = _cam_head(network)
    if head is None:
        return None
    size = tuple(int(v) for v in spec.size)
    n = len(targets)
    half = tuple(max(v // 2, 1) for v in size)
    moves = jitter_moves(spec, np.asarray(spec.spacing_mm, float) * np.asarray(size) / np.asarray(half))
    turns = spec.turns
    frames = turns * len(moves)
    if acts.shape[0] != n * frames:
        raise ValueError(f"{acts.shape[0]} feature maps for {n} crops: expected {n} x {turns} quarter turns x "
                         f"{len(moves)} frames")
    with torch.no_grad():
        cam = _cams(acts, head.weight, list(targets) * frames)  # (F * N, d, h, w)
        if frames == 1:
            return _peak_normalised(_upsampled(cam, size))
        maps = _upsampled(cam, half).reshape(len(moves), turns, n, *half)
    ctr = (np.asarray(half) - 1) / 2.0
    step = 4 // turns
    acc = np.zeros((n, *half), np.float32)
    for p, (m, d) in enumerate(moves):
        for t in range(turns):
            for k in range(n):
                a = maps[p, t, k]
                if p:  # the inverse of frame_jitter's move: crop point q was read at m (q - ctr) + ctr + d
                    a = ndimage.affine_transform(a, m.T, offset=ctr - m.T @ (ctr + d), order=1, mode="nearest",
                                                 prefilter=False)
                if t:
                    a = np.rot90(a, -t * step, axes=(0, 1))
                acc[k] += a
    return _peak_normalised(_upsampled(torch.from_numpy(acc / float(frames)), size))


def gradcam(network, x, target: int):
    """Grad-CAM (Selvaraju et al.) on the last feature map of a MONAI DenseNet.

    ``x`` is a (1, 1, D, H, W) tensor; returns the (D, H, W) map (numpy, >= 0, max 1 unless all zero)
    upsampled linearly to the input size, and the logits. See :func:`class_activation_maps`.
    """
    cams, logits = class_activation_maps(network, x, [int(target)])
    return cams[0], logits[0]


def _gradcam_backward(network, x, target: int):
    """Grad-CAM with a backward pass (heads other than global average pooling + linear), at the output
    of the head's leading ReLU (``class_layers.relu``, as for the forward-only path) when it has one."""
    import torch

    with torch.enable_grad():
        xin = x.detach().requires_grad_(False)
        acts = network.features(xin)
        rest = list(network.class_layers.children())
        if rest and isinstance(rest[0], torch.nn.ReLU):
            acts, rest = rest[0](acts), rest[1:]
        acts.retain_grad()
        logits = acts
        for layer in rest:
            logits = layer(logits)
        network.zero_grad(set_to_none=True)
        logits[0, int(target)].backward()
        weights = acts.grad.mean(dim=(2, 3, 4), keepdim=True)
        cam = torch.relu((weights * acts).sum(dim=1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
    cam = cam[0, 0].detach().float().cpu().numpy()
    m = float(cam.max())
    if m > 0:
        cam /= m
    return cam, logits.detach().float().cpu().numpy()[0]


@dataclass
class Heatmap:
    """A joint's heatmap on the CT grid, stored as the block of CT voxels it covers."""

    side: str
    target_grade: int
    block: np.ndarray  # float32, values 0..1
    offset: np.ndarray  # CT index (slice, row, column) of block[0, 0, 0]
    ct_shape: tuple[int, int, int]

    def full(self) -> np.ndarray:
        out = np.zeros(self.ct_shape, np.float32)
        o = self.offset
        s = self.block.shape
        out[o[0]:o[0] + s[0], o[1]:o[1] + s[1], o[2]:o[2] + s[2]] = self.block
        return out

    def peak_index(self) -> np.ndarray:
        return np.asarray(np.unravel_index(int(np.argmax(self.block)), self.block.shape)) + self.offset


def cam_to_ct(cam: np.ndarray, volume: Volume, center_lps: Sequence[float], side: str, spec: CropSpec,
              region=None, *, target_grade: int = 0, axes: np.ndarray | None = None) -> Heatmap:
    """Map a crop-space map back onto the CT grid: undo resampling, crop and mirror exactly.

    CT index -> LPS -> offset from the crop centre -> (un-mirror) -> crop index is one affine map,
    so the map is resampled with a single ``affine_transform`` over the CT block the crop covers.
    ``region`` (an object with ``center_lps_mm``, ``axes_lps`` and ``size_mm``, e.g. a
    :class:`JointBox`) limits the map to the joint. ``axes`` is the frame the crop was taken in
    (as for :func:`extract_crop`).
    """
    from scipy import ndimage

    pts = spec.points(center_lps, side, axes=axes)
    corners = np.array([pts[i, j, k] for i in (0, -1) for j in (0, -1) for k in (0, -1)])
    _, lo = _sub_block(volume, corners, pad=1)
    idx = volume.world_to_index(corners)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 2, 0, np.asarray(volume.shape))
    if region is not None:
        # only the CT block around the region: the map is zero outside it anyway, and the block around
        # the region (a joint box, about 65x40x20 mm) is a fifth of the block around the rotated crop
        # (2.0 M -> 0.43 M voxels per joint on the 0.78 mm benchmark CT). The box is convex, so the
        # index range of its corners (one voxel of margin) holds every voxel inside it.
        h = np.asarray(region.size_mm, float) / 2.0
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
        ridx = volume.world_to_index(np.asarray(region.center_lps_mm, float) + (signs * h) @ np.asarray(region.axes_lps, float))
        lo = np.maximum(lo, np.floor(ridx.min(axis=0)).astype(int) - 1)
        hi = np.minimum(hi, np.ceil(ridx.max(axis=0)).astype(int) + 2)
    shape = tuple(int(n) for n in np.maximum(hi - lo, 0))
    a3, t = volume.affine[:3, :3], volume.affine[:3, 3]
    # crop index = diag(1/spacing) @ D @ (LPS - centre) + (size-1)/2, D orthonormal (a reflection when mirrored)
    d = np.diag(1.0 / spec.spacing_mm) @ spec.directions(side, axes)
    m = d @ a3
    off = d @ (a3 @ lo + t - np.asarray(center_lps, float)) + (spec.size - 1) / 2.0
    block = ndimage.affine_transform(cam.astype(np.float32), m, offset=off, output_shape=shape, order=1,
                                     mode="constant", cval=0.0, prefilter=False)
    if region is not None and block.size:
        b = np.asarray(region.axes_lps, float) @ a3
        b0 = np.asarray(region.axes_lps, float) @ (a3 @ lo + t - np.asarray(region.center_lps_mm, float))
        ks = [np.arange(n, dtype=float) for n in shape]
        inside = np.ones(shape, bool)
        for r in range(3):
            dist = (b[r, 0] * ks[0][:, None, None] + b[r, 1] * ks[1][None, :, None] + b[r, 2] * ks[2][None, None, :]
                    + b0[r])
            inside &= np.abs(dist) <= float(region.size_mm[r]) / 2.0
        block *= inside
    mx = float(block.max()) if block.size else 0.0
    if mx > 0:
        block /= mx
    return Heatmap(side, int(target_grade), block.astype(np.float32, copy=False), lo, volume.shape)
