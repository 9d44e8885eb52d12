"""The Series panel's text: blinded in a study, hidden with Ctrl+T, warnings listed."""
from __future__ import annotations

import numpy as np

from sirad_viewer.errors import VolumeWarning
from sirad_viewer.imaging.geometry import make_affine
from sirad_viewer.imaging.volume import SeriesMetadata, Volume
from sirad_viewer.viz.series_info import series_summary


def test_series_text_blinds_hides_and_lists_warnings():
    vol = Volume(np.zeros((4, 5, 6), np.int16), make_affine([0, 0, 0], np.eye(3)[::-1], [3, 0.8, 0.8]),
                 metadata=SeriesMetadata(series_description="PELVIS BONE", modality="CT"),
                 warnings=[VolumeWarning("missing_slices", "4.2 mm expected, 7.4 mm found")], sources=["/x/ct1.dcm"])
    lines = series_summary(vol, scan_text="2 series found").splitlines()
    assert lines[:3] == ["PELVIS BONE", "CT  4 x 5 x 6", "voxel 3.00 x 0.80 x 0.80 mm"]
    assert "2 series found" in lines and "⚠ [missing_slices] 4.2 mm expected, 7.4 mm found" in lines
    assert series_summary(vol, show_patient_text=False).splitlines()[0] == "(series text hidden: Ctrl+T)"
    blind = series_summary(vol, case_id="c07")
    assert blind.splitlines()[0] == "case c07" and "PELVIS" not in blind and "ct1" not in blind
    vol.metadata.series_description = ""
    assert series_summary(vol).splitlines()[0] == "ct1.dcm"  # no description: the file name
