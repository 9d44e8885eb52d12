"""Loader quirks on synthetic series written and then edited like real-world oddities."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sirad_viewer.errors import LoadError
from sirad_viewer.imaging import Volume
from sirad_viewer.imaging import geometry as geo
from sirad_viewer.io import load_series, open_volume, scan
from sirad_viewer.io.export import write_dicom_series


def ramp_volume(n: int = 24, rows: int = 32, cols: int = 40, spacing: float = 2.0) -> Volume:
    """HU = 10*slice + row - column offset: every voxel tells where it is."""
    k, j, i = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    arr = (10 * k + j - i).astype(np.int16)
    return Volume(arr, geo.make_affine([-20.0, -15.0, 100.0], np.eye(3)[::-1], [spacing, 0.8, 0.8]))


def write(tmp: Path, vol: Volume | None = None, **kw) -> tuple[Volume, list[Path]]:
    vol = vol or ramp_volume()
    files = write_dicom_series(vol, tmp, deidentify=False, **kw)
    return vol, files


def edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def codes(vol_or_info) -> set[str]:
    return {w.code for w in vol_or_info.warnings}


def test_clean_series_round_trips_exactly(tmp_path):
    vol, _ = write(tmp_path)
    got = open_volume(tmp_path)
    assert np.array_equal(got.array, vol.array)
    assert np.allclose(got.affine, vol.affine, atol=1e-4)
    assert codes(got) == set()


@pytest.mark.parametrize("compression", ["rle", "j2k", "jpeg-ls"])
def test_compressed_series_decode_in_threads_to_the_same_hu(tmp_path, compression):
    vol, _ = write(tmp_path, compression=compression)
    got = open_volume(tmp_path)
    assert np.array_equal(got.array, vol.array)


def test_sorting_uses_positions_not_instance_numbers_or_names(tmp_path):
    vol, files = write(tmp_path)
    rng = np.random.default_rng(0)
    numbers = rng.permutation(len(files)) + 1
    for f, n in zip(files, numbers):
        edit(f, InstanceNumber=str(int(n)))
    for f in files:  # shuffle file names too
        f.rename(f.with_name(f"x{rng.integers(1e9)}_{f.name}"))
    assert np.array_equal(open_volume(tmp_path).array, vol.array)


def test_each_slice_own_rescale_is_applied(tmp_path):
    vol, files = write(tmp_path)
    # Re-encode slice 5 with slope 2: stored values halve, HU must stay the same.
    ds = pydicom.dcmread(files[5])
    stored = ds.pixel_array.astype(np.int32)
    hu = stored - 1024
    new_stored = ((hu + 2048) // 2).astype(np.uint16)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
    ds.PixelData = new_stored.tobytes()
    ds.save_as(files[5])
    got = open_volume(tmp_path)
    assert got.array.dtype == np.float32
    assert np.allclose(got.array[5], (new_stored.astype(np.float64) * 2 - 2048))
    assert np.array_equal(got.array[4], vol.array[4])


def test_missing_slice_is_reported_with_numbers_and_filled(tmp_path):
    vol, files = write(tmp_path)
    files[10].unlink()
    info = scan(tmp_path).series[0]
    w = [w for w in info.warnings if w.code == "missing_slices"]
    assert w and "2 mm expected, 4 mm found" in w[0].message and "IM00010" in w[0].message
    got = load_series(info)
    assert got.shape == vol.shape
    # linear interpolation of the ramp is exact
    assert np.array_equal(got.array[10], vol.array[10])
    assert np.allclose(got.affine, vol.affine, atol=1e-4)


def test_uneven_spacing_is_resampled_onto_a_regular_grid(tmp_path):
    vol, files = write(tmp_path)
    # move slices 12.. by +1 mm: one 3 mm step in a 2 mm series
    for f in files[12:]:
        ds = pydicom.dcmread(f)
        pos = [float(v) for v in ds.ImagePositionPatient]
        pos[2] += 1.0
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.save_as(f)
    got = open_volume(tmp_path)
    w = [w for w in got.warnings if w.code == "uneven_spacing"]
    assert w and "from 2 to 3 mm" in w[0].message and "regular 2 mm grid" in w[0].message
    assert np.allclose(got.spacing[0], 2.0)
    # the world z of target slice t is z0 + 2t; its value interpolates the stored slices
    z_stored = np.array([100.0 + 2 * k + (1.0 if k >= 12 else 0.0) for k in range(24)])
    t = 13  # z = 126, between stored slices 12 (z=125) and 13 (z=127): halfway
    assert np.allclose(z_stored[12:14], [125.0, 127.0])
    assert np.allclose(got.array[t].astype(float), (vol.array[12].astype(float) + vol.array[13]) / 2, atol=0.51)


def test_gantry_tilt_is_corrected_onto_an_orthogonal_grid(tmp_path):
    n, rows, cols = 24, 40, 40
    arr = np.full((n, rows, cols), -1000, dtype=np.int16)
    # a bright rod that is straight along world z at world (x=0, y=0)
    tilt = np.deg2rad(15.0)
    vol_tilted_rows = []
    for k in range(n):
        z = 2.0 * k
        shift_y = z * np.tan(tilt)  # slice k's origin moves posteriorly
        # in slice k, the rod at world y=0 sits at row (0 - (-16 + shift_y)) / 0.8
        r = (0.0 - (-16.0 + shift_y)) / 0.8
        arr[k, int(round(r)) - 1:int(round(r)) + 2, 19:22] = 1000
        vol_tilted_rows.append(r)
    vol = Volume(arr, geo.make_affine([-16.0, -16.0, 0.0], np.eye(3)[::-1], [2.0, 0.8, 0.8]))
    files = write_dicom_series(vol, tmp_path, deidentify=False)
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = ["-16.0", f"{-16.0 + 2.0 * k * np.tan(tilt):.4f}", f"{2.0 * k:.4f}"]
        ds.save_as(f)
    got = open_volume(tmp_path)
    w = [w for w in got.warnings if w.code == "gantry_tilt"]
    assert w and "15.0 degrees" in w[0].message
    assert geo.is_orthogonal(got.affine)
    # The rod must now be at the same (x, y) in every slice: world (0, 0).
    for k in range(2, n - 2):
        sl = got.array[k].astype(float)
        rr, cc = np.unravel_index(np.argmax(sl), sl.shape)
        p = got.index_to_world([k, rr, cc])
        assert abs(p[1]) < 1.3 and abs(p[0]) < 1.3, (k, p)


def test_duplicate_positions_are_dropped_and_named(tmp_path):
    vol, files = write(tmp_path)
    dup = tmp_path / "dup.dcm"
    shutil.copy(files[7], dup)
    edit(dup, SOPInstanceUID=pydicom.uid.generate_uid(), InstanceNumber="99")
    got = open_volume(tmp_path)
    w = [w for w in got.warnings if w.code == "duplicate_positions"]
    assert w and "dup.dcm" in w[0].message
    assert np.array_equal(got.array, vol.array)


def test_mixed_orientation_leaves_the_odd_image_out(tmp_path):
    vol, files = write(tmp_path)
    edit(files[-1], ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    got = open_volume(tmp_path)
    assert "mixed_orientation" in codes(got)
    assert got.shape[0] == vol.shape[0] - 1


def test_not_ct_and_few_slices_are_flagged(tmp_path):
    vol = ramp_volume(n=6)
    _, files = write(tmp_path, vol)
    for f in files:
        edit(f, Modality="MR")
    got = open_volume(tmp_path)
    assert {"not_ct", "few_slices"} <= codes(got)
    assert "MR" in [w for w in got.warnings if w.code == "not_ct"][0].message


def test_localizer_and_non_image_objects_are_left_out(tmp_path):
    vol, files = write(tmp_path)
    scout = tmp_path / "scout.dcm"
    shutil.copy(files[0], scout)
    edit(scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SOPInstanceUID=pydicom.uid.generate_uid(),
         ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    sr = pydicom.dcmread(files[1])
    del sr.PixelData
    sr.Modality = "SR"
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.save_as(tmp_path / "report.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    result = scan(tmp_path)
    assert len(result.series) == 1 and result.series[0].n_images == vol.shape[0]
    skipped = {Path(p).name: c for p, c, _ in result.skipped}
    assert skipped == {"scout.dcm": "no_image", "report.dcm": "no_image", "notes.txt": "not_dicom"}
    assert codes(result.series[0]) == set()


def test_best_series_is_chosen_and_explained(tmp_path):
    thick = ramp_volume(n=12, spacing=5.0)
    thin = ramp_volume(n=40, spacing=1.0)
    write_dicom_series(thick, tmp_path / "a", deidentify=False, series_description="Pelvis 5mm")
    write_dicom_series(thin, tmp_path / "b", deidentify=False, series_description="Pelvis 1mm bone")
    mr = ramp_volume(n=60, spacing=0.5)
    files = write_dicom_series(mr, tmp_path / "c", deidentify=False, series_description="MR")
    for f in files:
        edit(f, Modality="MR")
    result = scan(tmp_path)
    assert len(result.series) == 3
    chosen = result.series[result.chosen]
    assert chosen.description == "Pelvis 1mm bone"
    assert "thinnest" in result.reason and "CT" in result.reason and "axial" in result.reason


def test_two_series_with_empty_uids_stay_apart(tmp_path):
    for name, desc in (("a", "first"), ("b", "second")):
        files = write_dicom_series(ramp_volume(), tmp_path / name, deidentify=False, series_description=desc)
        for f in files:
            edit(f, SeriesInstanceUID="", SOPInstanceUID="", StudyInstanceUID="")
    assert sorted(s.description for s in scan(tmp_path).series) == ["first", "second"]


def test_zip_archive_loads_like_the_folder(tmp_path):
    vol, files = write(tmp_path / "series")
    zpath = tmp_path / "case.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in files:
            zf.write(f, f"nested/{f.name}")
    got = open_volume(zpath)
    assert np.array_equal(got.array, vol.array)


def test_truncated_slice_in_a_folder_names_the_file_and_refuses(tmp_path):
    _, files = write(tmp_path)
    data = files[3].read_bytes()
    files[3].write_bytes(data[:-500])
    with pytest.raises(LoadError) as ei:
        open_volume(tmp_path)
    assert ei.value.code == "truncated_pixel_data"
    assert ei.value.path and ei.value.path.endswith(files[3].name)


def test_nrrd_and_mha_load_with_the_same_geometry(tmp_path):
    import SimpleITK as sitk

    vol = ramp_volume()
    img = sitk.GetImageFromArray(vol.array)
    o, s, d = geo.affine_to_sitk(vol.affine)
    img.SetOrigin(o), img.SetSpacing(s), img.SetDirection(d)
    for ext in ("nrrd", "mha", "nii.gz"):
        p = tmp_path / f"v.{ext}"
        sitk.WriteImage(img, str(p))
        got = open_volume(p)
        assert np.array_equal(got.array, vol.array), ext
        assert np.allclose(got.affine, vol.affine, atol=1e-4), ext


def test_missing_file_and_empty_folder_errors(tmp_path):
    with pytest.raises(LoadError) as ei:
        open_volume(tmp_path / "nope")
    assert ei.value.code == "not_found"
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError) as ei:
        open_volume(tmp_path / "empty")
    assert ei.value.code == "no_image"


# ------------------------------------------------------------------------------------------
# Archives and folders from outside (issue 12): bounded, streamed, typed errors, no hangs.
# ------------------------------------------------------------------------------------------

import os  # noqa: E402
import time  # noqa: E402


def test_corrupt_zip_is_a_typed_error_with_one_line(tmp_path):
    import subprocess
    import sys

    _, files = write(tmp_path / "series")
    z = tmp_path / "case.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    data = bytearray(z.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # last central directory entry: damage its signature
    data[cd + 1] ^= 0xFF
    z.write_bytes(bytes(data))
    with pytest.raises(LoadError) as ei:
        open_volume(z)
    assert ei.value.code == "bad_archive" and ei.value.path.endswith("case.zip")
    r = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "info", str(z)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


def test_zip_with_a_damaged_member_names_it(tmp_path):
    vol, files = write(tmp_path / "series")
    z = tmp_path / "case.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    data = bytearray(z.read_bytes())
    # Damage the end of the 4th member's deflate stream: the zip's CRC-32 catches it (streamed
    # reads check it at the member's end); the member is left out, named, and the gap it leaves
    # is reported like any missing slice.
    info = zipfile.ZipFile(z).infolist()[3]
    off = info.header_offset + 30 + len(files[3].name) + info.compress_size - 80
    data[off: off + 40] = bytes(40)
    z.write_bytes(bytes(data))
    result = scan(z)
    assert [(p.split("!")[-1], c) for p, c, _ in result.skipped] == [(files[3].name, "bad_archive")]
    assert "CRC" in result.skipped[0][2]
    got = load_series(result.series[result.chosen])
    assert "missing_slices" in codes(got)


def test_zip_with_8000_members_is_scanned_quickly(tmp_path):
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(8000):
            zf.writestr(f"notes/{i:05d}.txt", b"not dicom")
    t0 = time.monotonic()
    with pytest.raises(LoadError) as ei:
        scan(z)
    assert ei.value.code == "not_dicom" and "8000 file(s) skipped" in ei.value.message
    assert time.monotonic() - t0 < 20  # was over 5 minutes (the directory was re-read per member)


def test_zip_bomb_members_are_refused_without_unpacking(tmp_path):
    """A big member of zeros, and a small member whose DICOM header declares 1 GiB of pixels."""
    import resource

    from tests.io.test_malformed import _ct_small

    vol, files = write(tmp_path / "series")
    hostile = _ct_small(tmp_path, "huge.dcm", Rows=8192, Columns=8192, NumberOfFrames="8")
    z = tmp_path / "case.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in files:
            zf.write(f, f"series/{f.name}")
        with zf.open("zeros.dcm", "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(256):
                fh.write(block)
        # The header says 8192 x 8192 x 8 frames of 16 bit = 1 GiB; only the header is in the zip.
        zf.write(hostile, "huge.dcm")
    assert z.stat().st_size < 2_000_000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    result = scan(z)
    got = load_series(result.series[result.chosen])
    assert time.monotonic() - t0 < 20
    assert np.array_equal(got.array, vol.array)
    skipped = {os.path.basename(p.split("!")[-1]): c for p, c, _ in result.skipped}
    assert skipped == {"zeros.dcm": "too_large"}, result.skipped
    huge = [s for s in result.series if s.shape[1:] == (8192, 8192)]
    assert [w.code for w in huge[0].warnings if w.code == "truncated_pixel_data"]
    with pytest.raises(LoadError) as ei:
        load_series(huge[0])
    assert ei.value.code == "truncated_pixel_data" and ei.value.path.endswith("huge.dcm")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: far below 256 MiB


def test_folder_scan_skips_devices_fifos_and_links_out_of_the_tree(tmp_path):
    vol, files = write(tmp_path / "case")
    case = tmp_path / "case"
    os.symlink("/dev/zero", case / "zero.dcm")
    os.mkfifo(case / "pipe.dcm")
    outside = tmp_path / "outside.dcm"
    shutil.copy(files[0], outside)
    os.symlink(outside, case / "link_out.dcm")
    os.symlink(files[1], case / "link_in.dcm")  # inside the tree: fine (a duplicate of slice 1)
    t0 = time.monotonic()
    result = scan(case)
    assert time.monotonic() - t0 < 20
    reasons = {Path(p).name: m for p, _, m in result.skipped}
    assert "outside the folder" in reasons["zero.dcm"]
    assert "FIFO" in reasons["pipe.dcm"]
    assert "outside the folder" in reasons["link_out.dcm"]
    got = load_series(result.series[result.chosen])
    assert np.array_equal(got.array, vol.array)
