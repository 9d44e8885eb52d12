"""Bounds on what the loaders accept, checked before anything is allocated.

Everything that comes from outside (a DICOM or NIfTI header, a zip directory) is checked against
these numbers first: a header may claim anything, memory and time are finite. The values are far
above any clinical CT (a 512 x 512 x 2000 whole-body scan is 0.5 G voxels) and far below what
would take a workstation down.
"""
from __future__ import annotations

#: Largest Rows or Columns of one image.
MAX_MATRIX = 8192
#: Most frames in one file and slices in one volume.
MAX_FRAMES = 10_000
MAX_SLICES = 10_000
#: Most voxels in one volume (int16: 1.2 GB; float32: 2.4 GB).
MAX_VOXELS = 600_000_000
#: Largest distance (mm) between the first and last slice, and largest coordinate magnitude.
MAX_EXTENT_MM = 5_000.0
MAX_COORD_MM = 100_000.0
#: Zip archives: members, size of one member, total of all members, compression ratio.
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_MEMBER_BYTES = 2 << 30
MAX_ZIP_TOTAL_BYTES = 64 << 30
MAX_ZIP_RATIO = 200
#: A member above this size must not be more compressed than MAX_ZIP_RATIO (zip bombs).
ZIP_RATIO_MIN_BYTES = 16 << 20
#: Largest inflated size of a deflated DICOM data set (pydicom inflates it whole, in memory).
MAX_DEFLATED_BYTES = 1 << 30
#: Most files looked at under one folder.
MAX_FILES = 200_000
#: Wall-clock budget for decoding the pixels of one series (seconds).
MAX_DECODE_SECONDS = 600.0
