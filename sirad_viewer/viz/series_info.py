"""The Series panel's text: what was loaded and every warning the loader raised (Qt-free)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def series_summary(volume: Any, *, case_id: str | None = None, show_patient_text: bool = True,
                   scan_text: str = "") -> str:
    """Title, modality and matrix, voxel size, the scan's note and the loader's warnings, one per line.

    Parameters
    ----------
    volume : Volume
        The loaded CT (its metadata, spacing, sources and warnings are read).
    case_id : str, optional
        In a reader study: the title is ``case <id>`` and nothing else names the case (blinding).
    show_patient_text : bool
        False (Ctrl+T) hides the series description and file name.
    scan_text : str
        A note from the folder scan (several series found, which one was chosen and why).
    """
    md = volume.metadata
    sp = volume.spacing
    if case_id is not None:  # blinded: the case id only, no description, file name, patient or study
        title = f"case {case_id}"
    elif not show_patient_text:
        title = "(series text hidden: Ctrl+T)"
    else:
        title = md.series_description or (Path(volume.sources[0]).name if volume.sources else "")
    sh = volume.shape
    lines = [title, f"{md.modality or 'modality not stated'}  {sh[0]} x {sh[1]} x {sh[2]}",
             f"voxel {sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm"]
    if scan_text:
        lines.append(scan_text)
    if volume.warnings:
        lines.append("")
        lines += [f"⚠ [{w.code}] {w.message}" for w in volume.warnings]
    return "\n".join(lines)
