"""The same study code on a real PostgreSQL server (started here when Debian's postgresql is installed)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid

import pytest

from sirad_viewer.study.protocol import Case, Protocol, Reader
from sirad_viewer.study.session import ReaderSession
from sirad_viewer.study.store import StudyStore


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def pg_url():
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (Debian package 'postgresql')")
    pytest.importorskip("psycopg")
    import tempfile
    from pathlib import Path

    # not under pytest's tmp dir: that is private to the current user, and the server may run as 'postgres'
    base = Path(tempfile.mkdtemp(prefix="sirad-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:  # initdb refuses to run as root: use the postgres system user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        prefix = ["runuser", "-u", "postgres", "--"]
        os.chmod(base, 0o777)
        shutil.chown(sock, "postgres")
    r = subprocess.run(prefix + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"initdb failed: {r.stderr[-2000:]}"
    port = 54000 + os.getpid() % 1000
    subprocess.run(prefix + [pg_ctl, "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                             f"-p {port} -k {sock} -c listen_addresses=''", "start"], check=True, capture_output=True,
                   timeout=120)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_study_on_postgresql(pg_url):
    import sqlalchemy as sa

    schema_free_url = pg_url
    eng = sa.create_engine(schema_free_url)
    with eng.begin() as conn:  # a clean database per run
        conn.execute(sa.text("DROP TABLE IF EXISTS study_events, study_meta"))
    eng.dispose()
    p = Protocol(name=f"multi-site {uuid.uuid4().hex[:6]}", seed=3, readers=[Reader("a"), Reader("b")],
                 cases=[Case(id=f"c{i}", path=f"p{i}", reference={"left": 1, "right": 2}, site="B") for i in range(4)])
    store = StudyStore.create(pg_url, p)
    for reader in ("a", "b"):
        s = ReaderSession(store, reader)
        c = s.current()["case"]
        s.open(c)
        s.set_grade(c, "left", 1)
        s.set_grade(c, "right", 2)
        s.lock(c)
    again = StudyStore(pg_url)
    assert again.verify()[0] and again.frozen
    assert ReaderSession(again, "a").progress() == (0, 4)
    assert sum(1 for e in again.events() if e.kind == "locked") == 2
