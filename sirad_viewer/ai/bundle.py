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
import math
import os
import stat
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

#: Bounds on what a bundle may declare (validated at the border, before anything is built or read).
MAX_METADATA_BYTES = 1 << 20
MAX_METADATA_DEPTH = 16
MAX_WEIGHTS_BYTES = 2 << 30
SPACING_RANGE_MM = (0.05, 20.0)
#: Largest edge of the network input, and largest number of input voxels (grading crops).
MAX_INPUT_EDGE = 512
MAX_INPUT_VOXELS = 256 ** 3
TEMPERATURE_RANGE = (1e-3, 1e3)
#: Integers in architecture.config (channels, features, growth rate, ...) stay below this.
MAX_CONFIG_INT = 4096
MAX_CONFIG_LIST = 16


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
        return weights_file(self.path, self.metadata["weights"]["file"])

    def state_dict(self) -> dict[str, Any]:
        """The tensors (torch), loaded with safetensors."""
        from safetensors.torch import load_file

        try:
            return load_file(str(self.weights_path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise BundleError(f"weights cannot be read as safetensors: {exc}", path=self.weights_path) from exc

    def build_network(self, *, backend: str = "mirror"):
        """The network described by the metadata, with the bundle's weights loaded (eval mode).

        ``backend="mirror"`` (inference) builds the plain-torch mirror of the MONAI class
        (:mod:`sirad_viewer.ai.nets`: same keys, same outputs, no 3-4 s ``import monai``);
        ``"monai"`` builds MONAI's own class. See :func:`build_network`.
        """
        net = build_network(self.metadata["architecture"], n_classes=len(self.metadata["classes"]), backend=backend)
        sd = self.state_dict()
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"weights do not fit the architecture in metadata.json: {first}",
                              path=self.weights_path) from exc
        net.eval()
        return net


def build_network(architecture: dict[str, Any], *, n_classes: int, backend: str = "monai"):
    """A network from ``{"type": "densenet" | "unet", "config": {...}}`` (single-channel 3D input).

    ``backend="monai"`` (training, the default) builds ``monai.networks.nets.UNet`` / ``DenseNet``;
    ``"mirror"`` builds the plain-torch mirror from :mod:`sirad_viewer.ai.nets` (identical
    state-dict keys and outputs, without importing MONAI), or MONAI's class when the config uses
    a layer the mirror does not reproduce.
    """
    kind = str(architecture.get("type", "")).lower()
    if kind not in ARCHITECTURES:
        raise BundleError(f"architecture type {architecture.get('type')!r} is not supported; known: {sorted(ARCHITECTURES)}")
    if backend not in ("monai", "mirror"):
        raise ValueError(f"backend must be 'monai' or 'mirror', got {backend!r}")
    cfg = dict(architecture.get("config", {}))
    if kind == "unet":
        cfg.setdefault("channels", (8, 16, 32, 64))
        cfg.setdefault("strides", (2, 2, 2))
        cfg.setdefault("num_res_units", 1)
        cfg["channels"], cfg["strides"] = tuple(cfg["channels"]), tuple(cfg["strides"])
    else:
        cfg.setdefault("init_features", 16)
        cfg.setdefault("growth_rate", 8)
        cfg.setdefault("block_config", (4, 4, 4))
        cfg["block_config"] = tuple(cfg["block_config"])
    if backend == "mirror":
        from sirad_viewer.ai.nets import mirror_network

        net = mirror_network(kind, cfg, n_classes=n_classes)
        if net is not None:
            return net
        log.info("the %s config %s uses a layer the torch mirror does not reproduce; MONAI's class is used", kind, cfg)
    if kind == "unet":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, **cfg)
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=3, in_channels=1, out_channels=n_classes, **cfg)


