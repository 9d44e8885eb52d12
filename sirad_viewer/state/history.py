"""One undo/redo timeline for the reading: view changes and annotation edits (no Qt).

A view change (zoom, pan, window/level, slice position, layout, oblique plane) is recorded as
the *settled* view before it; a burst of changes of one kind (wheel steps, a drag) that follow
each other within ``coalesce_s`` becomes one step, so one Ctrl+Z undoes a whole wheel burst.
Annotation edits keep their own snapshots in :class:`~sirad_viewer.state.annotations.AnnotationSet`;
here each one is a marker in the same timeline, so undo and redo go back and forth through view
changes and edits in the order the reader made them.

The Qt layer captures and restores the view (``ViewerState.view_snapshot`` plus the views' zoom
and pan); this object only decides what is undone next.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

ANNOTATION = "annotation"  # a marker: the step is undone by AnnotationSet.undo()


@dataclass
class ViewSnapshot:
    """What a view change can change. ``views``: view name -> (zoom, pan x, pan y)."""

    crosshair: np.ndarray
    window: tuple[float, float, str]
    sacral_axis: np.ndarray | None
    sacral_axis_source: str
    layout: str
    views: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def same_as(self, other: "ViewSnapshot") -> bool:
        def eq(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and np.allclose(a, b))

        return (eq(self.crosshair, other.crosshair) and self.window == other.window
                and eq(self.sacral_axis, other.sacral_axis) and self.sacral_axis_source == other.sacral_axis_source
                and self.layout == other.layout and self.views == other.views)


@dataclass
class _Step:
    kind: str  # "view" or ANNOTATION
    view: ViewSnapshot | None = None


class UndoHistory:
    """Undo and redo stacks of steps; ``record_view`` coalesces bursts of one kind of change.

    Parameters
    ----------
    coalesce_s : float
        Changes of the same kind closer together than this (seconds, from the last one) are one step.
    clock : callable
        Monotonic time in seconds (tests pass a fake one).
    limit : int
        At most this many undo steps are kept (the oldest go).
    """

    def __init__(self, *, coalesce_s: float = 0.6, clock: Callable[[], float] = time.monotonic, limit: int = 200) -> None:
        self.coalesce_s = float(coalesce_s)
        self.clock = clock
        self.limit = int(limit)
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        self._burst: tuple[str, float] | None = None  # (kind of change, time of its last event)

    def __len__(self) -> int:
        return len(self._undo)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def clear(self) -> None:
        """A new case: nothing to undo."""
        self._undo.clear()
        self._redo.clear()
        self._burst = None

    def end_burst(self) -> None:
        """The gesture is over (mouse released): the next change is a new step even if it follows at once."""
        self._burst = None

    def _push(self, step: _Step) -> None:
        self._undo.append(step)
        del self._undo[: max(0, len(self._undo) - self.limit)]
        self._redo.clear()

    def record_view(self, before: ViewSnapshot, kind: str) -> bool:
        """A view change of ``kind`` (e.g. "scroll", "zoom", "window") happened; ``before`` is the view
        before it. Returns True when it started a new undo step, False when it joined the burst."""
        now = self.clock()
        joined = self._burst is not None and self._burst[0] == kind and now - self._burst[1] <= self.coalesce_s
        self._burst = (kind, now)
        if joined:
            return False
        self._push(_Step("view", before))
        return True

    def record_annotation(self) -> None:
        """An annotation edit (one entry on the annotation set's own undo stack)."""
        self._burst = None
        self._push(_Step(ANNOTATION))

    def undo(self, current: ViewSnapshot) -> _Step | None:
        """The step to undo (restore its ``view``, or undo one annotation edit); ``current`` goes to redo."""
        if not self._undo:
            return None
        step = self._undo.pop()
        self._redo.append(_Step(step.kind, current if step.kind == "view" else None))
        self._burst = None
        return step

    def redo(self, current: ViewSnapshot) -> _Step | None:
        if not self._redo:
            return None
        step = self._redo.pop()
        self._undo.append(_Step(step.kind, current if step.kind == "view" else None))
        self._burst = None
        return step

