"""The results table of a batch run: one row per series, SQLite (WAL) by default or any SQLAlchemy URL.

The client (never a worker) writes each row the moment its case finishes, in its own transaction,
so a crash loses at most the cases in flight. ``key`` is unique: ``series:<SeriesInstanceUID>``, or
``file:<path>:<size>:<mtime_ns>`` for files without one (NIfTI, broken files), or
``dicom:<folder>:<n images>:<description>`` for DICOM series with an empty UID. Writing a key that
is already there updates that row (a retried failure), so no series is ever in the table twice.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

from sirad_viewer.errors import ExportError, SiradError

log = logging.getLogger(__name__)

STATUSES = ("ok", "failed", "skipped")
#: The columns of the issue, in the export's order; ``key`` and the rest follow.
RESULT_COLUMNS = ("source", "study_uid", "series_uid", "status", "error_code", "message", "left_grade", "right_grade",
                  "left_probabilities", "right_probabilities", "category3_left", "category3_right",
                  "patient_positive", "patient_probability", "ood_flagged", "model", "model_version", "seconds",
                  "finished_at")
EXTRA_COLUMNS = ("key", "study_date", "series_description", "geometry", "worker", "attempts", "read_at")
JSON_COLUMNS = ("left_probabilities", "right_probabilities", "geometry")


class BatchStoreError(SiradError):
    code = "batch_store"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _url(target: str | Path) -> str:
    t = str(target)
    return t if "://" in t else f"sqlite:///{Path(t).resolve()}"


class ResultStore:
    """Open (creating when needed) the results of a batch.

    Parameters
    ----------
    target : str or Path
        A file path (SQLite in WAL mode) or an SQLAlchemy URL (``postgresql+psycopg://...``).
    create : bool
        Create the file and tables when missing (``False``: a missing SQLite file is an error).
    """

    def __init__(self, target: str | Path, *, create: bool = True) -> None:
        import sqlalchemy as sa

        self.url = _url(target)
        self.target = str(target)
        if self.url.startswith("sqlite:///"):
            p = Path(self.url.split("sqlite:///", 1)[1])
            if not create and not p.exists():
                raise BatchStoreError("does not exist (write it with 'sirad batch SOURCE --out RESULTS')",
                                      path=p, code="not_found")
            p.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url, future=True)
        if self.engine.dialect.name == "sqlite":
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a process crash
                cur.execute("PRAGMA busy_timeout=10000")
                cur.close()
        md = sa.MetaData()
        S, T, F, I = sa.String, sa.Text, sa.Float, sa.Integer  # noqa: N806, E741
        self.table = sa.Table(
            "batch_results", md,
            sa.Column("id", I, primary_key=True, autoincrement=True),
            sa.Column("key", S(512), nullable=False),
            sa.Column("source", T, nullable=False),
            sa.Column("study_uid", S(128)), sa.Column("series_uid", S(128)),
            sa.Column("status", S(16), nullable=False),
            sa.Column("error_code", S(64)), sa.Column("message", T),
            sa.Column("left_grade", I), sa.Column("right_grade", I),
            sa.Column("left_probabilities", T), sa.Column("right_probabilities", T),
            sa.Column("category3_left", I), sa.Column("category3_right", I),
            sa.Column("patient_positive", sa.Boolean), sa.Column("patient_probability", F),
            sa.Column("ood_flagged", sa.Boolean),
            sa.Column("model", S(128)), sa.Column("model_version", S(64)),
            sa.Column("seconds", F), sa.Column("finished_at", S(40)),
            sa.Column("study_date", S(16)), sa.Column("series_description", T), sa.Column("geometry", T),
            sa.Column("worker", S(256)), sa.Column("attempts", I, nullable=False, default=1),
            sa.Column("read_at", S(40)),
            sa.UniqueConstraint("key", name="uq_batch_results_key"),
            sa.CheckConstraint("status IN ('ok', 'failed', 'skipped')", name="ck_batch_results_status"),
        )
        self.runs = sa.Table(
            "batch_runs", md,
            sa.Column("id", I, primary_key=True, autoincrement=True),
            sa.Column("started_at", S(40), nullable=False), sa.Column("finished_at", S(40)),
            sa.Column("source", T), sa.Column("workers", I), sa.Column("scheduler", T),
            sa.Column("planned", I), sa.Column("done", I), sa.Column("failed", I),
            sa.Column("wall_seconds", F), sa.Column("state", S(16)),
        )
        self._sa = sa
        try:
            md.create_all(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise BatchStoreError(f"the results store cannot be opened: {exc}", path=self.target) from exc

    def close(self) -> None:
        self.engine.dispose()

    # --- reading -------------------------------------------------------------------------------

    def done_keys(self, *, retry_failed: bool = False) -> set[str]:
        """Keys a rerun skips: every row, or only the ``ok``/``skipped`` ones with ``retry_failed``."""
        t = self.table
        q = self._sa.select(t.c.key)
        if retry_failed:
            q = q.where(t.c.status != "failed")
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(q)}

    def rows(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Every row as a dict, JSON columns decoded, in insertion order."""
        t = self.table
        q = self._sa.select(t).order_by(t.c.id)
        if status is not None:
            q = q.where(t.c.status == status)
        with self.engine.connect() as c:
            out = [dict(r._mapping) for r in c.execute(q)]
        for r in out:
            for k in JSON_COLUMNS:
                if r.get(k):
                    r[k] = json.loads(r[k])
        return out

    def count(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(self._sa.select(self._sa.func.count()).select_from(self.table)).scalar_one())

    def run_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(self._sa.select(self.runs).order_by(self.runs.c.id))]

    # --- writing -------------------------------------------------------------------------------

    def put(self, row: dict[str, Any]) -> None:
        """Write one finished case in its own transaction; an existing key is updated, never duplicated."""
        sa = self._sa
        if row.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {row.get('status')!r}")
        values = {k: row.get(k) for k in RESULT_COLUMNS + EXTRA_COLUMNS if k in row and k not in ("attempts", "read_at")}
        for k in JSON_COLUMNS:
            if values.get(k) is not None and not isinstance(values[k], str):
                values[k] = json.dumps(values[k])
        values.setdefault("finished_at", now_iso())
        t = self.table
        with self.engine.begin() as c:
            prev = c.execute(sa.select(t.c.attempts).where(t.c.key == values["key"])).first()
            if prev is None:
                try:
                    with c.begin_nested():
                        c.execute(t.insert().values(**values, attempts=1))
                    return
                except sa.exc.IntegrityError:  # another client wrote the same key in between
                    prev = c.execute(sa.select(t.c.attempts).where(t.c.key == values["key"])).first()
            c.execute(t.update().where(t.c.key == values["key"]).values(**values, attempts=int(prev[0] or 0) + 1))

    def mark_read(self, key: str, *, read: bool = True) -> None:
        """The worklist's 'read' mark (a timestamp), or clear it."""
        t = self.table
        with self.engine.begin() as c:
            c.execute(t.update().where(t.c.key == key).values(read_at=now_iso() if read else None))

    def start_run(self, *, source: str, workers: int | None, scheduler: str | None, planned: int) -> int:
        with self.engine.begin() as c:
            res = c.execute(self.runs.insert().values(started_at=now_iso(), source=source, workers=workers,
                                                      scheduler=scheduler, planned=planned, done=0, failed=0,
                                                      state="running"))
            return int(res.inserted_primary_key[0])

    def finish_run(self, run_id: int, *, done: int, failed: int, wall_seconds: float, state: str) -> None:
        with self.engine.begin() as c:
            c.execute(self.runs.update().where(self.runs.c.id == run_id).values(
                finished_at=now_iso(), done=done, failed=failed, wall_seconds=wall_seconds, state=state))

    # --- export --------------------------------------------------------------------------------

    def export(self, out: str | Path) -> Path:
        """Write the table as CSV (``.csv``) or Parquet (``.parquet``, through pandas and pyarrow)."""
        out = Path(out)
        cols = list(RESULT_COLUMNS) + ["key", "study_date", "series_description", "attempts", "read_at"]
        rows = self.rows()
        for r in rows:
            for k in ("left_probabilities", "right_probabilities"):
                if r.get(k) is not None:
                    r[k] = json.dumps(r[k])
        suffix = out.suffix.lower()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".csv":
                with open(out, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
                    w.writeheader()
                    w.writerows(rows)
            elif suffix == ".parquet":
                import pandas as pd

                df = pd.DataFrame([{k: r.get(k) for k in cols} for r in rows], columns=cols)
                for k in ("patient_positive", "ood_flagged"):
                    df[k] = df[k].astype("boolean")
                for k in ("left_grade", "right_grade", "category3_left", "category3_right", "attempts"):
                    df[k] = df[k].astype("Int64")
                df.to_parquet(out, index=False)
            else:
                raise ExportError(f"unknown export format {suffix or '(none)'}: use .csv or .parquet", path=out)
        except (OSError, ImportError) as exc:
            raise ExportError(f"the results cannot be written: {exc}", path=out) from exc
        return out

