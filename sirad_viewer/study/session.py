"""A reader's session: case order, arms, the grade-lock-reveal-revise rules, blinding, resume.

All state is derived from the store's event log, so a session reopened after a crash resumes
exactly where the reader stopped. Rules enforced here (not only in the UI):

* sequential design: pre-AI grades can be set until *locked*; the AI is revealed only after the
  lock; after the reveal the pre-AI grade can never change, a revision is stored separately;
* crossover design: each reader reads half the cases unaided and half aided in session 1 and
  the other way round in session 2, which opens only after the washout;
* blinding: :meth:`ReaderSession.view` never contains the reference grade or another reader's
  grades, nor the AI output in an unaided arm or before the lock.
"""
from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sirad_viewer.study.protocol import StudyError
from sirad_viewer.study.store import StudyStore

JOINTS = ("left", "right")


@dataclass
class CaseState:
    """What a reader has done with one case (derived from events)."""

    case: str
    arm: str
    session: int
    pre: dict[str, int] = field(default_factory=dict)
    post: dict[str, int] = field(default_factory=dict)
    confidence: int | None = None
    comment: str = ""
    locked_at: str | None = None
    revealed_at: str | None = None
    closed_at: str | None = None
    cannot_grade: str | None = None
    active_s: float = 0.0
    ai: dict[str, Any] | None = None  # the AI output shown at the reveal (for the export)
    paused: bool = False

    @property
    def done(self) -> bool:
        return self.closed_at is not None or self.cannot_grade is not None


