"""A local cache of retrieved studies with a size limit (least recently used go first).

One folder per (node, study), named by a hash so no identifier appears in a path. A study is
handed out only once its retrieve finished completely (the ``.complete`` marker).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".complete"


class StudyCache:
    """Parameters
    ----------
    root : folder of the cache
    max_bytes : total size the cache is trimmed to after each retrieve
    """

    def __init__(self, root: str | Path, max_bytes: int = 20 * 1024**3) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _key(node: str, study_uid: str) -> str:
        return hashlib.sha256(f"{node}\n{study_uid}".encode()).hexdigest()[:24]

    def folder(self, node: str, study_uid: str) -> Path:
        """The study's folder (created empty if new; an unfinished one is emptied)."""
        d = self.root / self._key(node, study_uid)
        if d.exists() and not (d / MARKER).exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def mark_complete(self, node: str, study_uid: str) -> None:
        (self.root / self._key(node, study_uid) / MARKER).touch()

    def lookup(self, node: str, study_uid: str) -> Path | None:
        """The folder of a completely retrieved study, or None; a hit counts as a use."""
        d = self.root / self._key(node, study_uid)
        if (d / MARKER).exists():
            os.utime(d / MARKER)
            return d
        return None

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def enforce_limit(self, *, keep: Path | None = None) -> list[Path]:
        """Delete least recently used studies until the cache fits; returns what was deleted."""
        entries = []
        for d in self.root.iterdir():
            if d.is_dir():
                m = d / MARKER
                used = m.stat().st_mtime if m.exists() else 0.0
                entries.append((used, d, sum(f.stat().st_size for f in d.rglob("*") if f.is_file())))
        total = sum(e[2] for e in entries)
        removed = []
        for _, d, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if keep is not None and d == keep:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= size
            removed.append(d)
        if removed:
            log.info("study cache: removed %d stud%s to stay under %d MB", len(removed),
                     "y" if len(removed) == 1 else "ies", self.max_bytes // 1024**2)
        return removed
