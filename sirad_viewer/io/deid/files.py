"""``sirad deidentify IN --out OUT``: a de-identified copy of a DICOM file, folder or zip.

Output layout: ``OUT/<new SeriesInstanceUID>/<new SOPInstanceUID>.dcm`` (or the same inside a
zip when OUT ends in ``.zip``). Input file and folder names are never reused: they often hold a
patient's name. The copy is built in a hidden sibling folder and moved into place only when every
file is written, so an interrupted run leaves no OUT that looks complete.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import tempfile
import zipfile
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sirad_viewer.errors import CancelledError, ExportError, LoadError, SiradError
from sirad_viewer.io.deid.profile import DeidOptions, deidentify_dataset

log = logging.getLogger(__name__)

#: Bounds on what is read from a zip (declared sizes are checked, then reads are capped).
MAX_MEMBER_BYTES = 2 * 1024 ** 3
MAX_MEMBERS = 200_000
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class DeidReport:
    """What :func:`deidentify_path` did. File names here are for the user's terminal only."""

    out: Path
    written: int = 0
    series: set[str] = field(default_factory=set)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom warns about every odd value it reads; what matters reaches the user as our errors.
    Its messages stay visible at debug level (``sirad -vv``)."""
    import pydicom  # noqa: F401 - importing pydicom sets its logger's level: do it first

    plog = logging.getLogger("pydicom")
    level = plog.level
    if not log.isEnabledFor(logging.DEBUG):
        plog.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not log.isEnabledFor(logging.DEBUG):
                warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        plog.setLevel(level)


def _is_zip(p: Path) -> bool:
    try:
        return p.is_file() and zipfile.is_zipfile(p)
    except OSError:
        return False


def _inputs(src: Path, report: DeidReport, stack: ExitStack) -> list[tuple[str, Callable[[], bytes]]]:
    """(name for messages, reader of the bytes) for every candidate file under ``src``; a zip
    stays open on ``stack``."""
    return list(_iter_inputs(src, report, stack))


def _iter_inputs(src: Path, report: DeidReport, stack: ExitStack) -> Iterator[tuple[str, Callable[[], bytes]]]:
    if not src.exists():
        raise LoadError("does not exist", code="not_found", path=src)
    if src.is_dir():
        for root, dirs, files in os.walk(src, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                try:
                    st = os.lstat(p)
                except OSError as exc:
                    report.skipped.append((str(p), f"cannot be read: {exc.strerror}"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    report.skipped.append((str(p), "not a regular file (link, device or pipe): not followed"))
                    continue
                yield str(p), p.read_bytes
        return
    if _is_zip(src):
        try:
            zf = zipfile.ZipFile(src)
        except (zipfile.BadZipFile, OSError) as exc:
            raise LoadError(f"is not a readable zip file: {exc}", code="not_dicom", path=src) from exc
        stack.enter_context(zf)
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS:
            raise LoadError(f"holds {len(infos)} files; at most {MAX_MEMBERS} are read", code="unsupported", path=src)
        for info in infos:
            name = f"{src}!{info.filename}"
            if info.file_size > MAX_MEMBER_BYTES:
                report.skipped.append((name, f"declares {info.file_size} bytes; more than {MAX_MEMBER_BYTES}"))
                continue

            def read(info: zipfile.ZipInfo = info, name: str = name) -> bytes:
                with zf.open(info) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
                if len(data) > MAX_MEMBER_BYTES:
                    raise LoadError(f"unpacks to more than {MAX_MEMBER_BYTES} bytes", code="unsupported", path=name)
                return data
            yield name, read
        return
    yield str(src), src.read_bytes


def _read(name: str, reader: Callable[[], bytes]) -> object | None:
    """The data set, or None for a file that is not DICOM at all."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        data = reader()
    except SiradError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise LoadError(f"cannot be read: {exc}", code="not_found", path=name) from exc
    try:
        try:
            return pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            # no preamble/meta: still DICOM when a forced read finds an object with a SOP class
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if not str(ds.get("SOPClassUID", "") or "").startswith("1.2.840.10008."):
                return None
            _set_transfer_syntax(ds)
            return ds
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise LoadError(f"cannot be read as DICOM ({type(exc).__name__}: {exc})", code="not_dicom", path=name) from exc


def _set_transfer_syntax(ds: object) -> None:
    """A file without meta header: record the encoding pydicom found, so it can be written."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (None, None))
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little or little is None else ExplicitVRBigEndian)
    ds.file_meta = meta  # type: ignore[attr-defined]


def _check_complete(ds: object, name: str) -> None:
    """pydicom stops quietly at the end of a truncated file: refuse an image without all its pixels."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    sop = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")  # type: ignore[attr-defined]
    pixels = ds.get("PixelData")  # type: ignore[attr-defined]
    if pixels is None:
        if sop and "Image" in UID(sop).name and not any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):  # type: ignore[operator]
            raise LoadError("is an image without pixel data (truncated?); not copied", code="truncated_pixel_data",
                            path=name)
        return
    ts = getattr(meta, "TransferSyntaxUID", None)
    if ts is not None and UID(str(ts)).is_compressed:
        return
    try:
        bits = int(ds.BitsAllocated)  # type: ignore[attr-defined]
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)  # type: ignore[attr-defined]
                    * int(ds.get("NumberOfFrames", 1) or 1) * bits + 7) // 8  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return
    if len(pixels) < expected:
        raise LoadError(f"holds {len(pixels)} bytes of pixel data, {expected} expected (the file is "
                        "truncated)", code="truncated_pixel_data", path=name)


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    k = 2
    while (alt := path.with_name(f"{path.stem}-{k}{path.suffix}")).exists():
        k += 1
    return alt


