"""The reader's measurements, lesion marks and findings for one case (no Qt).

Everything is in LPS millimetres, so a mark made on the oblique plane shows on any view that
passes through it and survives a change of zoom, layout or window. Objects are plain
dataclasses with ``to_dict``/``from_dict``; :class:`AnnotationSet` keeps them with an undo/redo
history and emits ``changed`` so views redraw and the case's reads log can store them.

Findings: per joint, the lesion kinds the reader ticked (or marked on the images) and the
modified New York grade they *suggest* (:func:`suggest_grade`). The suggestion is advice; the
reader's grade is set only by the reader (``state.reading``).
"""
from __future__ import annotations

import copy
import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sirad_viewer.state.viewer import Signal

SIDES = ("right", "left")


class LesionKind(str, enum.Enum):
    EROSION = "erosion"
    SCLEROSIS = "sclerosis"
    WIDTH_CHANGE = "joint-width change"
    PARTIAL_ANKYLOSIS = "partial ankylosis"
    TOTAL_ANKYLOSIS = "total ankylosis"


def _pt(p: Any) -> np.ndarray:
    a = np.asarray(p, dtype=float).reshape(3)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"annotation point {p!r} is not finite")
    return a


_ids = itertools.count(1)


@dataclass
class Ruler:
    """A distance between two LPS points (mm)."""

    p0: np.ndarray
    p1: np.ndarray
    id: int = field(default_factory=lambda: next(_ids))
    kind = "ruler"

    @property
    def points(self) -> list[np.ndarray]:
        return [self.p0, self.p1]

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.p1 - self.p0))

    def label(self) -> str:
        return f"{self.length_mm:.1f} mm"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "p0": self.p0.tolist(), "p1": self.p1.tolist(),
                "length_mm": round(self.length_mm, 2)}


@dataclass
class Angle:
    """The angle at ``vertex`` between the rays to ``a`` and ``b`` (degrees)."""

    a: np.ndarray
    vertex: np.ndarray
    b: np.ndarray
    id: int = field(default_factory=lambda: next(_ids))
    kind = "angle"

    @property
    def points(self) -> list[np.ndarray]:
        return [self.a, self.vertex, self.b]

    @property
    def degrees(self) -> float:
        u, v = self.a - self.vertex, self.b - self.vertex
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        if nu == 0 or nv == 0:
            return 0.0
        return float(np.degrees(np.arccos(np.clip(u @ v / (nu * nv), -1.0, 1.0))))

    def label(self) -> str:
        return f"{self.degrees:.1f}°"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "a": self.a.tolist(), "vertex": self.vertex.tolist(),
                "b": self.b.tolist(), "degrees": round(self.degrees, 2)}


@dataclass
class CircleROI:
    """A circle of ``radius_mm`` around ``center`` in the plane spanned by ``right`` and ``down``.

    ``stats`` (mean, sd, min, max HU, n) is filled by :func:`sirad_viewer.imaging.measure.roi_stats`.
    """

    center: np.ndarray
    radius_mm: float
    right: np.ndarray
    down: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))
    kind = "roi"

    @property
    def points(self) -> list[np.ndarray]:
        return [self.center, self.center + self.radius_mm * self.right]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.right, self.down)

    def label(self) -> str:
        s = self.stats
        if not s:
            return f"r {self.radius_mm:.1f} mm"
        return f"{s['mean']:.0f} ± {s['sd']:.0f} HU (n={int(s['n'])})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "center": self.center.tolist(), "radius_mm": self.radius_mm,
                "right": self.right.tolist(), "down": self.down.tolist(), "stats": dict(self.stats)}


@dataclass
class LesionMark:
    """A lesion the reader marked on one joint: a point (one entry) or a region (a polygon)."""

    lesion: LesionKind
    side: str
    points_lps: list[np.ndarray]
    id: int = field(default_factory=lambda: next(_ids))
    kind = "lesion"

    def __post_init__(self) -> None:
        self.lesion = LesionKind(self.lesion)
        if self.side not in SIDES:
            raise ValueError(f"lesion side {self.side!r}: expected right or left")

    @property
    def points(self) -> list[np.ndarray]:
        return self.points_lps

    def label(self) -> str:
        return f"{self.side[0].upper()} {self.lesion.value}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "lesion": self.lesion.value, "side": self.side,
                "points": [p.tolist() for p in self.points_lps]}


Annotation = Ruler | Angle | CircleROI | LesionMark


def side_at(points: Any, midline_point: Any, left_direction: Any = (1.0, 0.0, 0.0)) -> str:
    """The joint a mark belongs to: the side of the midsagittal plane its points lie on (mean).

    ``left_direction`` is the plane's normal towards the patient's left (+x in LPS, or the line
    from the right to the left joint when the pelvis lies rotated).
    """
    c = np.mean(np.atleast_2d(np.asarray(points, float)), axis=0)
    return "left" if float((c - _pt(midline_point)) @ _pt(left_direction)) > 0 else "right"


