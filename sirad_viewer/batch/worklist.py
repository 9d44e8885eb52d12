"""The reading worklist over a batch's results: order, next case, read marks. No Qt.

A worklist is a clinical tool: it orders the graded series so that the likely positives are read
first. It shows the order, never the AI's numbers: the reading stays grade-first (the AI result
of a case is revealed in the viewer after the reader's own grade, as always). In a reader study
it is not offered at all, since the order itself would reveal the AI (:func:`allowed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sirad_viewer.batch.store import ResultStore


class SortBy(str, Enum):
    PROBABILITY = "probability"  # AI patient probability, highest first
    DATE = "date"  # study date, newest first
    ID = "id"  # series UID / source path


@dataclass(frozen=True)
class Entry:
    key: str
    source: str
    description: str
    study_date: str
    series_uid: str
    read: bool


NOT_IN_STUDIES = ("A worklist is not offered in a reader study: its order (likely positives first) would "
                  "reveal the AI before the reader's grade.")


def allowed(in_reader_study: bool) -> tuple[bool, str]:
    """Whether a worklist may be opened now, and why not."""
    return (False, NOT_IN_STUDIES) if in_reader_study else (True, "")


class Worklist:
    """The ``ok`` rows of a results store, in reading order.

    Parameters
    ----------
    store : ResultStore
    sort_by : SortBy
    """

    def __init__(self, store: ResultStore, sort_by: SortBy = SortBy.PROBABILITY) -> None:
        self.store = store
        self.sort_by = SortBy(sort_by)
        self.entries: list[Entry] = []
        self.refresh()

    def refresh(self) -> None:
        rows = self.store.rows(status="ok")
        if self.sort_by is SortBy.PROBABILITY:
            rows.sort(key=lambda r: (-(r["patient_probability"] or 0.0), r["source"]))
        elif self.sort_by is SortBy.DATE:
            rows.sort(key=lambda r: (r["study_date"] or "", r["source"]), reverse=True)
        else:
            rows.sort(key=lambda r: (r["series_uid"] or "", r["source"]))
        self.entries = [Entry(r["key"], r["source"], r.get("series_description") or "", r.get("study_date") or "",
                              r.get("series_uid") or "", bool(r.get("read_at"))) for r in rows]

    def set_sort(self, sort_by: SortBy) -> None:
        self.sort_by = SortBy(sort_by)
        self.refresh()

    def mark_read(self, key: str, read: bool = True) -> None:
        self.store.mark_read(key, read=read)
        self.entries = [Entry(e.key, e.source, e.description, e.study_date, e.series_uid, read) if e.key == key else e
                        for e in self.entries]

    def next_unread(self, after: int = -1) -> int | None:
        """Index of the first unread entry after ``after`` (wrapping round), or None when all are read."""
        n = len(self.entries)
        for k in range(1, n + 1):
            i = (after + k) % n
            if not self.entries[i].read:
                return i
        return None
