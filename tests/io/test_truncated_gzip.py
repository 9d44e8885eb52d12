"""A cut-off .nii.gz is an error with its code, never a zero-filled volume (SimpleITK reads it silently)."""
from __future__ import annotations

import numpy as np
import pytest

from sirad_viewer.errors import LoadError
from sirad_viewer.imaging.geometry import make_affine
from sirad_viewer.imaging.volume import Volume
from sirad_viewer.io import open_volume
from sirad_viewer.io.export import write_nifti


@pytest.fixture
def nifti_gz(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, size=(24, 48, 48)).astype(np.int16)
    return write_nifti(Volume(arr, make_affine([0.0, 0.0, 0.0], np.eye(3), [2.0, 1.0, 1.0])), tmp_path / "ct.nii.gz",
                       sidecar=False), arr


def test_complete_gzip_loads(nifti_gz):
    path, arr = nifti_gz
    assert open_volume(path).array.shape == arr.shape


def _cut_in_half(path, tmp_path):
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


def test_truncated_gzip_is_a_load_error(nifti_gz, tmp_path):
    cut = _cut_in_half(nifti_gz[0], tmp_path)
    with pytest.raises(LoadError) as ei:
        open_volume(cut)
    assert ei.value.code == "truncated_pixel_data"
    assert "cut.nii.gz" in ei.value.user_message()


def test_truncated_gzip_message_counts_the_bytes_present(nifti_gz, tmp_path):
    """The message gave "0 present" for a file cut inside the first 4 MiB of voxels: a wrong number."""
    import gzip

    path, _ = nifti_gz
    cut = _cut_in_half(path, tmp_path)
    with pytest.raises(LoadError) as ei:
        open_volume(cut)
    found = ei.value.context["found_bytes"]
    full = len(gzip.decompress(path.read_bytes()))
    assert 0.3 * full < found < full  # about half the voxels decompress before the cut
    assert f"{found} present" in ei.value.user_message()
