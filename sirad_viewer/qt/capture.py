"""Screenshots of the viewer: a widget grabbed with the 3D view's rendered frame painted in.

GL content does not always come through ``QWidget.grab()``, so the 3D view's frame is rendered
off the interactor and drawn over its place in the grabbed image.
"""
from __future__ import annotations

from typing import Any

from PyQt6 import QtCore, QtGui, QtWidgets


def grab(widget: QtWidgets.QWidget, view3d: Any | None = None) -> QtGui.QPixmap:
    """``widget`` as a pixmap; ``view3d`` (a visible 3D view inside it, or the widget itself) painted in."""
    QtWidgets.QApplication.processEvents()
    pix = widget.grab()
    if view3d is None or not view3d.isVisible():
        return pix
    import numpy as np

    img = np.ascontiguousarray(view3d.render_image()[..., :3])
    h, w = img.shape[:2]
    qimg = QtGui.QImage(img.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
    p = QtGui.QPainter(pix)
    top_left = view3d.mapTo(widget, QtCore.QPoint(0, 0)) if widget is not view3d else QtCore.QPoint(0, 0)
    p.drawImage(QtCore.QRect(top_left, view3d.size()), qimg)
    p.end()
    return pix


def save_dialog(parent: QtWidgets.QWidget, title: str, default: str) -> str:
    """A PNG file name chosen by the user, or ''."""
    path, _ = QtWidgets.QFileDialog.getSaveFileName(parent, title, default, "PNG (*.png)")
    return path
