"""Grade schemes and the modified New York patient-level rule (data, not hard-coded groupings)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

GRADES = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Grouping:
    """A grouping of the 0-4 grades into categories, e.g. 0-1 / 2-3 / 4."""

    name: str
    groups: tuple[tuple[int, ...], ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        flat = sorted(g for grp in self.groups for g in grp)
        if flat != list(GRADES):
            raise ValueError(f"grouping {self.name!r} must cover grades 0-4 exactly once, got {self.groups}")

    def category(self, grade: int) -> int:
        for i, grp in enumerate(self.groups):
            if int(grade) in grp:
                return i
        raise ValueError(f"grade {grade!r} is not 0-4")

    @classmethod
    def from_spec(cls, spec: Sequence[Sequence[int]], name: str = "custom") -> "Grouping":
        groups = tuple(tuple(int(g) for g in grp) for grp in spec)
        labels = tuple(f"{grp[0]}-{grp[-1]}" if len(grp) > 1 else str(grp[0]) for grp in groups)
        return cls(name, groups, labels)


class GradeScheme(str, Enum):
    """Which grades a study collects and analyses."""

    MNY5 = "mny5"  # modified New York 0-4
    CAT3 = "cat3"  # 0-1 normal/suspicious, 2-3 definite damage, 4 ankylosis (the Sci Rep study)
    CAT3_ALT = "cat3-alt"  # 0-1 / 2 / 3-4 (another published grouping)


GROUPINGS = {
    GradeScheme.MNY5: Grouping("mny5", tuple((g,) for g in GRADES), tuple(str(g) for g in GRADES)),
    GradeScheme.CAT3: Grouping("cat3", ((0, 1), (2, 3), (4,)), ("0-1", "2-3", "4")),
    GradeScheme.CAT3_ALT: Grouping("cat3-alt", ((0, 1), (2,), (3, 4)), ("0-1", "2", "3-4")),
}


def as_positive(left: int, right: int) -> bool:
    """Modified New York radiographic criterion: grade >= 2 on both sides or 3-4 on one side."""
    return (left >= 2 and right >= 2) or left >= 3 or right >= 3
