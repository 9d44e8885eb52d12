"""Rigid registration of a prior CT of the same patient onto the current one (SimpleITK).

The pelvis is rigid enough between two CTs of one patient for a 6-parameter (Euler) transform;
SimpleITK's registration framework does the optimisation (Mattes mutual information on the
bone-windowed images, multi-resolution, regular-step gradient descent), so none of it is
written here. The result maps an LPS point of the current CT to the same anatomy in the prior,
which is what linked scrolling needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sirad_viewer.errors import CancelledError
from sirad_viewer.imaging.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigidTransform:
    """``prior = rotation @ current + translation`` (LPS mm)."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    metric: float = float("nan")

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 3) LPS points of the current CT into the prior."""
        return np.asarray(points, float) @ self.rotation.T + self.translation

    def inverse(self) -> "RigidTransform":
        r = self.rotation.T
        return RigidTransform(r, -r @ self.translation, self.metric)

    @property
    def angle_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip((np.trace(self.rotation) - 1) / 2, -1.0, 1.0))))


def _to_sitk(volume: Volume):
    import SimpleITK as sitk

    arr = np.clip(volume.array.astype(np.float32), -200.0, 1500.0)  # bone matters; air and fat do not
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in volume.spacing[::-1]])
    img.SetOrigin([float(o) for o in volume.origin])
    img.SetDirection([float(v) for v in volume.direction[::-1].T.reshape(-1)])
    return img


def register_rigid(current: Volume, prior: Volume, *, progress: Callable[[float, str], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> RigidTransform:
    """The rigid transform taking LPS points of ``current`` to the same anatomy in ``prior``.

    Both volumes are stored with LPS affines (:class:`Volume`); SimpleITK's physical space is
    LPS too, so its transform is used as is.
    """
    import SimpleITK as sitk

    fixed, moving = _to_sitk(current), _to_sitk(prior)
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=7)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=150,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)

    def step() -> None:
        if cancel and cancel():
            raise CancelledError()
        if progress:
            progress(min(0.99, reg.GetOptimizerIteration() / 450.0), "registering the prior")

    reg.AddCommand(sitk.sitkIterationEvent, step)
    out = reg.Execute(fixed, moving)
    tx = sitk.CompositeTransform(out).GetBackTransform() if isinstance(out, sitk.CompositeTransform) else out
    # SimpleITK transforms map fixed (current) physical points to moving (prior) points
    pts = np.array([[0.0, 0, 0], [100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]])
    mapped = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    t = mapped[0]
    rot = ((mapped[1:] - t) / 100.0).T
    u, _, vt = np.linalg.svd(rot)  # re-orthonormalise against rounding
    rot = u @ vt
    if progress:
        progress(1.0, "prior registered")
    return RigidTransform(rot, t, float(reg.GetMetricValue()))
