"""Evented viewer state (no Qt). Views subscribe; tests and scripts drive it directly.

Like napari's ``ViewerModel``: the state owns the volume, the crosshair (an LPS point shared by
every view), the window/level, the oblique plane and the layout. Changing any of them emits an
event; the Qt views only redraw in response.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from sirad_viewer.imaging import reslice as rs
from sirad_viewer.imaging.display import PRESETS
from sirad_viewer.imaging.volume import Volume

if TYPE_CHECKING:
    from sirad_viewer.state.history import ViewSnapshot

log = logging.getLogger(__name__)

LAYOUTS = ("sij", "1x1", "1x2", "2x2", "joints", "prior")
VIEW_NAMES = ("axial", "coronal", "sagittal", "oblique")
TOOLS = ("navigate", "ruler", "angle", "roi", "lesion")
# a proposed oblique plane must tilt its sacral axis this much from craniocaudal (degrees) and
# stay near the mid-sagittal plane; a reader's own axis gave 33 degrees on the demo CT
OBLIQUE_TILT_RANGE = (10.0, 50.0)
OBLIQUE_MAX_LATERAL_DEG = 20.0


def axis_tilt_deg(direction: np.ndarray) -> tuple[float, float]:
    """(tilt from craniocaudal, lateral lean) in degrees of an LPS direction (either sense)."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    return (float(np.degrees(np.arccos(min(1.0, abs(d[2]))))), float(np.degrees(np.arcsin(min(1.0, abs(d[0]))))))


