"""The AI panel's segmenter setting: the demo UNet or TotalSegmentator (when installed with weights).

Shows and forwards only: whether TotalSegmentator can be used, and why not, comes from
:func:`sirad_viewer.ai.totalseg.availability`; what the key means from
:func:`sirad_viewer.ai.totalseg.resolve_segmenter`.
"""
from __future__ import annotations

from typing import Any

from PyQt6 import QtCore, QtWidgets

#: (key, label); the key is what ``sirad grade --segmenter`` takes (``unet``: the installed bundle).
CHOICES = (("unet", "Segmenter: demo UNet"), ("totalsegmentator", "Segmenter: TotalSegmentator (fast, 3 mm)"))


class SegmenterChoice(QtWidgets.QComboBox):
    """A combo box of :data:`CHOICES`; TotalSegmentator is greyed out, with the reason as tooltip, when unusable."""

    changed = QtCore.pyqtSignal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        for key, label in CHOICES:
            self.addItem(label, key)
        self.currentIndexChanged.connect(lambda i: self.changed.emit(self.current_key()))
        self.refresh()

    def refresh(self) -> None:
        """Ask again whether TotalSegmentator is usable (it may have been installed meanwhile)."""
        from sirad_viewer.ai.totalseg import availability

        ok, why = availability()
        i = self.findData("totalsegmentator")
        item = self.model().item(i)
        item.setEnabled(ok)
        item.setToolTip(why if ok else f"unavailable: {why}")
        self.setToolTip("Bone segmentation before the joints are found and graded.\n"
                        + ("TotalSegmentator: " + why if ok else "TotalSegmentator unavailable: " + why))
        if not ok and self.current_key() == "totalsegmentator":
            self.setCurrentIndex(self.findData("unet"))

    def current_key(self) -> str:
        return str(self.currentData())

    def is_available(self, key: str) -> bool:
        i = self.findData(key)
        return i >= 0 and self.model().item(i).isEnabled()

    def select(self, key: Any) -> bool:
        """Select ``key`` if it exists and is usable; return whether it was selected."""
        if not self.is_available(str(key)):
            return False
        self.setCurrentIndex(self.findData(str(key)))
        return True
