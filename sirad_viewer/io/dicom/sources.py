"""Where DICOM bytes come from: files on disk, members of zip archives, folders walked for both."""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Source:
    """Where one DICOM file's bytes live: a path, or a member inside a zip archive."""

    path: str
    member: str | None = None

    def open(self) -> io.BufferedIOBase:
        if self.member is None:
            return open(self.path, "rb")
        with zipfile.ZipFile(self.path) as zf:
            return io.BytesIO(zf.read(self.member))

    def size(self) -> int:
        if self.member is None:
            return os.path.getsize(self.path)
        with zipfile.ZipFile(self.path) as zf:
            return zf.getinfo(self.member).file_size

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path

    def __str__(self) -> str:
        return self.name


def iter_sources(path: str | Path) -> Iterator[Source]:
    """All candidate files under ``path`` (recursive; zip archives are looked into)."""
    p = Path(path)
    if p.is_file():
        if zipfile.is_zipfile(p) and p.suffix.lower() == ".zip":
            with zipfile.ZipFile(p) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and not Path(info.filename).name.startswith("."):
                        yield Source(str(p), info.filename)
        else:
            yield Source(str(p))
        return
    for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            fp = Path(root) / f
            if fp.suffix.lower() == ".zip" and zipfile.is_zipfile(fp):
                yield from iter_sources(fp)
            else:
                yield Source(str(fp))

