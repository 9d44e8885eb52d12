"""``sirad study demo``: a small phantom study with two simulated readers, run end to end.

The AI suggestions in the demo are **simulated** (the reference grade, wrong for about one joint
in five): the grading model is not part of this demo. The readers are simulated too: they grade
near the reference and sometimes follow the AI after the reveal. The point is to show the whole
loop - protocol, sessions with lock and reveal, export, analysis, report - not any real effect.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from sirad_viewer.study.analysis import analyse, write_export
from sirad_viewer.study.integrity import CoordinatorKey, new_study_id
from sirad_viewer.study.protocol import Case, Protocol, Reader
from sirad_viewer.study.session import JOINTS, ReaderSession
from sirad_viewer.study.store import StudyStore


def _noisy(grade: int, rng: np.random.Generator, p_right: float) -> int:
    if rng.random() < p_right:
        return grade
    return int(np.clip(grade + rng.choice([-1, 1]), 0, 4))


def run_demo(out: str | Path, *, n_cases: int = 8, seed: int = 7, matrix: int = 96,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    from sirad_viewer.phantom import PhantomSpec, make_phantom, write_phantom

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        left, right = (int(g) for g in rng.integers(0, 5, size=2))
        cid = f"c{i + 1:03d}"
        spec = PhantomSpec(left_grade=left, right_grade=right, seed=seed * 100 + i, matrix=matrix, fov_mm=360.0,
                           slice_thickness_mm=3.0, slice_spacing_mm=3.0, z_range_mm=(-80.0, 70.0),
                           patient_id=f"DEMO-{cid}")
        files = write_phantom(make_phantom(spec), out / "cases" / cid, fmt="nifti")
        cases.append(Case(id=cid, path=str(Path(files["ct"]).relative_to(out)), reference={"left": left, "right": right},
                          site="phantom-A"))
        progress(f"case {cid}: phantom L{left} R{right}")
    protocol = Protocol(name="SIRAD demo study (simulated readers, simulated AI)", design="sequential",
                        grade_scheme="cat3", seed=seed, ai_assistance=True,
                        readers=[Reader("r1", "Simulated reader 1"), Reader("r2", "Simulated reader 2")], cases=cases)
    db = out / "study.sqlite"
    key_path = out / "coordinator.key"
    for old in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), key_path, Path(f"{key_path}.anchor")):
        if old.exists():
            old.unlink()
    key = CoordinatorKey.new(new_study_id()).write(key_path)
    store = StudyStore.create(db, protocol, key=key)
    for reader, skill, trust in (("r1", 0.6, 0.6), ("r2", 0.5, 0.4)):
        s = ReaderSession(store, reader)
        s.sign_in()
        while (item := s.current()) is not None:
            case = item["case"]
            ref = protocol.case(case).reference or {}
            s.open(case)
            for j in JOINTS:
                s.set_grade(case, j, _noisy(ref[j], rng, skill))
            s.lock(case, confidence=int(rng.integers(1, 6)), active_s=float(rng.uniform(40, 150)))
            ai = {"model": {"name": "simulated", "version": "0"},
                  "joints": {j: {"grade": _noisy(ref[j], rng, 0.8)} for j in JOINTS}}
            s.reveal(case, ai)
            for j in JOINTS:
                pre = s.states()[(case, 1)].pre[j]
                if ai["joints"][j]["grade"] != pre and rng.random() < trust:
                    s.revise(case, j, ai["joints"][j]["grade"])
            s.close(case, active_s=float(rng.uniform(5, 30)))
        s.release()
        progress(f"reader {reader}: {s.progress()[0]} cases read")
    export = write_export(store, out / "export.csv")
    results = analyse(store, out / "analysis", n_boot=500)
    store.close()
    progress(f"export: {export}")
    progress(f"coordinator key: {key_path} (a demo keeps it beside the study; a real study keeps it elsewhere)")
    progress(f"report: {out / 'analysis' / 'report.html'}")
    return results
