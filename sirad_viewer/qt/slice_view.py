"""One 2D reading view (axial, coronal, sagittal or oblique coronal).

Pixels come from :func:`sirad_viewer.imaging.reslice.reslice`, go through the window lookup table
into a greyscale ``QImage``, and the painter's transform does the zoom and the mm aspect ratio.
Mouse: left sets the crosshair (shift-drag on the sagittal view, or the "sacral axis" mode, draws
the line along the sacrum that defines the oblique plane), right-drag changes window/level,
middle-drag pans, wheel scrolls, ctrl+wheel zooms about the cursor. Keys: arrows and Page
Up/Down scroll. With a measuring tool active (``state.tool``), left clicks go to
:class:`sirad_viewer.qt.tools.ToolController` instead.

Wheel steps are coalesced: a burst of wheel events adds up and one re-slice and one paint
follow (the reslice happens in ``paintEvent``, only for the latest requested slice). The
text blocks (header, patient text, orientation letters, readout, scale bar) are laid out so
they never overlap, on dark plates, and the crosshair leaves a gap around its centre.
"""
from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer.imaging import reslice as rs
from sirad_viewer.imaging.display import window_lut
from sirad_viewer.state.viewer import ViewerState

_LETTERS = {0: ("R", "L"), 1: ("A", "P"), 2: ("I", "S")}
CROSS_COLOURS = {"axial": "#4aa3ff", "coronal": "#5fd35f", "sagittal": "#ff7a59", "oblique": "#e8c547"}
CROSS_GAP_PX = 14  # the crosshair stops this far from its centre, leaving the point itself visible
HANDLE_MM = 60.0  # distance of the oblique trace's rotation handles from the crosshair on the sagittal view
_AXIS_NAMES = {"axial": (2, "z"), "coronal": (1, "y"), "sagittal": (0, "x")}


def direction_letters(v: np.ndarray) -> str:
    """Orientation label for an LPS direction: the dominant letters (e.g. 'L', 'SA')."""
    order = np.argsort(-np.abs(v))
    out = ""
    for a in order[:2]:
        if abs(v[a]) > 0.25:
            out += _LETTERS[int(a)][1 if v[a] > 0 else 0]
    return out or "?"


def wrap_lines(lines: list[str], fm: QtGui.QFontMetricsF, max_w: float) -> str:
    """Join ``lines`` with newlines, fitting each into ``max_w`` pixels.

    A warning (a line starting with "⚠") is broken at spaces: the oblique view's "plane refused"
    warning is longer than a 2x2 cell is wide and was cut off mid-sentence at the view's edge.
    Other lines (hints, titles) are elided with "…" so small views keep room for the image.
    """
    out: list[str] = []
    for line in lines:
        if not line.startswith("⚠"):
            out.append(fm.elidedText(line, QtCore.Qt.TextElideMode.ElideRight, max_w))
            continue
        cur = ""
        for word in line.split(" "):
            trial = f"{cur} {word}" if cur else word
            if cur and fm.horizontalAdvance(trial) > max_w:
                out.append(cur)
                cur = "  " + word  # continuation lines indented
            else:
                cur = trial
        out.append(cur)
    return "\n".join(out)


def nice_bar_mm(max_mm: float) -> float:
    for mm in (200, 100, 50, 20, 10, 5, 2, 1):
        if mm <= max_mm:
            return float(mm)
    return 1.0


