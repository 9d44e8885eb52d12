"""Grade first, then compare: the one state machine for a reader's reading of one case.

:class:`Reading` owns every rule of grade-first reading, for clinical reading and for reader
studies alike: the reader's grades, confidence and comment; the lock; the AI result held back
until the lock (or shown at once by policy); post-AI revisions stored apart; pause; and the active
reading time (:class:`ActiveClock`, with an injectable clock). Each step is written through to a
*sink* before it takes effect: the clinical reads log (:class:`ReadsLog`, JSON lines with fsync)
or a study's event log (:class:`~sirad_viewer.state.study_reading.StudySink`). The Qt layer only
shows a Reading and forwards input to it.

Rules (each has a test in ``tests/state``):

* the AI result is returned by :attr:`Reading.ai` only after a *reveal*, and a reveal happens only
  after the lock record was durably written (or at once under the clinical ``ai_visible_at_once``
  policy), never in an unaided study arm, never while paused;
* if the lock record cannot be written (full disk, a folder where the log should be) :meth:`lock`
  raises :class:`ReadingError` (code ``not_durable``), the reading stays unlocked and the AI hidden;
* a comment or confidence given before the lock belongs to the lock record;
* after the lock the pre-AI grades never change; grades given after the reveal are post-AI
  revisions, stored separately; before the reveal (AI still running) no revision is possible;
* while paused no grade, lock, comment or reveal is accepted and the clock stands still;
* ``repr()`` never shows the hidden AI result.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Protocol

from sirad_viewer.errors import SiradError
from sirad_viewer.state.viewer import Signal

SIDES = ("right", "left")
CONFIDENCE = ("low", "medium", "high")


class ReadingError(SiradError):
    """A grade-first rule refused an action, or a record could not be written.

    ``code``: ``reading_rule``, ``locked``, ``incomplete``, ``paused``, ``not_revealed``,
    ``not_durable`` (the record was not written: nothing changed).
    """

    code = "reading_rule"


class AIPolicy(str, Enum):
    AFTER_LOCK = "after_lock"  # grade first (clinical default, sequential study arm)
    AT_ONCE = "at_once"  # clinical 'AI visible at once', crossover aided arm
    NEVER = "never"  # unaided study arm: the AI is not even run


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


class ActiveClock:
    """Active reading time: each input keeps the clock running for ``idle_s`` seconds; pause stops it.

    Parameters
    ----------
    now : callable returning seconds (monotonic)
        Injectable for tests; default :func:`time.monotonic`.
    idle_s : float
        Seconds without input after which the reader counts as idle (the time stops counting at
        the last input plus ``idle_s``).
    """

    def __init__(self, *, now: Callable[[], float] = time.monotonic, idle_s: float = 60.0) -> None:
        self.now = now
        self.idle_s = float(idle_s)
        t = now()
        self._done = 0.0
        self._start: float | None = t
        self._last = t
        self._lap = 0.0
        self.paused = False

    def _current(self, t: float) -> float:
        if self._start is None:
            return 0.0
        return max(0.0, min(t, self._last + self.idle_s) - self._start)

    def activity(self) -> None:
        t = self.now()
        if self.paused:
            return
        if t > self._last + self.idle_s:  # back from idle: close the old stretch, start a new one
            self._done += self._current(t)
            self._start = t
        self._last = t

    def pause(self) -> None:
        if not self.paused:
            self._done += self._current(self.now())
            self._start = None
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            t = self.now()
            self.paused = False
            self._start = self._last = t

    @property
    def idle(self) -> bool:
        return not self.paused and self.now() > self._last + self.idle_s

    @property
    def active_s(self) -> float:
        return self._done + self._current(self.now())

    def lap(self) -> float:
        """Active seconds since the previous lap (the lock records one lap, the close the next)."""
        a = self.active_s
        d, self._lap = a - self._lap, a
        return d


class ReadingSink(Protocol):
    """Where a reading's steps are recorded. ``write`` raises :class:`ReadingError` when it fails."""

    def write(self, event: str, reading: "Reading", data: dict[str, Any]) -> None: ...


