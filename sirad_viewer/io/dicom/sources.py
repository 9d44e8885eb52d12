"""Where DICOM bytes come from: files on disk, members of zip archives, folders walked for both.

Validated at the border (issue 12):

* a zip archive's directory is read once (not once per member, which was quadratic) and checked
  against :mod:`sirad_viewer.io.limits` (member count, declared sizes, compression ratio);
  members are read by streaming, so a header parse reads kilobytes, not the whole member;
* a corrupt archive is an :class:`~sirad_viewer.errors.ArchiveError`, never a traceback;
* a folder walk takes regular files only: devices, FIFOs, sockets and symbolic links that lead
  out of the folder are skipped with a reason (a link to ``/dev/zero`` or a FIFO hung the scan).
"""
from __future__ import annotations

import io
import logging
import os
import stat
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sirad_viewer.errors import ArchiveError, InputLimitError, LoadError
from sirad_viewer.io import limits

log = logging.getLogger(__name__)

#: ``on_skip(name, code, reason)``: told about every file the walk leaves out.
SkipFn = Callable[[str, str, str], None]
#: What reading a damaged zip member raises (zipfile, zlib, bz2/lzma, encrypted members).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError)


class ZipArchive:
    """One zip file opened once; members are opened as streams under a lock (threads share it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._zf = zipfile.ZipFile(self.path)
            infos = self._zf.infolist()
        except ZIP_ERRORS as exc:
            raise ArchiveError(f"is not a readable zip archive: {exc}", path=self.path) from exc
        if len(infos) > limits.MAX_ZIP_MEMBERS:
            raise InputLimitError(f"holds {len(infos)} members; at most {limits.MAX_ZIP_MEMBERS} are read",
                                  path=self.path, context={"members": len(infos)})
        total = sum(i.file_size for i in infos)
        if total > limits.MAX_ZIP_TOTAL_BYTES:
            raise InputLimitError(f"declares {total / 2**30:.1f} GiB when unpacked; at most "
                                  f"{limits.MAX_ZIP_TOTAL_BYTES / 2**30:.0f} GiB are read", path=self.path)
        self.infos = {i.filename: i for i in infos}

    def check_member(self, name: str) -> zipfile.ZipInfo:
        """The member's directory entry, refused when its declared size is not believable."""
        info = self.infos[name]
        where = f"{self.path}!{name}"
        if info.file_size > limits.MAX_ZIP_MEMBER_BYTES:
            raise InputLimitError(f"declares {info.file_size / 2**30:.1f} GiB unpacked; at most "
                                  f"{limits.MAX_ZIP_MEMBER_BYTES / 2**30:.0f} GiB per member are read", path=where)
        if info.file_size > limits.ZIP_RATIO_MIN_BYTES and \
                info.file_size > limits.MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise InputLimitError(f"is compressed {info.file_size / max(info.compress_size, 1):.0f}:1 "
                                  f"({info.file_size >> 20} MiB from {info.compress_size >> 10} KiB); "
                                  "refused as a zip bomb", path=where)
        return info

    def open(self, name: str) -> io.BufferedIOBase:
        info = self.check_member(name)
        with self._lock:
            try:
                return _LockedMember(self._zf.open(info), self._lock, f"{self.path}!{name}")
            except ZIP_ERRORS as exc:
                raise ArchiveError(f"member cannot be read: {exc}", path=f"{self.path}!{name}") from exc

    def close(self) -> None:
        self._zf.close()


class _LockedMember(io.RawIOBase):
    """A streaming zip member; every read holds the archive's lock, errors become ArchiveError."""

    def __init__(self, fh, lock: threading.Lock, name: str) -> None:
        super().__init__()
        self._fh, self._lock, self._name = fh, lock, name

    def _guard(self, fn, *args):
        with self._lock:
            try:
                return fn(*args)
            except ZIP_ERRORS as exc:
                raise ArchiveError(f"member cannot be read: {exc}", path=self._name) from exc

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._guard(self._fh.read, n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._guard(self._fh.seek, offset, whence)

    def tell(self) -> int:
        return self._guard(self._fh.tell)

    def verify(self) -> None:
        """Read to the end of the member so zipfile checks its CRC-32 (damaged data raises)."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


@dataclass(frozen=True)
class Source:
    """Where one DICOM file's bytes live: a path, or a member inside a zip archive."""

    path: str
    member: str | None = None
    archive: ZipArchive | None = field(default=None, compare=False, repr=False)

    def _archive(self) -> ZipArchive:
        return self.archive if self.archive is not None else ZipArchive(self.path)

    def open(self) -> io.BufferedIOBase:
        if self.member is None:
            return open(self.path, "rb")
        return self._archive().open(self.member)

    def size(self) -> int:
        if self.member is None:
            return os.path.getsize(self.path)
        return self._archive().check_member(self.member).file_size

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path

    def __str__(self) -> str:
        return self.name


def _zip_sources(p: Path) -> Iterator[Source]:
    archive = ZipArchive(p)
    for name in sorted(archive.infos):
        info = archive.infos[name]
        if not info.is_dir() and not Path(name).name.startswith("."):
            yield Source(str(p), name, archive)


def _is_zip(fp: Path) -> bool:
    try:
        return fp.suffix.lower() == ".zip" and zipfile.is_zipfile(fp)
    except OSError:
        return False


def iter_sources(path: str | Path, *, on_skip: SkipFn | None = None) -> Iterator[Source]:
    """All candidate files under ``path`` (recursive; zip archives are looked into).

    Only regular files are yielded. Devices, FIFOs, sockets, broken links and links that lead
    out of ``path`` are reported through ``on_skip`` (and logged) instead.

    Raises
    ------
    ArchiveError
        ``path`` is a corrupt zip archive.
    InputLimitError
        The folder holds more than :data:`~sirad_viewer.io.limits.MAX_FILES` files, or a zip
        archive more members than allowed.
    """
    p = Path(path)

    def skip(name: str, code: str, reason: str) -> None:
        log.warning("%s: %s", name, reason)
        if on_skip is not None:
            on_skip(name, code, reason)

    if p.is_file():
        if _is_zip(p):
            yield from _zip_sources(p)
        else:
            yield Source(str(p))
        return
    root = os.path.realpath(p)
    count = 0
    for dirpath, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            fp = Path(dirpath) / f
            try:
                if fp.is_symlink():
                    real = os.path.realpath(fp)
                    if os.path.commonpath([root, real]) != root:
                        skip(str(fp), "skipped", f"is a link to {real}, outside the folder; not followed")
                        continue
                mode = os.stat(fp).st_mode
            except (OSError, ValueError) as exc:
                skip(str(fp), "skipped", f"cannot be examined ({exc}); left out")
                continue
            if not stat.S_ISREG(mode):
                kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                        "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                        "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
                skip(str(fp), "skipped", f"is {kind}, not a file; left out")
                continue
            count += 1
            if count > limits.MAX_FILES:
                raise InputLimitError(f"holds more than {limits.MAX_FILES} files; open a sub-folder", path=p)
            if _is_zip(fp):
                try:
                    yield from _zip_sources(fp)
                except LoadError as exc:
                    skip(str(fp), exc.code, exc.message)
            else:
                yield Source(str(fp))
