"""Model bundles: safetensors weights plus a validated ``metadata.json`` (after MONAI bundles).

A bundle is a folder::

    models/sij-densenet-demo/
        metadata.json        name, version, architecture + config, input, classes and groups,
                             training data, metrics, intended use, disclaimer, weights + sha256
        model.safetensors

:func:`load_bundle` checks that every required field is there with the right type, that the
weights file's sha256 matches the metadata, and loads the tensors with safetensors (never
pickle). Anything else is refused with a message naming the file and the problem. Other
packages add bundles through the ``sirad_viewer.models`` entry-point group: each entry point is a
callable returning a bundle folder (or a list of them).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sirad_viewer.models"
SCHEMA_VERSION = 1
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "name": str,
    "version": str,
    "architecture": dict,
    "input": dict,
    "classes": list,
    "groups": list,
    "training_data": dict,
    "metrics": dict,
    "intended_use": str,
    "disclaimer": str,
    "weights": dict,
}
REQUIRED_INPUT = {"spacing_mm": list, "size": list, "intensity_window_hu": list, "mirror_left": bool}
ARCHITECTURES = {"densenet", "unet"}
TASKS = {"grading", "segmentation"}
SEGMENTATION_CLASSES = ["background", "sacrum", "left_ilium", "right_ilium", "other_bone"]


class BundleError(SiradError):
    code = "bad_bundle"


@dataclass
class ModelBundle:
    """A validated bundle on disk."""

    path: Path
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "grading"))

    @property
    def weights_path(self) -> Path:
        return self.path / self.metadata["weights"]["file"]

    def state_dict(self) -> dict[str, Any]:
        """The tensors (torch), loaded with safetensors."""
        from safetensors.torch import load_file

        try:
            return load_file(str(self.weights_path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise BundleError(f"weights cannot be read as safetensors: {exc}", path=self.weights_path) from exc

    def build_network(self):
        """The network described by the metadata, with the bundle's weights loaded (eval mode)."""
        net = build_network(self.metadata["architecture"], n_classes=len(self.metadata["classes"]))
        sd = self.state_dict()
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"weights do not fit the architecture in metadata.json: {first}",
                              path=self.weights_path) from exc
        net.eval()
        return net


def build_network(architecture: dict[str, Any], *, n_classes: int):
    """A MONAI network from ``{"type": "densenet" | "unet", "config": {...}}`` (single-channel 3D input)."""
    kind = str(architecture.get("type", "")).lower()
    if kind not in ARCHITECTURES:
        raise BundleError(f"architecture type {architecture.get('type')!r} is not supported; known: {sorted(ARCHITECTURES)}")
    cfg = dict(architecture.get("config", {}))
    if kind == "unet":
        from monai.networks.nets import UNet

        cfg.setdefault("channels", (8, 16, 32, 64))
        cfg.setdefault("strides", (2, 2, 2))
        cfg.setdefault("num_res_units", 1)
        cfg["channels"], cfg["strides"] = tuple(cfg["channels"]), tuple(cfg["strides"])
        return UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, **cfg)
    from monai.networks.nets import DenseNet

    cfg.setdefault("init_features", 16)
    cfg.setdefault("growth_rate", 8)
    cfg.setdefault("block_config", (4, 4, 4))
    cfg["block_config"] = tuple(cfg["block_config"])
    return DenseNet(spatial_dims=3, in_channels=1, out_channels=n_classes, **cfg)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_metadata(meta: Any, *, path: Path) -> None:
    if not isinstance(meta, dict):
        raise BundleError("metadata.json must hold a JSON object", path=path)
    for key, typ in REQUIRED.items():
        if key not in meta:
            raise BundleError(f"metadata.json lacks '{key}'", path=path)
        if not isinstance(meta[key], typ):
            raise BundleError(f"metadata.json: '{key}' must be {getattr(typ, '__name__', typ)}, got {type(meta[key]).__name__}",
                              path=path)
    if meta["schema_version"] != SCHEMA_VERSION:
        raise BundleError(f"metadata.json schema_version {meta['schema_version']} is not supported (expected {SCHEMA_VERSION})",
                          path=path)
    for key, typ in REQUIRED_INPUT.items():
        if not isinstance(meta["input"].get(key), typ):
            raise BundleError(f"metadata.json: input.{key} is missing or not {typ.__name__}", path=path)
    if len(meta["input"]["spacing_mm"]) != 3 or len(meta["input"]["size"]) != 3:
        raise BundleError("metadata.json: input.spacing_mm and input.size need 3 values (slice, row, column)", path=path)
    task = meta.get("task", "grading")
    if task not in TASKS:
        raise BundleError(f"metadata.json: task {task!r} is not one of {sorted(TASKS)}", path=path)
    if str(meta["architecture"].get("type", "")).lower() not in ARCHITECTURES:
        raise BundleError(f"metadata.json: architecture type {meta['architecture'].get('type')!r} is not supported; "
                          f"known: {sorted(ARCHITECTURES)}", path=path)
    if task == "segmentation":
        if meta["classes"] != SEGMENTATION_CLASSES:
            raise BundleError(f"metadata.json: segmentation classes must be {SEGMENTATION_CLASSES}, got {meta['classes']}",
                              path=path)
    else:
        if meta["classes"] != [0, 1, 2, 3, 4]:
            raise BundleError(f"metadata.json: classes must be the grades [0, 1, 2, 3, 4], got {meta['classes']}", path=path)
        flat = sorted(g for grp in meta["groups"] for g in grp)
        if flat != [0, 1, 2, 3, 4]:
            raise BundleError(f"metadata.json: groups must cover grades 0-4 exactly once, got {meta['groups']}", path=path)
    w = meta["weights"]
    if not isinstance(w.get("file"), str) or not isinstance(w.get("sha256"), str) or len(w["sha256"]) != 64:
        raise BundleError("metadata.json: weights needs 'file' and a 64-hex-digit 'sha256'", path=path)
    if not w["file"].endswith(".safetensors"):
        raise BundleError(f"weights file {w['file']!r} is not .safetensors; pickled weights are never loaded", path=path)


