"""TotalSegmentator as an optional bone segmenter in place of the demo UNet.

TotalSegmentator (Wasserthal et al., Radiology: AI 2023, https://github.com/wasserth/TotalSegmentator,
Apache-2.0) segments 117 structures in CT, among them ``sacrum``, ``hip_left``, ``hip_right``, every
vertebra and both femora. When the user has installed the ``TotalSegmentator`` package *and* its
weights, ``sirad grade --segmenter totalsegmentator`` (and the viewer's segmenter setting) run it,
map its labels onto our classes (:data:`CLASS_RULES`) and hand the label map to the same
localisation, grading, out-of-distribution and not-a-pelvis checks as the UNet's.

This program never downloads anything. Before TotalSegmentator is called, :func:`check_installed`
verifies that the package is importable, that the weight folders its own downloader would fetch
are already present (TotalSegmentator downloads missing weights silently), and that its anonymous
usage statistics are switched off (it otherwise posts a record to its server after every run).
During the call its two download functions are replaced by ones that raise
:class:`TotalSegmentatorError`, so even a weight folder this module does not know of cannot be
fetched behind the user's back.

Facts taken from TotalSegmentator's source (github.com/wasserth/TotalSegmentator, v2):
``totalsegmentator/map_to_binary.py`` ``class_map["total"]`` at commit 0275d30 (class ids,
:data:`TOTAL_V2_BONES`); ``totalsegmentator/libs.py`` ``download_pretrained_weights`` (folder per
dataset id) and ``totalsegmentator/bin/totalseg_download_weights.py`` (``total`` = datasets 291-295
and 298, ``total_fast`` = 297 and 298), both at 0275d30; ``totalsegmentator/config.py``
``get_totalseg_dir``/``get_weights_dir`` and ``send_usage_stats`` at 066e681 (where weights live,
the telemetry switch); ``totalsegmentator/python_api.py`` at 00064a1: ``totalsegmentator(input,
output=None, ml, task, fast, roi_subset, device, quiet)`` takes a ``Nifti1Image`` and returns the
multilabel ``Nifti1Image`` on the input grid when ``ml=True``; ``roi_subset`` first runs the 6 mm
model 298 to crop; it calls ``download_pretrained_weights`` for every dataset it uses.
``resources/improvements_in_v3.md``: v3 renamed id 26 ``vertebrae_L6`` and made ``sacrum`` the
whole sacrum, hence the mapping by name.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from sirad_viewer.ai.segmentation import LEFT_ILIUM, OTHER_BONE, RIGHT_ILIUM, SACRUM, Segmentation
from sirad_viewer.errors import SiradError
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import Volume, resample_to

log = logging.getLogger(__name__)

#: The bone classes of TotalSegmentator v2 task "total" with their label ids, from
#: wasserth/TotalSegmentator totalsegmentator/map_to_binary.py, class_map["total"] (v2, commit
#: 0275d30). Every id of that map not listed here is soft tissue (organs, vessels, muscles,
#: costal cartilage) and becomes background. Used when the installed package's own map is not
#: at hand (a label file read without the package); otherwise the package's map is used by name.
TOTAL_V2_BONES: dict[int, str] = {
    25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3",
    30: "vertebrae_L2", 31: "vertebrae_L1",
    **{32 + k: f"vertebrae_T{12 - k}" for k in range(12)},  # 32 T12 ... 43 T1
    **{44 + k: f"vertebrae_C{7 - k}" for k in range(7)},  # 44 C7 ... 50 C1
    69: "humerus_left", 70: "humerus_right", 71: "scapula_left", 72: "scapula_right",
    73: "clavicula_left", 74: "clavicula_right", 75: "femur_left", 76: "femur_right",
    77: "hip_left", 78: "hip_right", 91: "skull",
    **{92 + k: f"rib_left_{k + 1}" for k in range(12)},  # 92 ... 103
    **{104 + k: f"rib_right_{k + 1}" for k in range(12)},  # 104 ... 115
    116: "sternum",
}
#: Highest id of class_map["total"] in v2 (117 costal_cartilages); a larger id is not its output.
TOTAL_V2_MAX_ID = 117

#: TotalSegmentator class name -> our class. ``hip_left``/``hip_right`` are the whole hip bones
#: (os coxae), as our ilium classes are; left and right are the patient's. ``vertebrae_S1`` is
#: part of the sacrum in v2 (v3 renamed id 26 ``vertebrae_L6`` and put all of S1 into ``sacrum``).
EXACT_RULES: dict[str, int] = {"sacrum": SACRUM, "vertebrae_S1": SACRUM, "hip_left": LEFT_ILIUM,
                               "hip_right": RIGHT_ILIUM, "skull": OTHER_BONE, "sternum": OTHER_BONE}
OTHER_BONE_PREFIXES = ("vertebrae_", "femur_", "rib_", "humerus_", "scapula_", "clavicula_")

#: What the grading needs (the sacrum, both hip bones) plus the neighbouring bone the
#: localisation uses to tell lumbar spine and femora from sacrum and ilium.
ROI_SUBSET = ("sacrum", "vertebrae_S1", "hip_left", "hip_right", "vertebrae_L5", "vertebrae_L4",
              "femur_left", "femur_right")

#: Weight folders under TotalSegmentator's weights directory, per dataset id (libs.py, v2).
WEIGHT_FOLDERS: dict[int, str] = {
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}
#: Datasets each model needs, as TotalSegmentator's own downloader groups them.
MODELS = {"fast": ("total_fast", (297, 298)), "full": ("total", (291, 292, 293, 294, 295, 298))}

NAMES = ("totalsegmentator", "totalsegmentator-full")


class TotalSegmentatorError(SiradError):
    """TotalSegmentator cannot be used: not installed, weights missing, or it would go online.

    ``code`` is one of ``totalsegmentator_not_installed``, ``totalsegmentator_weights_missing``,
    ``totalsegmentator_online``, ``totalsegmentator_failed``, ``totalsegmentator_bad_output``.
    """

    code = "totalsegmentator_failed"


def class_of(name: str) -> int:
    """Our class (0 background, 1 sacrum, 2 left ilium, 3 right ilium, 4 other bone) of a TotalSegmentator class name."""
    if name in EXACT_RULES:
        return EXACT_RULES[name]
    return OTHER_BONE if name.startswith(OTHER_BONE_PREFIXES) else 0


def lookup_table(class_map: Mapping[int, str], max_id: int) -> np.ndarray:
    """uint8 table indexed by TotalSegmentator label id; ids of the map that are no bone give 0."""
    lut = np.zeros(max(max_id, max(class_map, default=0)) + 1, np.uint8)
    for i, name in class_map.items():
        lut[int(i)] = class_of(str(name))
    return lut


def map_labels(ts_labels: np.ndarray, class_map: Mapping[int, str] | None = None, *,
               max_id: int = TOTAL_V2_MAX_ID, source: str | None = None) -> np.ndarray:
    """TotalSegmentator multilabel ids -> our classes.

    Parameters
    ----------
    ts_labels : ndarray of int, shape (S, R, C)
        Label ids of TotalSegmentator's task ``total`` (0 background).
    class_map : mapping id -> name, optional
        Its class map; default :data:`TOTAL_V2_BONES` (v2), all other ids up to ``max_id`` are soft tissue.

    Returns
    -------
    ndarray of uint8, shape (S, R, C)

    Raises
    ------
    TotalSegmentatorError
        When the map holds ids that are not classes of task ``total`` (another task's output, or not a label map).
    """
    cmap = TOTAL_V2_BONES if class_map is None else class_map
    a = np.asarray(ts_labels)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or (a != np.round(a)).any():
            raise TotalSegmentatorError("is not a label map: it holds non-integer values", path=source,
                                        code="totalsegmentator_bad_output")
        a = a.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    top = max(max_id, max(cmap, default=0)) if class_map is None else max(cmap, default=0)
    if lo < 0 or hi > top:
        raise TotalSegmentatorError(f"holds label {lo if lo < 0 else hi}, outside TotalSegmentator's task 'total' "
                                    f"(ids 0-{top}); is it the multilabel output of task 'total'?", path=source,
                                    code="totalsegmentator_bad_output")
    return lookup_table(cmap, top)[a]


def segmentation_from_image(img: Any, volume: Volume, class_map: Mapping[int, str] | None = None, *,
                            source: str | None = None, note: str = "") -> Segmentation:
    """A TotalSegmentator multilabel NIfTI image (nibabel) -> :class:`Segmentation` on ``volume``'s grid."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise TotalSegmentatorError(f"has {data.ndim} dimensions, a 3-D label map was expected", path=source,
                                    code="totalsegmentator_bad_output")
    ours = map_labels(np.transpose(data, (2, 1, 0)), class_map, source=source)  # (x, y, z) -> (slice, row, col)
    affine = geo.affine_from_nifti(np.asarray(img.affine, float))
    if ours.shape != tuple(volume.shape) or not np.allclose(affine, volume.affine, atol=1e-3):
        lab = Volume(array=ours.astype(np.int16), affine=affine)
        ours = resample_to(lab, volume.affine, volume.shape, order=0, fill_hu=0).array.astype(np.uint8)
    return Segmentation(labels=ours, volume=volume, midline_x_mm=_midline_x(ours, volume),
                        sij_z_range_mm=_sij_z_range(ours, volume), method="totalsegmentator",
                        notes=[note] if note else [])


