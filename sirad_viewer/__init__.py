"""SIRAD Viewer: read sacroiliac-joint CTs, grade sacroiliitis, compare with a local AI.

The core packages (``io``, ``imaging``, ``phantom``, ``ai``, ``study``, ``state``, ``viz``) never
import Qt; only :mod:`sirad_viewer.qt` does.
"""
from __future__ import annotations

__version__ = "0.1.0"
