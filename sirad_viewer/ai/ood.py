"""Out-of-distribution score per joint: two Mahalanobis distances, each normalised, the larger one counts.

A joint is scored twice, and each score asks a different question:

* ``crop_texture`` -- *does the CT itself look like the training profile?* 15 statistics of the HU
  crop that the grader sees (:func:`crop_texture`, clipped to the grader's intensity window),
  independent of the grader's weights: at 1.5, 3 and 6 mm (block means of 1, 2 and 4 voxels) the
  mean absolute neighbour difference, the mean absolute second difference, and the share of
  neighbour steps above 30, 100 and 300 HU. Why these: the phantoms are piecewise-constant tissues
  with sharp cortex plus scanner noise, so their steps are either noise (falling fast with block
  size) or sharp edges; real tissue varies continuously at every scale (many moderate steps at
  3-6 mm, few steep ones). Differences only: a constant HU offset changes none of them. Measured
  on the 0.2.0 bundle (102 validation joints, cross-fitted threshold 1.81): the real demo CT scores
  4.2 / 4.4, its copy with added noise and a +40 HU offset 4.2 / 4.4, a 10/8-degree re-posed copy
  6.3 / 6.3; 1 of the 60 held-out-subject joints is flagged (and 8 of the 242 training-subject
  joints). HU levels (fat, muscle, cortex medians) were tried and left out: a +40 HU offset moves
  them by less than the phantoms' own spread. The statistics cost 5-13 ms per case (two 48^3
  crops; idle to busy 2-core machine).
* ``penultimate`` -- *does the grader recognise the joint?* The pooled features before the last
  linear layer (Lee et al., NeurIPS 2018). On the real CT the phantom-trained network is
  confidently wrong (P = 0.94 for one grade), so every score made from the logits alone (maximum
  softmax, energy) calls it familiar; the features still say it is unusual, but only just (the
  real CT 1.79 / 1.81, the noisy copy 1.49 / 1.52 against the same threshold). Pooled features
  after the earlier dense blocks and the transition (Lee et al.'s multi-layer variant) were
  measured too and separated the noisy copy no better (at most 1.12 times their own threshold),
  so they are not used. This view stays because it depends on what the grader learnt: anatomy or
  lesions the texture does not see.

Each score is the Mahalanobis distance to one Gaussian fitted on in-distribution validation joints
(one class-agnostic Gaussian: with about 100 joints, one covariance per grade would be fitted on 20
joints). Features are standardised before scikit-learn's Ledoit-Wolf shrinkage (shrinking towards
a scaled identity is meaningless across features whose scales differ by 1000x) and the scale is
folded back into the stored precision. Each distance is divided by the median of its own
cross-fitted validation distances, and the joint's score is the larger of the two ratios: a joint
is flagged when *either* view finds it unusual, with no out-of-distribution data needed to weigh
them (Lee et al.'s logistic combination needs such data; a sum lets a familiar view hide an unusual
one: on the real CT the sum separated less, 1.8-2.7 times its threshold against 2.2-3.3 for the
maximum).

The threshold is the split-conformal 95% quantile (rank ceil((n+1) 0.95), :func:`conformal_threshold`)
of *cross-fitted* combined scores (each patient's joints scored by Gaussians fitted without that
patient, GroupKFold), so that at least 95% of new in-distribution joints pass; an in-sample
percentile would be too low and flag far more than 5%, and even the plain cross-fitted percentile
passes only about 95% - 1/n. Everything is fitted by ``sirad calibrate`` from the bundle as it is:
nothing is tuned per bundle.

The statistics live in the bundle's ``metadata.json`` under ``"ood"`` and are checked when read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from sirad_viewer.ai.bundle import BundleError

log = logging.getLogger(__name__)

METHOD = "max-normalised-mahalanobis"
#: the 0.2.x single-score method (penultimate features only); still read, scored as one component
LEGACY_METHOD = "mahalanobis-penultimate-ledoit-wolf"
NOT_RELIABLE = "unlike the training data \u2014 not reliable"

#: block sizes (voxels of the crop grid) and HU steps of :func:`crop_texture`
TEXTURE_SCALES = (1, 2, 4)
TEXTURE_STEPS_HU = (30.0, 100.0, 300.0)
#: changes whenever :func:`crop_texture` computes something else (cached statistics are then recomputed)
TEXTURE_VERSION = "2-window-clipped"
TEXTURE_NAMES = tuple(n for s in TEXTURE_SCALES for n in
                      [f"log_mean_abs_step_x{s}", f"log_mean_abs_curvature_x{s}"]
                      + [f"share_steps_over_{int(t)}hu_x{s}" for t in TEXTURE_STEPS_HU])
COMPONENT_INPUTS = {"crop_texture": "texture statistics of the HU crop (ood.crop_texture), independent of the weights",
                    "penultimate": "pooled features before the grading network's last linear layer"}


def forward_with_features(network, x, *, maps: bool = False):
    """Logits and penultimate features of a MONAI DenseNet in one forward pass.

    Parameters
    ----------
    network : monai.networks.nets.DenseNet (``features`` + ``class_layers`` ending in ``out``)
    x : tensor of shape (N, 1, D, H, W)

    Returns
    -------
    (logits of shape (N, n_classes), features of shape (N, F)) as tensors; with ``maps`` also the last
    feature maps after ``class_layers.relu`` (N, C, d, h, w), from which class activation maps follow
    (:func:`sirad_viewer.ai.grading.frame_averaged_cams`)
    """
    feats = network.features(x)
    h, acts = feats, None
    for name, layer in network.class_layers.named_children():
        if name == "out":
            break
        h = layer(h)
        if name == "relu":
            acts = h
    return (network.class_layers.out(h), h, acts) if maps else (network.class_layers.out(h), h)


def crop_texture(crops: np.ndarray, window_hu: Sequence[float]) -> np.ndarray:
    """Texture statistics of grading crops in HU, independent of any network.

    Parameters
    ----------
    crops : ndarray of shape (N, S, R, C) or (S, R, C), HU
    window_hu : (low, high), the grader's intensity window (``input.intensity_window_hu``): HU are
        clipped to it first, so the statistics describe what the grader sees. Why: metal (hip
        prostheses, screws: part of the training profile) reaches several thousand HU; unclipped,
        its streaks made the phantoms with screws the texture view's outliers (14 of 242
        training-subject joints flagged by the texture view alone, 5 when clipped; the real CT
        scores the same either way).

    Returns
    -------
    ndarray of shape (N, 15), columns :data:`TEXTURE_NAMES`: per block size (1, 2, 4 voxels) the
    log of the mean absolute neighbour difference, the log of the mean absolute second difference,
    and the share of neighbour differences above 30, 100 and 300 HU (all three axes pooled).
    Written with numpy rather than a texture library (scikit-image's GLCM works on 2D integer
    images and costs ~10x more): these few sums over array differences are the whole computation.
    """
    lo, hi = (float(v) for v in window_hu)
    if not lo < hi:
        raise ValueError(f"crop_texture needs a window (low, high) with low < high, got {window_hu}")
    c = np.clip(np.asarray(crops, np.float32), lo, hi)
    if c.ndim == 3:
        c = c[None]
    if c.ndim != 4 or min(c.shape[1:]) < 2 * max(TEXTURE_SCALES):
        raise ValueError(f"crop_texture needs crops of shape (N, S, R, C) of at least {2 * max(TEXTURE_SCALES)} voxels "
                         f"per axis, got {c.shape}")
    n = c.shape[0]
    k = 2 + len(TEXTURE_STEPS_HU)
    out = np.empty((n, len(TEXTURE_SCALES) * k))
    for i, s in enumerate(TEXTURE_SCALES):
        m = (np.array(c.shape[1:]) // s) * s
        p = c if s == 1 else c[:, :m[0], :m[1], :m[2]].reshape(n, m[0] // s, s, m[1] // s, s, m[2] // s, s).mean((2, 4, 6))
        step = np.zeros(n)
        curv = np.zeros(n)
        over = np.zeros((n, len(TEXTURE_STEPS_HU)))
        n_step = n_curv = 0
        for axis in (1, 2, 3):
            d = np.diff(p, axis=axis)
            d2 = np.abs(np.diff(d, axis=axis)).reshape(n, -1)
            d = np.abs(d, out=d).reshape(n, -1)
            step += d.sum(1, dtype=np.float64)
            curv += d2.sum(1, dtype=np.float64)
            n_step += d.shape[1]
            n_curv += d2.shape[1]
            for j, t in enumerate(TEXTURE_STEPS_HU):
                over[:, j] += np.count_nonzero(d > t, axis=1)
        out[:, i * k] = np.log1p(step / n_step)
        out[:, i * k + 1] = np.log1p(curv / n_curv)
        out[:, i * k + 2:(i + 1) * k] = over / n_step
    return out


@dataclass
class Gaussian:
    """One component: a Gaussian (mean, shrunk precision) over one kind of input and its normaliser."""

    name: str
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F)
    norm: float = 1.0  # median cross-fitted distance of the validation joints
    window_hu: tuple[float, float] | None = None  # crop_texture only: the window its statistics were computed in

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``x`` (shape (N, F) or (F,))."""
        f = np.atleast_2d(np.asarray(x, float)) - self.mean
        if f.shape[1] != self.mean.size:
            raise ValueError(f"OOD component {self.name!r} expects {self.mean.size} values per joint, got {f.shape[1]}")
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", f, self.precision, f), 0.0))

    def to_metadata(self) -> dict[str, Any]:
        d = {"name": self.name, "inputs": COMPONENT_INPUTS.get(self.name, self.name), "dim": int(self.mean.size),
             "norm": float(self.norm), "mean": [float(v) for v in self.mean],
             "precision": [[float(v) for v in row] for row in self.precision]}
        if self.name == "crop_texture":
            d["features"] = list(TEXTURE_NAMES)
            d["version"] = TEXTURE_VERSION
            d["window_hu"] = None if self.window_hu is None else [float(v) for v in self.window_hu]
        return d

    @classmethod
    def from_metadata(cls, d: Any, *, path: Any = None) -> "Gaussian":
        if not isinstance(d, dict) or d.get("name") not in COMPONENT_INPUTS:
            raise BundleError(f"metadata.json: each ood component needs a name in {sorted(COMPONENT_INPUTS)}, got "
                              f"{d.get('name') if isinstance(d, dict) else d!r}", path=path)
        name = d["name"]
        if name == "crop_texture" and (list(d.get("features", [])) != list(TEXTURE_NAMES)
                                       or d.get("version") != TEXTURE_VERSION):
            raise BundleError("metadata.json: ood component 'crop_texture' was fitted on other texture statistics than "
                              "this version computes; run 'sirad calibrate' again", path=path)
        try:
            mean = np.asarray(d["mean"], float)
            prec = np.asarray(d["precision"], float)
            norm = float(d.get("norm", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"metadata.json: ood component {name!r} needs numeric mean and precision ({exc})",
                              path=path) from exc
        n = mean.size
        if mean.ndim != 1 or not 1 <= n <= 4096 or prec.shape != (n, n):
            raise BundleError(f"metadata.json: ood.mean of {name!r} has {n} values but its precision has shape "
                              f"{prec.shape}", path=path)
        if name == "crop_texture" and n != len(TEXTURE_NAMES):
            raise BundleError(f"metadata.json: ood component 'crop_texture' has {n} values, expected "
                              f"{len(TEXTURE_NAMES)}", path=path)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(prec)) and np.isfinite(norm) and norm > 0):
            raise BundleError(f"metadata.json: ood component {name!r} holds non-finite values or a norm <= 0", path=path)
        if not np.allclose(prec, prec.T, atol=1e-6 * max(1.0, float(np.abs(prec).max()))):
            raise BundleError(f"metadata.json: ood.precision of {name!r} is not symmetric", path=path)
        window = None
        if name == "crop_texture":
            try:
                window = tuple(float(v) for v in d["window_hu"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BundleError("metadata.json: ood component 'crop_texture' needs window_hu [low, high]",
                                  path=path) from exc
            if len(window) != 2 or not np.all(np.isfinite(window)) or not window[0] < window[1]:
                raise BundleError(f"metadata.json: ood component 'crop_texture' has window_hu {list(window)}; "
                                  "expected [low, high] with low < high", path=path)
        return cls(name, mean, prec, norm, window)


@dataclass
class OODModel:
    """Gaussians over the joint's inputs; score = max over components of distance / norm."""

    components: tuple[Gaussian, ...]
    threshold: float
    quantile: float = 0.95
    n_fit: int = 0
    fit_sites: tuple[str, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input names :meth:`score` needs (``"penultimate"``, ``"crop_texture"``)."""
        return tuple(g.name for g in self.components)

    def _inputs(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> Mapping[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            missing = [n for n in self.inputs if n not in inputs]
            if missing:
                raise ValueError(f"the OOD score needs {missing} as well")
            return inputs
        if len(self.components) != 1:
            raise ValueError(f"the OOD score needs a mapping with {list(self.inputs)}, got one array")
        return {self.components[0].name: inputs}

    def component_scores(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Each component's normalised distance, shape (N,) per name."""
        x = self._inputs(inputs)
        return {g.name: g.distance(x[g.name]) / g.norm for g in self.components}

    def score(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """The combined score (N,): the largest normalised distance. One array for a one-component model."""
        return np.max(np.stack(list(self.component_scores(inputs).values())), axis=0)

    def check(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[dict[str, Any]]:
        """``{"score", "threshold", "flagged"}`` per joint."""
        return [{"score": round(float(s), 3), "threshold": round(self.threshold, 3), "flagged": bool(s > self.threshold)}
                for s in self.score(inputs)]

    def to_metadata(self) -> dict[str, Any]:
        return {"method": METHOD, "quantile": self.quantile, "threshold": float(self.threshold), "n_fit": int(self.n_fit),
                "fit_sites": list(self.fit_sites), "components": [g.to_metadata() for g in self.components]}

    @classmethod
    def from_metadata(cls, d: Any, *, path: Any = None) -> "OODModel":
        """Validated at the border: method, shapes, finiteness, symmetric precisions, a positive threshold."""
        method = d.get("method") if isinstance(d, dict) else d
        if method not in (METHOD, LEGACY_METHOD):
            raise BundleError(f"metadata.json: ood.method must be {METHOD!r}, got {method!r}", path=path)
        try:
            thr = float(d["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"metadata.json: ood needs a numeric threshold ({exc})", path=path) from exc
        if not np.isfinite(thr) or thr <= 0:
            raise BundleError(f"metadata.json: ood.threshold must be finite and > 0 (non-finite or <= 0: {thr})", path=path)
        if method == LEGACY_METHOD:
            comps = [Gaussian.from_metadata({"name": "penultimate", "mean": d.get("mean"), "precision": d.get("precision")},
                                            path=path)]
        else:
            raw = d.get("components")
            if not isinstance(raw, list) or not 1 <= len(raw) <= len(COMPONENT_INPUTS):
                raise BundleError("metadata.json: ood.components must list 1 or 2 components", path=path)
            comps = [Gaussian.from_metadata(c, path=path) for c in raw]
            if len({g.name for g in comps}) != len(comps):
                raise BundleError("metadata.json: ood.components names a component twice", path=path)
        return cls(tuple(comps), thr, float(d.get("quantile", 0.95)), int(d.get("n_fit", 0)),
                   tuple(str(s) for s in d.get("fit_sites", [])))


def _fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf precision of standardised ``x`` (N, F), scaled back to ``x``'s units."""
    from sklearn.covariance import LedoitWolf

    mu = x.mean(0)
    # a feature constant on the fitting joints would get an unbounded weight: floor its scale
    sd = np.maximum(x.std(0), 1e-6 * np.maximum(1.0, np.abs(mu)))
    lw = LedoitWolf().fit((x - mu) / sd)
    prec = lw.precision_ / np.outer(sd, sd)
    return mu + sd * lw.location_, (prec + prec.T) / 2.0


def conformal_threshold(scores: np.ndarray, quantile: float = 0.95) -> float:
    """The split-conformal threshold: the ceil((n+1) q)-th smallest of ``n`` held-out scores.

    A new joint exchangeable with the ``n`` scored ones then passes with probability at least
    ``q`` (Vovk et al.; Angelopoulos & Bates 2021), where the plain empirical ``q``-quantile
    passes only about ``q - 1/n`` of them (the 0.2.0 bundle: 95th percentile of 118 scores, 6.7%
    of held-out joints flagged). With too few scores for that rank the largest one is used.
    """
    s = np.sort(np.asarray(scores, float))
    n = len(s)
    if n == 0:
        raise ValueError("a conformal threshold needs at least one score")
    k = int(np.ceil((n + 1) * float(quantile)))
    return float(s[min(k, n) - 1])


def fit_ood(features: np.ndarray | Mapping[str, np.ndarray], groups: Sequence[Any], *, quantile: float = 0.95,
            n_splits: int = 5, fit_sites: Sequence[str] = (),
            texture_window_hu: Sequence[float] | None = None) -> tuple[OODModel, np.ndarray]:
    """Fit one Gaussian per input on all joints; normalisers and threshold from cross-fitted scores.

    ``features``: one array (N, F) (a one-component model named ``"penultimate"``) or a mapping
    ``{"penultimate": (N, F), "crop_texture": (N, 15)}``; ``texture_window_hu`` is the window
    ``crop_texture`` was computed in (needed with it). ``groups`` (N,) names each joint's
    patient, so both joints of a patient fall in the same fold. Returns the model and the
    cross-fitted combined scores (N,).
    """
    from sklearn.model_selection import GroupKFold

    named = dict(features) if isinstance(features, Mapping) else {"penultimate": features}
    xs = {k: np.asarray(v, float) for k, v in named.items()}
    g = np.asarray(groups)
    n = len(g)
    for k, x in xs.items():
        if k not in COMPONENT_INPUTS:
            raise ValueError(f"unknown OOD input {k!r}; known: {sorted(COMPONENT_INPUTS)}")
        if x.ndim != 2 or len(x) != n:
            raise ValueError(f"OOD input {k!r} must have shape (N, F) with N = {n} joints, got {x.shape}")
    if n < 10:
        raise ValueError(f"OOD statistics need at least 10 in-distribution joints, got {n}")
    if "crop_texture" in xs and texture_window_hu is None:
        raise ValueError("fitting crop_texture needs the window it was computed in (texture_window_hu)")
    n_folds = int(min(n_splits, len(np.unique(g))))
    if n_folds < 2:
        raise ValueError("OOD statistics need joints from at least 2 patients")
    folds = list(GroupKFold(n_splits=n_folds).split(np.zeros((n, 1)), groups=g))
    comps, oofs = [], []
    for k, x in xs.items():
        oof = np.empty(n)
        for tr, te in folds:
            mu, prec = _fit_gaussian(x[tr])
            d = x[te] - mu
            oof[te] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0.0))
        norm = float(np.median(oof))
        mu, prec = _fit_gaussian(x)
        window = tuple(float(v) for v in texture_window_hu) if k == "crop_texture" else None  # type: ignore[union-attr]
        comps.append(Gaussian(k, mu, prec, norm if norm > 0 else 1.0, window))
        oofs.append(oof / comps[-1].norm)
    combined = np.max(np.stack(oofs), axis=0)
    thr = conformal_threshold(combined, quantile)
    return OODModel(tuple(comps), thr, quantile, n, tuple(fit_sites)), combined


def ood_from_bundle(metadata: dict[str, Any], *, path: Any = None) -> OODModel | None:
    """The bundle's OOD model, or None when it was never calibrated (``sirad calibrate``)."""
    d = metadata.get("ood")
    if d is None:
        return None
    model = OODModel.from_metadata(d, path=path)
    window = (metadata.get("input") or {}).get("intensity_window_hu")
    for g in model.components:
        if g.window_hu is not None and window is not None and not np.allclose(g.window_hu, np.asarray(window, float)):
            raise BundleError(f"metadata.json: the OOD texture statistics were computed in the window {list(g.window_hu)} "
                              f"HU but the grader's input window is {list(window)}; run 'sirad calibrate' again",
                              path=path)
    return model
