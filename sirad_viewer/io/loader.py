"""Open a file or a folder: list its series, choose the best pelvic CT series, load it.

This is the one entry point the CLI, the viewer and the AI pipeline use::

    result = scan("/data/patient42")          # lists series, explains the default choice
    volume = load_series(result.series[result.chosen])
    volume = open_volume("/data/ct.nii.gz")   # both in one call
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer.errors import CancelledError, HeaderError, LoadError, VolumeWarning
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import Volume
from sirad_viewer.io import dicom, formats
from sirad_viewer.io.dicom.quiet import quiet_libraries

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


def _noop(fraction: float, message: str) -> None:
    pass


def _never() -> bool:
    return False


@dataclass
class SeriesInfo:
    """One loadable series found by :func:`scan`, described without reading its pixels."""

    uid: str
    description: str
    modality: str
    n_images: int
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]
    warnings: list[VolumeWarning]
    kind: str  # "dicom" or the file format name
    plan: dicom.GeometryPlan | None = field(default=None, repr=False)
    path: str | None = None  # for volume files
    volume: Volume | None = field(default=None, repr=False)  # volume files are read while scanning

    @property
    def is_axial(self) -> bool:
        return abs(self.direction[0][2]) > 0.8

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form used by ``sirad info --json``."""
        return {
            "uid": self.uid,
            "description": self.description,
            "modality": self.modality,
            "n_images": self.n_images,
            "shape": list(self.shape),
            "spacing_mm": [round(v, 6) for v in self.spacing_mm],
            "origin_lps_mm": [round(v, 6) for v in self.origin_lps_mm],
            "direction": [[round(v, 6) for v in row] for row in self.direction],
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass
class ScanResult:
    """Every series under a path, the default choice and why."""

    path: str
    series: list[SeriesInfo]
    chosen: int
    reason: str
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (file, code, message)

    def to_dict(self) -> dict[str, Any]:
        return {"series": [s.to_dict() for s in self.series], "chosen": self.chosen,
                "reason": self.reason, "skipped": [{"path": p, "code": c, "message": m} for p, c, m in self.skipped]}


def _geometry_tuple(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[Any, Any, Any]:
    sp = tuple(float(v) for v in geo.affine_spacing(affine))
    origin = tuple(float(v) for v in affine[:3, 3])
    dirs = tuple(tuple(float(v) for v in row) for row in geo.affine_directions(affine))
    return sp, origin, dirs


def scan(path: str | Path, *, progress: ProgressFn = _noop, cancel: CancelFn = _never) -> ScanResult:
    """List the series under ``path`` (a file, a folder, or a .zip) and choose the default.

    See :func:`_scan`. Library log records of the errors handled here stay quiet (``-v`` shows them).
    """
    with quiet_libraries():
        return _scan(path, progress=progress, cancel=cancel)


def _scan(path: str | Path, *, progress: ProgressFn = _noop, cancel: CancelFn = _never) -> ScanResult:
    """List the series under ``path`` (a file, a folder, or a .zip) and choose the default.

    Raises
    ------
    LoadError
        When nothing loadable is found. A single file gives its own problem
        (``not_dicom``, ``no_image``, ``unsupported``, ...); a folder gives ``no_image`` with a
        summary of what was skipped.
    """
    p = Path(path)
    if not p.exists():
        raise LoadError("does not exist", code="not_found", path=p)
    if p.is_file() and formats.is_volume_file(p):
        vol = formats.read_volume_file(p)
        sp, origin, dirs = _geometry_tuple(vol.affine, vol.shape)
        info = SeriesInfo(uid="", description=p.name, modality="", n_images=vol.shape[0], shape=vol.shape,
                          spacing_mm=sp, origin_lps_mm=origin, direction=dirs, warnings=list(vol.warnings),
                          kind=formats.format_name(p), path=str(p), volume=vol)
        return ScanResult(str(p), [info], 0, f"the only volume in {p.name}")

    single = p.is_file() and not str(p).lower().endswith(".zip")
    skipped: list[tuple[str, str, str]] = []
    sources = list(dicom.iter_sources(p, on_skip=lambda *s: skipped.append(s)))
    headers: list[dicom.Header] = []
    frames_of: dict[int, list[dicom.Frame]] = {}
    truncated: dict[int, str] = {}
    n = len(sources)
    for i, src in enumerate(sources):
        if cancel():
            raise CancelledError()
        if formats.is_volume_file(src.path) and src.member is None and not single:
            skipped.append((src.name, "unsupported", "volume files inside a DICOM folder are not read; open them directly"))
            continue
        try:
            h = dicom.read_header(src)
        except LoadError as exc:
            if single:
                raise
            skipped.append((src.name, exc.code, exc.message))
            continue
        problem = dicom.image_problem(h)
        if problem is not None and problem[0] == "truncated_pixel_data" and not single:
            # Kept in its series, which is flagged and chosen last: loading it names this file and
            # refuses (a slice is missing), while other series in the folder stay loadable.
            truncated[id(h)] = f"{src.name}: {problem[1]}"
            problem = None
        if problem is not None:
            if single:
                raise LoadError(problem[1], code=problem[0], path=src.name)
            skipped.append((src.name, problem[0], problem[1]))
            continue
        if dicom.is_localizer(h):
            if single:
                raise LoadError("is a localizer (scout) image, not a CT volume", code="no_image", path=src.name)
            skipped.append((src.name, "no_image", "localizer (scout) image left out"))
            continue
        try:
            try:
                frames_of[id(h)] = dicom.frames_of(h)
            except LoadError:
                raise
            except Exception as exc:  # noqa: BLE001 - pydicom converts nested values lazily and raises
                # many types for a bad one (unknown VR, bad text): this file's header is broken.
                raise HeaderError(f"has a value that cannot be read: {type(exc).__name__}: {exc}",
                                  path=src.name) from exc
        except LoadError as exc:
            if single:
                raise
            skipped.append((src.name, exc.code, exc.message))
            continue
        headers.append(h)
        if i % 32 == 0:
            progress(0.9 * (i + 1) / max(n, 1), f"reading headers {i + 1}/{n}")
    if not headers:
        if not sources:
            raise LoadError("holds no files", code="no_image", path=p)
        codes = sorted({c for _, c, _ in skipped})
        detail = "; ".join(f"{s}: {m}" for s, _, m in skipped[:3])
        raise LoadError(f"holds no CT image that can be loaded ({len(skipped)} file(s) skipped: {detail})",
                        code=codes[0] if len(codes) == 1 else "no_image", path=p)

    groups: dict[tuple, list[dicom.Header]] = {}
    for h in headers:
        groups.setdefault(dicom.series_key(h), []).append(h)
    series: list[SeriesInfo] = []
    refused: list[LoadError] = []
    for key, hs in groups.items():
        frames = [f for h in hs for f in frames_of[id(h)]]
        ds = hs[0].ds
        desc = str(ds.get("SeriesDescription", "") or "")
        try:
            plan = dicom.plan_geometry(frames, series_name=desc)
        except LoadError as exc:
            # One series with impossible geometry must not hide the others.
            refused.append(exc)
            skipped.extend((f.name, exc.code, exc.message) for f in frames[:1])
            continue
        sp, origin, dirs = _geometry_tuple(plan.target_affine, plan.target_shape)
        warnings = list(plan.warnings)
        bad = [truncated[id(h)] for h in hs if id(h) in truncated]
        if bad:
            warnings.append(VolumeWarning(
                "truncated_pixel_data", f"{len(bad)} file(s) of this series have truncated pixel data "
                f"({bad[0]}); loading it will be refused", {"files": bad}))
        header_warnings = {w.code: w for h in hs for w in h.warnings}
        warnings.extend(header_warnings.values())
        if str(hs[0].transfer_syntax) in dicom._LOSSY_SYNTAXES:  # noqa: SLF001
            name = dicom._LOSSY_SYNTAXES[str(hs[0].transfer_syntax)]  # noqa: SLF001
            warnings.append(VolumeWarning("lossy_compression", f"pixel data is lossy-compressed ({name}); "
                                          "fine erosions may be blurred or lost", {}))
        series.append(SeriesInfo(
            uid=str(ds.get("SeriesInstanceUID", "") or ""), description=desc, modality=hs[0].modality,
            n_images=len(frames), shape=plan.target_shape, spacing_mm=sp, origin_lps_mm=origin,
            direction=dirs, warnings=warnings, kind="DICOM", plan=plan))
    if not series:
        raise refused[0]
    chosen, reason = choose_series(series)
    progress(1.0, f"found {len(series)} series")
    return ScanResult(str(p), series, chosen, reason, skipped)


def choose_series(series: list[SeriesInfo]) -> tuple[int, str]:
    """The best series for reading the pelvis: CT, axial, thinnest slices, most slices.

    Returns the index and a sentence explaining the choice.
    """
    if len(series) == 1:
        s = series[0]
        return 0, f"the only series ({s.modality or 'unknown modality'}, {s.n_images} images)"

    def score(s: SeriesInfo) -> tuple:
        complete = not any(w.code == "truncated_pixel_data" for w in s.warnings)
        return (complete, s.modality == "CT", s.is_axial, -round(s.spacing_mm[0], 2), s.shape[0])

    best = max(range(len(series)), key=lambda i: score(series[i]))
    s = series[best]
    parts = []
    ct = [x for x in series if x.modality == "CT"]
    parts.append("CT" if s.modality == "CT" else f"{s.modality or 'unknown modality'} (no CT series found)")
    if s.is_axial:
        parts.append("axial")
    peers = [x for x in series if (x.modality == "CT") == (s.modality == "CT") and x.is_axial == s.is_axial]
    parts.append(f"{s.spacing_mm[0]:.2f} mm between slices"
                 + (f" (thinnest of {len(peers)} comparable series)" if len(peers) > 1 else ""))
    parts.append(f"{s.shape[0]} slices")
    return best, f"series {best + 1} of {len(series)} '{s.description}': " + ", ".join(parts) + (
        f"; {len(series) - len(ct)} non-CT series passed over" if len(ct) < len(series) and s.modality == "CT" else "")


def load_series(info: SeriesInfo, *, progress: ProgressFn = _noop, cancel: CancelFn = _never) -> Volume:
    """Read the pixels of a series found by :func:`scan`."""
    if info.volume is not None:
        progress(1.0, "loaded")
        return info.volume
    if info.plan is None:
        raise LoadError("series has no geometry plan", code="unsupported")
    with quiet_libraries():
        return dicom.volume_from_plan(info.plan, progress=progress, cancel=cancel)


def open_volume(
    path: str | Path, *, series: int | None = None, progress: ProgressFn = _noop, cancel: CancelFn = _never
) -> Volume:
    """Scan ``path`` and load the chosen (or the given) series."""
    result = scan(path, progress=lambda f, m: progress(0.3 * f, m), cancel=cancel)
    idx = result.chosen if series is None else series
    if not 0 <= idx < len(result.series):
        raise LoadError(f"has {len(result.series)} series; series {idx + 1} does not exist", code="unsupported", path=path)
    return load_series(result.series[idx], progress=lambda f, m: progress(0.3 + 0.7 * f, m), cancel=cancel)