def deidentify_path(
    src: str | Path,
    out: str | Path,
    *,
    key: bytes,
    options: DeidOptions | None = None,
    skip_unreadable: bool = False,
    progress: Callable[[float, str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> DeidReport:
    """Write a de-identified copy of every DICOM object under ``src`` to ``out``.

    Parameters
    ----------
    src : str or Path
        A DICOM file, a folder (walked without following links) or a zip.
    out : str or Path
        A folder that does not exist yet (or is empty), or a path ending in ``.zip``.
    key : bytes
        Project secret (:func:`~sirad_viewer.io.deid.keys.load_or_create_key`).
    options : DeidOptions, optional
    skip_unreadable : bool
        Skip (and list) DICOM files that cannot be parsed or are refused, instead of stopping.
        Files that are not DICOM at all, and DICOMDIR indexes, are always skipped and listed.

    Raises
    ------
    LoadError
        An input cannot be read (its name is in the message); nothing is left at ``out``.
    ExportError
        ``out`` exists and is not empty, cannot be written, or an object was refused.
    """
    src, out = Path(src), Path(out)
    opts = options or DeidOptions()
    as_zip = out.suffix.lower() == ".zip"
    if out.exists() and (as_zip or not out.is_dir() or any(out.iterdir())):
        raise ExportError("already exists; give a new output folder (nothing was overwritten)", code="exists", path=out)
    try:
        if src.resolve() == out.resolve() or (src.is_dir() and out.resolve().is_relative_to(src.resolve())):
            raise ExportError("the output must not be inside the input", code="bad_output", path=out)
    except OSError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    report = DeidReport(out=out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    stack = ExitStack()
    stack.enter_context(_quiet_pydicom())
    try:
        inputs = _inputs(src, report, stack)
        n = max(len(inputs), 1)
        for i, (name, reader) in enumerate(inputs):
            if cancelled and cancelled():
                raise CancelledError(path=src)
            try:
                ds = _read(name, reader)
                if ds is None:
                    report.skipped.append((name, "not a DICOM file: not copied"))
                    continue
                sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
                if sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
                    report.skipped.append((name, "DICOMDIR (a media index) is not copied; rebuild it from the output"))
                    continue
                _check_complete(ds, name)
                sop = str(ds.get("SOPClassUID", "") or "") or sop_class
                if not sop:
                    raise LoadError("has no SOP Class UID: it is not a storable DICOM object", code="not_dicom",
                                    path=name)
                clean = deidentify_dataset(ds, key=key, options=opts, where=name)
                series = str(clean.get("SeriesInstanceUID", "") or "") or "no-series-uid"
                folder = tmp / series
                folder.mkdir(exist_ok=True)
                target = _unique(folder / f"{clean.SOPInstanceUID}.dcm")
                try:
                    clean.save_as(target, enforce_file_format=True)
                except (ValueError, AttributeError, TypeError, KeyError) as exc:  # the object's content
                    target.unlink(missing_ok=True)
                    raise ExportError(f"its de-identified copy cannot be written as DICOM: {exc}",
                                      code="unwritable_object", path=name) from exc
            except (LoadError, ExportError) as exc:
                if not skip_unreadable:
                    raise
                report.skipped.append((name, exc.message))
                continue
            report.written += 1
            report.series.add(series)
            if clean.get("PatientIdentityRemoved") == "NO":
                report.flagged.append(name)
            if progress and (i % 16 == 0 or i == n - 1):
                progress((i + 1) / n, f"de-identified {i + 1} of {n} files")
        if report.written == 0:
            raise LoadError("holds no DICOM object that could be de-identified", code="no_image", path=src)
        if as_zip:
            part = out.with_name(f".{out.name}.partial")
            try:
                with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    for f in sorted(tmp.rglob("*.dcm")):
                        zf.write(f, f.relative_to(tmp).as_posix())
                os.replace(part, out)
            finally:
                part.unlink(missing_ok=True)
        else:
            if out.exists():
                out.rmdir()  # empty, checked above
            os.replace(tmp, out)
    except OSError as exc:
        raise ExportError(f"cannot be written: {exc}", path=out) from exc
    finally:
        stack.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


__all__ = ["DeidReport", "deidentify_path", "MAX_MEMBER_BYTES", "MAX_MEMBERS"]
