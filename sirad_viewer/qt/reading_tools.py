"""Reading tools wired into the main window: measuring/marking tools, the findings panel,
the hanging protocol, display hotkeys, cine, the oblique plane's rendering and the F1 sheet.

Kept out of ``app.py`` (which only calls :func:`install`) so the main window stays a thin
composition of views, panels and workers.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer.qt.findings import FindingsPanel
from sirad_viewer.qt.shortcuts import ShortcutSheet
from sirad_viewer.state.history import ANNOTATION, UndoHistory, ViewSnapshot
from sirad_viewer.state.reading import ReadingError

if TYPE_CHECKING:
    from sirad_viewer.qt.app import MainWindow

log = logging.getLogger(__name__)

HANGING = {"layout": "sij", "preset": "bone"}  # how a case opens
CINE_SPEEDS = (2, 5, 10, 20, 40)  # slices per second


class ReadingTools(QtCore.QObject):
    def __init__(self, win: "MainWindow") -> None:
        super().__init__(win)
        self.win = win
        st = win.state
        self.findings = FindingsPanel(st)
        dock = QtWidgets.QDockWidget("Findings and measurements", win)
        dock.setObjectName("findings-dock")
        dock.setWidget(self.findings)
        win.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
        win.tabifyDockWidget(win.series_dock, dock)
        dock.raise_()
        self.dock = dock
        self.cine = QtCore.QTimer(self)
        self.cine.timeout.connect(self._cine_step)
        self.cine_speed = 10
        self._cine_dir = 1
        self.sheet: ShortcutSheet | None = None
        self.key_images: list[dict[str, str]] = []  # {"title", "png_b64"}: the case's key images
        from sirad_viewer.qt.prior import PriorComparison

        self.prior = PriorComparison(win)
        self.undo = ViewUndo(win)  # after the hanging protocol's hook: a case opens with nothing to undo
        self._build_menus()
        st.volume_changed.connect(lambda *_: QtCore.QTimer.singleShot(0, self.hang))
        st.annotations.changed.connect(self._save_annotations)

    # --- menus and keys ----------------------------------------------------------------------
    def _key(self, menu: QtWidgets.QMenu, label: str, key: str | None, fn: Callable[[], object],
             checkable: bool = False) -> QtGui.QAction:
        act = menu.addAction(label)
        if key:
            act.setShortcut(QtGui.QKeySequence(key))
            act.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        act.setCheckable(checkable)
        act.triggered.connect(lambda *_: fn())
        return act

    def _build_menus(self) -> None:
        win, st = self.win, self.win.state
        mb = win.menuBar()
        help_menu = next((a.menu() for a in mb.actions() if a.text().replace("&", "") == "Help"), None)
        t = QtWidgets.QMenu("&Tools", win)
        mb.insertMenu(help_menu.menuAction() if help_menu else None, t)
        self._key(t, "Navigate", None, lambda: st.set_tool("navigate"))
        self._key(t, "Ruler", "M", lambda: st.set_tool("ruler"))
        self._key(t, "Angle", "A", lambda: st.set_tool("angle"))
        self._key(t, "Circular ROI (HU statistics)", "R", lambda: st.set_tool("roi"))
        self._key(t, "Lesion mark", "E", lambda: st.set_tool("lesion"))
        t.addSeparator()
        self._key(t, "Undo (marks and view changes)", "Ctrl+Z", self.undo.undo)
        self._key(t, "Redo", "Ctrl+Shift+Z", self.undo.redo)
        self._key(t, "Remove the last annotation", "Delete", self.remove_last)
        t.addSeparator()
        self._key(t, "Key image of the active view (into the case report)", "Ctrl+I", self.capture_key_image)
        d = QtWidgets.QMenu("&Display", win)
        mb.insertMenu(t.menuAction(), d)
        self.cross_action = self._key(d, "Crosshair", "C", lambda: st.set_crosshair_visible(self.cross_action.isChecked()),
                                      checkable=True)
        self.cross_action.setChecked(True)
        self._key(d, "Reset / fit the active view", "F", self.reset_view)
        for i, name in enumerate(("sij", "1x1", "1x2", "2x2"), start=1):
            self._key(d, f"Layout {name}", f"Ctrl+{i}", lambda n=name: st.set_layout(n))
        for key, preset in (("B", "bone"), ("N", "bone-narrow"), ("T", "soft-tissue")):
            self._key(d, f"Window {preset}", key, lambda p=preset: st.apply_preset(p))
        d.addSeparator()
        self._key(d, "Cine play / stop", "Space", self.toggle_cine)
        self._key(d, "Cine slower", "[", lambda: self.set_cine_speed(-1))
        self._key(d, "Cine faster", "]", lambda: self.set_cine_speed(+1))
        d.addSeparator()
        self._key(d, "Open prior CT for comparison (registered, linked)...", None, self.prior.open_dialog)
        self.mirror_action = self._key(d, "Mirror the prior left-right", None,
                                       lambda: self.prior.set_mirrored(self.mirror_action.isChecked()), checkable=True)
        d.addSeparator()
        ob = d.addMenu("Oblique plane")
        grp = QtGui.QActionGroup(ob)
        for interp in ("nearest", "linear", "cubic"):
            a = self._key(ob, f"{interp} interpolation", None, lambda i=interp: st.set_oblique_render(interp=i), True)
            a.setChecked(interp == st.oblique_interp)
            grp.addAction(a)
        ob.addSeparator()
        grp2 = QtGui.QActionGroup(ob)
        for mm in (0, 3, 5, 10, 20):
            a = self._key(ob, "thin (no slab)" if mm == 0 else f"slab {mm} mm", None,
                          lambda m=mm: st.set_oblique_render(slab_mm=m), True)
            a.setChecked(mm == 0)
            grp2.addAction(a)
        ob.addSeparator()
        grp3 = QtGui.QActionGroup(ob)
        for mode in ("mean", "mip", "minip"):
            a = self._key(ob, f"slab {mode.upper() if mode != 'mean' else 'average'}", None,
                          lambda m=mode: st.set_oblique_render(slab_mode=m), True)
            a.setChecked(mode == "mean")
            grp3.addAction(a)
        if help_menu is not None:
            first = help_menu.actions()[0] if help_menu.actions() else None
            act = QtGui.QAction("Keyboard and mouse shortcuts", win)
            act.setShortcut(QtGui.QKeySequence("F1"))
            act.triggered.connect(self.show_shortcuts)
            help_menu.insertAction(first, act)
            self.help_action = act

    # --- actions -------------------------------------------------------------------------------
    def show_shortcuts(self) -> ShortcutSheet:
        if self.sheet is None:
            self.sheet = ShortcutSheet(self.win)
        self.sheet.show()
        self.sheet.raise_()
        return self.sheet

    def capture_key_image(self) -> dict[str, str] | None:
        """The active view as drawn (scale bar, position, window, the reader's marks) for the case report."""
        import base64

        v = self.active()
        if self.win.state.volume is None:
            return None
        buf = QtCore.QBuffer()
        buf.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
        v.grab().save(buf, "PNG")
        st = self.win.state
        title = (f"{v.header_lines()[0]}, W {st.window.width:.0f} L {st.window.level:.0f}, "
                 f"crosshair ({st.crosshair[0]:.1f}, {st.crosshair[1]:.1f}, {st.crosshair[2]:.1f}) mm LPS")
        item = {"title": title, "png_b64": base64.b64encode(bytes(buf.data())).decode()}
        self.key_images.append(item)
        self.win.statusBar().showMessage(f"key image {len(self.key_images)} kept for the case report")
        return item

    def remove_last(self) -> None:
        items = self.win.state.annotations.items
        if items:
            self.win.state.annotations.remove(items[-1].id)

    def active(self):
        from sirad_viewer.qt.slice_view import SliceView

        v = self.win.views.get(self.win.active_view)
        return v if isinstance(v, SliceView) else self.win.views["oblique"]

    def reset_view(self) -> None:
        v = self.active()
        v.reset_view()
        if v.name == "oblique" and v is self.win.views["oblique"]:
            self.frame_oblique()

    def frame_oblique(self) -> None:
        """Fit the oblique plane's width to its (wide) panel, centred on the crosshair: both joints in view."""
        v = self.win.views["oblique"]
        img = v.slice_image()
        if img is None or v.width() < 10:
            return
        h, w = img.pixels.shape
        ph, pw = img.pixel_mm
        fit = min(v.width() / (w * pw), v.height() / (h * ph))
        # full width, but at least FRAME_HEIGHT_MM from top to bottom: a joint is 50-60 mm long and
        # the pelvis may lie rolled, so a narrow field of view must not cut the joints off (#13)
        v.zoom = float(np.clip(min(v.width() / (w * pw), v.height() / FRAME_HEIGHT_MM) / fit, 1.0, 16.0))
        v.pan = QtCore.QPointF(0, 0)
        v.center_on(self.win.state.crosshair)
        p = v.world_to_widget(self.win.state.crosshair)
        if p is not None:  # only vertically: keep the full width in view
            v.pan = QtCore.QPointF(0, v.pan.y())
        v.update()

    def hang(self) -> None:
        """The hanging protocol: SIJ layout, bone window, the oblique plane framing both joints."""
        st = self.win.state
        self.key_images = []  # a new case
        if st.volume is None:
            return
        if st.layout != HANGING["layout"]:
            st.set_layout(HANGING["layout"])
        st.apply_preset(HANGING["preset"])
        if st.sacral_axis_source != "reader":  # both joints in view, found from bone (the AI stays hidden, #13)
            from sirad_viewer.imaging.sacral_plane import sij_centre

            centre = sij_centre(st.volume)
            if centre is not None:
                st.set_crosshair(centre)
        QtWidgets.QApplication.processEvents()
        self.frame_oblique()
        self.undo.reset()  # how a case opens is not a step to undo

    def toggle_cine(self) -> None:
        if self.cine.isActive():
            self.cine.stop()
        else:
            self.cine.start(int(1000 / self.cine_speed))

    def set_cine_speed(self, delta: int) -> None:
        i = CINE_SPEEDS.index(self.cine_speed) if self.cine_speed in CINE_SPEEDS else 2
        self.cine_speed = CINE_SPEEDS[int(np.clip(i + delta, 0, len(CINE_SPEEDS) - 1))]
        if self.cine.isActive():
            self.cine.start(int(1000 / self.cine_speed))
        self.win.statusBar().showMessage(f"cine {self.cine_speed} slices/s")

    def _cine_step(self) -> None:
        st = self.win.state
        if st.volume is None:
            self.cine.stop()
            return
        before = st.crosshair.copy()
        st.step_along(self.active().plane(), self._cine_dir)
        if np.allclose(before, st.crosshair):  # at the end: come back
            self._cine_dir = -self._cine_dir

    def _save_annotations(self) -> None:
        """Keep the case's annotations with its reads (the reads log), so they survive a restart."""
        r = self.win.reading
        if r is not None and self.win.state.volume is not None:
            try:
                r.record_annotations(self.win.state.annotations.to_dict())  # the reading owns the record
            except ReadingError as exc:
                self.win.statusBar().showMessage(exc.user_message())


class ViewUndo(QtCore.QObject):
    """Ctrl+Z / Ctrl+Shift+Z over view changes and annotation edits, in the order they were made.

    The timeline is the core :class:`~sirad_viewer.state.history.UndoHistory`; this object feeds it
    (the state's crosshair, window, oblique plane and layout events and the views' zoom and pan) and
    restores what it hands back. ``_last`` is the settled view, refreshed after every change once the
    event loop has run, so a burst records the view from before its first event.
    """

    def __init__(self, win: "MainWindow") -> None:
        super().__init__(win)
        self.win = win
        st = win.state
        self.history = UndoHistory()
        self._direction = -1
        self._restoring = False
        self._ann_depth = st.annotations.undo_depth
        self._last = self.snapshot()
        self._refresh_pending = False
        st.volume_changed.connect(self._new_case)
        st.crosshair_changed.connect(lambda *_: self._changed("position"))
        st.window_changed.connect(lambda *_: self._changed("window"))
        st.oblique_changed.connect(lambda *_: self._changed("oblique"))
        st.layout_changed.connect(lambda *_: self._changed("layout"))
        st.annotations.changed.connect(self._on_annotations)
        for v in self._views().values():
            v.view_changed.connect(self._changed)
            v.gesture_ended.connect(self.history.end_burst)

    def _views(self) -> dict:
        from sirad_viewer.qt.slice_view import SliceView

        return {n: v for n, v in self.win.views.items() if isinstance(v, SliceView) and n != "prior"}

    def snapshot(self) -> ViewSnapshot:
        return self.win.state.view_snapshot({n: (float(v.zoom), float(v.pan.x()), float(v.pan.y()))
                                             for n, v in self._views().items()})

    def _settle(self) -> None:
        self._refresh_pending = False
        self._last = self.snapshot()

    def _schedule_settle(self) -> None:
        if not self._refresh_pending:
            self._refresh_pending = True
            QtCore.QTimer.singleShot(0, self._settle)

    def _changed(self, kind: str) -> None:
        if self._restoring or self.win.state.volume is None:
            return
        if self.snapshot().same_as(self._last):  # e.g. the slab or interpolation: nothing the view undo holds
            return
        self.history.record_view(self._last, kind)
        self._schedule_settle()

    def _new_case(self, *_: object) -> None:
        self.history.clear()
        self._restoring = True  # the opening steps (centre, hanging protocol) are not undoable

        def done() -> None:
            self._restoring = False
            self._ann_depth = self.win.state.annotations.undo_depth
            self._settle()

        QtCore.QTimer.singleShot(0, done)

    def reset(self) -> None:
        """Nothing to undo; the view as it is now is the starting point."""
        self.history.clear()
        self._ann_depth = self.win.state.annotations.undo_depth
        self._settle()

    def _on_annotations(self) -> None:
        depth = self.win.state.annotations.undo_depth
        if not self._restoring:
            for _ in range(max(0, depth - self._ann_depth)):
                self.history.record_annotation()
        self._ann_depth = depth

    def _apply(self, step) -> None:
        st = self.win.state
        self._restoring = True
        try:
            if step.kind == ANNOTATION:
                (st.annotations.undo if self._direction < 0 else st.annotations.redo)()
            else:
                st.restore_view(step.view)
                for n, v in self._views().items():
                    if n in step.view.views:
                        z, x, y = step.view.views[n]
                        v.zoom, v.pan = z, QtCore.QPointF(x, y)
                        v.update()
        finally:
            self._restoring = False
            self._ann_depth = st.annotations.undo_depth
        self._settle()

    def undo(self) -> bool:
        step = self.history.undo(self.snapshot())
        if step is None:
            return False
        self._direction = -1
        self._apply(step)
        return True

    def redo(self) -> bool:
        step = self.history.redo(self.snapshot())
        if step is None:
            return False
        self._direction = 1
        self._apply(step)
        return True


FRAME_HEIGHT_MM = 120.0


def install(win: "MainWindow") -> ReadingTools:
    return ReadingTools(win)