class Signal:
    """A minimal callback list: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)``."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if fn not in self._slots:
            self._slots.append(fn)
        return fn

    def disconnect(self, fn: Callable[..., Any]) -> None:
        if fn in self._slots:
            self._slots.remove(fn)

    def emit(self, *args: Any) -> None:
        for fn in list(self._slots):
            fn(*args)


@dataclass(frozen=True)
class Window:
    width: float
    level: float
    preset: str = "custom"


@dataclass
class Overlays:
    """What is drawn over the CT: the AI heatmap, segmentation labels and joint boxes.

    ``heatmap`` and ``labels`` are volumes on the displayed CT grid (or None). ``boxes`` are
    objects with ``side``, ``contains(points)`` and ``center_lps_mm`` (the localisation's boxes).
    """

    heatmap: Volume | None = None
    heatmap_visible: bool = True
    opacity: float = 0.45
    threshold: float = 0.2
    labels: Volume | None = None
    labels_mode: str = "off"  # off | outline | fill
    boxes: list = field(default_factory=list)
    boxes_visible: bool = True


class ViewerState:
    """Everything the reading views show, and the events they listen to."""

    def __init__(self) -> None:
        self.volume: Volume | None = None
        self.crosshair = np.zeros(3)
        self.window = Window(*PRESETS["bone"], "bone")
        self.sacral_axis: np.ndarray | None = None  # LPS direction; None: not set yet
        self.sacral_axis_source = ""  # "reader" (dragged on sagittal) or "segmentation"
        self.reader_axis_point: np.ndarray | None = None  # the middle of the reader's sacral line (LPS)
        self.layout = "sij"
        self.show_patient_text = True
        self.volume_changed = Signal()
        self.crosshair_changed = Signal()
        self.window_changed = Signal()
        self.oblique_changed = Signal()
        self.layout_changed = Signal()
        self.text_changed = Signal()
        self.overlays = Overlays()
        self.overlay_changed = Signal()
        # display options (#13): crosshair toggle, oblique interpolation and slab, the active tool
        self.show_crosshair = True
        self.display_changed = Signal()
        self.oblique_interp = "linear"  # nearest | linear | cubic
        self.oblique_slab_mm = 0.0
        self.oblique_slab_mode = "mean"  # mean | mip | minip
        self.oblique_warning = ""  # shown on the oblique view when a proposed plane was refused
        self.tool = "navigate"  # navigate | ruler | angle | roi | lesion
        self.lesion_kind = "erosion"
        self.lesion_side = "right"
        self.tool_changed = Signal()
        from sirad_viewer.state.annotations import AnnotationSet  # it imports Signal from here

        self.annotations = AnnotationSet()

    # --- display options -----------------------------------------------------------------------
    def set_crosshair_visible(self, on: bool) -> None:
        if bool(on) != self.show_crosshair:
            self.show_crosshair = bool(on)
            self.display_changed.emit()

    def set_oblique_render(self, *, interp: str | None = None, slab_mm: float | None = None,
                           slab_mode: str | None = None) -> None:
        """Interpolation (nearest, linear, cubic) and slab (thickness in mm, mean/mip/minip) of the oblique view."""
        if interp is not None:
            self.oblique_interp = rs.Interp(interp).value
        if slab_mm is not None:
            if not np.isfinite(slab_mm) or not 0 <= slab_mm <= 50:
                raise ValueError(f"slab thickness {slab_mm!r} mm: expected 0 to 50")
            self.oblique_slab_mm = float(slab_mm)
        if slab_mode is not None:
            self.oblique_slab_mode = rs.Slab(slab_mode).value
        self.oblique_changed.emit()

    def set_tool(self, tool: str, *, lesion_kind: str | None = None, side: str | None = None) -> None:
        if tool not in TOOLS:
            raise KeyError(f"unknown tool {tool!r}; known: {', '.join(TOOLS)}")
        self.tool = tool
        if lesion_kind is not None:
            from sirad_viewer.state.annotations import LesionKind

            self.lesion_kind = LesionKind(lesion_kind).value
        if side is not None:
            self.lesion_side = side
        self.tool_changed.emit(tool)

    # --- lesion marks (#13: a mark belongs to the joint on whose side it lies) ----------------------
    def midline(self) -> tuple[np.ndarray, np.ndarray]:
        """(point, normal towards the patient's left) of the midsagittal plane.

        From the AI's joint boxes once revealed (the boxes are on the views only then), else
        through the reader's sacral line, else through the volume's centre.
        """
        boxes = {getattr(b, "side", ""): b for b in self.overlays.boxes}
        if "left" in boxes and "right" in boxes:
            c_l = np.asarray(boxes["left"].center_lps_mm, float)
            c_r = np.asarray(boxes["right"].center_lps_mm, float)
            if np.linalg.norm(c_l - c_r) > 1.0:
                return (c_l + c_r) / 2.0, (c_l - c_r) / np.linalg.norm(c_l - c_r)
        if self.sacral_axis_source == "reader" and self.reader_axis_point is not None:
            return self.reader_axis_point.copy(), np.array([1.0, 0.0, 0.0])
        centre = self.volume.center_world() if self.volume is not None else np.zeros(3)
        return np.asarray(centre, float), np.array([1.0, 0.0, 0.0])

    def mark_lesion(self, points: list[np.ndarray]) -> Any:
        """Add a lesion mark of ``lesion_kind`` on the joint on whose side it lies; the side
        selection follows it (``tool_changed``), so the next mark defaults to that joint."""
        from sirad_viewer.state.annotations import LesionMark, side_at

        side = side_at(points, *self.midline())
        if side != self.lesion_side:
            self.lesion_side = side
            self.tool_changed.emit(self.tool)
        return self.annotations.add(LesionMark(self.lesion_kind, side, [np.asarray(p, float) for p in points]))

    # --- overlays ------------------------------------------------------------------------------
    def set_overlays(self, **changes: Any) -> None:
        """Change overlay fields (heatmap, opacity, threshold, labels, labels_mode, boxes, ...)."""
        for k, v in changes.items():
            if not hasattr(self.overlays, k):
                raise KeyError(f"unknown overlay setting {k!r}")
            if k in ("heatmap", "labels") and v is not None:
                v = v.reoriented()  # the displayed CT is in the canonical layout; the same permutation applies
            if k == "labels_mode" and v not in ("off", "outline", "fill"):
                raise ValueError("labels_mode is off, outline or fill")
            if k in ("opacity", "threshold"):
                v = float(min(1.0, max(0.0, v)))
            setattr(self.overlays, k, v)
        self.overlay_changed.emit()

    def clear_overlays(self) -> None:
        self.overlays = Overlays()
        self.overlay_changed.emit()

    # --- volume ------------------------------------------------------------------------------
    def set_volume(self, volume: Volume) -> None:
        """Show a volume (reoriented to the canonical axial layout, no interpolation)."""
        self.volume = volume.reoriented()
        self.overlays = Overlays()
        self.crosshair = self.volume.center_world()
        self.sacral_axis = None
        self.sacral_axis_source = ""
        self.reader_axis_point = None
        self.oblique_warning = ""
        self.annotations.clear()  # a new case carries nothing of the last one
        self.volume_changed.emit(self.volume)
        self.crosshair_changed.emit(self.crosshair.copy())
        self.oblique_changed.emit()

    # --- crosshair -----------------------------------------------------------------------------
    def set_crosshair(self, point: np.ndarray) -> None:
        p = np.asarray(point, dtype=float).reshape(3)
        if self.volume is not None:
            b = self.volume.bounds_world()
            p = np.clip(p, b[0], b[1])
        if np.allclose(p, self.crosshair):
            return
        self.crosshair = p
        self.crosshair_changed.emit(p.copy())

    def step_along(self, plane: rs.SlicePlane, steps: int) -> None:
        """Scroll a view: move the crosshair ``steps`` slices along the plane's normal."""
        if self.volume is None:
            return
        n = plane.normal
        # one slice = the voxel size along the normal direction
        sp = self.volume.spacing
        dirs = self.volume.direction
        step = float(1.0 / np.sqrt(np.sum((dirs @ n) ** 2 / sp ** 2)))
        self.set_crosshair(self.crosshair + n * step * steps)

    # --- window ----------------------------------------------------------------------------------
    def set_window(self, width: float, level: float, preset: str = "custom") -> None:
        w = Window(max(1.0, float(width)), float(level), preset)
        if w != self.window:
            self.window = w
            self.window_changed.emit(w)

    def apply_preset(self, name: str, presets: dict[str, tuple[float, float]] | None = None) -> None:
        table = dict(PRESETS)
        table.update(presets or {})
        if name not in table:
            raise KeyError(f"unknown window preset {name!r}; known: {sorted(table)}")
        self.set_window(*table[name], preset=name)

    # --- planes ----------------------------------------------------------------------------------
    def plane(self, name: str) -> rs.SlicePlane:
        """The plane a view shows, through the crosshair."""
        p = self.crosshair
        if name == "axial":
            return rs.axial(p)
        if name == "coronal":
            return rs.coronal(p)
        if name == "sagittal":
            return rs.sagittal(p)
        if name == "oblique":
            axis = self.sacral_axis if self.sacral_axis is not None else self.default_sacral_axis()
            return rs.oblique_coronal(p, axis)
        raise KeyError(name)

    @staticmethod
    def default_sacral_axis() -> np.ndarray:
        """Until the reader or the segmentation sets it: a typical sacral tilt (38 degrees)."""
        t = np.deg2rad(38.0)
        return np.array([0.0, -np.sin(t), np.cos(t)])

    def set_sacral_axis_from_line(self, p_a: np.ndarray, p_b: np.ndarray, *, source: str = "reader") -> None:
        """The reader dragged a line along the sacrum on the sagittal view (two LPS points)."""
        p_a, p_b = np.asarray(p_a, float), np.asarray(p_b, float)
        d = p_b - p_a
        if np.linalg.norm(d) < 5.0:
            raise ValueError("the line along the sacrum must be at least 5 mm long")
        self.sacral_axis = d / np.linalg.norm(d)
        self.sacral_axis_source = source
        self.oblique_warning = ""
        mid = (p_a + p_b) / 2.0
        if source == "reader":
            self.reader_axis_point = mid
        self.crosshair = mid
        self.crosshair_changed.emit(mid.copy())
        self.oblique_changed.emit()

    def set_sacral_axis(self, direction: np.ndarray, point: np.ndarray | None = None, *, source: str = "segmentation") -> None:
        """Set the oblique plane's sacral axis. A proposed (non-reader) axis is validated: one
        tilted outside :data:`OBLIQUE_TILT_RANGE` from craniocaudal, or leaning sideways, is
        refused; the reader's axis (or the default plane) stays, and ``oblique_warning`` says why."""
        d = np.asarray(direction, float)
        if not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
            raise ValueError(f"sacral axis {direction!r} is not a direction")
        tilt, lean = axis_tilt_deg(d)
        lo, hi = OBLIQUE_TILT_RANGE
        if source != "reader" and not (lo <= tilt <= hi and lean <= OBLIQUE_MAX_LATERAL_DEG):
            kept = "your axis" if self.sacral_axis_source == "reader" else "the default plane (38°)"
            self.oblique_warning = (f"{source} plane refused: {tilt:.0f}° from craniocaudal "
                                    f"(expected {lo:.0f}-{hi:.0f}°), lean {lean:.0f}°; showing {kept}")
            log.warning(self.oblique_warning)
            if point is not None:
                self.crosshair = np.asarray(point, float)
                self.crosshair_changed.emit(self.crosshair.copy())
            self.oblique_changed.emit()
            return
        self.oblique_warning = ""
        self.sacral_axis = d / np.linalg.norm(d)
        self.sacral_axis_source = source
        if source == "reader" and point is not None:
            self.reader_axis_point = np.asarray(point, float).copy()
        if point is not None:
            self.crosshair = np.asarray(point, float)
            self.crosshair_changed.emit(self.crosshair.copy())
        self.oblique_changed.emit()

    # --- undo of view changes (the timeline is sirad_viewer.state.history) ----------------------------
    def view_snapshot(self, views: dict[str, tuple[float, float, float]] | None = None) -> "ViewSnapshot":
        """The view as it is now; ``views`` (name -> zoom, pan x, pan y) comes from the display layer."""
        from sirad_viewer.state.history import ViewSnapshot

        w = self.window
        return ViewSnapshot(self.crosshair.copy(), (w.width, w.level, w.preset),
                            None if self.sacral_axis is None else self.sacral_axis.copy(), self.sacral_axis_source,
                            self.layout, dict(views or {}))

    def restore_view(self, snap: "ViewSnapshot") -> None:
        """Put back a snapshot's crosshair, window, oblique plane and layout (emitting the usual events)."""
        self.set_window(*snap.window)
        axis = None if snap.sacral_axis is None else np.asarray(snap.sacral_axis, float).copy()
        same_axis = (axis is None and self.sacral_axis is None) or (
            axis is not None and self.sacral_axis is not None and np.allclose(axis, self.sacral_axis))
        if not same_axis or snap.sacral_axis_source != self.sacral_axis_source:
            self.sacral_axis, self.sacral_axis_source = axis, snap.sacral_axis_source
            self.oblique_changed.emit()
        self.set_crosshair(snap.crosshair)
        self.set_layout(snap.layout)

    # --- layout and text -------------------------------------------------------------------------
    def set_layout(self, name: str) -> None:
        if name not in LAYOUTS:
            raise KeyError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
        if name != self.layout:
            self.layout = name
            self.layout_changed.emit(name)

    def set_show_patient_text(self, show: bool) -> None:
        if bool(show) != self.show_patient_text:
            self.show_patient_text = bool(show)
            self.text_changed.emit(self.show_patient_text)
