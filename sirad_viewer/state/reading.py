"""Grade first, then compare: one reader's reading of one case, with the AI result held back.

The AI may run in the background as soon as the case opens; its result is handed to
:meth:`Reading.receive_ai` and kept private. :attr:`Reading.ai` returns it only after the reader's
grades are locked (or at once when the ``ai_visible_at_once`` policy is on, for clinical
reading outside a study). Locking stores the pre-AI grades with a timestamp; they can never
change afterwards. Grades set after the reveal are stored separately as post-AI grades.

Every step is appended to a JSON-lines log (``reads.jsonl``) with fsync, so nothing locked is lost
if the program stops.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sirad_viewer.errors import SiradError
from sirad_viewer.state.viewer import Signal

SIDES = ("right", "left")
CONFIDENCE = ("low", "medium", "high")


class ReadingError(SiradError):
    code = "reading_rule"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_log_path() -> Path:
    env = os.environ.get("SIRAD_READS")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "sirad-viewer" / "reads.jsonl"


@dataclass
class Grades:
    right: int | None = None
    left: int | None = None
    confidence: str | None = None
    comment: str = ""
    at: str | None = None

    def complete(self) -> bool:
        return self.right is not None and self.left is not None

    def to_dict(self) -> dict[str, Any]:
        return {"right": self.right, "left": self.left, "confidence": self.confidence, "comment": self.comment,
                "at": self.at}


@dataclass
class Reading:
    """One case being read. ``ai_visible_at_once`` is the clinical (non-study) policy."""

    case: str
    reader: str = "reader"
    ai_visible_at_once: bool = False
    ai_allowed: bool = True  # False: an unaided study arm, where the AI is never shown
    log_path: Path | None = None
    pre: Grades = field(default_factory=Grades)
    post: Grades | None = None
    locked_at: str | None = None
    opened_at: str = field(default_factory=_now)
    _ai: Any = None
    _ai_error: str | None = None

    def __post_init__(self) -> None:
        self.changed = Signal()  # emitted with no arguments after every change
        self._log("open", {"ai_visible_at_once": self.ai_visible_at_once})

    # --- the reader's grades -------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self.locked_at is not None

    def set_grade(self, side: str, grade: int | None) -> None:
        """Before the lock: the pre-AI grade. After it: the post-AI (revised) grade."""
        if side not in SIDES:
            raise ReadingError(f"unknown side {side!r}; use 'left' or 'right'")
        if grade is not None and grade not in range(5):
            raise ReadingError(f"grade {grade} is outside 0-4")
        target = self._post() if self.locked else self.pre
        setattr(target, side, grade)
        self._log("grade", {"side": side, "grade": grade, "phase": "post" if self.locked else "pre"})
        self.changed.emit()

    def set_confidence(self, confidence: str | None) -> None:
        if confidence is not None and confidence not in CONFIDENCE:
            raise ReadingError(f"confidence must be one of {CONFIDENCE}")
        (self._post() if self.locked else self.pre).confidence = confidence
        self.changed.emit()

    def set_comment(self, text: str) -> None:
        (self._post() if self.locked else self.pre).comment = text
        self.changed.emit()

    def _post(self) -> Grades:
        if self.post is None:
            self.post = Grades(self.pre.right, self.pre.left, self.pre.confidence, "")
        return self.post

    def restore(self, pre: dict[str, int], locked_at: str | None, post: dict[str, int] | None = None) -> None:
        """Resume a reading stored elsewhere (a study's event log) without logging it again."""
        self.pre.right, self.pre.left = pre.get("right"), pre.get("left")
        self.locked_at = self.pre.at = locked_at
        if post:
            self.post = Grades(post.get("right", self.pre.right), post.get("left", self.pre.left))
        self.changed.emit()

    def lock(self) -> None:
        """Store the pre-AI grades (both sides needed); from now on they cannot change."""
        if self.locked:
            raise ReadingError("the pre-AI grades are already locked")
        if not self.pre.complete():
            missing = [s for s in SIDES if getattr(self.pre, s) is None]
            raise ReadingError(f"grade both joints before locking (missing: {', '.join(missing)})")
        self.locked_at = self.pre.at = _now()
        self._log("lock", {"pre": self.pre.to_dict()})
        self.changed.emit()

    def save_post(self) -> None:
        if self.post is not None:
            self.post.at = _now()
            self._log("post", {"post": self.post.to_dict()})

    # --- the AI result, held back until the lock ----------------------------------------------
    def receive_ai(self, result: Any = None, error: str | None = None) -> None:
        self._ai, self._ai_error = result, error
        self._log("ai_ready" if error is None else "ai_failed", {"error": error} if error else {})
        self.changed.emit()

    @property
    def ai_revealed(self) -> bool:
        return self.ai_allowed and (self.ai_visible_at_once or self.locked)

    @property
    def ai(self) -> Any:
        """The AI result, or None: always None before the reader's grades are locked (study policy)."""
        return self._ai if self.ai_revealed else None

    @property
    def ai_error(self) -> str | None:
        return self._ai_error if self.ai_revealed else None

    @property
    def ai_pending(self) -> bool:
        return self._ai is None and self._ai_error is None

    def summary(self) -> dict[str, Any]:
        return {"case": self.case, "reader": self.reader, "opened_at": self.opened_at, "locked_at": self.locked_at,
                "pre_ai": self.pre.to_dict(), "post_ai": None if self.post is None else self.post.to_dict(),
                "ai_visible_at_once": self.ai_visible_at_once}

    # --- log -----------------------------------------------------------------------------------
    def _log(self, event: str, data: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        rec = {"t": _now(), "event": event, "case": self.case, "reader": self.reader, **data}
        p = Path(self.log_path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise ReadingError(f"the reading log cannot be written: {exc}", path=p) from exc



def latest_reading(log_path: str | Path, case: str) -> dict[str, Any] | None:
    """The last locked reading of ``case`` in a reads log (pre-AI and any later post-AI grades), or None."""
    p = Path(log_path)
    if not p.exists():
        return None
    found: dict[str, Any] | None = None
    with open(p) as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
            if rec.get("case") != case:
                continue
            if rec.get("event") == "lock":
                found = {"case": case, "reader": rec.get("reader"), "locked_at": rec.get("t"), "pre_ai": rec.get("pre"),
                         "post_ai": None}
            elif rec.get("event") == "post" and found is not None:
                found["post_ai"] = rec.get("post")
    return found
