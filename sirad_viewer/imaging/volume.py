"""The :class:`Volume`: a HU array with named axes and an LPS affine.

A volume is never a bare array. Its axes are (slice, row, column); its affine maps those indices
to patient LPS millimetres (see :mod:`sirad_viewer.imaging.geometry`). Quirks found while loading
travel with it as :class:`~sirad_viewer.errors.VolumeWarning` objects.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from sirad_viewer.errors import VolumeWarning
from sirad_viewer.imaging import geometry as geo


@dataclass
class SeriesMetadata:
    """Patient, study and series identity of a volume (DICOM attribute names in snake case).

    Empty strings mean "not present in the source". ``extra`` holds anything else a reader found
    worth keeping (scanner, kernel, ...). Exports pass this through
    :func:`sirad_viewer.io.deid.deidentify_metadata`.
    """

    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_instance_uid: str = ""
    study_date: str = ""
    study_description: str = ""
    accession_number: str = ""
    series_instance_uid: str = ""
    series_number: str = ""
    series_description: str = ""
    modality: str = ""
    frame_of_reference_uid: str = ""
    manufacturer: str = ""
    institution_name: str = ""
    slice_thickness_mm: float | None = None
    convolution_kernel: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Volume:
    """A CT volume in Hounsfield units.

    Parameters
    ----------
    array : ndarray of shape (S, R, C)
        HU values, axes (slice, row, column). int16 when the source's rescale allows it
        exactly, float32 otherwise.
    affine : ndarray of shape (4, 4)
        Maps index (slice, row, column, 1) to LPS mm.
    metadata : SeriesMetadata
    warnings : list of VolumeWarning
        Quirks found while loading and what was done about each.
    sources : list of str
        Files the volume was read from (in slice order for DICOM).
    """

    array: np.ndarray
    affine: np.ndarray
    metadata: SeriesMetadata = field(default_factory=SeriesMetadata)
    warnings: list[VolumeWarning] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array (slice, row, column), got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    # --- geometry ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along (slice, row, column)."""
        return geo.affine_spacing(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit LPS vectors of the axes (slice, row, column), as rows of a (3, 3) array."""
        return geo.affine_directions(self.affine)

    @property
    def frame_of_reference_uid(self) -> str:
        return self.metadata.frame_of_reference_uid

    def index_to_world(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """(..., 3) indices (slice, row, column) -> (..., 3) LPS mm."""
        return geo.index_to_world(self.affine, index)

    def world_to_index(self, points: np.ndarray | Sequence[float]) -> np.ndarray:
        """(..., 3) LPS mm -> (..., 3) fractional indices (slice, row, column)."""
        return geo.world_to_index(self.affine, points)

    def center_world(self) -> np.ndarray:
        return self.index_to_world((np.asarray(self.shape) - 1) / 2.0)

    def bounds_world(self) -> np.ndarray:
        """(2, 3) min and max LPS corner of the voxel-centre box."""
        corners = np.array([[i, j, k] for i in (0, self.shape[0] - 1) for j in (0, self.shape[1] - 1)
                            for k in (0, self.shape[2] - 1)], dtype=float)
        w = self.index_to_world(corners)
        return np.stack([w.min(axis=0), w.max(axis=0)])

    def orientation_code(self) -> str:
        return geo.orientation_code(self.affine)

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None) -> "Volume":
        """A copy sharing metadata and warnings, with a new array (and affine)."""
        return Volume(array=array, affine=self.affine if affine is None else affine,
                      metadata=self.metadata, warnings=list(self.warnings), sources=list(self.sources))

    # --- reorientation and resampling ------------------------------------------------------
    def reoriented(self) -> "Volume":
        """The same voxels permuted/flipped to the canonical axial layout (no interpolation).

        Afterwards slices run inferior->superior, rows anterior->posterior and columns
        patient right->left (see :func:`~sirad_viewer.imaging.geometry.canonical_permutation`).
        """
        perm, flip = geo.canonical_permutation(self.affine)
        if perm == (0, 1, 2) and not any(flip):
            return self
        arr = np.transpose(self.array, perm)
        axes = tuple(i for i, f in enumerate(flip) if f)
        if axes:
            arr = np.flip(arr, axis=axes)
        new_affine = geo.permute_affine(self.affine, self.shape, perm, flip)
        return self.with_array(np.ascontiguousarray(arr), new_affine)

    def resampled(self, spacing: Sequence[float] | float, *, order: int = 1, fill_hu: float = -1024.0) -> "Volume":
        """Resample onto the same orientation and extent with a new voxel size.

        Parameters
        ----------
        spacing : float or sequence of 3 float
            New voxel size in mm along (slice, row, column).
        order : int
            Spline order (0 nearest, 1 linear, 3 cubic).
        """
        new_sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
        old_sp = self.spacing
        extent = (np.asarray(self.shape) - 1) * old_sp
        new_shape = tuple(int(n) for n in np.floor(extent / new_sp + 1e-6).astype(int) + 1)
        dirs = self.direction
        new_affine = geo.make_affine(self.origin, dirs, new_sp)
        if not geo.is_orthogonal(self.affine):
            # keep the sheared steps' directions: scale each column instead
            new_affine = self.affine.copy()
            new_affine[:3, :3] = self.affine[:3, :3] * (new_sp / old_sp)[None, :]
        return resample_to(self, new_affine, new_shape, order=order, fill_hu=fill_hu)


def resample_to(
    volume: Volume,
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    order: int = 1,
    fill_hu: float = -1024.0,
    out_dtype: np.dtype | None = None,
) -> Volume:
    """Sample ``volume`` on the grid defined by ``affine`` and ``shape`` (any orientation).

    Points outside the source get ``fill_hu`` (air). The result keeps int16 when the source is
    int16 and ``order`` is 0 or 1 (values are rounded).
    """
    from scipy import ndimage

    m = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=float)
    src = volume.array
    work = src.astype(np.float32, copy=False)
    out = ndimage.affine_transform(
        work, m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in shape),
        order=order, mode="constant", cval=float(fill_hu), prefilter=order > 1,
    )
    dtype = out_dtype or (src.dtype if src.dtype == np.int16 else np.float32)
    if np.issubdtype(dtype, np.integer):
        out = np.rint(out).astype(dtype)
    else:
        out = out.astype(dtype, copy=False)
    return volume.with_array(out, np.asarray(affine, dtype=float))
