"""Reader-study protocol: validated, hashed, frozen once the first grade exists.

A protocol is YAML or JSON::

    name: SIJ CT reader study
    design: sequential            # or: crossover
    grade_scheme: mny5            # mny5 | cat3 | cat3-alt (what the analysis reports besides 0-4)
    seed: 20261128                # case order is randomised per reader from this seed
    ai_assistance: true           # sequential: reveal the AI after the lock
    crossover: {sessions: 2, washout_days: 28}
    readers: [{id: r1, name: Reader 1}, {id: r2}]
    cases:
      - {id: c001, path: cases/c001, reference: {left: 2, right: 3}, site: A}
      - {id: c002, study_uid: 1.2.3.4, site: B}
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sirad_viewer.errors import SiradError
from sirad_viewer.study.grading import GradeScheme

DESIGNS = ("sequential", "crossover")


class StudyError(SiradError):
    """A study-level rule was broken (protocol invalid or frozen, grade locked, blinding, ...)."""

    code = "study_error"


@dataclass
class Case:
    id: str
    path: str = ""
    study_uid: str = ""
    reference: dict[str, int] | None = None  # {"left": g, "right": g} when known
    site: str = ""


@dataclass
class Reader:
    id: str
    name: str = ""


@dataclass
class Protocol:
    name: str
    design: str = "sequential"
    grade_scheme: str = GradeScheme.MNY5.value
    seed: int = 0
    ai_assistance: bool = True
    crossover: dict[str, Any] = field(default_factory=lambda: {"sessions": 2, "washout_days": 28})
    readers: list[Reader] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)

    # --- construction and validation ------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "protocol") -> "Protocol":
        if not isinstance(d, dict):
            raise StudyError("must be a mapping with name, design, readers and cases", path=source, code="bad_protocol")
        known = {"name", "design", "grade_scheme", "seed", "ai_assistance", "crossover", "readers", "cases"}
        unknown = set(d) - known
        if unknown:
            raise StudyError(f"unknown protocol field(s) {sorted(unknown)}; known: {sorted(known)}", path=source, code="bad_protocol")
        try:
            readers = [Reader(**r) if isinstance(r, dict) else Reader(id=str(r)) for r in d.get("readers", [])]
            cases = [Case(**{**c, "id": str(c["id"])}) for c in d.get("cases", [])]
        except (TypeError, KeyError) as exc:
            raise StudyError(f"reader or case entry is malformed: {exc}", path=source, code="bad_protocol") from exc
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise StudyError(f"seed {seed!r} is not an integer", path=source, code="bad_protocol")
        ai = d.get("ai_assistance", True)
        if not isinstance(ai, bool):  # bool("false") is True: a quoted "false" would switch the AI on
            raise StudyError(f"ai_assistance {ai!r} is not true or false", path=source, code="bad_protocol")
        crossover = d.get("crossover", {"sessions": 2, "washout_days": 28})
        if not isinstance(crossover, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in crossover.values()):
            raise StudyError(f"crossover {crossover!r} needs numbers: {{sessions: 2, washout_days: 28}}",
                             path=source, code="bad_protocol")
        p = cls(name=str(d.get("name", "")), design=str(d.get("design", "sequential")),
                grade_scheme=str(d.get("grade_scheme", "mny5")), seed=seed,
                ai_assistance=ai, crossover=dict(crossover), readers=readers, cases=cases)
        p.validate(source=source)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "Protocol":
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise StudyError(f"cannot be read: {exc.strerror}", path=p, code="not_found") from exc
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - YAML/JSON parser errors
            raise StudyError(f"is not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}",
                             path=p, code="bad_protocol") from exc
        return cls.from_dict(data, source=str(p))

    def validate(self, *, source: str = "protocol") -> None:
        def bad(msg: str) -> StudyError:
            return StudyError(msg, path=source, code="bad_protocol")

        if not self.name.strip():
            raise bad("needs a name")
        if self.design not in DESIGNS:
            raise bad(f"design {self.design!r} is not one of {DESIGNS}")
        try:
            GradeScheme(self.grade_scheme)
        except ValueError:
            raise bad(f"grade_scheme {self.grade_scheme!r} is not one of {[g.value for g in GradeScheme]}") from None
        ids = [r.id for r in self.readers]
        if len(set(ids)) != len(ids):
            raise bad("reader ids must be unique")
        cids = [c.id for c in self.cases]
        if len(set(cids)) != len(cids):
            dup = sorted({c for c in cids if cids.count(c) > 1})
            raise bad(f"case ids must be unique (repeated: {dup[:5]})")
        for c in self.cases:
            if not (c.path or c.study_uid):
                raise bad(f"case {c.id} needs a path or a study_uid")
            if c.reference is not None:
                if set(c.reference) != {"left", "right"}:
                    raise bad(f"case {c.id}: reference needs exactly 'left' and 'right' grades")
                for side, g in c.reference.items():
                    if not isinstance(g, int) or not 0 <= g <= 4:
                        raise bad(f"case {c.id}: reference {side} grade {g!r} is not an integer 0-4")
        if self.design == "crossover":
            s = self.crossover
            if int(s.get("sessions", 2)) != 2:
                raise bad("a crossover design has exactly 2 sessions")
            if float(s.get("washout_days", 28)) < 0:
                raise bad("washout_days cannot be negative")

    # --- identity --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON: the protocol's identity, recorded with every export."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise StudyError(f"no case {case_id!r} in the protocol", code="unknown_case")

    def reader(self, reader_id: str) -> Reader:
        for r in self.readers:
            if r.id == reader_id:
                return r
        raise StudyError(f"no reader {reader_id!r} in the protocol", code="unknown_reader")