class SliceView(QtWidgets.QWidget):
    """Shows ``state.plane(name)`` through the crosshair."""

    activated = QtCore.pyqtSignal(str)
    view_changed = QtCore.pyqtSignal(str)  # "zoom" or "pan": this view's own zoom/pan changed (undo records it)
    gesture_ended = QtCore.pyqtSignal()  # a mouse gesture ended: the next change is a new undo step

    def __init__(self, state: ViewerState, name: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.name = name
        self.zoom = 1.0
        self.pan = QtCore.QPointF(0, 0)
        self.smooth = True
        self.axis_mode = False  # left-drag draws the sacral axis line
        self.setMinimumSize(160, 160)
        self.setMouseTracking(True)
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.setAttribute(QtCore.Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self._image: rs.SliceImage | None = None
        self._grey: np.ndarray | None = None
        self._qimage: QtGui.QImage | None = None
        self._lut = window_lut(state.window.width, state.window.level)
        self._cursor_pos: QtCore.QPointF | None = None  # the readout is computed from this at paint time
        self._pending_steps = 0
        self.reslice_count = 0  # how many times this view re-sliced (tests and benchmarks)
        self.paint_count = 0
        self._drag: tuple[str, QtCore.QPointF, object] | None = None
        self._line: tuple[np.ndarray, np.ndarray] | None = None
        state.volume_changed.connect(self._on_volume)
        state.crosshair_changed.connect(self._on_crosshair)
        state.window_changed.connect(self._on_window)
        state.oblique_changed.connect(self._invalidate)
        state.text_changed.connect(lambda *_: self.update())
        state.display_changed.connect(lambda *_: self.update())
        state.annotations.changed.connect(lambda *_: self.update())
        from sirad_viewer.qt.tools import ToolController

        self.tools = ToolController(state, self)
        state.overlay_changed.connect(self._on_overlay)
        self._overlay: np.ndarray | None = None
        self._overlay_qimage: QtGui.QImage | None = None
        self._overlay_valid = False
        self.focus_point: np.ndarray | None = None  # side-by-side joints: keep this LPS point centred
        self.caption = ""

    # --- state events ----------------------------------------------------------------------
    def _on_volume(self, *_: object) -> None:
        self.zoom, self.pan = 1.0, QtCore.QPointF(0, 0)
        self._cursor_pos = None  # nothing of the last case's readout stays
        self._pending_steps = 0
        self._invalidate()

    def _on_crosshair(self, point: np.ndarray) -> None:
        # in-plane moves only need the crosshair lines redrawn; a move along the normal re-slices
        if self._image is None or self.name == "oblique" or abs(self._plane_offset(point)) > 1e-6:
            self._image = None
            self._overlay_valid = False
        self.update()

    def _plane_offset(self, point: np.ndarray) -> float:
        if self._image is None:
            return 1.0
        n = np.cross(self._image.right_step, self._image.down_step)
        n /= np.linalg.norm(n)
        return float((np.asarray(point) - self._image.origin) @ n)

    def _on_window(self, w: object) -> None:
        self._lut = window_lut(self.state.window.width, self.state.window.level)
        self._grey = None
        self.update()

    def _invalidate(self, *_: object) -> None:
        self._image = None
        self._overlay_valid = False
        self.update()

    def _on_overlay(self, *_: object) -> None:
        self._overlay_valid = False
        self.update()

    def center_on(self, point: np.ndarray) -> None:
        """Pan (keeping the zoom) so that the LPS point sits at the middle of the view."""
        p = self.world_to_widget(np.asarray(point, float))
        if p is None:
            return
        self.pan = self.pan + QtCore.QPointF(self.width() / 2 - p.x(), self.height() / 2 - p.y())
        self.view_changed.emit("pan")
        self.update()

    def zoom_at(self, pos: QtCore.QPointF, factor: float) -> None:
        """Zoom by ``factor`` keeping the point under ``pos`` where it is."""
        before = self.widget_to_world(pos)
        self.zoom = float(np.clip(self.zoom * factor, 0.25, 16.0))
        if before is not None:
            after = self.world_to_widget(before)
            if after is not None:
                self.pan = self.pan + (pos - after)
        self.view_changed.emit("zoom")
        self.update()

    def reset_view(self) -> None:
        """Fit the slice to the view (zoom 1, no pan)."""
        self.zoom, self.pan = 1.0, QtCore.QPointF(0, 0)
        self.view_changed.emit("zoom")
        self.update()

    def set_focus(self, point: np.ndarray | None, zoom: float = 1.0, caption: str = "") -> None:
        self.focus_point = None if point is None else np.asarray(point, float)
        self.zoom, self.pan, self.caption = zoom, QtCore.QPointF(0, 0), caption
        self.update()

    def overlay(self) -> np.ndarray | None:
        """The RGBA overlay drawn over this slice (heatmap, labels, boxes), or None."""
        from sirad_viewer.viz.overlay import compose

        img = self.slice_image()
        if img is None:
            return None
        if not self._overlay_valid:
            self._overlay = compose(img, self.state.overlays)
            self._overlay_qimage = None
            if self._overlay is not None:
                h, w = self._overlay.shape[:2]
                self._overlay = np.ascontiguousarray(self._overlay)
                self._overlay_qimage = QtGui.QImage(self._overlay.data, w, h, 4 * w, QtGui.QImage.Format.Format_RGBA8888)
            self._overlay_valid = True
        return self._overlay

    # --- pixels ------------------------------------------------------------------------------
    def plane(self) -> rs.SlicePlane:
        return self.state.plane(self.name)

    def slice_image(self) -> rs.SliceImage | None:
        if self.state.volume is None:
            return None
        if self._image is None:
            st = self.state
            if self.name == "oblique":
                self._image = rs.reslice(st.volume, self.plane(), interp=st.oblique_interp,
                                         thickness_mm=st.oblique_slab_mm, slab=st.oblique_slab_mode)
            else:
                self._image = rs.reslice(st.volume, self.plane())
            self.reslice_count += 1
            self._grey = None
        return self._image

    def grey(self) -> np.ndarray | None:
        """The windowed 8-bit image this view draws (before scaling)."""
        img = self.slice_image()
        if img is None:
            return None
        if self._grey is None:
            pix = img.pixels
            if pix.dtype == np.int16:
                self._grey = np.ascontiguousarray(self._lut[np.bitwise_xor(pix.view(np.uint16), np.uint16(0x8000))])
            else:
                from sirad_viewer.imaging.display import apply_window

                self._grey = np.ascontiguousarray(apply_window(pix, self.state.window.width, self.state.window.level))
            h, w = self._grey.shape
            self._qimage = QtGui.QImage(self._grey.data, w, h, w, QtGui.QImage.Format.Format_Grayscale8)
        return self._grey

    def image_transform(self) -> QtGui.QTransform:
        """Image pixel (col, row) -> widget coordinates (fit, mm aspect, zoom, pan)."""
        img = self.slice_image()
        t = QtGui.QTransform()
        if img is None:
            return t
        ph, pw = img.pixel_mm
        h, w = img.pixels.shape
        fit = min(self.width() / (w * pw), self.height() / (h * ph)) * self.zoom
        sx, sy = pw * fit, ph * fit
        ox = (self.width() - w * sx) / 2 + self.pan.x()
        oy = (self.height() - h * sy) / 2 + self.pan.y()
        if self.focus_point is not None:
            r, c = img.pixel_of(self.focus_point)
            ox = self.width() / 2 - (c + 0.5) * sx + self.pan.x()
            oy = self.height() / 2 - (r + 0.5) * sy + self.pan.y()
        t.translate(ox, oy)
        t.scale(sx, sy)
        return t

    def widget_to_world(self, pos: QtCore.QPointF) -> np.ndarray | None:
        img = self.slice_image()
        if img is None:
            return None
        inv, ok = self.image_transform().inverted()
        if not ok:
            return None
        p = inv.map(pos)
        return img.world(p.y() - 0.5, p.x() - 0.5)

    def world_to_widget(self, point: np.ndarray) -> QtCore.QPointF | None:
        img = self.slice_image()
        if img is None:
            return None
        r, c = img.pixel_of(point)
        return self.image_transform().map(QtCore.QPointF(c + 0.5, r + 0.5))

    # --- painting ------------------------------------------------------------------------------
    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt API
        self.paint_count += 1
        p = QtGui.QPainter(self)
        p.fillRect(self.rect(), QtGui.QColor("black"))
        grey = self.grey()
        if grey is None or self._qimage is None:
            p.setPen(QtGui.QColor("#777"))
            p.drawText(self.rect(), QtCore.Qt.AlignmentFlag.AlignCenter, f"{self.name}\n(open a CT: File > Open)")
            p.end()
            return
        p.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform, self.smooth)
        p.save()
        p.setTransform(self.image_transform())
        h, w = grey.shape
        p.drawImage(QtCore.QRectF(0, 0, w, h), self._qimage)
        if self.overlay() is not None and self._overlay_qimage is not None:
            p.drawImage(QtCore.QRectF(0, 0, w, h), self._overlay_qimage)
        p.restore()
        self._draw_overlays(p)
        p.end()

    def _draw_corner_graphics(self, p: QtGui.QPainter, graphics: dict[str, tuple[QtCore.QRectF, str]]) -> None:
        """Scale bar, the heatmap's colour bar and the boxes' legend, where :meth:`layout_overlays` put them."""
        from sirad_viewer.viz.overlay import BOX_COLOURS, HEAT_LUT

        A = QtCore.Qt.AlignmentFlag
        p.setFont(self._font())
        if "scalebar" in graphics:
            r, label = graphics["scalebar"]
            mm, L = self._scale_bar() or (0.0, 0.0)
            cx = r.center().x()
            p.setPen(QtGui.QPen(QtGui.QColor("#e6e6e6"), 2))
            p.drawLine(QtCore.QPointF(cx - L / 2, r.top() + 3), QtCore.QPointF(cx + L / 2, r.top() + 3))
            p.drawText(QtCore.QRectF(r.left(), r.top() + 6, r.width(), r.height() - 6), A.AlignHCenter | A.AlignTop, label)
        for side in ("right", "left"):
            if f"legend_{side}" in graphics:
                r, text = graphics[f"legend_{side}"]
                cr, cg, cb = BOX_COLOURS[side]
                p.fillRect(r, QtGui.QColor(0, 0, 0, 150))
                p.setPen(QtGui.QPen(QtGui.QColor(cr, cg, cb), 1.5))
                p.drawRect(QtCore.QRectF(r.right() - 10, r.top() + 2, 9, 9))
                p.drawText(QtCore.QRectF(r.left(), r.top(), r.width() - 14, r.height()), A.AlignRight, text)
        if "colourbar" in graphics:
            ov = self.state.overlays
            r, _ = graphics["colourbar"]
            n = max(int(r.height()), 1)
            for i in range(n):
                v = 1.0 - i / max(n - 1, 1)
                cr, cg, cb = (int(c) for c in HEAT_LUT[int(v * 255)])
                col = QtGui.QColor(cr, cg, cb) if v >= ov.threshold else QtGui.QColor(40, 40, 40)
                p.fillRect(QtCore.QRectF(r.left(), r.top() + i, r.width(), 1), col)
            p.setPen(QtGui.QColor("#e6e6e6"))
            for name in ("colourbar_max", "colourbar_min"):
                lr, text = graphics[name]
                p.fillRect(lr, QtGui.QColor(0, 0, 0, 150))
                p.drawText(lr, A.AlignRight | A.AlignVCenter, text)
            if "colourbar_name" in graphics:
                nr, text = graphics["colourbar_name"]
                p.save()
                p.translate(nr.left(), nr.bottom())
                p.rotate(-90)  # along the bar, so it takes no width
                p.drawText(QtCore.QRectF(0, 0, nr.height(), nr.width()), A.AlignHCenter | A.AlignVCenter, text)
                p.restore()

    # --- text and lines --------------------------------------------------------------------------
    def position_text(self) -> str:
        """The slice position: the LPS coordinate along the view's axis (its sign as in the
        readout), or for the oblique plane the distance of the crosshair along its normal."""
        c = self.state.crosshair
        if self.name in _AXIS_NAMES:
            a, letter = _AXIS_NAMES[self.name]
            return f"{letter} {c[a]:+.1f} mm"
        return f"{float(self.plane().normal @ c):+.1f} mm along normal"

    def header_lines(self) -> list[str]:
        st = self.state
        title = {"oblique": "oblique coronal"}.get(self.name, self.name)
        lines = [f"{title}  {self.position_text()}", f"W {st.window.width:.0f}  L {st.window.level:.0f}"]
        if self.name == "oblique" and st.oblique_slab_mm > 0:
            lines[-1] += f"  slab {st.oblique_slab_mm:g} mm {st.oblique_slab_mode.upper()}"
        if self.caption:
            lines.insert(0, self.caption)
        if self.name == "oblique" and st.oblique_warning:
            lines.append("⚠ " + st.oblique_warning)
        elif self.name == "oblique" and st.sacral_axis is None:
            lines.append("axis: default 38° (Ctrl+L: drag along the sacrum on the sagittal view)")
        return lines

    def cursor_readout(self) -> str:
        """HU and LPS position under the mouse on the slice shown now ("" when off the image)."""
        if self._cursor_pos is None:
            return ""
        hu = self.hu_at(self._cursor_pos)
        w = self.widget_to_world(self._cursor_pos)
        if hu is None or w is None:
            return ""
        return f"{hu:.0f} HU  ({w[0]:.1f}, {w[1]:.1f}, {w[2]:.1f}) mm LPS"

    def _font(self) -> QtGui.QFont:
        f = QtGui.QFont(self.font())
        f.setPointSizeF(9.5)
        return f

    def text_boxes(self) -> dict[str, tuple[QtCore.QRectF, str, QtCore.Qt.AlignmentFlag]]:
        """Where each text block goes: name -> (rect, text, alignment); blocks never overlap."""
        return self.layout_overlays()[0]

    def overlay_rects(self) -> dict[str, QtCore.QRectF]:
        """Every overlay's rectangle (text blocks, scale bar, colour bar and its labels, box legend):
        none overlaps another at any view size (#13 review: the legend ran into the scale bar)."""
        boxes, graphics = self.layout_overlays()
        out = {k: r for k, (r, _, _) in boxes.items()}
        out.update({k: r for k, (r, _) in graphics.items()})
        return out

    def _scale_bar(self) -> tuple[float, float] | None:
        """(length in mm, length in widget px) of the scale bar, or None."""
        img = self.slice_image()
        if img is None:
            return None
        px_per_mm = self.image_transform().m11() / (np.linalg.norm(img.right_step) or 1.0)
        if px_per_mm <= 0:
            return None
        mm = nice_bar_mm(0.25 * self.width() / px_per_mm)
        return mm, mm * px_per_mm

    def layout_overlays(self) -> tuple[dict[str, tuple[QtCore.QRectF, str, QtCore.Qt.AlignmentFlag]],
                                       dict[str, tuple[QtCore.QRectF, str]]]:
        """Lay out the text blocks and the corner graphics together.

        Order: header and patient text (top), orientation letters, then the bottom-right stack
        (scale bar, box legend above it, the heatmap's colour bar above that, below the right
        letter or, when there is more room, above it), and last the cursor readout, which moves
        up until it is clear of everything. Returns ``(texts, graphics)``; graphics are
        name -> (rect, text) for the scale bar, legend rows and colour bar parts.
        """
        img = self.slice_image()
        if img is None:
            return {}, {}
        st = self.state
        fm = QtGui.QFontMetricsF(self._font())
        lh = fm.height()
        W, H, m = float(self.width()), float(self.height()), 6.0
        A = QtCore.Qt.AlignmentFlag

        def size(text: str, max_w: float) -> tuple[float, float]:
            lines = text.split("\n")
            return min(max_w, max(fm.horizontalAdvance(t) for t in lines) + 6), lh * len(lines) + 2

        boxes: dict[str, tuple[QtCore.QRectF, str, QtCore.Qt.AlignmentFlag]] = {}
        graphics: dict[str, tuple[QtCore.QRectF, str]] = {}
        placed: list[QtCore.QRectF] = []

        def clear(r: QtCore.QRectF) -> bool:
            return not any(r.intersects(o) for o in placed)

        def place(name: str, text: str, x: float, y: float, w: float, h: float, align, step: float) -> None:
            r = QtCore.QRectF(x, y, w, h)
            for _ in range(60):  # move along ``step`` (down or up) until it clears the others
                if clear(r):
                    break
                r.translate(0, step)
            placed.append(r)
            boxes[name] = (r, text, align)

        right = img.right_step / np.linalg.norm(img.right_step)
        down = img.down_step / np.linalg.norm(img.down_step)
        head = wrap_lines(self.header_lines(), fm, W - 2 * m - 6)
        hw, hh = size(head, W - 2 * m)
        place("header", head, m, m, hw, hh, A.AlignLeft, lh)
        vol = st.volume
        if st.show_patient_text and vol is not None:
            md = vol.metadata
            txt = "\n".join(t for t in (md.patient_name, md.patient_id, md.series_description) if t)
            if txt:
                pw, ph = size(txt, W / 2)
                place("patient", txt, W - m - pw, m, pw, ph, A.AlignRight, lh)
        for name, vec, x, y, align in (("top", -down, None, m, A.AlignHCenter), ("bottom", down, None, H - m - lh, A.AlignHCenter),
                                       ("right", right, W - m, H / 2 - lh / 2, A.AlignRight),
                                       ("left", -right, m, H / 2 - lh / 2, A.AlignLeft)):
            t = direction_letters(vec)
            tw, th = size(t, W)
            xx = (W - tw) / 2 if x is None else (x - tw if name == "right" else x)
            place(name, t, xx, y, tw, th, align, lh if name != "bottom" else -lh)
        # bottom right: the scale bar (line with its length under it)
        sb = self._scale_bar()
        bottom = H - m
        if sb is not None:
            mm, L = sb
            label = f"{mm:g} mm"
            tw = fm.horizontalAdvance(label) + 6
            x1 = W - m - max(0.0, (tw - L) / 2)
            r = QtCore.QRectF(min(x1 - L, x1 - L / 2 - tw / 2), bottom - 6 - lh, max(L, tw), 6 + lh)
            while not clear(r) and r.top() > H / 2:
                r.translate(0, -lh)
            placed.append(r)
            graphics["scalebar"] = (r, label)
            bottom = r.top() - 2
        # the joint boxes' legend, right-aligned above the scale bar; one row when rows would not fit
        ov = st.overlays
        heat = ov.heatmap is not None and ov.heatmap_visible
        if ov.boxes and ov.boxes_visible:
            rows = [("legend_right", "AI box, right SIJ"), ("legend_left", "AI box, left SIJ")]
            if H < 360:
                rows = [("legend_right", "AI box: R"), ("legend_left", "L")]
                wl = fm.horizontalAdvance(rows[1][1]) + 20
                wr = fm.horizontalAdvance(rows[0][1]) + 20
                rl = QtCore.QRectF(W - m - wl, bottom - 14, wl, 14)
                rr = QtCore.QRectF(rl.left() - wr, bottom - 14, wr, 14)
                for (name, text), r in zip(rows, (rr, rl)):
                    placed.append(r)
                    graphics[name] = (r, text)
                bottom = rr.top() - 2
            else:
                for i, (name, text) in enumerate(reversed(rows)):
                    w = fm.horizontalAdvance(text) + 18
                    r = QtCore.QRectF(W - m - w, bottom - 14, w, 14)
                    placed.append(r)
                    graphics[name] = (r, text)
                    bottom = r.top()
                bottom -= 2
        # the heatmap's colour bar: in the right column, where there is more room (below or above the right letter)
        if heat:
            letter = boxes["right"][0]
            top_limit = max((boxes[k][0].bottom() for k in ("patient", "header", "top") if k in boxes
                             and boxes[k][0].right() > W - m - 60), default=m)
            spans = [(letter.bottom() + 4, bottom - 4), (top_limit + 4, letter.top() - 4)]
            y_a, y_b = max(spans, key=lambda s: s[1] - s[0])
            bh = min(y_b - y_a, max(40.0, H * 0.3))
            if bh >= 2 * 14:
                x = W - m - 10
                y0 = y_a if (y_a, y_b) == spans[0] else y_b - bh
                graphics["colourbar"] = (QtCore.QRectF(x, y0, 10, bh), "")
                for name, text, yy in (("colourbar_max", "AI 1.0", y0), ("colourbar_min", "0.0", y0 + bh - 14)):
                    w = fm.horizontalAdvance(text) + 4
                    r = QtCore.QRectF(x - 3 - w, yy, w, 14)
                    placed.append(r)
                    graphics[name] = (r, text)
                name_w = fm.horizontalAdvance("Grad-CAM") + 4
                if bh - 2 * 14 >= name_w:  # the bar's name along it, between its two labels
                    r = QtCore.QRectF(x - 17, y0 + bh / 2 - name_w / 2, 14, name_w)
                    placed.append(r)
                    graphics["colourbar_name"] = (r, "Grad-CAM")
                placed.append(graphics["colourbar"][0])
        ro = self.cursor_readout()
        if ro:
            # bottom left, moving up until clear; in a narrow view the position goes on a second
            # line, and in a very small one it is rounded to whole millimetres
            w_ = self.widget_to_world(self._cursor_pos) if self._cursor_pos is not None else None
            variants = [ro, ro.replace(" HU  (", " HU\n(", 1)]
            if w_ is not None:
                variants.append(ro.split(" HU")[0] + f" HU\n{w_[0]:.0f}, {w_[1]:.0f}, {w_[2]:.0f} mm LPS")
            variants = [v for v in variants if size(v, W)[0] <= 0.6 * W] or variants[-1:]
            r = None
            for text in variants:
                rw, rh = size(text, W - 2 * m)
                cand = QtCore.QRectF(m, H - m - rh, rw, rh)
                for y in np.arange(H - m - rh, m - 0.5, -2.0):
                    cand.moveTop(float(y))
                    if clear(cand):
                        r, ro = cand, text
                        break
                if r is not None:
                    break
            if r is None:  # nowhere clear (it never happened from 200x200 up): the bottom-left corner
                ro = variants[-1]
                rw, rh = size(ro, W - 2 * m)
                r = QtCore.QRectF(m, H - m - rh, rw, rh)
            placed.append(r)
            boxes["readout"] = (r, ro, A.AlignLeft)
        return boxes, graphics

    def _draw_overlays(self, p: QtGui.QPainter) -> None:
        st = self.state
        img = self.slice_image()
        assert img is not None
        # reference line of the oblique plane (its trace) on the other views, with rotation handles on sagittal
        trace = self.oblique_trace()
        if trace is not None:
            a, b = trace
            p.setPen(QtGui.QPen(QtGui.QColor(CROSS_COLOURS["oblique"]), 1.5))
            c = self.world_to_widget(st.crosshair)
            d = b - a
            n = float(np.hypot(d.x(), d.y()))
            if c is None or n == 0:
                p.drawLine(a, b)
            else:  # the same gap as the crosshair: the point itself stays visible
                u = d / n * CROSS_GAP_PX
                p.drawLine(a, c - u)
                p.drawLine(c + u, b)
            if self.name == "sagittal":
                for h in self.oblique_handles():
                    p.setBrush(QtGui.QColor(CROSS_COLOURS["oblique"]))
                    p.drawEllipse(h, 5, 5)
                p.setBrush(QtCore.Qt.BrushStyle.NoBrush)
        # crosshair: two lines with a gap around the point, hideable (C)
        c = self.world_to_widget(st.crosshair)
        if c is not None and st.show_crosshair:
            p.setPen(QtGui.QPen(QtGui.QColor(CROSS_COLOURS.get(self.name, "#fff")), 1, QtCore.Qt.PenStyle.DashLine))
            g = CROSS_GAP_PX
            for a, b in ((QtCore.QPointF(0, c.y()), QtCore.QPointF(c.x() - g, c.y())),
                         (QtCore.QPointF(c.x() + g, c.y()), QtCore.QPointF(self.width(), c.y())),
                         (QtCore.QPointF(c.x(), 0), QtCore.QPointF(c.x(), c.y() - g)),
                         (QtCore.QPointF(c.x(), c.y() + g), QtCore.QPointF(c.x(), self.height()))):
                p.drawLine(a, b)
        # the sacral axis line being drawn
        if self._line is not None:
            a, b = (self.world_to_widget(x) for x in self._line)
            if a is not None and b is not None:
                p.setPen(QtGui.QPen(QtGui.QColor(CROSS_COLOURS["oblique"]), 2))
                p.drawLine(a, b)
        self.tools.draw(p)
        # text on dark plates and the corner graphics, laid out together without overlaps
        p.setFont(self._font())
        boxes, graphics = self.layout_overlays()
        for rect, text, align in boxes.values():
            p.fillRect(rect, QtGui.QColor(0, 0, 0, 150))
            p.setPen(QtGui.QColor("#ffb347") if text.startswith("⚠") or "\n⚠" in text else QtGui.QColor("#e6e6e6"))
            p.drawText(rect.adjusted(3, 1, -3, 0), align | QtCore.Qt.AlignmentFlag.AlignTop, text)
        self._draw_corner_graphics(p, graphics)

    def oblique_trace(self) -> tuple[QtCore.QPointF, QtCore.QPointF] | None:
        """The oblique plane's intersection with this view's plane, clipped to the view (widget points)."""
        if self.name not in ("axial", "sagittal", "coronal") or self.state.volume is None:
            return None
        ob, me = self.state.plane("oblique"), self.plane()
        d = np.cross(ob.normal, me.normal)
        if np.linalg.norm(d) < 1e-6:
            return None
        d /= np.linalg.norm(d)
        # a point on both planes: the crosshair lies on both
        c = self.state.crosshair
        size = float(np.max(np.ptp(self.state.volume.bounds_world(), axis=0))) * 2
        a, b = self.world_to_widget(c - d * size), self.world_to_widget(c + d * size)
        if a is None or b is None:
            return None
        return a, b

    def oblique_handles(self) -> list[QtCore.QPointF]:
        """The two rotation handles on the oblique trace (sagittal view), HANDLE_MM from the crosshair."""
        if self.name != "sagittal" or self.state.volume is None:
            return []
        ob = self.state.plane("oblique")
        c = self.state.crosshair
        out = []
        for s in (-1, 1):
            q = self.world_to_widget(c + s * HANDLE_MM * ob.down)
            if q is not None:
                out.append(q)
        return out

    # --- interaction ---------------------------------------------------------------------------
    def hu_at(self, pos: QtCore.QPointF) -> float | None:
        w = self.widget_to_world(pos)
        vol = self.state.volume
        if w is None or vol is None:
            return None
        idx = np.rint(vol.world_to_index(w)).astype(int)
        if np.any(idx < 0) or np.any(idx >= vol.shape):
            return None
        return float(vol.array[tuple(idx)])

    def mousePressEvent(self, e: QtGui.QMouseEvent) -> None:  # noqa: N802
        self.activated.emit(self.name)
        self.setFocus()
        pos = e.position()
        b = e.button()
        if b == QtCore.Qt.MouseButton.LeftButton:
            # in axis mode (Ctrl+L) the reader draws: a press near the oblique trace's handle draws too
            for h in ([] if self.axis_mode else self.oblique_handles()):
                if (h - pos).manhattanLength() < 12:
                    self._drag = ("rotate", pos, None)
                    return
            if self.state.tool != "navigate" and self.tools.press(pos):
                self._drag = ("tool", pos, None)
                return
            drawing = self.name == "sagittal" and (self.axis_mode or e.modifiers() & QtCore.Qt.KeyboardModifier.ShiftModifier)
            if drawing:
                w = self.widget_to_world(pos)
                if w is not None:
                    self._drag = ("axis", pos, w)
                    self._line = (w, w)
                return
            self._drag = ("cross", pos, None)
            self._set_cross(pos)
        elif b == QtCore.Qt.MouseButton.RightButton:
            self._drag = ("wl", pos, (self.state.window.width, self.state.window.level))
        elif b == QtCore.Qt.MouseButton.MiddleButton:
            self._drag = ("pan", pos, QtCore.QPointF(self.pan))

    def _set_cross(self, pos: QtCore.QPointF) -> None:
        w = self.widget_to_world(pos)
        if w is None:
            return
        # move only within this plane: keep the crosshair's distance along the normal
        n = self.plane().normal
        cur = self.state.crosshair
        w = w - n * float((w - cur) @ n)
        self.state.set_crosshair(w)

    def _rotate_to(self, pos: QtCore.QPointF) -> None:
        """Rotate the oblique plane about the crosshair so that its trace passes through ``pos``."""
        w = self.widget_to_world(pos)
        if w is None:
            return
        d = w - self.state.crosshair
        d -= self.plane().normal * float(d @ self.plane().normal)
        if np.linalg.norm(d) < 5.0:
            return
        self.state.set_sacral_axis(d, source="reader")

    def mouseMoveEvent(self, e: QtGui.QMouseEvent) -> None:  # noqa: N802
        pos = e.position()
        self._cursor_pos = QtCore.QPointF(pos)
        w = self.widget_to_world(pos)
        if self._drag is not None:
            kind, start, ref = self._drag
            d = pos - start
            if kind == "cross":
                self._set_cross(pos)
            elif kind == "rotate":
                self._rotate_to(pos)
            elif kind == "tool":
                self.tools.move(pos)
            elif kind == "wl":
                width, level = ref  # type: ignore[misc]
                self.state.set_window(width * float(np.exp(d.x() / 200.0)), level - d.y() * width / 400.0)
            elif kind == "pan":
                self.pan = ref + d  # type: ignore[operator]
                self.view_changed.emit("pan")
            elif kind == "axis" and w is not None:
                self._line = (ref, w)  # type: ignore[assignment]
        elif self.state.tool != "navigate":
            self.tools.hover(pos)
        self.update()

    def leaveEvent(self, e: QtCore.QEvent) -> None:  # noqa: N802
        self._cursor_pos = None
        self.update()

    def mouseReleaseEvent(self, e: QtGui.QMouseEvent) -> None:  # noqa: N802
        if self._drag is not None and self._drag[0] == "axis" and self._line is not None:
            a, b = self._line
            if np.linalg.norm(b - a) >= 5.0:
                self.state.set_sacral_axis_from_line(a, b)
            self.axis_mode = False
        if self._drag is not None and self._drag[0] == "tool":
            self.tools.release(e.position())
        self._line = None
        self._drag = None
        self.gesture_ended.emit()
        self.update()

    def wheelEvent(self, e: QtGui.QWheelEvent) -> None:  # noqa: N802
        dy = e.angleDelta().y()
        if dy == 0:
            return
        steps = 1 if dy > 0 else -1
        self._cursor_pos = QtCore.QPointF(e.position())
        if e.modifiers() & QtCore.Qt.KeyboardModifier.ControlModifier:
            self.zoom_at(e.position(), 1.15 if steps > 0 else 1 / 1.15)
            return
        # coalesce: add the steps up and move once when the queued events are done
        if self._pending_steps == 0:
            QtCore.QTimer.singleShot(0, self.flush_scroll)
        self._pending_steps += steps

    def flush_scroll(self) -> None:
        steps, self._pending_steps = self._pending_steps, 0
        if steps:
            self.step(steps)

    def step(self, steps: int) -> None:
        """Scroll this view by ``steps`` slices (wheel, arrows, Page Up/Down)."""
        self.state.step_along(self.plane(), steps)

    def keyPressEvent(self, e: QtGui.QKeyEvent) -> None:  # noqa: N802
        k = e.key()
        K = QtCore.Qt.Key
        steps = {K.Key_Up: 1, K.Key_Down: -1, K.Key_PageUp: 10, K.Key_PageDown: -10}.get(k)
        if steps is not None:
            self.step(steps)
        elif k == K.Key_Escape and self.state.tool != "navigate":
            self.tools.cancel()
            self.state.set_tool("navigate")
        else:
            super().keyPressEvent(e)
