"""The results table: one row per key, reruns skip, --retry-failed, export, PostgreSQL."""
from __future__ import annotations

import csv
import json

import pytest

from sirad_viewer.batch.store import RESULT_COLUMNS, ResultStore


def ok_row(key: str, p: float = 0.8) -> dict:
    return {"key": key, "source": f"/data/{key}", "status": "ok", "left_grade": 3, "right_grade": 2,
            "left_probabilities": [0.0, 0.05, 0.1, 0.8, 0.05], "right_probabilities": [0.1, 0.1, 0.7, 0.1, 0.0],
            "category3_left": 1, "category3_right": 1, "patient_positive": True, "patient_probability": p,
            "ood_flagged": None, "model": "m", "model_version": "1", "seconds": 2.5}


def fail_row(key: str, code: str = "not_dicom") -> dict:
    return {"key": key, "source": f"/data/{key}", "status": "failed", "error_code": code, "message": "broken"}


def _exercise(store: ResultStore) -> None:
    store.put(ok_row("series:1"))
    store.put(fail_row("file:/a:1:2"))
    store.put(ok_row("series:1", p=0.9))  # the same series again: updated, not added
    assert store.count() == 2
    rows = {r["key"]: r for r in store.rows()}
    assert rows["series:1"]["patient_probability"] == 0.9 and rows["series:1"]["attempts"] == 2
    assert rows["series:1"]["left_probabilities"] == [0.0, 0.05, 0.1, 0.8, 0.05]
    assert store.done_keys() == {"series:1", "file:/a:1:2"}
    assert store.done_keys(retry_failed=True) == {"series:1"}
    store.put(ok_row("file:/a:1:2"))  # the retried failure now succeeds: still one row
    assert store.count() == 2 and {r["status"] for r in store.rows()} == {"ok"}


def test_sqlite_store_one_row_per_key_and_wal(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    _exercise(store)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    import sqlalchemy as sa

    with pytest.raises(sa.exc.IntegrityError):  # the database itself refuses a second row for a key
        with store.engine.begin() as c:
            c.execute(store.table.insert().values(key="series:1", source="x", status="ok", attempts=1))


def test_missing_store_is_an_error(tmp_path):
    from sirad_viewer.errors import SiradError

    with pytest.raises(SiradError) as ei:
        ResultStore(tmp_path / "nope.sqlite", create=False)
    assert ei.value.code == "not_found"


def test_export_csv_and_parquet(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.put(ok_row("series:1"))
    store.put(fail_row("file:/b:1:2", "truncated_pixel_data"))
    out = store.export(tmp_path / "r.csv")
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0].keys())[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert json.loads(rows[0]["left_probabilities"])[3] == 0.8
    assert rows[1]["error_code"] == "truncated_pixel_data"
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    df = pd.read_parquet(store.export(tmp_path / "r.parquet"))
    assert len(df) == 2 and df.loc[0, "left_grade"] == 3 and df.loc[1, "status"] == "failed"


def test_mark_read(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.put(ok_row("series:1"))
    store.mark_read("series:1")
    assert store.rows()[0]["read_at"]
    store.mark_read("series:1", read=False)
    assert store.rows()[0]["read_at"] is None


def test_postgres_store(pg_url):
    import sqlalchemy as sa

    eng = sa.create_engine(pg_url)
    with eng.begin() as c:
        c.execute(sa.text("DROP TABLE IF EXISTS batch_results, batch_runs"))
    eng.dispose()
    _exercise(ResultStore(pg_url))
