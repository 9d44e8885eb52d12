"""Measuring and marking on a slice view: ruler, angle, circular ROI, lesion marks.

The Qt side only: mouse input becomes core objects of :mod:`sirad_viewer.state.annotations`
(LPS mm) added to ``state.annotations``, and the annotations that lie on a view's plane are
drawn on it. ROI statistics come from :func:`sirad_viewer.imaging.measure.roi_stats`.

ruler   press at one end, drag, release at the other
angle   three clicks: first arm, vertex, second arm
roi     press at the centre, drag out the radius
lesion  click for a point, or drag around a region (``state.lesion_kind``, ``state.lesion_side``)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PyQt6 import QtCore, QtGui

from sirad_viewer.state import annotations as an

if TYPE_CHECKING:
    from sirad_viewer.qt.slice_view import SliceView
    from sirad_viewer.state.viewer import ViewerState

TOOL_COLOUR = "#7cf0ff"
LESION_COLOURS = {an.LesionKind.EROSION: "#ff5a5a", an.LesionKind.SCLEROSIS: "#ffffff",
                  an.LesionKind.WIDTH_CHANGE: "#ffb347", an.LesionKind.PARTIAL_ANKYLOSIS: "#c28bff",
                  an.LesionKind.TOTAL_ANKYLOSIS: "#ff4fd8"}


def slice_step_mm(state: "ViewerState", normal: np.ndarray) -> float:
    vol = state.volume
    if vol is None:
        return 1.0
    return float(1.0 / np.sqrt(np.sum((vol.direction @ normal) ** 2 / vol.spacing ** 2)))


class ToolController:
    """Turns one view's mouse input into annotations and draws the annotations on its plane."""

    def __init__(self, state: "ViewerState", view: "SliceView") -> None:
        self.state = state
        self.view = view
        self.points: list[np.ndarray] = []  # the annotation being made
        self.preview: np.ndarray | None = None

    # --- input -----------------------------------------------------------------------------------
    def _world(self, pos: QtCore.QPointF) -> np.ndarray | None:
        return self.view.widget_to_world(pos)

    def press(self, pos: QtCore.QPointF) -> bool:
        w = self._world(pos)
        if w is None:
            return False
        tool = self.state.tool
        if tool in ("ruler", "roi", "lesion"):
            self.points = [w]
            self.preview = w
        elif tool == "angle":
            self.points.append(w)
            self.preview = w
            if len(self.points) == 3:
                self.state.annotations.add(an.Angle(*self.points))
                self.cancel()
        return True

    def move(self, pos: QtCore.QPointF) -> None:
        w = self._world(pos)
        if w is None:
            return
        self.preview = w
        if self.state.tool == "lesion" and self.points and np.linalg.norm(w - self.points[-1]) > 1.5:
            self.points.append(w)

    def hover(self, pos: QtCore.QPointF) -> None:
        if self.points:
            self.preview = self._world(pos)

    def release(self, pos: QtCore.QPointF) -> None:
        w = self._world(pos)
        tool = self.state.tool
        if not self.points or w is None:
            return
        if tool == "ruler":
            if np.linalg.norm(w - self.points[0]) >= 0.5:
                self.state.annotations.add(an.Ruler(self.points[0], w))
            self.cancel()
        elif tool == "roi":
            r = float(np.linalg.norm(w - self.points[0]))
            if r >= 1.0:
                self.add_roi(self.points[0], r)
            self.cancel()
        elif tool == "lesion":
            pts = self.points if len(self.points) >= 3 else self.points[:1]
            self.state.mark_lesion(list(pts))  # the side is where the mark lies (#13)
            self.cancel()

    def add_roi(self, center: np.ndarray, radius_mm: float) -> an.CircleROI:
        from sirad_viewer.imaging.measure import roi_stats

        img = self.view.slice_image()
        assert img is not None and self.state.volume is not None
        right = img.right_step / np.linalg.norm(img.right_step)
        down = img.down_step / np.linalg.norm(img.down_step)
        roi = an.CircleROI(np.asarray(center, float), float(radius_mm), right, down)
        roi.stats = roi_stats(self.state.volume, roi.center, roi.radius_mm, right, down)
        self.state.annotations.add(roi)
        return roi

    def cancel(self) -> None:
        self.points, self.preview = [], None
        self.view.update()

    # --- drawing ---------------------------------------------------------------------------------
    def on_plane(self, points: list[np.ndarray]) -> bool:
        """True when every point lies within half a slice of the view's plane."""
        plane = self.view.plane()
        tol = max(0.5, 0.5 * slice_step_mm(self.state, plane.normal)) + 1e-6
        return bool(np.all(np.abs(plane.distance(np.asarray(points))) <= tol))

    def draw(self, p: QtGui.QPainter) -> None:
        v = self.view
        for a in self.state.annotations.items:
            if not self.on_plane(a.points):
                continue
            qs = [v.world_to_widget(x) for x in a.points]
            if any(q is None for q in qs):
                continue
            colour = LESION_COLOURS.get(getattr(a, "lesion", None), TOOL_COLOUR)
            p.setPen(QtGui.QPen(QtGui.QColor(colour), 1.6))
            p.setBrush(QtCore.Qt.BrushStyle.NoBrush)
            if isinstance(a, an.Ruler):
                p.drawLine(qs[0], qs[1])
                for q in qs:
                    p.drawLine(q + QtCore.QPointF(-4, -4), q + QtCore.QPointF(4, 4))
            elif isinstance(a, an.Angle):
                p.drawPolyline(QtGui.QPolygonF(qs))
            elif isinstance(a, an.CircleROI):
                r = (qs[1] - qs[0])
                rad = float(np.hypot(r.x(), r.y()))
                p.drawEllipse(qs[0], rad, rad)
            elif isinstance(a, an.LesionMark):
                if len(qs) == 1:
                    p.drawEllipse(qs[0], 5, 5)
                    p.drawPoint(qs[0])
                else:
                    p.drawPolygon(QtGui.QPolygonF(qs))
            self._label(p, qs[-1] if not isinstance(a, an.CircleROI) else qs[1], a.label(), colour)
        # the annotation being made
        if self.points and self.preview is not None:
            p.setPen(QtGui.QPen(QtGui.QColor(TOOL_COLOUR), 1, QtCore.Qt.PenStyle.DashLine))
            qs = [v.world_to_widget(x) for x in self.points + [self.preview]]
            qs = [q for q in qs if q is not None]
            if self.state.tool == "roi" and len(qs) >= 2:
                r = qs[-1] - qs[0]
                rad = float(np.hypot(r.x(), r.y()))
                p.drawEllipse(qs[0], rad, rad)
            elif len(qs) >= 2:
                p.drawPolyline(QtGui.QPolygonF(qs))
            if self.state.tool == "ruler" and len(self.points) == 1:
                self._label(p, qs[-1], f"{np.linalg.norm(self.preview - self.points[0]):.1f} mm", TOOL_COLOUR)

    @staticmethod
    def _label(p: QtGui.QPainter, at: QtCore.QPointF, text: str, colour: str) -> None:
        fm = p.fontMetrics()
        r = QtCore.QRectF(at.x() + 8, at.y() - 8 - fm.height(), fm.horizontalAdvance(text) + 6, fm.height() + 2)
        p.fillRect(r, QtGui.QColor(0, 0, 0, 170))
        p.setPen(QtGui.QColor(colour))
        p.drawText(r.adjusted(3, 0, 0, 0), QtCore.Qt.AlignmentFlag.AlignLeft, text)
