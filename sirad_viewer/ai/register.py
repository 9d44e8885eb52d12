"""The joint frame fixed by the CT itself: each joint registered rigidly to a mean joint (issue #10 item 3).

The segmentation's joint box comes from labels on a 4 mm grid. When the same pelvis lies 15 degrees
differently in the scanner, the segmenter labels it a little differently and the box moves by a
median 2.5 mm and turns by 5 degrees; a 48^3 crop at 1.5 mm then correlates only about 0.6 with the
unturned one. Re-fitting the joint plane to the joint space (:func:`localise.refine_joint`) fixes the
frame to tenths of a millimetre where the joint space is visible, but not where it is not (ankylosis,
sclerosis, thick slices), and its in-plane axis needs a second anchor that the segmentation again
gives.

Here the frame is found from everything in the crop: the CT around the segmentation's box is registered
rigidly (six parameters) to the grading bundle's **template**, the mean of the training joints' crops
in the segmentation's frame (a blurred sacral ala and ilium with the joint between them). The optimum
depends only on the CT's content, so it turns with the pelvis: on seven atlas phantoms (84 joints)
turned 15 degrees about each axis the registered box moves by at most 0.2 mm and turns by at most
0.3 degrees (``tools/rotation_check.py``), fused joints included. Because the template is
the mean of the segmentation frames a grader was trained on, the registered frame is that frame on
average (it moves the box by a median 3 mm and 9 degrees, joint to joint).

SimpleITK does the registration (correlation metric in a sphere, regular-step gradient descent over
two resolutions, Euler transform); the code here only builds the two images in the crop's own frame
and turns the result back into a joint box.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sirad_viewer.ai.localise import JointBox, Localisation

TEMPLATE_FILE = "template.safetensors"
TEMPLATE_KEY = "template"


@dataclass(frozen=True)
class Registration:
    """A grading bundle's ``input.registration``."""

    file: str = TEMPLATE_FILE
    sha256: str = ""
    pad: int = 8  # the CT crop registered is the template's size plus this many voxels each side
    radius_mm: float = 40.0  # the metric counts the template inside this sphere
    # a registration that moves the segmentation's box further than this is not trusted: the box stays
    # (on validation phantoms turned by 15 degrees a correct registration turned a box by up to 35 degrees)
    max_shift_mm: float = 20.0
    max_turn_deg: float = 45.0
    # the optimiser stops when its step (mm, or the rotation that moves a point 1 mm away as far) falls below
    # this. A bundle without the field was built with 1e-4 (grader 0.4.0). 1e-3 (what ``sirad joint-template``
    # writes now) takes about half the time: on 12 validation joints the boxes moved at most 0.022 mm and
    # 0.23 degrees against 1e-4 and the crops correlated >= 0.9989 (1e-2 moved them 0.1 mm and 0.8 degrees)
    min_step_mm: float = 1e-4

    def __post_init__(self):
        if not 0.0 < self.min_step_mm < 1.0:
            raise ValueError(f"min_step_mm {self.min_step_mm!r} must be between 0 and 1 mm")

    @classmethod
    def from_metadata(cls, meta: Any) -> "Registration | None":
        if meta is None:
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("file"), str) or not isinstance(meta.get("sha256"), str):
            raise ValueError(f"registration {meta!r} in the bundle metadata: expected {{'file': ..., 'sha256': ...}}")
        try:
            return cls(meta["file"], meta["sha256"], int(meta.get("pad", 8)), float(meta.get("radius_mm", 40.0)),
                       float(meta.get("max_shift_mm", 20.0)), float(meta.get("max_turn_deg", 45.0)),
                       float(meta.get("min_step_mm", 1e-4)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"registration {meta!r} in the bundle metadata: {exc}") from exc

    def to_metadata(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "pad": self.pad, "radius_mm": self.radius_mm,
                "max_shift_mm": self.max_shift_mm, "max_turn_deg": self.max_turn_deg, "min_step_mm": self.min_step_mm}


_TEMPLATES: dict[tuple[str, str], np.ndarray] = {}


def load_template(bundle_path: str | Path, reg: Registration) -> np.ndarray:
    """The bundle's template (float32, cubic), checked against its sha256 (cached)."""
    from sirad_viewer.ai.bundle import BundleError, sha256_of, weights_file

    path = weights_file(Path(bundle_path), reg.file)
    key = (str(path), reg.sha256)
    if key not in _TEMPLATES:
        if not path.is_file():
            raise BundleError(f"the joint template {path.name} is missing", path=path)
        if sha256_of(path) != reg.sha256:
            raise BundleError(f"the joint template {path.name} does not match the sha256 in metadata.json", path=path)
        from safetensors.numpy import load_file

        try:
            t = np.asarray(load_file(str(path))[TEMPLATE_KEY], np.float32)
        except Exception as exc:  # safetensors raises its own errors for a damaged file
            raise BundleError(f"the joint template {path.name} cannot be read: {exc}", path=path) from exc
        if t.ndim != 3 or len(set(t.shape)) != 1 or not np.all(np.isfinite(t)):
            raise BundleError(f"the joint template {path.name} is not a finite cube (shape {t.shape})", path=path)
        _TEMPLATES[key] = t
    return _TEMPLATES[key]


def save_template(template: np.ndarray, folder: str | Path, reg: Registration | None = None) -> Registration:
    """Write ``template`` into a bundle folder; returns the metadata entry with its sha256."""
    from safetensors.numpy import save_file

    from sirad_viewer.ai.bundle import sha256_of

    reg = reg or Registration()
    path = Path(folder) / reg.file
    save_file({TEMPLATE_KEY: np.ascontiguousarray(template, np.float32)}, str(path))
    return dataclasses.replace(reg, sha256=sha256_of(path))


def template_of(crops: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of window-normalised joint crops (left ones already mirrored, as the grader reads them)."""
    if len(crops) == 0:
        raise ValueError("no crops to build a joint template from")
    return np.mean(np.stack([np.asarray(c, np.float32) for c in crops]), axis=0)


def _image(a: np.ndarray, spacing: float):
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(np.ascontiguousarray(a, np.float32))
    im.SetSpacing((spacing,) * 3)
    im.SetOrigin(tuple(-(n - 1) / 2.0 * spacing for n in a.shape[::-1]))  # the crop's centre at 0
    return im


def register_joint(volume, box: JointBox, spec, template: np.ndarray, reg: Registration
                   ) -> tuple[JointBox, float, float]:
    """``box`` moved and turned so that the CT around it best matches ``template``.

    Returns the registered box, how far its centre moved (mm) and how far it turned (degrees). Both
    images live in the segmentation box's crop frame (``spec``: spacing, window, mirror); the Euler
    transform found maps template points into that frame, and is turned back into a box here.
    """
    import SimpleITK as sitk

    from sirad_viewer.ai import grading as GR

    sp = float(spec.spacing_mm[0])
    n = template.shape[0]
    pad = reg.pad + (n - int(spec.size[0])) // 2  # the template may be larger than the grader's crop
    moving = GR.normalise(GR.extract_crop(volume, box.center_lps_mm, box.side, spec, axes=box.axes_lps, pad=pad),
                          spec.window_hu)
    fixed, mov = _image(template, sp), _image(moving, sp)
    g = (np.arange(n) - (n - 1) / 2.0) * sp
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    mask = sitk.GetImageFromArray((zz ** 2 + yy ** 2 + xx ** 2 <= reg.radius_mm ** 2).astype(np.uint8))
    mask.CopyInformation(fixed)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsCorrelation()
    r.SetMetricFixedMask(mask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=reg.min_step_mm, numberOfIterations=200,
                                               relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([2, 1])
    r.SetSmoothingSigmasPerLevel([1.0, 0.0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    t = sitk.Euler3DTransform()
    t.SetCenter((0.0, 0.0, 0.0))
    r.SetInitialTransform(t, inPlace=True)
    r.Execute(fixed, mov)
    # SimpleITK's (x, y, z) is the crop array's (2, 1, 0)
    p = np.eye(3)[::-1]
    rot = p @ np.asarray(t.GetMatrix(), float).reshape(3, 3) @ p
    shift = np.asarray(t.GetTranslation(), float)[::-1]
    d = spec.directions(box.side, box.axes_lps)  # rows: LPS directions of the crop's array axes
    centre = np.asarray(box.center_lps_mm, float) + d.T @ shift
    dn = rot.T @ d
    # spec.directions puts the normal's column as -axes[2] for the joint frame (mirror or right side)
    axes = np.stack([dn[0], dn[1], -dn[2] if (box.side == "right" or spec.mirror_left) else dn[2]])
    turned = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))
    return JointBox(box.side, centre, axes, box.size_mm.copy(), box.contact_voxels), float(np.linalg.norm(shift)), turned


def register_joints(volume, loc: Localisation, spec, template: np.ndarray, reg: Registration) -> Localisation:
    """``loc`` with each joint box registered to ``template`` (:func:`register_joint`); a registration
    that moves a box further than ``reg`` allows keeps the segmentation's box, with a warning."""
    joints, warns = dict(loc.joints), list(loc.warnings)
    for side, box in loc.joints.items():
        new, moved, turned = register_joint(volume, box, spec, template, reg)
        if moved > reg.max_shift_mm or turned > reg.max_turn_deg:
            warns.append(f"the {side} joint did not match the model's mean joint near the segmentation's box (it would "
                         f"move {moved:.0f} mm and turn {turned:.0f} degrees); its box comes from the segmentation alone")
            continue
        joints[side] = new
    return Localisation(joints, loc.sacral_axis, warns, loc.sacrum_limit)


# the template is the grader's crop plus this many voxels each side (64^3 for a 48^3 crop): the registered
# CT crop needs room to move, and the metric's sphere (radius_mm) reaches past the grader's own crop
TEMPLATE_MARGIN = 8


def add_template(bundle_path: str | Path, data_csv: str | Path | Sequence[str | Path], out_dir: str | Path, *,
                 segmenter_path: str | Path | None = None, split: str = "train", limit: int | None = None,
                 version: str | None = None, device: str = "cpu", progress: bool = True,
                 min_joints: int = 20, min_step_mm: float = 1e-3) -> dict[str, Any]:
    """Copy a grading bundle to ``out_dir`` with a joint template: from then on its crops are cut along the
    segmentation's boxes registered to that template (:func:`register_joints`).

    The template is the mean of the window-normalised crops (the grader's crop plus
    :data:`TEMPLATE_MARGIN` voxels each side, left joints mirrored) of every joint in the ``split`` rows
    of ``data_csv``, in the segmentation's boxes (refined on the CT first when the bundle says so), with
    the segmenter the bundle will run with. Only training rows should be used, so that the registration
    has seen nothing of the subjects it is evaluated on. The bundle's temperature and out-of-distribution
    statistics are removed (they were fitted on other crops): run ``sirad calibrate`` on the new bundle.
    Returns the ``input.registration`` entry written.
    """
    import json
    import shutil
    import sys

    from sirad_viewer.ai.bundle import load_bundle
    from sirad_viewer.ai.grading import normalise
    from sirad_viewer.ai.localise import localise
    from sirad_viewer.ai.pipeline import Grader, find_bundle
    from sirad_viewer.ai.train import DataError, Progress, read_data_csv
    from sirad_viewer.errors import SiradError
    from sirad_viewer.io import open_volume

    reg = Registration(min_step_mm=min_step_mm)  # a bad value is refused before any crop is cut
    csvs = [data_csv] if isinstance(data_csv, (str, Path)) else list(data_csv)
    rows = [r for c in csvs for r in read_data_csv(c) if split == "all" or r.split == split][:limit]
    if not rows:
        raise DataError(f"has no rows in split {split!r}", path=", ".join(str(c) for c in csvs))
    src, out = Path(bundle_path), Path(out_dir)
    bundle = load_bundle(src)
    if out.resolve() != src.resolve() and out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; nothing was written (choose another --out)")
    meta = json.loads(json.dumps(bundle.metadata))
    if meta.get("input", {}).get("frame") != "joint":
        raise ValueError(f"{src}: a joint template needs a bundle that crops in the joint frame (input.frame 'joint')")
    meta["input"].pop("registration", None)  # the template's crops come from the segmentation's boxes
    bundle.metadata = meta
    seg = find_bundle("segmentation", segmenter_path) if segmenter_path else None
    grader = Grader(bundle, seg, device=device)
    crops, problems = [], []
    bar = Progress(len(rows), "template") if progress else None
    for row in rows:
        try:
            vol = open_volume(row.image)
            sg = grader.segment(vol, [])
            loc = grader.joint_frames(vol, localise(sg.coarse_labels, sg.affine))
            for side, c in grader.crops(vol, loc, pad=TEMPLATE_MARGIN).items():
                crops.append(normalise(c, grader.spec.window_hu).astype(np.float32))
        except SiradError as exc:
            problems.append(f"{row.image}: {exc.user_message() if hasattr(exc, 'user_message') else exc}")
        if bar:
            bar.update()
    for p in problems:
        print(f"not used for the template: {p}", file=sys.stderr)
    if len(crops) < min_joints:
        raise ValueError(f"only {len(crops)} joints could be cropped from split {split!r}; a template needs at least "
                         f"{min_joints}")
    if out.resolve() != src.resolve():
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} exists and is not empty; nothing was written (choose another --out)")
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():  # weights, metadata, anything else the bundle ships (model card, figures)
            if f.is_file():
                shutil.copy2(f, out / f.name)
    reg = save_template(template_of(crops), out, reg)
    entry = reg.to_metadata()
    entry["built_from"] = {"data": [str(c) for c in csvs], "split": split, "joints": len(crops),
                           "segmenter": (f"{grader.segmenter.metadata.get('name')} {grader.segmenter.metadata.get('version')}"
                                         if getattr(grader, "segmenter", None) is not None else "classical")}
    meta["input"]["registration"] = entry
    meta["input"]["orientation"] = (meta["input"].get("orientation", "") + "; the segmentation's joint box registered "
                                    "rigidly to the bundle's mean joint (template.safetensors) first")
    for key in ("calibration", "ood"):
        meta.pop(key, None)
    if version:
        meta["version"] = version
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    load_bundle(out)  # the written bundle loads (schema, weights checksum)
    return entry