def _parse(ts: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(ts)


class ReaderSession:
    """One reader working through a study.

    Reading the state needs nothing; the first write (or :meth:`sign_in`) takes the reader's
    lease in the store, so a second live session of the same reader is refused (or takes over
    explicitly, after which the first one can no longer write).
    """

    def __init__(self, store: StudyStore, reader: str, *, owner: str | None = None) -> None:
        self.store = store
        self.protocol = store.protocol
        self.protocol.reader(reader)  # raises for unknown readers
        self.reader = reader
        self.owner = owner or uuid.uuid4().hex
        self._signed_in = False
        self._order_stored = False
        self._order = self._load_or_make_order()

    # --- one live session per reader ---------------------------------------------------------------
    def sign_in(self, *, takeover: bool = False) -> None:
        """Take the reader's lease: refused (code ``reader_busy``) while another session is live."""
        self.store.acquire_lease(self.reader, self.owner, takeover=takeover)
        self._signed_in = True
        self._store_order()
        self.store.append(self.reader, "", "session_started", {"takeover": bool(takeover), "session": self.owner[:12]},
                          lease=self.owner)

    def heartbeat(self) -> bool:
        return self.store.heartbeat(self.reader, self.owner) if self._signed_in else True

    def release(self) -> None:
        if self._signed_in:
            self.store.release_lease(self.reader, self.owner)
            self._signed_in = False

    def _append(self, case: str, kind: str, payload: dict[str, Any]) -> None:
        if not self._signed_in:
            self.sign_in()
        self._store_order()
        self.store.append(self.reader, case, kind, payload, lease=self.owner)

    # --- order and arms --------------------------------------------------------------------------
    def _load_or_make_order(self) -> list[dict[str, Any]]:
        for e in self.store.events(reader=self.reader):
            if e.kind == "order":
                self._order_stored = True
                return e.payload["items"]
        p = self.protocol
        seed = np.random.SeedSequence([int(p.seed) & 0xFFFFFFFF, *[ord(ch) for ch in self.reader]])
        rng = np.random.default_rng(seed)
        ids = [c.id for c in p.cases]
        items: list[dict[str, Any]] = []
        if p.design == "sequential":
            arm = "sequential" if p.ai_assistance else "unaided"
            items = [{"case": ids[i], "arm": arm, "session": 1} for i in rng.permutation(len(ids))]
        else:
            half = set(rng.permutation(len(ids))[: len(ids) // 2].tolist())
            first = [{"case": ids[i], "arm": "unaided" if i in half else "aided", "session": 1} for i in range(len(ids))]
            second = [{"case": d["case"], "arm": "aided" if d["arm"] == "unaided" else "unaided", "session": 2} for d in first]
            items = [first[i] for i in rng.permutation(len(first))] + [second[i] for i in rng.permutation(len(second))]
        return items

    def _store_order(self) -> None:
        """Record the order with the reader's first action (reading the state writes nothing)."""
        if self._order_stored:
            return
        if any(e.kind == "order" for e in self.store.events(reader=self.reader)):
            self._order = self._load_or_make_order()
        else:
            p = self.protocol
            self.store.append(self.reader, "", "order", {"items": self._order, "seed": int(p.seed),
                                                         "protocol_hash": p.hash}, lease=self.owner)
        self._order_stored = True

    @property
    def order(self) -> list[dict[str, Any]]:
        return list(self._order)

    # --- derived state ---------------------------------------------------------------------------
    def states(self) -> dict[tuple[str, int], CaseState]:
        out: dict[tuple[str, int], CaseState] = {}
        for item in self._order:
            out[(item["case"], item["session"])] = CaseState(item["case"], item["arm"], item["session"])
        for e in self.store.events(reader=self.reader):
            if not e.case:
                continue
            st = out.get((e.case, int(e.payload.get("session", 1))))
            if st is None:
                continue
            if e.kind == "grade_set":
                if st.locked_at is None:  # a grade_set after the lock never changes the locked grade
                    st.pre[e.payload["joint"]] = int(e.payload["grade"])
            elif e.kind == "locked":
                if st.locked_at is not None:
                    continue  # the first lock record is the pre-AI grade
                st.locked_at = e.ts
                # the pre-AI grades are those in the lock record, not the last grade_set
                st.pre = {j: int(g) for j, g in (e.payload.get("grades") or {}).items()}
                st.confidence = e.payload.get("confidence")
                st.comment = e.payload.get("comment", "")
                st.active_s += float(e.payload.get("active_s", 0.0))
            elif e.kind == "revealed":
                st.revealed_at = e.ts
                st.ai = e.payload.get("ai")
            elif e.kind == "revised":
                st.post[e.payload["joint"]] = int(e.payload["grade"])
            elif e.kind == "closed":
                st.closed_at = e.ts
                st.active_s += float(e.payload.get("active_s", 0.0))
            elif e.kind == "cannot_grade":
                st.cannot_grade = e.payload.get("reason", "")
            elif e.kind == "paused":
                st.paused = True
            elif e.kind == "resumed" and e.payload.get("after") != "idle":
                st.paused = False
        return out

    def progress(self) -> tuple[int, int]:
        s = self.states()
        return sum(1 for v in s.values() if v.done), len(s)

    def current(self) -> dict[str, Any] | None:
        """The next item to read (resume point), or None when finished."""
        s = self.states()
        for item in self._order:
            if not s[(item["case"], item["session"])].done:
                return item
        return None

    def _state(self, case: str, session: int | None = None) -> CaseState:
        s = self.states()
        if session is None:
            cur = self.current()
            session = cur["session"] if cur and cur["case"] == case else next(
                (it["session"] for it in self._order if it["case"] == case and not s[(case, it["session"])].done), 1)
        key = (case, session)
        if key not in s:
            raise StudyError(f"case {case} is not in reader {self.reader}'s list", code="unknown_case")
        return s[key]

    # --- washout ---------------------------------------------------------------------------------
    def session_available(self, session: int, *, now: _dt.datetime | None = None) -> tuple[bool, str]:
        if session == 1 or self.protocol.design != "crossover":
            return True, ""
        s = self.states()
        first = [v for v in s.values() if v.session == 1]
        if not all(v.done for v in first):
            return False, "session 1 is not finished"
        last = max(_parse(v.closed_at or v.locked_at or "1970-01-01T00:00:00+00:00") for v in first)
        days = float(self.protocol.crossover.get("washout_days", 28))
        now = now or _dt.datetime.now(_dt.timezone.utc)
        wait = last + _dt.timedelta(days=days) - now
        if wait.total_seconds() > 0:
            return False, f"washout: session 2 opens on {(last + _dt.timedelta(days=days)).date()} ({days:g} days after session 1)"
        return True, ""

    # --- actions ---------------------------------------------------------------------------------
    def open(self, case: str, *, now: _dt.datetime | None = None) -> CaseState:
        st = self._state(case)
        ok, why = self.session_available(st.session, now=now)
        if not ok:
            raise StudyError(why, code="washout")
        self._append(case, "opened", {"session": st.session, "arm": st.arm})
        return st

    def set_grade(self, case: str, joint: str, grade: int) -> None:
        if joint not in JOINTS:
            raise StudyError(f"joint must be 'left' or 'right', not {joint!r}", code="bad_grade")
        if int(grade) != grade or not 0 <= grade <= 4:
            raise StudyError(f"grade must be 0-4, not {grade!r}", code="bad_grade")
        st = self._state(case)
        self._not_paused(st)
        if st.locked_at is not None:
            raise StudyError(f"case {case}: the grades were locked at {st.locked_at}; after the lock only a post-AI "
                             "revision can be stored", code="locked")
        self._append(case, "grade_set", {"session": st.session, "joint": joint, "grade": int(grade)})

    def lock(self, case: str, *, confidence: int | None = None, comment: str = "", active_s: float = 0.0,
             grades: dict[str, int] | None = None) -> None:
        """Write the lock record: the pre-AI grades, confidence, comment and active time (``grades``,
        when given, must be the grades recorded so far: the record is what the reader saw)."""
        st = self._state(case)
        self._not_paused(st)
        if st.locked_at is not None:
            raise StudyError(f"case {case} is already locked", code="locked")
        missing = [j for j in JOINTS if j not in st.pre]
        if missing:
            raise StudyError(f"case {case}: grade the {' and '.join(missing)} joint(s) before locking", code="incomplete")
        if grades is not None and {j: int(g) for j, g in grades.items()} != st.pre:
            raise StudyError(f"case {case}: the grades to lock {grades} differ from those recorded {st.pre}", code="mismatch")
        self._append(case, "locked", {"session": st.session, "grades": st.pre, "confidence": confidence,
                                                       "comment": comment, "active_s": float(active_s)})

    def reveal(self, case: str, ai: dict[str, Any] | None) -> dict[str, Any]:
        """Show the AI output: in the sequential design only after the lock; in a crossover design
        only in the aided arm (where it is shown from the start)."""
        st = self._state(case)
        self._not_paused(st)
        if st.arm not in ("sequential", "aided"):
            raise StudyError(f"case {case} is read without AI assistance in this arm", code="blinded")
        if st.arm == "sequential" and st.locked_at is None:
            raise StudyError(f"case {case}: lock the grades before the AI is revealed", code="not_locked")
        self._append(case, "revealed", {"session": st.session, "ai": ai or {}})
        return ai or {}

    def revise(self, case: str, joint: str, grade: int) -> None:
        if joint not in JOINTS or int(grade) != grade or not 0 <= grade <= 4:
            raise StudyError(f"a revision needs a joint (left/right) and a grade 0-4, got {joint!r}, {grade!r}", code="bad_grade")
        st = self._state(case)
        self._not_paused(st)
        if st.revealed_at is None:
            raise StudyError(f"case {case}: a post-AI revision is only possible after the reveal", code="not_revealed")
        self._append(case, "revised", {"session": st.session, "joint": joint, "grade": int(grade)})

    def close(self, case: str, *, active_s: float = 0.0) -> None:
        st = self._state(case)
        if st.locked_at is None and st.cannot_grade is None:
            raise StudyError(f"case {case}: lock the grades (or mark it 'cannot grade') before moving on", code="incomplete")
        self._append(case, "closed", {"session": st.session, "active_s": float(active_s)})

    def cannot_grade(self, case: str, reason: str) -> None:
        if not reason.strip():
            raise StudyError("'cannot grade' needs a reason", code="bad_grade")
        st = self._state(case)
        self._append(case, "cannot_grade", {"session": st.session, "reason": reason.strip()})

    def mark(self, case: str, kind: str, **payload: Any) -> None:
        """Record idle / resumed / paused with the UI's timing."""
        if kind not in ("idle", "resumed", "paused"):
            raise ValueError(kind)
        st = self._state(case)
        self._append(case, kind, {"session": st.session, **payload})

    def annotate(self, case: str, annotations: dict[str, Any]) -> None:
        """Record the reader's measurements, lesion marks and findings (LPS mm) for this case."""
        st = self._state(case)
        self._not_paused(st)
        self._append(case, "annotations", {"session": st.session, "annotations": annotations})

    def _not_paused(self, st: CaseState) -> None:
        if st.paused:
            raise StudyError(f"case {st.case}: the reading is paused; resume it first", code="paused")

    # --- blinding --------------------------------------------------------------------------------
    def view(self, case: str) -> dict[str, Any]:
        """Everything the reading UI may show for this case now (and nothing else)."""
        st = self._state(case)
        c = self.protocol.case(case)
        out: dict[str, Any] = {"case": case, "path": c.path, "study_uid": c.study_uid, "arm": st.arm,
                               "session": st.session, "pre_ai_grades": dict(st.pre), "locked": st.locked_at is not None}
        done, total = self.progress()
        out["progress"] = {"done": done, "total": total}
        if st.revealed_at is not None and st.arm in ("sequential", "aided"):
            out["ai"] = st.ai
            out["post_ai_grades"] = dict(st.post)
        return out