def load_bundle(path: str | Path) -> ModelBundle:
    """Validate and open a bundle folder (or its metadata.json)."""
    p = Path(path)
    if p.name == "metadata.json":
        p = p.parent
    meta_path = p / "metadata.json"
    if not meta_path.exists():
        raise BundleError("is not a model bundle (no metadata.json)", path=p, code="not_found")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"metadata.json is not valid JSON: {exc}", path=meta_path) from exc
    validate_metadata(meta, path=meta_path)
    weights = p / meta["weights"]["file"]
    if not weights.exists():
        raise BundleError("weights file is missing", path=weights)
    digest = sha256_of(weights)
    if digest != meta["weights"]["sha256"]:
        raise BundleError(f"weights checksum mismatch: sha256 {digest[:16]}... found, {meta['weights']['sha256'][:16]}... "
                          "expected; the file was changed or damaged and is refused", path=weights)
    return ModelBundle(p, meta)


def save_bundle(network, metadata: dict[str, Any], out_dir: str | Path) -> ModelBundle:
    """Write weights (safetensors) and metadata (with their sha256); returns the loaded bundle."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    sd = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(sd, str(weights))
    meta = dict(metadata)
    meta["schema_version"] = SCHEMA_VERSION
    meta["weights"] = {"file": weights.name, "sha256": sha256_of(weights), "format": "safetensors"}
    validate_metadata(meta, path=out / "metadata.json")
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return load_bundle(out)


def discover_bundles(models_dir: str | Path | None = None) -> tuple[list[ModelBundle], list[str]]:
    """Bundles in ``models_dir`` and from ``sirad_viewer.models`` entry points.

    Returns (bundles, problems): a broken bundle is reported, never fatal for the others.
    """
    found: list[Path] = []
    if models_dir is not None and Path(models_dir).is_dir():
        found += sorted(p.parent for p in Path(models_dir).glob("*/metadata.json"))
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            res = ep.load()()
        except Exception as exc:  # noqa: BLE001 - a plugin's failure must not stop the program
            found.append(Path(f"<entry point {ep.name}: {exc}>"))
            continue
        found += [Path(r) for r in (res if isinstance(res, (list, tuple)) else [res])]
    bundles, problems = [], []
    for p in found:
        try:
            bundles.append(load_bundle(p))
        except BundleError as exc:
            problems.append(exc.user_message())
        except OSError as exc:
            problems.append(f"{p}: {exc}")
    return bundles, problems