class ReadsLog:
    """The clinical reads log: one JSON line per step, fsync'ed (``reads.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, event: str, reading: "Reading", data: dict[str, Any]) -> None:
        if event == "reveal":
            data = {}  # the log records that the AI was shown; the result is in the case report
        rec = {"t": _now(), "event": event, "case": reading.case, "reader": reading.reader, **data}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise ReadingError(f"the reading log cannot be written ({exc.strerror or exc}); nothing was recorded",
                               path=self.path, code="not_durable") from exc


class Reading:
    """One case being read.

    Parameters
    ----------
    case : str
        The case (a path for clinical reading, the case id in a study).
    reader : str
    ai_visible_at_once : bool
        Clinical policy: the AI is shown as soon as it is ready.
    ai_allowed : bool
        False in an unaided study arm: the AI is never shown (nor run).
    log_path : path, optional
        The clinical reads log (a :class:`ReadsLog` sink); or give ``sink``.
    sink : ReadingSink, optional
    clock : ActiveClock, optional
    """

    def __init__(self, case: str, reader: str = "reader", *, ai_visible_at_once: bool = False,
                 ai_allowed: bool = True, log_path: str | Path | None = None, sink: ReadingSink | None = None,
                 clock: ActiveClock | None = None) -> None:
        self.case = case
        self.reader = reader
        self._policy = (AIPolicy.NEVER if not ai_allowed else
                        AIPolicy.AT_ONCE if ai_visible_at_once else AIPolicy.AFTER_LOCK)
        self.log_path = Path(log_path) if log_path is not None else None
        self.sink: ReadingSink | None = sink if sink is not None else (ReadsLog(self.log_path) if self.log_path else None)
        self.clock = clock or ActiveClock()
        self.pre = Grades()
        self.post: Grades | None = None
        self.locked_at: str | None = None
        self.revealed_at: str | None = None
        self.opened_at = _now()
        self.paused = False
        self.last_error: str | None = None  # the last record that could not be written, for the panel
        self._ai: Any = None
        self._ai_error: str | None = None
        self._reveal_recorded = False  # a resumed study case whose reveal is already in the log
        self._idle_logged = False
        self.changed = Signal()  # emitted with no arguments after every change
        self._record_soft("open", {"ai_policy": self._policy.value})

    # --- policy (fixed at construction: the caller decides, nobody mirrors it later) ----------------
    @property
    def policy(self) -> AIPolicy:
        return self._policy

    @property
    def ai_allowed(self) -> bool:
        return self._policy is not AIPolicy.NEVER

    @property
    def ai_visible_at_once(self) -> bool:
        return self._policy is AIPolicy.AT_ONCE

    def __repr__(self) -> str:
        ai = ("revealed" if self._revealed else "hidden") if not self.ai_pending else "pending"
        return (f"Reading(case={self.case!r}, reader={self.reader!r}, policy={self._policy.value}, "
                f"locked={self.locked}, paused={self.paused}, ai=<{ai}>)")

    # --- recording -----------------------------------------------------------------------------------
    def _record(self, event: str, data: dict[str, Any]) -> None:
        """Write through; raise ReadingError (``not_durable`` unless the sink says otherwise)."""
        if self.sink is None:
            return
        try:
            self.sink.write(event, self, data)
        except ReadingError:
            raise
        except SiradError as exc:
            raise ReadingError(exc.message, code=exc.code, path=exc.path) from exc
        except OSError as exc:
            raise ReadingError(f"the record could not be written: {exc}", code="not_durable") from exc
        self.last_error = None

    def _record_soft(self, event: str, data: dict[str, Any]) -> None:
        """For steps that must not fail the reading (open, AI ready, pause): remember the error."""
        try:
            self._record(event, data)
        except ReadingError as exc:
            self.last_error = exc.user_message()

    def record_annotations(self, annotations: dict[str, Any]) -> None:
        """Keep the reader's measurements, lesion marks and findings with the reads (or the study log).

        Refused while paused, like every other reading step; a write failure is remembered in
        ``last_error`` and does not stop the reading (the grades are what must be durable)."""
        self._not_paused("annotate")
        self._record_soft("annotations", {"annotations": annotations})

    # --- the reader's grades -------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self.locked_at is not None

    def _not_paused(self, what: str) -> None:
        if self.paused:
            raise ReadingError(f"the reading is paused: resume it before {what}", code="paused")

    def set_grade(self, side: str, grade: int | None) -> None:
        """Before the lock: the pre-AI grade. After the reveal: the post-AI (revised) grade."""
        if side not in SIDES:
            raise ReadingError(f"unknown side {side!r}; use 'left' or 'right'")
        if grade is not None and (not isinstance(grade, int) or grade not in range(5)):
            raise ReadingError(f"grade {grade} is outside 0-4")
        self._not_paused("grading")
        if not self.locked:
            if getattr(self.pre, side) == grade:
                return
            self._record("grade", {"side": side, "grade": grade, "phase": "pre"})
            setattr(self.pre, side, grade)
        else:
            if not self._revealed:
                raise ReadingError("the pre-AI grades are locked; a revision is possible only after the AI result is "
                                   "shown", code="locked" if not self.ai_allowed else "not_revealed")
            post = self._post_draft()
            if getattr(post, side) == grade and self.post is not None:
                return
            setattr(post, side, grade)
            post.at = _now()
            self._record("revise", {"side": side, "grade": grade, "post": post.to_dict()})
            self.post = post
        self.changed.emit()

    def set_confidence(self, confidence: str | None) -> None:
        if confidence is not None and confidence not in CONFIDENCE:
            raise ReadingError(f"confidence must be one of {CONFIDENCE}")
        self._not_paused("grading")
        if not self.locked:
            self.pre.confidence = confidence
        elif self._revealed:
            post = self._post_draft()
            post.confidence = confidence
            self._record("post", {"post": post.to_dict()})
            self.post = post
        else:
            raise ReadingError("the pre-AI confidence is locked", code="locked")
        self.changed.emit()

    def set_comment(self, text: str) -> None:
        """Before the lock: part of the lock record. After the reveal: the post-AI comment."""
        text = str(text)
        current = self.post.comment if (self.locked and self.post is not None) else self.pre.comment
        if text == current:
            return
        self._not_paused("commenting")
        if not self.locked:
            self.pre.comment = text
        elif self._revealed:
            post = self._post_draft()
            post.comment = text
            self._record("post", {"post": post.to_dict()})
            self.post = post
        else:
            raise ReadingError("the pre-AI comment is locked; a post-AI comment is possible after the AI is shown",
                               code="locked")
        self.changed.emit()

    def _post_draft(self) -> Grades:
        if self.post is not None:
            return Grades(**self.post.to_dict())
        return Grades(self.pre.right, self.pre.left, self.pre.confidence, "")

    def lock(self, *, comment: str | None = None, confidence: str | None = None) -> None:
        """Write the lock record (both grades needed); only once it is written do the grades lock.

        ``comment``/``confidence``: what the panel holds at the moment of the lock (a comment typed
        and not yet committed belongs to the lock record).
        """
        if self.locked:
            raise ReadingError("the pre-AI grades are already locked", code="locked")
        self._not_paused("locking")
        if not self.pre.complete():
            missing = [s for s in SIDES if getattr(self.pre, s) is None]
            raise ReadingError(f"grade both joints before locking (missing: {', '.join(missing)})", code="incomplete")
        if confidence is not None and confidence not in CONFIDENCE:
            raise ReadingError(f"confidence must be one of {CONFIDENCE}")
        record = Grades(**self.pre.to_dict())
        if comment is not None:
            record.comment = str(comment)
        if confidence is not None:
            record.confidence = confidence
        record.at = _now()
        self._record("lock", {"pre": record.to_dict(), "active_s": round(self.clock.lap(), 3)})
        self.pre = record  # durable: from here on the pre-AI grades never change
        self.locked_at = record.at
        self.changed.emit()
        self._try_reveal()

    # --- the AI result, held back until the lock ----------------------------------------------
    def receive_ai(self, result: Any = None, error: str | None = None) -> None:
        self._ai, self._ai_error = result, error
        self._record_soft("ai_ready" if error is None else "ai_failed", {"error": error} if error else {})
        self.changed.emit()
        self._try_reveal()

    @property
    def _revealed(self) -> bool:
        return self.revealed_at is not None

    def _try_reveal(self) -> None:
        if self._revealed or not self.ai_allowed or self.paused or self.ai_pending:
            return
        if not (self.locked or self.ai_visible_at_once):
            return
        if not self._reveal_recorded:
            try:
                self._record("reveal", {"ai": self._ai, "error": self._ai_error})
            except ReadingError as exc:
                self.last_error = exc.user_message()  # not recorded: stays hidden
                self.changed.emit()
                return
        self.revealed_at = _now()
        self.changed.emit()

    @property
    def ai_revealed(self) -> bool:
        return self._revealed

    @property
    def ai(self) -> Any:
        """The AI result, or None: None until it was revealed (after the lock record was written)."""
        return self._ai if self._revealed else None

    @property
    def ai_error(self) -> str | None:
        return self._ai_error if self._revealed else None

    @property
    def ai_pending(self) -> bool:
        return self._ai is None and self._ai_error is None

    # --- pause and time ------------------------------------------------------------------------
    def pause(self) -> None:
        if self.paused:
            return
        self.clock.pause()
        self.paused = True
        self._record_soft("pause", {"active_s": round(self.clock.active_s, 1)})
        self.changed.emit()

    def resume(self) -> None:
        if not self.paused:
            return
        self.clock.resume()
        self.paused = False
        self._record_soft("resume", {"active_s": round(self.clock.active_s, 1)})
        self.changed.emit()
        self._try_reveal()

    def activity(self) -> None:
        """Input from the reader (keeps the clock running); logs the return from idle."""
        was_idle = self._idle_logged
        self.clock.activity()
        if was_idle and not self.clock.idle:
            self._idle_logged = False
            self._record_soft("back", {"active_s": round(self.clock.active_s, 1)})

    def poll_idle(self) -> bool:
        """Called by a timer: logs the start of an idle stretch once; returns whether idle."""
        idle = self.clock.idle
        if idle and not self._idle_logged:
            self._idle_logged = True
            self._record_soft("idle", {"active_s": round(self.clock.active_s, 1), "after_s": self.clock.idle_s})
        return idle

    # --- resume a reading stored elsewhere ------------------------------------------------------
    def restore(self, pre: dict[str, Any], locked_at: str | None, post: dict[str, Any] | None = None, *,
                revealed: bool = False, confidence: str | None = None, comment: str = "") -> None:
        """Resume a reading from its log (a study's events) without recording it again."""
        self.pre = Grades(pre.get("right"), pre.get("left"), confidence, comment or "", locked_at)
        self.locked_at = locked_at
        if post:
            self.post = Grades(post.get("right", self.pre.right), post.get("left", self.pre.left))
        self._reveal_recorded = bool(revealed)
        self.changed.emit()
        self._try_reveal()

    def summary(self) -> dict[str, Any]:
        return {"case": self.case, "reader": self.reader, "opened_at": self.opened_at, "locked_at": self.locked_at,
                "pre_ai": self.pre.to_dict(), "post_ai": None if self.post is None else self.post.to_dict(),
                "ai_visible_at_once": self.ai_visible_at_once, "revealed_at": self.revealed_at}

    def save_post(self) -> None:
        """Kept for callers of the old API: post-AI grades are now recorded as they are given."""


def latest_reading(log_path: str | Path, case: str) -> dict[str, Any] | None:
    """The last locked reading of ``case`` in a reads log (pre-AI and any later post-AI grades, and the
    reader's last annotations: marks, findings, measurements), or None."""
    p = Path(log_path)
    if not p.exists():
        return None
    found: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None  # the last state of the reader's marks, findings and measurements
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
            elif rec.get("event") in ("post", "revise") and found is not None and rec.get("post"):
                found["post_ai"] = rec.get("post")
            elif rec.get("event") == "annotations" and isinstance(rec.get("annotations"), dict):
                annotations = rec["annotations"]
    if found is not None and annotations is not None:
        found["annotations"] = annotations
    return found
