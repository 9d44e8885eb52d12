"""Persistent viewer settings (QSettings): layout, window presets, recent files, geometry."""
from __future__ import annotations

import json
import os
from typing import Any

from PyQt6 import QtCore

MAX_RECENT = 10


class Settings:
    """QSettings wrapper: layout, window presets, recent files, window/panel geometry.

    ``SIRAD_SETTINGS`` (an .ini path) overrides the per-user location, e.g. for tests.
    """

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get("SIRAD_SETTINGS")
        if path:
            self.q = QtCore.QSettings(path, QtCore.QSettings.Format.IniFormat)
        else:
            self.q = QtCore.QSettings("SIRAD", "SIRAD Viewer")

    def get(self, key: str, default: Any = None) -> Any:
        v = self.q.value(key, default)
        return default if v is None else v

    def set(self, key: str, value: Any) -> None:
        self.q.setValue(key, value)
        self.q.sync()

    @property
    def recent(self) -> list[str]:
        raw = self.get("recent", "[]")
        try:
            return [str(p) for p in json.loads(raw)][:MAX_RECENT]
        except (TypeError, ValueError):
            return []

    def add_recent(self, path: str) -> None:
        items = [path] + [p for p in self.recent if p != path]
        self.set("recent", json.dumps(items[:MAX_RECENT]))

    @property
    def presets(self) -> dict[str, tuple[float, float]]:
        try:
            saved = json.loads(self.get("presets", "{}"))
            return {str(k): (float(v[0]), float(v[1])) for k, v in saved.items()}
        except (TypeError, ValueError, IndexError):
            return {}

    def save_preset(self, name: str, width: float, level: float) -> None:
        p = self.presets
        p[name] = (width, level)
        self.set("presets", json.dumps(p))
