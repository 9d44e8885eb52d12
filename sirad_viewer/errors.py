"""Typed exceptions and warnings with a user-facing message and structured context.

Core code raises these (or attaches :class:`VolumeWarning` objects to what it returns); it never
opens a dialog. The Qt layer has one place that turns a :class:`SiradError` into a message box,
and the CLI prints ``error.user_message()`` on one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SiradError(Exception):
    """Base class of every error meant for the user.

    Parameters
    ----------
    message : str
        What is wrong, in words a radiologist or coordinator can act on.
    code : str
        A stable machine-readable code (part of the CLI's JSON interface).
    path : str or Path, optional
        The file or folder the problem was found in.
    context : dict, optional
        Further numbers (value found, value expected, ...).
    """

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        path: str | Path | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.path = str(path) if path is not None else None
        self.context = dict(context or {})

    def user_message(self) -> str:
        """One line naming the file (when known) and the problem."""
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "path": self.path}

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.user_message()


class LoadError(SiradError):
    """A file or folder could not be turned into a volume.

    ``code`` is one of ``not_found``, ``not_dicom``, ``truncated_pixel_data``,
    ``undecodable_pixel_data``, ``no_image``, ``unsupported``, ``bad_geometry``, ``bad_header``,
    ``too_large``, ``bad_archive``, ``timeout``.
    """

    code = "load_error"


class HeaderError(LoadError):
    """A header value is invalid (not a number, out of range, or inconsistent with the data)."""

    code = "bad_header"


class GeometryError(LoadError):
    """Positions, orientation or spacing cannot describe a real volume (zero spacing, parallel axes...)."""

    code = "bad_geometry"


class InputLimitError(LoadError):
    """Declared sizes exceed what the viewer reads (frames, voxels, extent, archive members, time).

    Raised before anything is allocated, so a hostile header cannot exhaust memory or time.
    """

    code = "too_large"


class ArchiveError(LoadError):
    """A zip archive is corrupt or cannot be read safely."""

    code = "bad_archive"


class ExportError(SiradError):
    """Something could not be written."""

    code = "export_error"


class CancelledError(SiradError):
    """The user cancelled a long-running operation."""

    code = "cancelled"

    def __init__(self, message: str = "cancelled by the user", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)


@dataclass(frozen=True)
class VolumeWarning:
    """A quirk found while loading, carried with the volume and shown next to the series.

    Attributes
    ----------
    code : str
        Stable code, e.g. ``uneven_spacing``, ``missing_slices``, ``gantry_tilt``,
        ``duplicate_positions``, ``mixed_orientation``, ``not_ct``, ``few_slices``.
    message : str
        What was found, with numbers, and what was done about it.
    context : dict
        The numbers behind the message.
    """

    code: str
    message: str
    context: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}
