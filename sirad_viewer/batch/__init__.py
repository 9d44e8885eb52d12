"""Archive screening: grade many CTs on a Dask cluster into a resumable results table. No Qt.

``plan`` finds the series, ``worker`` grades one inside a Dask worker (models loaded once per
worker), ``runner`` drives the cluster and writes rows as cases finish, ``store`` is the results
table (SQLite or PostgreSQL), ``report`` the screening report.
"""
from __future__ import annotations

from sirad_viewer.batch.store import RESULT_COLUMNS, ResultStore

__all__ = ["RESULT_COLUMNS", "ResultStore"]
