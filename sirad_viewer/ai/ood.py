"""Out-of-distribution score per joint: Mahalanobis distance of the grader's penultimate features.

Why features and not logits: on the real demo CT the phantom-trained network is *confidently*
wrong (P = 0.94 for one grade), so every score made from the logits alone (maximum softmax,
energy) calls it familiar. The pooled features before the last linear layer still say that the
crop looks like nothing the network was fitted on. Following Lee et al. (NeurIPS 2018) the score
is the Mahalanobis distance of those features to one Gaussian fitted on in-distribution joints
(one class-agnostic Gaussian: with about 100 validation joints, one covariance per grade would
be fitted on 20 joints in 72 dimensions). The covariance is shrunk with scikit-learn's
Ledoit-Wolf estimator because the number of joints is of the order of the feature dimension.

The threshold is the split-conformal 95% quantile (rank ceil((n+1) 0.95), :func:`conformal_threshold`)
of *cross-fitted* scores (each patient's joints scored by a Gaussian fitted without that patient,
GroupKFold), so that at least 95% of new in-distribution joints pass; an in-sample percentile would
be too low and flag far more than 5%, and even the plain cross-fitted percentile passes only about
95% - 1/n.

The statistics live in the bundle's ``metadata.json`` under ``"ood"`` and are checked when read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sirad_viewer.ai.bundle import BundleError

log = logging.getLogger(__name__)

METHOD = "mahalanobis-penultimate-ledoit-wolf"
NOT_RELIABLE = "unlike the training data \u2014 not reliable"


def forward_with_features(network, x):
    """Logits and penultimate features of a MONAI DenseNet in one forward pass.

    Parameters
    ----------
    network : monai.networks.nets.DenseNet (``features`` + ``class_layers`` ending in ``out``)
    x : tensor of shape (N, 1, D, H, W)

    Returns
    -------
    (logits of shape (N, n_classes), features of shape (N, F)) as tensors
    """
    feats = network.features(x)
    h = feats
    for name, layer in network.class_layers.named_children():
        if name == "out":
            break
        h = layer(h)
    return network.class_layers.out(h), h


@dataclass
class OODModel:
    """A Gaussian (mean, shrunk precision) over penultimate features and the pass threshold."""

    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F)
    threshold: float
    quantile: float = 0.95
    n_fit: int = 0
    fit_sites: tuple[str, ...] = ()

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (shape (N, F) or (F,))."""
        f = np.atleast_2d(np.asarray(features, float)) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", f, self.precision, f), 0.0))

    def check(self, features: np.ndarray) -> list[dict[str, Any]]:
        """``{"score", "threshold", "flagged"}`` per row."""
        return [{"score": round(float(s), 3), "threshold": round(self.threshold, 3), "flagged": bool(s > self.threshold)}
                for s in self.score(features)]

    def to_metadata(self) -> dict[str, Any]:
        return {"method": METHOD, "quantile": self.quantile, "threshold": float(self.threshold), "n_fit": int(self.n_fit),
                "fit_sites": list(self.fit_sites), "dim": int(self.mean.size),
                "mean": [float(v) for v in self.mean],
                "precision": [[float(v) for v in row] for row in self.precision]}

    @classmethod
    def from_metadata(cls, d: Any, *, path: Any = None) -> "OODModel":
        """Validated at the border: shapes, finiteness, a symmetric precision, a positive threshold."""
        if not isinstance(d, dict) or d.get("method") != METHOD:
            raise BundleError(f"metadata.json: ood.method must be {METHOD!r}, got {d.get('method') if isinstance(d, dict) else d!r}",
                              path=path)
        try:
            mean = np.asarray(d["mean"], float)
            prec = np.asarray(d["precision"], float)
            thr = float(d["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"metadata.json: ood needs numeric mean, precision and threshold ({exc})", path=path) from exc
        n = mean.size
        if mean.ndim != 1 or not 1 <= n <= 4096 or prec.shape != (n, n):
            raise BundleError(f"metadata.json: ood.mean has {n} values but ood.precision has shape {prec.shape}", path=path)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(prec)) and np.isfinite(thr) and thr > 0):
            raise BundleError("metadata.json: ood statistics hold non-finite values or a threshold <= 0", path=path)
        if not np.allclose(prec, prec.T, atol=1e-6 * max(1.0, float(np.abs(prec).max()))):
            raise BundleError("metadata.json: ood.precision is not symmetric", path=path)
        return cls(mean, prec, thr, float(d.get("quantile", 0.95)), int(d.get("n_fit", 0)),
                   tuple(str(s) for s in d.get("fit_sites", [])))


def _fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(features)
    return lw.location_, lw.precision_


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


def fit_ood(features: np.ndarray, groups: Sequence[Any], *, quantile: float = 0.95, n_splits: int = 5,
            fit_sites: Sequence[str] = ()) -> tuple[OODModel, np.ndarray]:
    """Fit the Gaussian on all ``features`` (N, F); the threshold from cross-fitted scores.

    ``groups`` (N,) names each joint's patient, so both joints of a patient fall in the same fold.
    Returns the model and the cross-fitted scores (N,).
    """
    from sklearn.model_selection import GroupKFold

    x = np.asarray(features, float)
    g = np.asarray(groups)
    if x.ndim != 2 or len(x) < 10:
        raise ValueError(f"OOD statistics need at least 10 in-distribution joints, got {len(x)}")
    k = int(min(n_splits, len(np.unique(g))))
    if k < 2:
        raise ValueError("OOD statistics need joints from at least 2 patients")
    oof = np.empty(len(x))
    for tr, te in GroupKFold(n_splits=k).split(x, groups=g):
        mu, prec = _fit_gaussian(x[tr])
        d = x[te] - mu
        oof[te] = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0.0))
    mu, prec = _fit_gaussian(x)
    prec = (prec + prec.T) / 2.0
    thr = conformal_threshold(oof, quantile)
    return OODModel(mu, prec, thr, quantile, len(x), tuple(fit_sites)), oof


def ood_from_bundle(metadata: dict[str, Any], *, path: Any = None) -> OODModel | None:
    """The bundle's OOD model, or None when it was never calibrated (``sirad calibrate``)."""
    d = metadata.get("ood")
    return None if d is None else OODModel.from_metadata(d, path=path)
