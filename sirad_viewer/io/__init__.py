"""Reading CT volumes (DICOM, NIfTI, NRRD, MHA/MHD) and writing exports. No Qt."""
from __future__ import annotations

from sirad_viewer.io.loader import ScanResult, SeriesInfo, choose_series, load_series, open_volume, scan

__all__ = ["ScanResult", "SeriesInfo", "choose_series", "load_series", "open_volume", "scan"]