def from_dict(d: dict[str, Any]) -> Annotation:
    """Rebuild an annotation from :meth:`to_dict` output (checks the kind and the points)."""
    kind = d.get("kind")
    if kind == "ruler":
        return Ruler(_pt(d["p0"]), _pt(d["p1"]), id=int(d["id"]))
    if kind == "angle":
        return Angle(_pt(d["a"]), _pt(d["vertex"]), _pt(d["b"]), id=int(d["id"]))
    if kind == "roi":
        return CircleROI(_pt(d["center"]), float(d["radius_mm"]), _pt(d["right"]), _pt(d["down"]),
                         {k: float(v) for k, v in d.get("stats", {}).items()}, id=int(d["id"]))
    if kind == "lesion":
        return LesionMark(LesionKind(d["lesion"]), str(d["side"]), [_pt(p) for p in d["points"]], id=int(d["id"]))
    raise ValueError(f"unknown annotation kind {kind!r}")


def suggest_grade(findings: set[LesionKind] | set[str], *, n_erosions: int = 0) -> int:
    """The modified New York grade a joint's findings suggest (CLINICAL.md's table).

    total ankylosis -> 4; partial ankylosis, a joint-width change or marked erosions (3 or more
    marked) -> 3; erosions or sclerosis -> 2; nothing -> 0 (grade 1, "suspicious", is a judgement
    no checklist makes).
    """
    f = {LesionKind(x) for x in findings}
    if LesionKind.TOTAL_ANKYLOSIS in f:
        return 4
    if {LesionKind.PARTIAL_ANKYLOSIS, LesionKind.WIDTH_CHANGE} & f or n_erosions >= 3:
        return 3
    if {LesionKind.EROSION, LesionKind.SCLEROSIS} & f:
        return 2
    return 0


class AnnotationSet:
    """The case's annotations and checklist with undo/redo; ``changed`` fires after every edit."""

    def __init__(self) -> None:
        self.items: list[Annotation] = []
        self.checklist: dict[str, set[LesionKind]] = {s: set() for s in SIDES}
        self._undo: list[tuple[list[Annotation], dict[str, set[LesionKind]]]] = []
        self._redo: list[tuple[list[Annotation], dict[str, set[LesionKind]]]] = []
        self.changed = Signal()

    # --- history ---------------------------------------------------------------------------------
    def _snapshot(self) -> tuple[list[Annotation], dict[str, set[LesionKind]]]:
        return copy.deepcopy(self.items), copy.deepcopy(self.checklist)

    def _edit(self) -> None:
        self._undo.append(self._snapshot())
        self._redo.clear()

    @property
    def undo_depth(self) -> int:
        """How many edits can be undone (the reading's undo timeline counts edits by it)."""
        return len(self._undo)

    def undo(self) -> bool:
        if not self._undo:
            return False
        self._redo.append(self._snapshot())
        self.items, self.checklist = self._undo.pop()
        self.changed.emit()
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        self._undo.append(self._snapshot())
        self.items, self.checklist = self._redo.pop()
        self.changed.emit()
        return True

    # --- edits -----------------------------------------------------------------------------------
    def add(self, item: Annotation) -> Annotation:
        self._edit()
        self.items.append(item)
        self.changed.emit()
        return item

    def remove(self, item_id: int) -> None:
        self._edit()
        self.items = [a for a in self.items if a.id != item_id]
        self.changed.emit()

    def update(self, item: Annotation) -> None:
        """An item was edited in place (e.g. a ROI's statistics recomputed): no history entry."""
        self.changed.emit()

    def set_finding(self, side: str, kind: LesionKind | str, present: bool) -> None:
        kind = LesionKind(kind)
        if (kind in self.checklist[side]) == bool(present):
            return
        self._edit()
        (self.checklist[side].add if present else self.checklist[side].discard)(kind)
        self.changed.emit()

    def clear(self) -> None:
        """A new case: nothing carried over, no history."""
        self.items, self.checklist = [], {s: set() for s in SIDES}
        self._undo.clear()
        self._redo.clear()
        self.changed.emit()

    # --- findings --------------------------------------------------------------------------------
    def findings(self, side: str) -> set[LesionKind]:
        """Ticked kinds plus the kinds marked on the images for this joint."""
        marked = {a.lesion for a in self.items if isinstance(a, LesionMark) and a.side == side}
        return set(self.checklist[side]) | marked

    def suggested_grade(self, side: str) -> int:
        n_ero = sum(1 for a in self.items if isinstance(a, LesionMark) and a.side == side
                    and a.lesion is LesionKind.EROSION)
        return suggest_grade(self.findings(side), n_erosions=n_ero)

    def to_dict(self) -> dict[str, Any]:
        return {"items": [a.to_dict() for a in self.items],
                "findings": {s: sorted(k.value for k in self.findings(s)) for s in SIDES},
                "checklist": {s: sorted(k.value for k in self.checklist[s]) for s in SIDES},
                "suggested_grade": {s: self.suggested_grade(s) for s in SIDES}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AnnotationSet":
        out = cls()
        out.items = [from_dict(x) for x in d.get("items", [])]
        for s in SIDES:
            out.checklist[s] = {LesionKind(k) for k in d.get("checklist", {}).get(s, [])}
        return out