def sha256_of(path: str | Path, *, limit: int | None = None) -> str:
    """sha256 of a regular file (``limit`` bytes at most; a longer file raises BundleError)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            n += len(chunk)
            if limit is not None and n > limit:
                raise BundleError(f"weights file is larger than {limit >> 20} MiB", path=path)
            h.update(chunk)
    return h.hexdigest()


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of JSON data, iteratively (never deeper than ``limit`` + 1)."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_metadata(meta_path: Path) -> Any:
    """Parse metadata.json with a size limit, no NaN/Infinity and a nesting-depth limit."""
    try:
        size = meta_path.stat().st_size
        if not stat.S_ISREG(meta_path.stat().st_mode):
            raise BundleError("metadata.json is not a regular file", path=meta_path)
        if size > MAX_METADATA_BYTES:
            raise BundleError(f"metadata.json is {size} bytes; at most {MAX_METADATA_BYTES} are read", path=meta_path)
        with open(meta_path, "rb") as fh:
            text = fh.read(MAX_METADATA_BYTES + 1).decode("utf-8")
    except OSError as exc:
        raise BundleError(f"metadata.json cannot be read: {exc}", path=meta_path) from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"metadata.json is not UTF-8 text: {exc}", path=meta_path) from exc
    # json's C scanner recurses per bracket: bound the nesting before parsing.
    depth = running = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            running += 1
            depth = max(depth, running)
            if depth > MAX_METADATA_DEPTH:
                raise BundleError(f"metadata.json nests deeper than {MAX_METADATA_DEPTH} levels", path=meta_path)
        elif ch in "]}":
            running -= 1
    try:
        meta = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"metadata.json is not valid JSON: {exc}", path=meta_path) from exc
    if _depth(meta, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:  # pragma: no cover - caught above
        raise BundleError(f"metadata.json nests deeper than {MAX_METADATA_DEPTH} levels", path=meta_path)
    return meta


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_ranges(meta: dict[str, Any], task: str, path: Path) -> None:
    """Numeric ranges of what the pipeline uses: spacing, input size, window, temperature, config."""
    inp = meta["input"]
    sp = inp["spacing_mm"]
    lo, hi = SPACING_RANGE_MM
    if not all(_number(v) and lo <= v <= hi for v in sp):
        raise BundleError(f"metadata.json: input.spacing_mm {sp} must be 3 numbers between {lo} and {hi} mm", path=path)
    size = inp["size"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INPUT_EDGE for v in size):
        raise BundleError(f"metadata.json: input.size {size} must be 3 integers between 0 and {MAX_INPUT_EDGE}", path=path)
    if task == "grading" and (min(size) < 1 or size[0] * size[1] * size[2] > MAX_INPUT_VOXELS):
        raise BundleError(f"metadata.json: input.size {size} must be positive with at most {MAX_INPUT_VOXELS} voxels "
                          "for a grading network", path=path)
    win = inp["intensity_window_hu"]
    if len(win) != 2 or not all(_number(v) and -5000 <= v <= 50000 for v in win) or not win[0] < win[1]:
        raise BundleError(f"metadata.json: input.intensity_window_hu {win} must be two HU values, low < high", path=path)
    cal = meta.get("calibration")
    if cal is not None:
        if not isinstance(cal, dict):
            raise BundleError("metadata.json: calibration must be an object", path=path)
        t = cal.get("temperature", 1.0)
        tlo, thi = TEMPERATURE_RANGE
        if not (_number(t) and tlo <= t <= thi):
            raise BundleError(f"metadata.json: calibration.temperature {t!r} must be a number between {tlo} and {thi} "
                              "(0 would divide the logits by zero)", path=path)
    cfg = meta["architecture"].get("config", {})
    if not isinstance(cfg, dict):
        raise BundleError("metadata.json: architecture.config must be an object", path=path)
    for k, v in cfg.items():
        vals = v if isinstance(v, list) else [v]
        if isinstance(v, list) and len(v) > MAX_CONFIG_LIST:
            raise BundleError(f"metadata.json: architecture.config.{k} has {len(v)} values; at most {MAX_CONFIG_LIST}",
                              path=path)
        for x in vals:
            if isinstance(x, bool) or x is None or isinstance(x, str):
                continue
            if not _number(x) or abs(x) > MAX_CONFIG_INT:
                raise BundleError(f"metadata.json: architecture.config.{k} = {v!r} is out of range", path=path)


def weights_file(bundle_dir: Path, name: Any) -> Path:
    """The weights path named in metadata.json, which must be a regular file inside the bundle folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError("metadata.json: weights.file must be a file name", path=bundle_dir)
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or name.startswith(("/", "\\")) or ":" in name:
        raise BundleError(f"weights file {name!r} is outside the bundle folder; only a file inside it is loaded",
                          path=bundle_dir)
    root = os.path.realpath(bundle_dir)
    real = os.path.realpath(bundle_dir / rel)
    if os.path.commonpath([root, real]) != root:
        raise BundleError(f"weights file {name!r} leads to {real}, outside the bundle folder; refused", path=bundle_dir)
    return Path(real)


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
    if len(meta["input"]["spacing_mm"]) != 3 or len(meta["input"]["size"]) != 3 or \
            not isinstance(meta["input"]["intensity_window_hu"], list):
        raise BundleError("metadata.json: input.spacing_mm and input.size need 3 values (slice, row, column)", path=path)
    task = meta.get("task", "grading")
    if not isinstance(task, str) or task not in TASKS:
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
        if not all(isinstance(grp, list) and all(isinstance(g, int) for g in grp) for grp in meta["groups"]):
            raise BundleError(f"metadata.json: groups must be lists of grades, got {meta['groups']}", path=path)
        flat = sorted(g for grp in meta["groups"] for g in grp)
        if flat != [0, 1, 2, 3, 4]:
            raise BundleError(f"metadata.json: groups must cover grades 0-4 exactly once, got {meta['groups']}", path=path)
    _check_ranges(meta, task, path)
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
    meta = read_metadata(meta_path)
    validate_metadata(meta, path=meta_path)
    weights = weights_file(p, meta["weights"]["file"])
    try:
        st = weights.stat()
    except OSError:
        raise BundleError("weights file is missing", path=p / meta["weights"]["file"]) from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError("weights file is not a regular file (a device, FIFO or folder); refused", path=weights)
    if st.st_size > MAX_WEIGHTS_BYTES:
        raise BundleError(f"weights file is {st.st_size >> 20} MiB; at most {MAX_WEIGHTS_BYTES >> 20} MiB are read",
                          path=weights)
    digest = sha256_of(weights, limit=MAX_WEIGHTS_BYTES)
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
        except Exception as exc:  # noqa: BLE001 - one bad bundle must never stop the others
            problems.append(f"{p}: {type(exc).__name__}: {exc}")
        else:
            continue
        log.warning("model bundle skipped: %s", problems[-1])
    return bundles, problems
