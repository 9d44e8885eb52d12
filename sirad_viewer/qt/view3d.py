"""The 3D view: bone surface, the three slice planes and the crosshair (pyvistaqt).

The mesh is built in a worker (:func:`sirad_viewer.viz.bone_mesh.bone_mesh`); this widget only
shows it. Software OpenGL is slow, so no multisampling and at most 200k triangles. Clicking
on the bone (without dragging) moves the crosshair to the picked point.
"""
from __future__ import annotations

import logging

import numpy as np
from PyQt6 import QtCore, QtWidgets

from sirad_viewer.state.viewer import ViewerState
from sirad_viewer.viz.mesh_colour import BONE_COLOUR, base_colours, heatmap_colours

log = logging.getLogger(__name__)

PLANE_COLOURS = {"axial": "#4aa3ff", "coronal": "#5fd35f", "sagittal": "#ff7a59", "oblique": "#e8c547"}


class View3D(QtWidgets.QWidget):
    """pyvistaqt interactor showing the bone surface in LPS mm."""

    activated = QtCore.pyqtSignal(str)
    name = "3d"

    def __init__(self, state: ViewerState, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        from pyvistaqt import QtInteractor

        self.state = state
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.plotter = QtInteractor(self, multi_samples=0, auto_update=False)
        self.plotter.set_background("black")
        self.plotter.enable_lightkit()
        lay.addWidget(self.plotter.interactor)
        self.mesh = None
        self._plane_actors: dict[str, object] = {}
        self._cross_actor = None
        self.marker = None  # the orientation cube (L/R, P/A, S/I), added with the first mesh
        self._press: tuple[int, int] | None = None
        # crosshair moves come in bursts (scrolling): redraw the planes once per burst, not per step
        self._planes_timer = QtCore.QTimer(self)
        self._planes_timer.setSingleShot(True)
        self._planes_timer.setInterval(30)
        self._planes_timer.timeout.connect(self.update_planes)
        state.crosshair_changed.connect(lambda *_: self._planes_timer.start())
        state.oblique_changed.connect(lambda *_: self._planes_timer.start())
        state.volume_changed.connect(lambda *_: self.clear())
        iren = self.plotter.iren
        iren.add_observer("LeftButtonPressEvent", self._on_press)
        iren.add_observer("LeftButtonReleaseEvent", self._on_release)

    def clear(self) -> None:
        self.plotter.clear_actors()  # clear() would drop the lights too
        self.mesh = None
        self._plane_actors.clear()
        self._cross_actor = None
        self.plotter.render()

    @staticmethod
    def _base_rgb(mesh) -> np.ndarray:
        return base_colours(mesh.n_points, mesh.point_data["label"] if "label" in mesh.point_data else None)

    def set_heatmap(self, heatmap, *, threshold: float = 0.2, opacity: float = 0.6) -> None:
        """Colour the bone surface by the AI heatmap (a CT-grid volume) where it exceeds ``threshold``; None clears."""
        mesh = self.mesh
        if mesh is None or not mesh.n_points:
            return
        mesh.point_data["rgb"] = heatmap_colours(np.asarray(mesh.points, float), self._base_rgb(mesh), heatmap,
                                                 threshold=threshold, opacity=opacity)
        self.plotter.add_mesh(mesh, scalars="rgb", rgb=True, specular=0.3, name="bone", reset_camera=False)
        self.plotter.render()

    def set_mesh(self, mesh) -> None:
        """Show a bone surface (LPS mm); coloured per bone when it carries labels."""
        self.plotter.clear_actors()  # clear() would drop the lights too
        self._plane_actors.clear()
        self._cross_actor = None
        self.mesh = mesh
        if mesh is not None and mesh.n_points:
            if "label" in mesh.point_data:
                mesh.point_data["rgb"] = self._base_rgb(mesh)
                self.plotter.add_mesh(mesh, scalars="rgb", rgb=True, specular=0.3, name="bone")  # normals come with the mesh
            else:
                self.plotter.add_mesh(mesh, color=BONE_COLOUR, specular=0.3, name="bone")
            # anterior view, patient upright: camera in front (-y), superior (+z) up
            c = np.array(mesh.center)
            d = max(mesh.length, 1.0)
            self.plotter.camera_position = [tuple(c + np.array([0.0, -1.6 * d, 0.2 * d])), tuple(c), (0.0, 0.0, 1.0)]
        self.add_orientation_marker()
        self.update_planes()

    def add_orientation_marker(self) -> None:
        """An orientation cube in the lower left corner, its faces labelled L/R, P/A, S/I (viz/orientation.py)."""
        if self.marker is not None:
            return
        from sirad_viewer.viz.orientation import orientation_cube

        self.marker = orientation_cube()
        self.plotter.add_orientation_widget(self.marker, viewport=(0.0, 0.0, 0.24, 0.24))

    def update_planes(self) -> None:
        import pyvista as pv

        vol = self.state.volume
        if vol is None or self.mesh is None:
            self.plotter.render()
            return
        b = vol.bounds_world()
        size = float(np.max(b[1] - b[0]))
        for name in ("axial", "coronal", "sagittal", "oblique"):
            pl = self.state.plane(name)
            corners = [pl.point + s * pl.right * size / 2 + t * pl.down * size / 2 for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            if name != "oblique":
                corners = [np.clip(c, b[0], b[1]) for c in corners]
            outline = pv.lines_from_points(np.array(corners + [corners[0]]))
            self._plane_actors[name] = self.plotter.add_mesh(outline, color=PLANE_COLOURS[name], line_width=2,
                                                             name=f"plane-{name}", pickable=False)
        sphere = pv.Sphere(radius=max(2.0, size / 150), center=self.state.crosshair)
        self._cross_actor = self.plotter.add_mesh(sphere, color="#ffff00", name="crosshair", pickable=False)
        self.plotter.render()

    # --- picking ---------------------------------------------------------------------------------
    def _on_press(self, obj, event) -> None:
        self._press = self.plotter.iren.get_event_position()
        self.activated.emit(self.name)

    def _on_release(self, obj, event) -> None:
        pos = self.plotter.iren.get_event_position()
        if self._press is not None and abs(pos[0] - self._press[0]) + abs(pos[1] - self._press[1]) <= 3:
            self.pick_at(pos[0], pos[1])
        self._press = None

    def pick_at(self, x: int, y: int) -> np.ndarray | None:
        """Pick the bone at display pixel (x, y) (VTK: origin bottom-left); move the crosshair there."""
        import vtk

        if self.mesh is None:
            return None
        picker = vtk.vtkCellPicker()
        picker.SetTolerance(0.0005)
        if not picker.Pick(x, y, 0, self.plotter.renderer):
            return None
        actor = picker.GetActor()
        bone_actor = self.plotter.actors.get("bone")
        if actor is None or actor is not bone_actor:
            return None
        p = np.array(picker.GetPickPosition())
        self.state.set_crosshair(p)
        return p

    def render_image(self) -> np.ndarray:
        """The rendered frame as an (H, W, 3) uint8 array."""
        self.plotter.render()
        return np.asarray(self.plotter.screenshot(return_img=True))

