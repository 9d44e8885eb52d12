"""The grading pipeline: CT -> bones -> joints -> calibrated grades -> Grad-CAM -> patient result.

Stages (each timed, each reported to ``progress``, cancellable between them):
``segment`` (pelvic bones on a coarse canonical grid), ``localise`` (joint boxes, sacral axis),
``crop`` (joint crops at the bundle's spacing, left mirrored), ``grade`` (DenseNet, temperature
calibrated), ``gradcam`` (per joint, mapped back onto the CT grid).

Device policy: ``auto`` takes CUDA, then Apple MPS, then the CPU; ``cpu``/``cuda``/``mps`` force one.
A GPU running out of memory falls back to the CPU for that stage, with a warning in the result.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sirad_viewer.ai import grading as GR
from sirad_viewer.ai.bundle import BundleError, ModelBundle, discover_bundles
from sirad_viewer.ai.localise import JointBox, Localisation, localise
from sirad_viewer.errors import CancelledError, SiradError
from sirad_viewer.imaging.volume import Volume

log = logging.getLogger(__name__)

STAGES = ("segment", "localise", "crop", "grade", "gradcam")
DISCLAIMER = ("Research software. The demo models are trained on synthetic phantoms only, not on patients; "
              "their grades are not validated and must not be used for diagnosis.")


class DeviceError(SiradError):
    code = "device_unavailable"


def resolve_device(preference: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; a forced device that is absent is a clear error."""
    import torch

    pref = (preference or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if pref == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if has_mps else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available to this torch build "
                          f"(torch {torch.__version__}); use --device auto or cpu")
    if pref == "mps" and not has_mps:
        raise DeviceError("--device mps was asked for but Apple MPS is not available")
    if pref not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {preference!r}; use auto, cpu, cuda or mps")
    return pref