def _world(labels: np.ndarray, volume: Volume, label: int, max_points: int = 50_000) -> np.ndarray:
    idx = np.argwhere(labels == label)
    if len(idx) > max_points:
        idx = idx[:: len(idx) // max_points + 1]
    return volume.index_to_world(idx) if len(idx) else np.zeros((0, 3))


def _midline_x(labels: np.ndarray, volume: Volume) -> float:
    """The sacrum's median x (LPS mm); NaN without a sacrum (the pelvis check then refuses the CT)."""
    p = _world(labels, volume, SACRUM)
    return float(np.median(p[:, 0])) if len(p) else float("nan")


def _sij_z_range(labels: np.ndarray, volume: Volume) -> tuple[float, float]:
    """z range (LPS mm, 2 mm bins) where the sacrum and both hip bones are all present."""
    bins = [set(np.round(_world(labels, volume, k)[:, 2] / 2.0).astype(int).tolist())
            for k in (SACRUM, LEFT_ILIUM, RIGHT_ILIUM)]
    common = bins[0] & bins[1] & bins[2]
    return (2.0 * min(common), 2.0 * max(common)) if common else (float("nan"), float("nan"))


# --------------------------------------------------------------------------------------------
# Is it installed, are the weights there, will it stay offline?
# --------------------------------------------------------------------------------------------

def home_dir() -> Path:
    """TotalSegmentator's home folder, as its ``config.get_totalseg_dir`` finds it."""
    if os.environ.get("TOTALSEG_HOME_DIR"):
        return Path(os.environ["TOTALSEG_HOME_DIR"])
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator"


def weights_dir() -> Path:
    """Its weights folder, as its ``config.get_weights_dir`` finds it."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    return home_dir() / "nnunet" / "results"


def package_version() -> str | None:
    """The installed TotalSegmentator's version, or None when the package cannot be imported."""
    try:
        if importlib.util.find_spec("totalsegmentator") is None:
            return None
    except (ImportError, ValueError):
        return None
    from importlib import metadata

    try:
        return metadata.version("TotalSegmentator")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def missing_weights(model: str = "fast") -> list[str]:
    """Weight folders (with a ``checkpoint_final.pth``) that ``model`` needs and that are not there."""
    root = weights_dir()
    out = []
    for ds in MODELS[model][1]:
        d = root / WEIGHT_FOLDERS[ds]
        if not d.is_dir() or next(d.rglob("checkpoint_final.pth"), None) is None:
            out.append(WEIGHT_FOLDERS[ds])
    return out


def check_installed(model: str = "fast") -> str:
    """Raise :class:`TotalSegmentatorError` naming what is missing; return the package version when usable."""
    version = package_version()
    if version is None or importlib.util.find_spec("totalsegmentator.python_api") is None:
        raise TotalSegmentatorError(
            "TotalSegmentator is not installed in this Python environment (no module 'totalsegmentator'); install "
            "it and its weights yourself (README: 'TotalSegmentator as the segmenter'); the demo UNet needs neither",
            code="totalsegmentator_not_installed")
    task = MODELS[model][0]
    miss = missing_weights(model)
    if miss:
        raise TotalSegmentatorError(
            f"TotalSegmentator {version} is installed but the weights of its '{task}' model are missing here: "
            f"{', '.join(miss)}. This program never downloads them; download them yourself with "
            f"'totalseg_download_weights -t {task}' (or set TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR to where "
            "they are)", path=weights_dir(), code="totalsegmentator_weights_missing", context={"missing": miss})
    cfg = home_dir() / "config.json"
    try:
        stats = json.loads(cfg.read_text()).get("send_usage_stats", True)
    except (OSError, ValueError, AttributeError):
        stats = True
    if stats is not False:
        raise TotalSegmentatorError(
            f"TotalSegmentator would send usage statistics over the network after each run ({cfg} "
            f"{'has send_usage_stats not set to false' if cfg.exists() else 'does not exist'}); this program "
            "stays offline. Set \"send_usage_stats\": false in that file (TotalSegmentator's documented switch)",
            path=cfg, code="totalsegmentator_online")
    return version


def availability(model: str = "fast") -> tuple[bool, str]:
    """(usable, why) for a settings dialog: never raises, imports nothing heavy."""
    try:
        version = check_installed(model)
    except TotalSegmentatorError as exc:
        return False, exc.message
    return True, f"TotalSegmentator {version}, '{MODELS[model][0]}' weights in {weights_dir()}"


@contextlib.contextmanager
def downloads_refused() -> Iterator[None]:
    """While inside, TotalSegmentator's weight downloaders raise instead of going online.

    ``libs.download_pretrained_weights`` calls ``download_url_and_unpack`` (or the licensed
    variant) only when a weight folder is missing; both are looked up in ``libs`` at call time.
    """
    try:
        import totalsegmentator.libs as libs
    except ImportError:
        yield
        return

    def refuse(name: str) -> Callable[..., Any]:
        def _refused(*args: Any, **kwargs: Any) -> Any:
            raise TotalSegmentatorError(
                f"TotalSegmentator tried to download weights ({name}{args[:1]!r}); this program never downloads. "
                "Download them yourself with 'totalseg_download_weights'", code="totalsegmentator_weights_missing")
        return _refused

    saved = {n: getattr(libs, n) for n in ("download_url_and_unpack", "download_model_with_license_and_unpack")
             if hasattr(libs, n)}
    try:
        for n in saved:
            setattr(libs, n, refuse(n))
        yield
    finally:
        for n, fn in saved.items():
            setattr(libs, n, fn)


def installed_class_map() -> dict[int, str] | None:
    """The installed package's ``class_map["total"]`` (the ids its output uses), if it has one."""
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError:
        return None
    m = class_map.get("total") if isinstance(class_map, dict) else None
    return {int(k): str(v) for k, v in m.items()} if m else None


def to_nifti_image(volume: Volume) -> Any:
    """The CT as an in-memory nibabel image in TotalSegmentator's input form (RAS affine, HU)."""
    import nibabel as nib

    data = np.transpose(volume.array, (2, 1, 0))  # (slice, row, col) -> (x, y, z)
    img = nib.Nifti1Image(data, geo.affine_to_nifti(volume.affine))
    img.header.set_xyzt_units("mm")
    return img


def run_totalsegmentator(img: Any, *, fast: bool, roi_subset: list[str], device: str) -> Any:
    """Call ``totalsegmentator.python_api.totalsegmentator`` in memory; its prints go to stderr."""
    from totalsegmentator.python_api import totalsegmentator

    ts_device = {"cuda": "gpu"}.get(device, device)
    with contextlib.redirect_stdout(sys.stderr), downloads_refused():
        return totalsegmentator(img, None, ml=True, task="total", fast=fast, roi_subset=roi_subset,
                                device=ts_device, quiet=True)


@dataclass
class TotalSegmentatorSegmenter:
    """The pipeline's segmenter when the user chose TotalSegmentator.

    Parameters
    ----------
    model : ``fast`` (3 mm model, the one usable on a CPU) or ``full`` (1.5 mm, five networks)
    runner : replaces :func:`run_totalsegmentator` (the network call), e.g. to read a label map
        TotalSegmentator wrote earlier; the mapping and every check after it stay the same.
    """

    model: str = "fast"
    runner: Callable[..., Any] | None = None
    version: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"TotalSegmentator model must be one of {sorted(MODELS)}, got {self.model!r}")

    @property
    def name(self) -> str:
        return "TotalSegmentator"

    @property
    def description(self) -> str:
        return f"TotalSegmentator {self.version or '(version unknown)'} task total ({MODELS[self.model][0]})"

    def check(self) -> None:
        """Raise :class:`TotalSegmentatorError` unless it is installed with weights and offline (skipped with a runner)."""
        if self.runner is None:
            self.version = check_installed(self.model)

    def segment(self, volume: Volume, *, device: str = "cpu",
                progress: Callable[[float, str], None] | None = None) -> Segmentation:
        """Run TotalSegmentator on ``volume`` and map its labels onto ours (on ``volume``'s grid)."""
        self.check()
        cmap = installed_class_map() if self.runner is None else None
        roi = [n for n in ROI_SUBSET if cmap is None or n in cmap.values()]
        src = volume.sources[0] if getattr(volume, "sources", None) else None
        if progress:
            progress(0.0, f"TotalSegmentator ({MODELS[self.model][0]})")
        run = self.runner or run_totalsegmentator
        try:
            img = run(to_nifti_image(volume), fast=self.model == "fast", roi_subset=roi, device=device)
        except SiradError:
            raise
        except Exception as exc:  # its own failures (nnU-Net, resampling, memory) reach the user typed
            raise TotalSegmentatorError(f"TotalSegmentator failed: {type(exc).__name__}: {exc}", path=src) from exc
        note = f"{self.description}; labels mapped by name: sacrum (+vertebrae_S1), hip_left, hip_right, other bones"
        return segmentation_from_image(img, volume, cmap, source=src, note=note)


def resolve_segmenter(value: str | None) -> Any:
    """``--segmenter`` value -> what :class:`~sirad_viewer.ai.pipeline.Grader` takes.

    ``totalsegmentator`` (3 mm fast model) or ``totalsegmentator-full`` (1.5 mm) give a checked
    :class:`TotalSegmentatorSegmenter`; anything else is a segmentation bundle folder (None: the installed one).
    """
    if value is not None and value.strip().lower() in NAMES:
        seg = TotalSegmentatorSegmenter("full" if value.strip().lower().endswith("-full") else "fast")
        seg.check()
        return seg
    from sirad_viewer.ai.pipeline import find_bundle

    return find_bundle("segmentation", value)
