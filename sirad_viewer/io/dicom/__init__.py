"""DICOM series: find the files, read their headers, plan the geometry, read the pixels.

Done the standard's way (see pydicom ``pixels/processing.py`` and Slicer ``DICOMUtils.py``):

* slices are sorted by ``ImagePositionPatient`` projected on the slice normal, never by
  ``InstanceNumber`` or file name;
* each slice's own ``RescaleSlope``/``RescaleIntercept`` turns stored values into HU;
* quirks (uneven spacing, missing slices, gantry tilt, duplicate positions, mixed orientation,
  not CT, few slices) become :class:`~sirad_viewer.errors.VolumeWarning` objects with numbers,
  stating what was done about each;
* broken input raises :class:`~sirad_viewer.errors.LoadError` naming the file and the problem.
  Truncated pixel data is always an error, even where other readers pad it with zeros.

One module per job:

``sources``   files, folders and zip members (with size and count limits)
``headers``   header parsing and the one place that finds the pixel data element
``frames``    the 2D frames of a file with their position, orientation, spacing and rescale
``geometry``  sorting on the slice normal, spacing/tilt/duplicate checks (numpy only)
``pixels``    stored values to HU (native read at the file offset, or a decoder)
``assemble``  a :class:`~sirad_viewer.imaging.volume.Volume` from a plan, resampling irregular stacks
"""
from __future__ import annotations

from sirad_viewer.imaging.volume import resample_to
from sirad_viewer.io.dicom.assemble import _resample_stack, volume_from_plan
from sirad_viewer.io.dicom.frames import Frame, frames_of
from sirad_viewer.io.dicom.geometry import (DUPLICATE_TOLERANCE_MM, FEW_SLICES, SPACING_TOLERANCE,
                                            TILT_TOLERANCE_DEG, GeometryPlan, plan_geometry)
from sirad_viewer.io.dicom.headers import (_DEFLATED, _GDCM_FAST, _LOSSY_SYNTAXES, _NATIVE_SYNTAXES,
                                           NON_IMAGE_MODALITIES, Header, has_pixels, image_problem,
                                           is_localizer, locate_pixel_data, metadata_of, read_header,
                                           series_key)
from sirad_viewer.io.dicom.pixels import PixelReader, read_frames
from sirad_viewer.io.dicom.sources import Source, iter_sources

__all__ = ["Source", "Header", "Frame", "GeometryPlan", "PixelReader", "iter_sources", "read_header",
           "frames_of", "series_key", "plan_geometry", "read_frames", "volume_from_plan", "image_problem",
           "is_localizer", "has_pixels", "locate_pixel_data", "metadata_of", "resample_to",
           "NON_IMAGE_MODALITIES", "FEW_SLICES", "SPACING_TOLERANCE", "DUPLICATE_TOLERANCE_MM",
           "TILT_TOLERANCE_DEG"]