def default_models_dir() -> Path:
    env = os.environ.get("SIRAD_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def find_bundle(task: str, path: str | Path | None = None) -> ModelBundle:
    """The bundle at ``path``, or the first installed bundle for ``task`` (models/ and entry points)."""
    from sirad_viewer.ai.bundle import load_bundle

    if path is not None:
        b = load_bundle(path)
        if b.task != task:
            raise BundleError(f"is a {b.task} bundle, a {task} bundle is needed", path=b.path)
        return b
    bundles, problems = discover_bundles(default_models_dir())
    for b in bundles:
        if b.task == task:
            return b
    extra = ("; problems: " + "; ".join(problems)) if problems else ""
    raise BundleError(f"no {task} model bundle installed in {default_models_dir()} or via entry points{extra}",
                      code="not_found")


@dataclass
class JointResult:
    side: str
    box: JointBox
    probabilities: np.ndarray  # calibrated, grades 0-4
    logits: np.ndarray
    groups: list[list[int]]
    heatmap: GR.Heatmap | None = None

    @property
    def grade(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def category3_probabilities(self) -> np.ndarray:
        return GR.group_probabilities(self.probabilities, self.groups)

    @property
    def category3(self) -> int:
        return int(np.argmax(self.category3_probabilities))

    def category_label(self) -> str:
        g = self.groups[self.category3]
        return f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "center_lps_mm": [round(float(v), 2) for v in self.box.center_lps_mm],
            "grade": self.grade,
            "probabilities": [round(float(p), 4) for p in self.probabilities],
            "category3": self.category3,
            "category3_label": self.category_label(),
            "category3_probabilities": [round(float(p), 4) for p in self.category3_probabilities],
            "box": self.box.to_dict(),
            "heatmap_grade": None if self.heatmap is None else self.heatmap.target_grade,
        }


@dataclass
class GradeResult:
    model: dict[str, str]
    joints: dict[str, JointResult]
    localisation: Localisation
    timings_s: dict[str, float]
    device: str
    warnings: list[str] = field(default_factory=list)
    segmentation: Any = None
    source: str = ""

    @property
    def patient_probability(self) -> float:
        return GR.patient_probability(self.joints["left"].probabilities, self.joints["right"].probabilities)

    @property
    def patient_positive(self) -> bool:
        return GR.patient_rule(self.joints["left"].grade, self.joints["right"].grade)

    def to_dict(self, *, include_source_path: bool = False) -> dict[str, Any]:
        """JSON form; ``source`` is a non-identifying reference unless ``include_source_path``."""
        from sirad_viewer.io.deid import source_reference

        return {
            "model": dict(self.model),
            "joints": {s: j.to_dict() for s, j in self.joints.items()},
            "patient": {"as_positive": self.patient_positive, "probability": round(self.patient_probability, 4),
                        "rule": "modified New York: grade >= 2 on both sides or >= 3 on one side"},
            "sacral_axis": self.localisation.sacral_axis_dict(),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "device": self.device,
            "warnings": list(self.warnings),
            "source": source_reference(self.source, include_path=include_source_path),
            "disclaimer": DISCLAIMER,
        }


def _on_device(fn: Callable[[str], Any], device: str, stage: str, warnings: list[str]):
    """Run ``fn(device)``; a GPU out-of-memory error reruns it on the CPU, with a warning."""
    import torch

    try:
        return fn(device)
    except torch.cuda.OutOfMemoryError:
        if device == "cpu":
            raise
        torch.cuda.empty_cache()
        warnings.append(f"the GPU ran out of memory during '{stage}'; that stage ran on the CPU instead")
        return fn("cpu")
    except RuntimeError as exc:
        if device != "cpu" and "out of memory" in str(exc).lower():
            warnings.append(f"the GPU ran out of memory during '{stage}'; that stage ran on the CPU instead")
            return fn("cpu")
        raise


class Grader:
    """Holds the loaded networks so that several CTs can be graded without reloading."""

    def __init__(self, bundle: ModelBundle | None = None, segmenter: ModelBundle | None = None, *,
                 device: str = "auto") -> None:
        self.bundle = bundle or find_bundle("grading")
        self.segmenter = segmenter
        self.segmenter_note = ""
        if self.segmenter is None:
            try:
                self.segmenter = find_bundle("segmentation")
            except BundleError as exc:
                self.segmenter_note = (f"no segmentation model ({exc.message}); the classical segmentation was used, "
                                       "which is slower and less accurate")
        self.device = resolve_device(device)
        self.spec = GR.CropSpec.from_metadata(self.bundle.metadata)
        self.groups = self.bundle.metadata.get("groups") or GR.DEFAULT_GROUPS
        self.temperature = float(self.bundle.metadata.get("calibration", {}).get("temperature", 1.0))
        self._nets: dict[tuple[str, str], Any] = {}

    def network(self, which: str, device: str):
        import torch

        key = (which, device)
        if key not in self._nets:
            b = self.bundle if which == "grading" else self.segmenter
            with torch.inference_mode(False):  # parameters must stay usable by autograd (Grad-CAM)
                self._nets[key] = b.build_network().to(device)
        return self._nets[key]

    def segment(self, volume: Volume, warnings: list[str]):
        from sirad_viewer.ai.segnet import segment_learned

        if self.segmenter is None:
            from sirad_viewer.ai.segmentation import segment_pelvis

            warnings.append(self.segmenter_note)
            return segment_pelvis(volume)

        return _on_device(lambda d: segment_learned(volume, self.segmenter, device=d,
                                                    network=self.network("segmentation", d)),
                          self.device, "segment", warnings)

    def crops(self, volume: Volume, loc: Localisation, *, pad: int = 0) -> dict[str, np.ndarray]:
        return {s: GR.extract_crop(volume, loc.joints[s].center_lps_mm, s, self.spec, pad=pad,
                                   axes=self._crop_axes(loc.joints[s])) for s in ("left", "right")}

    def _crop_axes(self, box: JointBox) -> np.ndarray | None:
        """The joint's own frame when the bundle was trained on joint-frame crops, else world axes."""
        return box.axes_lps if self.spec.joint_frame else None

    def logits(self, crops: Sequence[np.ndarray], warnings: list[str]) -> np.ndarray:
        import torch

        x = np.stack([GR.normalise(c, self.spec.window_hu) for c in crops])[:, None]

        def run(d: str) -> np.ndarray:
            net = self.network("grading", d)
            with torch.inference_mode():
                return net(torch.from_numpy(x).to(d)).float().cpu().numpy()

        return _on_device(run, self.device, "grade", warnings)

    def __call__(self, volume: Volume, *, heatmaps: bool = True, heatmap_grades: dict[str, int] | None = None,
                 progress: Callable[[str, float], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> GradeResult:
        """Grade both joints of ``volume``.

        Parameters
        ----------
        heatmaps : compute Grad-CAM per joint (for the predicted grade unless ``heatmap_grades`` names one)
        progress : called with (stage, fraction done) before each stage and at the end
        cancel : polled between stages; returning True raises :class:`CancelledError`
        """
        import torch

        timings: dict[str, float] = {}
        warnings: list[str] = [w.message if hasattr(w, "message") else str(w) for w in getattr(volume, "warnings", [])]
        prog = progress or (lambda s, f: None)
        stages = [s for s in STAGES if heatmaps or s != "gradcam"]

        def stage(name: str):
            if cancel is not None and cancel():
                raise CancelledError(f"grading cancelled before '{name}'")
            prog(name, stages.index(name) / len(stages))
            return time.perf_counter()

        if (("grading", self.device) not in self._nets
                or (self.segmenter is not None and ("segmentation", self.device) not in self._nets)):
            t = time.perf_counter()  # first use: import MONAI and build the networks (not a stage of the CT)
            self.network("grading", self.device)
            if self.segmenter is not None:
                self.network("segmentation", self.device)
            timings["load_models"] = time.perf_counter() - t

        t = stage("segment")
        seg = self.segment(volume, warnings)
        timings["segment"] = time.perf_counter() - t

        t = stage("localise")
        loc = localise(seg.coarse_labels, seg.affine)
        if loc.sacrum_limit is not None and hasattr(seg, "limit_sacrum"):
            seg.limit_sacrum(*loc.sacrum_limit)  # lumbar bone the segmenter took for sacrum
        warnings += loc.warnings
        timings["localise"] = time.perf_counter() - t

        t = stage("crop")
        crops = self.crops(volume, loc)
        timings["crop"] = time.perf_counter() - t

        t = stage("grade")
        logits = self.logits([crops["left"], crops["right"]], warnings)
        joints = {}
        for k, side in enumerate(("left", "right")):
            joints[side] = JointResult(side, loc.joints[side], GR.softmax(logits[k], self.temperature), logits[k],
                                       [list(g) for g in self.groups])
        timings["grade"] = time.perf_counter() - t

        if heatmaps:
            t = stage("gradcam")
            for side, jr in joints.items():
                target = (heatmap_grades or {}).get(side, jr.grade)
                x = torch.from_numpy(GR.normalise(crops[side], self.spec.window_hu))[None, None]

                def run(d: str, x=x, target=target):
                    return GR.gradcam(self.network("grading", d), x.to(d), target)

                cam, _ = _on_device(run, self.device, "gradcam", warnings)
                jr.heatmap = GR.cam_to_ct(cam, volume, jr.box.center_lps_mm, side, self.spec, jr.box,
                                          target_grade=target, axes=self._crop_axes(jr.box))
            timings["gradcam"] = time.perf_counter() - t
        prog("done", 1.0)
        timings["total"] = float(sum(timings.values()))
        model = {"name": self.bundle.name, "version": self.bundle.version,
                 "segmentation": (f"{self.segmenter.name} {self.segmenter.version}" if self.segmenter
                                  else "classical (no segmentation bundle)")}
        src = volume.sources[0] if getattr(volume, "sources", None) else ""
        return GradeResult(model, joints, loc, timings, self.device, warnings, seg, src)


def write_heatmaps(result: GradeResult, volume: Volume, out_dir: str | Path) -> list[Path]:
    """One NIfTI per joint on the CT grid (float32, 0..1): ``heatmap_left.nii.gz``, ``heatmap_right.nii.gz``."""
    from sirad_viewer.io.export import write_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for side, jr in result.joints.items():
        if jr.heatmap is None:
            continue
        p = out / f"heatmap_{side}.nii.gz"
        write_nifti(volume.with_array(jr.heatmap.full()), p)
        paths.append(p)
    return paths
