"""A statistical shape model of the pelvis: PCA over the corresponded vertices of all three bones.

The sacrum and both hip bones are stacked into one vector per subject, so a mode moves the
three bones together and the joints stay congruent. Subjects are first brought into the
canonical frame (:func:`~sirad_viewer.phantom.atlas.canonical_transform`) and rigidly aligned
to their mean (Kabsch, a few Procrustes rounds), so the modes describe shape, not pose; pose is
a nuisance drawn separately.

scikit-learn's :class:`~sklearn.decomposition.PCA` does the decomposition.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sirad_viewer.phantom.atlas import BONES, AtlasData, AtlasError, Shape, acetabulum_indices, canonical_transform

#: Coefficients are drawn from N(0, 1) per mode and clipped to this many standard deviations.
MAX_SD = 2.5


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising |a @ R - b| (both centred)."""
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


@dataclass
class ShapeModel:
    """PCA shape model. ``mean`` (3V*3,), ``components`` (K, 3V*3), ``sd`` (K,)."""

    subjects: tuple[str, ...]
    n_verts: int
    mean: np.ndarray
    components: np.ndarray
    sd: np.ndarray
    faces: dict[str, np.ndarray]
    acetabulum_idx: dict[str, np.ndarray] | None = None

    def shape(self, coeffs: Sequence[float]) -> np.ndarray:
        b = np.zeros(len(self.sd))
        c = np.asarray(coeffs, float)[: len(self.sd)]
        b[: len(c)] = c
        return self.mean + (b * self.sd) @ self.components

    def sample(self, seed: int, *, max_sd: float = MAX_SD) -> tuple[Shape, np.ndarray]:
        """A new pelvis: coefficients ~ N(0, 1) clipped to ±max_sd per mode. Returns shape, coefficients."""
        rng = np.random.default_rng([seed, 0x55A])
        coeffs = np.clip(rng.standard_normal(len(self.sd)), -max_sd, max_sd)
        flat = self.shape(coeffs).reshape(3, self.n_verts, 3)
        verts = {b: flat[k] for k, b in enumerate(BONES)}
        r, o = canonical_transform(verts)
        return Shape(verts={b: (v - o) @ r for b, v in verts.items()}, faces=self.faces,
                     subject=f"ssm:{seed}", acetabulum_idx=self.acetabulum_idx), coeffs


def build_shape_model(atlas: AtlasData, subjects: Sequence[str], *, variance: float = 0.95) -> ShapeModel:
    """PCA over ``subjects`` of ``atlas`` (only these: held-out subjects must not shape the model)."""
    return _build(atlas, tuple(sorted(set(map(str, subjects)))), variance)


@functools.lru_cache(maxsize=8)
def _build(atlas: AtlasData, subjects: tuple[str, ...], variance: float) -> ShapeModel:
    from sklearn.decomposition import PCA

    if len(subjects) < 3:
        raise AtlasError(f"a shape model needs at least 3 subjects, got {len(subjects)}", path=atlas.root,
                         code="too_few_subjects")
    pts = []
    for sid in subjects:
        i = atlas.index(sid)
        verts = {b: atlas.verts[i, k] for k, b in enumerate(BONES)}
        r, o = canonical_transform(verts)
        pts.append(np.concatenate([(verts[b] - o) @ r for b in BONES]))
    x = np.asarray(pts)  # (n, 3V, 3)
    cent = x.mean(axis=1, keepdims=True)
    x = x - cent
    mean = x.mean(axis=0)
    for _ in range(3):
        x = np.stack([xi @ _kabsch(xi, mean) for xi in x])
        mean = x.mean(axis=0)
    flat = x.reshape(len(x), -1)
    pca = PCA(n_components=min(len(x) - 1, 40), svd_solver="full").fit(flat)
    k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), variance) + 1)
    k = max(1, min(k, len(pca.explained_variance_)))
    return ShapeModel(subjects=subjects, n_verts=atlas.verts.shape[2], mean=pca.mean_,
                      components=pca.components_[:k], sd=np.sqrt(pca.explained_variance_[:k]),
                      faces={b: atlas.faces[j] for j, b in enumerate(BONES)},
                      acetabulum_idx=acetabulum_indices(atlas))
