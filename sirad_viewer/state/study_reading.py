"""A study case read with the one grade-first state machine, written through to the study's log.

:func:`study_reading` builds the :class:`~sirad_viewer.state.reading.Reading` for the reader's
current case: the arm decides the AI policy (unaided: never; sequential: after the lock; aided:
at once), the case's events restore what was already done, and :class:`StudySink` writes every
step to the :class:`~sirad_viewer.study.session.ReaderSession` before it takes effect (the
session enforces the same rules again on the stored events). Nothing is mirrored afterwards.
"""
from __future__ import annotations

from typing import Any, Callable

from sirad_viewer.state.reading import ActiveClock, Reading, ReadingError
from sirad_viewer.study.session import ReaderSession

CONFIDENCE_SCORE = {"low": 1, "medium": 2, "high": 3}
CONFIDENCE_NAME = {v: k for k, v in CONFIDENCE_SCORE.items()}


def ai_summary(result: Any) -> dict[str, Any]:
    """What the reader was shown, for the study's log and export (grades, probabilities, model)."""
    if result is None:
        return {}
    if isinstance(result, dict):
        return result
    d = result.to_dict()
    return {"model": d["model"], "ood_flagged": d.get("ood_flagged", False), "reliability": d.get("reliability"),
            "joints": {s: {"grade": j["grade"], "probabilities": j["probabilities"], "ood": j.get("ood")}
                       for s, j in d["joints"].items()},
            "patient": d["patient"]}


class StudySink:
    """Writes a study reading's steps into the reader's session (raises ReadingError on refusal)."""

    def __init__(self, session: ReaderSession, case: str, *, summarise: Callable[[Any], dict[str, Any]] = ai_summary) -> None:
        self.session = session
        self.case = case
        self.summarise = summarise

    def write(self, event: str, reading: Reading, data: dict[str, Any]) -> None:
        s, case = self.session, self.case
        try:
            if event == "grade":
                if data["grade"] is None:
                    raise ReadingError("a study grade cannot be cleared; choose a grade 0-4")
                s.set_grade(case, data["side"], data["grade"])
            elif event == "lock":
                pre = data["pre"]
                s.lock(case, confidence=CONFIDENCE_SCORE.get(pre.get("confidence") or ""), comment=pre.get("comment", ""),
                       active_s=float(data.get("active_s", 0.0)), grades={"right": pre["right"], "left": pre["left"]})
            elif event == "reveal":
                ai = self.summarise(data.get("ai")) if data.get("ai") is not None else {"error": data.get("error")}
                s.reveal(case, ai)
            elif event == "revise":
                if data["grade"] is None:
                    raise ReadingError("a revision needs a grade 0-4")
                s.revise(case, data["side"], data["grade"])
            elif event in ("pause", "resume", "idle", "back"):
                kind = {"pause": "paused", "resume": "resumed", "idle": "idle", "back": "resumed"}[event]
                extra = {"after": "idle"} if event == "back" else {}
                s.mark(case, kind, **{k: v for k, v in data.items() if k in ("active_s", "after_s")}, **extra)
            elif event == "annotations":
                s.annotate(case, data["annotations"])
            # open (the controller opened the case), ai_ready/ai_failed and post comments: not study events
        except ReadingError:
            raise
        except Exception as exc:  # noqa: BLE001 - database errors (locked, disk full) become "not durable"
            from sirad_viewer.errors import SiradError

            if isinstance(exc, SiradError):
                raise ReadingError(exc.message, code=exc.code) from exc
            raise ReadingError(f"the study log could not be written ({type(exc).__name__}: {exc}); nothing was recorded",
                               code="not_durable") from exc


def study_reading(session: ReaderSession, item: dict[str, Any], *, clock: ActiveClock | None = None,
                  summarise: Callable[[Any], dict[str, Any]] = ai_summary) -> Reading:
    """The Reading for one item of the reader's list (``{"case", "arm", "session"}``), resumed from the log."""
    case, arm = item["case"], item["arm"]
    st = session.states()[(case, item["session"])]
    r = Reading(case, session.reader, ai_allowed=arm != "unaided", ai_visible_at_once=arm == "aided",
                sink=StudySink(session, case, summarise=summarise), clock=clock)
    if st.pre or st.locked_at or st.revealed_at:
        r.restore(st.pre, st.locked_at, st.post or None, revealed=st.revealed_at is not None,
                  confidence=CONFIDENCE_NAME.get(st.confidence) if isinstance(st.confidence, int) else None,
                  comment=st.comment)
    if st.paused:
        r.clock.pause()
        r.paused = True
    return r
