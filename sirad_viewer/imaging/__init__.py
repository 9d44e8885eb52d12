"""Volumes and their geometry (numpy only, no Qt, no torch)."""
from __future__ import annotations

from sirad_viewer.imaging.volume import SeriesMetadata, Volume

__all__ = ["SeriesMetadata", "Volume"]
